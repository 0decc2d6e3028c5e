package audit

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"time"

	"github.com/apache/pulsar-client-go/pulsar"
	pulsarlog "github.com/apache/pulsar-client-go/pulsar/log"
)

// newPulsarClient builds a client from the audit configuration: token
// authentication from cfg.TokenFile (re-read by the client when it needs a
// token, so a rotated file is picked up), TLS trust from
// cfg.TLSTrustCertsFile for pulsar+ssl:// URLs, logs through opts.Logger and
// metrics into opts.Registerer. It does not contact the broker.
func newPulsarClient(cfg PulsarConfig, opts PulsarOptions) (pulsar.Client, error) {
	if cfg.URL == "" {
		return nil, errors.New("audit: pulsar: url is required")
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("audit: pulsar: url: %w", err)
	}
	if u.Scheme != "pulsar" && u.Scheme != "pulsar+ssl" {
		return nil, fmt.Errorf("audit: pulsar: url %q: scheme must be pulsar or pulsar+ssl", cfg.URL)
	}
	if cfg.Topic == "" {
		return nil, errors.New("audit: pulsar: topic is required")
	}
	co := pulsar.ClientOptions{
		URL:               cfg.URL,
		ConnectionTimeout: opts.OperationTimeout,
		OperationTimeout:  opts.OperationTimeout,
		Logger:            pulsarlog.NewLoggerWithSlog(opts.Logger.With("component", "pulsar-client")),
		MetricsRegisterer: opts.Registerer,
	}
	if cfg.TokenFile != "" {
		if _, err := os.ReadFile(cfg.TokenFile); err != nil {
			return nil, fmt.Errorf("audit: pulsar: token_file: %w", err)
		}
		co.Authentication = pulsar.NewAuthenticationTokenFromFile(cfg.TokenFile)
	}
	if cfg.TLSTrustCertsFile != "" {
		if _, err := os.ReadFile(cfg.TLSTrustCertsFile); err != nil {
			return nil, fmt.Errorf("audit: pulsar: tls_trust_certs_file: %w", err)
		}
		co.TLSTrustCertsFilePath = cfg.TLSTrustCertsFile
		co.TLSValidateHostname = true
	}
	c, err := pulsar.NewClient(co)
	if err != nil {
		return nil, fmt.Errorf("audit: pulsar: client: %w", err)
	}
	return c, nil
}

// cappedBackoff doubles from 100ms up to max with 20% jitter. Pulsar's
// default climbs to 60s, which would keep the audit stream down for up to a
// minute after a short broker outage.
type cappedBackoff struct {
	max, cur time.Duration
}

func newCappedBackoff(max time.Duration) *cappedBackoff { return &cappedBackoff{max: max} }

func (b *cappedBackoff) Next() time.Duration {
	switch {
	case b.cur == 0:
		b.cur = 100 * time.Millisecond
	case b.cur < b.max:
		b.cur *= 2
	}
	if b.cur > b.max {
		b.cur = b.max
	}
	return b.cur + time.Duration(rand.Int64N(int64(b.cur)/5+1))
}

func (b *cappedBackoff) IsMaxBackoffReached() bool { return b.cur >= b.max }

func (b *cappedBackoff) Reset() { b.cur = 0 }
