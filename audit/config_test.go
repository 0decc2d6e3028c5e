package audit

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis/portcullis/internal/confkit"
)

func TestConfigDefaults(t *testing.T) {
	var c Config
	c.SetDefaults("/data")
	checks := []struct {
		name      string
		got, want any
	}{
		{"sink", c.Sink, SinkFile},
		{"mode", c.Mode, ModeDurable},
		{"buffer", c.Buffer, DefaultBuffer},
		{"file.path", c.File.Path, filepath.Join("/data", "audit.jsonl")},
		{"file.max_bytes", c.File.MaxBytes, confkit.ByteSize(100 << 20)},
		{"file.max_files", c.File.MaxFiles, 10},
		{"spool.dir", c.Spool.Dir, filepath.Join("/data", "spool")},
		{"spool.max_bytes", c.Spool.MaxBytes, confkit.ByteSize(1 << 30)},
		{"data dir", c.DataDir(), "/data"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	var p confkit.Problems
	c.Validate(&p, "audit")
	if p.Len() != 0 {
		t.Errorf("defaults have problems: %v", p.List())
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want []string // path prefixes of the expected problems, in order
	}{
		{"pulsar ok", func(c *Config) {
			c.Sink = SinkPulsar
			c.Pulsar = PulsarConfig{URL: "pulsar://127.0.0.1:6650", Topic: "persistent://public/default/portcullis-audit"}
		}, nil},
		{"pulsar short topic and ssl", func(c *Config) {
			c.Sink = SinkPulsar
			c.Pulsar = PulsarConfig{URL: "pulsar+ssl://pulsar.example.com:6651", Topic: "portcullis-audit", TLSTrustCertsFile: "/ca.pem"}
		}, nil},
		{"pulsar missing", func(c *Config) { c.Sink = SinkPulsar }, []string{"audit.pulsar.url: ", "audit.pulsar.topic: "}},
		{"pulsar bad scheme and topic", func(c *Config) {
			c.Sink = SinkPulsar
			c.Pulsar = PulsarConfig{URL: "http://127.0.0.1:8080", Topic: "non-persistent://public/default/x"}
		}, []string{"audit.pulsar.url: scheme", "audit.pulsar.topic: must be a persistent"}},
		{"pulsar topic shape", func(c *Config) {
			c.Sink = SinkPulsar
			c.Pulsar = PulsarConfig{URL: "pulsar://h:1", Topic: "persistent://public/x"}
		}, []string{"audit.pulsar.topic: "}},
		{"tls file without ssl", func(c *Config) {
			c.Pulsar = PulsarConfig{URL: "pulsar://h:1", Topic: "t", TLSTrustCertsFile: "/ca.pem"}
		}, []string{"audit.pulsar.tls_trust_certs_file: "}},
		{"enums", func(c *Config) { c.Sink = "kafka"; c.Mode = "yolo" }, []string{"audit.sink: ", "audit.mode: "}},
		{"instance and buffer", func(c *Config) { c.Instance = "a b"; c.Buffer = -1 }, []string{"audit.instance: ", "audit.buffer: "}},
		{"sizes", func(c *Config) {
			c.File.MaxBytes = 10
			c.File.MaxFiles = -1
			c.Spool.MaxBytes = 100
		}, []string{"audit.file.max_bytes: ", "audit.file.max_files: ", "audit.spool.max_bytes: "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Config
			c.SetDefaults(t.TempDir())
			tt.edit(&c)
			var p confkit.Problems
			c.Validate(&p, "audit")
			got := p.List()
			if len(got) != len(tt.want) {
				t.Fatalf("got problems %v, want %d with prefixes %v", got, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(got[i].String(), w) {
					t.Errorf("problem %d = %q, want prefix %q", i, got[i], w)
				}
			}
		})
	}
}

func TestConfigDecodeStrict(t *testing.T) {
	src := `
sink: pulsar
instance: edge-1
file: {path: /x/audit.jsonl, max_bytes: 1MiB, max_files: 3}
pulsar: {url: "pulsar://127.0.0.1:6650", topic: portcullis-audit, token_file: "", tls_trust_certs_file: ""}
spool: {dir: /x/spool, max_bytes: 2GiB}
mode: fail-closed
buffer: 50
`
	var c Config
	var p confkit.Problems
	if err := confkit.DecodeStrict([]byte(src), &c, &p, nil); err != nil {
		t.Fatal(err)
	}
	c.SetDefaults("/x")
	c.Validate(&p, "audit")
	if p.Len() != 0 {
		t.Fatalf("problems: %v", p.List())
	}
	if c.Spool.MaxBytes != 2<<30 || c.File.MaxBytes != 1<<20 || c.File.MaxFiles != 3 || c.Mode != ModeFailClosed || c.Buffer != 50 || c.Instance != "edge-1" {
		t.Errorf("decoded %+v", c)
	}
}
