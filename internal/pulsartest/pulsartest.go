// Package pulsartest gives tests a real Apache Pulsar broker: the shared
// standalone broker started by deploy/pulsar/pulsar-standalone.sh, fresh
// topics on it, and private brokers a test may stop and start (outages).
//
// Tests find the shared broker through PORTCULLIS_PULSAR_URL and
// PORTCULLIS_PULSAR_ADMIN_URL (defaults pulsar://127.0.0.1:16650 and
// http://127.0.0.1:18080). When it is not reachable, a test fails under
// CI=true and is skipped otherwise, with a message saying how to start it.
package pulsartest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Defaults of the shared test broker (deploy/pulsar/pulsar-standalone.sh).
const (
	DefaultURL      = "pulsar://127.0.0.1:16650"
	DefaultAdminURL = "http://127.0.0.1:18080"
)

const startHint = "start it with deploy/pulsar/pulsar-standalone.sh start"

// Require returns the shared broker's service and admin URLs after checking
// its health. A broker that does not answer fails the test when CI=true and
// skips it otherwise.
func Require(t testing.TB) (brokerURL, adminURL string) {
	t.Helper()
	brokerURL = envOr("PORTCULLIS_PULSAR_URL", DefaultURL)
	adminURL = strings.TrimRight(envOr("PORTCULLIS_PULSAR_ADMIN_URL", DefaultAdminURL), "/")
	if err := Healthy(context.Background(), adminURL); err != nil {
		msg := fmt.Sprintf("pulsar broker at %s (admin %s) is not available: %v; %s", brokerURL, adminURL, err, startHint)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return brokerURL, adminURL
}

// Healthy asks the broker's health check (GET /admin/v2/brokers/health).
func Healthy(ctx context.Context, adminURL string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := admin(ctx, http.MethodGet, adminURL+"/admin/v2/brokers/health", "")
	return err
}

var unsafeTopicChars = regexp.MustCompile(`[^a-zA-Z0-9-]+`)

// NewTopic creates a fresh, non-partitioned topic in public/default named
// after the test, with de-duplication enabled at topic level, and returns
// its full name (persistent://public/default/...). The topic is deleted when
// the test ends.
func NewTopic(t testing.TB, adminURL string) string {
	t.Helper()
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	name := strings.ToLower(unsafeTopicChars.ReplaceAllString(t.Name(), "-"))
	if len(name) > 60 {
		name = name[:60]
	}
	local := "test-" + name + "-" + hex.EncodeToString(rnd[:])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := CreateTopic(ctx, adminURL, "public/default/"+local); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = admin(ctx, http.MethodDelete, adminURL+"/admin/v2/persistent/public/default/"+local+"?force=true", "")
	})
	return "persistent://public/default/" + local
}

// CreateTopic creates the non-partitioned persistent topic
// tenant/namespace/name and turns de-duplication on for it, waiting until
// the broker reports the policy as applied.
func CreateTopic(ctx context.Context, adminURL, path string) error {
	base := strings.TrimRight(adminURL, "/") + "/admin/v2/persistent/" + path
	if _, err := admin(ctx, http.MethodPut, base, ""); err != nil {
		return fmt.Errorf("pulsartest: create topic %s: %w", path, err)
	}
	if _, err := admin(ctx, http.MethodPost, base+"/deduplicationEnabled", "true"); err != nil {
		return fmt.Errorf("pulsartest: enable deduplication on %s: %w", path, err)
	}
	for {
		body, err := admin(ctx, http.MethodGet, base+"/deduplicationEnabled?applied=true", "")
		if err == nil && strings.TrimSpace(body) == "true" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pulsartest: deduplication on %s not applied (last answer %q, %v): %w", path, body, err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// admin performs one admin REST call and returns the body of a 2xx answer.
func admin(ctx context.Context, method, url, body string) (string, error) {
	var rd io.Reader
	if body != "" {
		rd = bytes.NewReader([]byte(body))
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return "", err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return string(b), fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
