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
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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

// Broker is a private standalone broker started by StartPrivateBroker. A
// test may Stop and Start it again (its data survives); it is stopped when
// the test ends.
type Broker struct {
	// URL is the binary-protocol service URL, AdminURL the HTTP admin URL.
	URL, AdminURL string

	t      testing.TB
	script string
	env    []string
}

// PrivateBrokerOptions chooses the private broker's loopback ports. Zero
// values take 26650 (binary), 28080 (web) and 23181 (bookie), which differ
// from the shared broker's.
type PrivateBrokerOptions struct {
	BrokerPort, WebPort, BookiePort int
	// Topics are created (with de-duplication and infinite retention) once
	// the broker is healthy.
	Topics []string
}

// StartPrivateBroker starts a broker of the test's own with
// deploy/pulsar/pulsar-standalone.sh, in a temporary run directory, in test
// mode (no journal fsync), and waits until it is healthy (up to 3 minutes).
// When the script cannot run (no Java, no Maven), the test fails under
// CI=true and is skipped otherwise.
func StartPrivateBroker(t testing.TB, opts PrivateBrokerOptions) *Broker {
	t.Helper()
	if opts.BrokerPort == 0 {
		opts.BrokerPort = 26650
	}
	if opts.WebPort == 0 {
		opts.WebPort = 28080
	}
	if opts.BookiePort == 0 {
		opts.BookiePort = 23181
	}
	script, err := findScript()
	if err != nil {
		t.Fatal(err)
	}
	b := &Broker{
		URL:      fmt.Sprintf("pulsar://127.0.0.1:%d", opts.BrokerPort),
		AdminURL: fmt.Sprintf("http://127.0.0.1:%d", opts.WebPort),
		t:        t,
		script:   script,
		env: append(os.Environ(),
			fmt.Sprintf("PULSAR_BROKER_PORT=%d", opts.BrokerPort),
			fmt.Sprintf("PULSAR_WEB_PORT=%d", opts.WebPort),
			fmt.Sprintf("PULSAR_BOOKIE_PORT=%d", opts.BookiePort),
			"PULSAR_RUN_DIR="+t.TempDir(),
			"PULSAR_TEST_MODE=1",
			"PULSAR_HEAP=512m",
			"PULSAR_START_TIMEOUT=180",
			"PULSAR_STOP_TIMEOUT=30",
			"PULSAR_TOPIC="+firstOr(opts.Topics, "persistent://public/default/portcullis-audit"),
			"PULSAR_EXTRA_TOPICS="+strings.Join(rest(opts.Topics), " "),
		),
	}
	if err := Healthy(context.Background(), b.AdminURL); err == nil {
		t.Fatalf("a broker already answers on %s; stop it or choose other ports", b.AdminURL)
	}
	t.Cleanup(func() {
		if err := b.Stop(); err != nil {
			t.Errorf("stopping the private broker: %v", err)
		}
	})
	if err := b.Start(); err != nil {
		msg := fmt.Sprintf("private pulsar broker: %v", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return b
}

// Start starts the broker (again) and waits until it is healthy and its
// topics exist.
func (b *Broker) Start() error {
	return b.run("start")
}

// Stop stops the broker (SIGTERM, then SIGKILL after 30s) and waits until
// it has exited.
func (b *Broker) Stop() error {
	return b.run("stop")
}

func (b *Broker) run(verb string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", b.script, verb)
	cmd.Env = b.env
	out, err := cmd.CombinedOutput()
	b.t.Logf("pulsar-standalone.sh %s:\n%s", verb, strings.TrimSpace(string(out)))
	if err != nil {
		return fmt.Errorf("pulsar-standalone.sh %s: %w", verb, err)
	}
	return nil
}

// findScript looks for deploy/pulsar/pulsar-standalone.sh in the working
// directory and its parents (tests run in their package's directory).
func findScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "deploy", "pulsar", "pulsar-standalone.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("pulsartest: deploy/pulsar/pulsar-standalone.sh not found above the working directory")
		}
		dir = parent
	}
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}

func rest(s []string) []string {
	if len(s) > 1 {
		return s[1:]
	}
	return nil
}
