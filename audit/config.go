package audit

import (
	"path/filepath"
	"regexp"
	"strings"

	"github.com/portcullis/portcullis/internal/confkit"
)

// Sink kinds (audit.sink).
const (
	SinkFile   = "file"
	SinkPulsar = "pulsar"
)

// Delivery modes (audit.mode, SPEC §6).
const (
	// ModeDurable writes every event to the fsync'd spool before Record
	// returns and deletes it only after the sink acknowledged it.
	ModeDurable = "durable"
	// ModeBestEffort keeps events in a bounded memory queue; when it is full
	// new events are dropped, counted and logged, and Record never blocks.
	ModeBestEffort = "best-effort"
	// ModeFailClosed is ModeDurable, and while the spool cannot take events
	// Accepting reports false and Record fails with ErrUnavailable, so that
	// the proxy answers 503 instead of forwarding unrecorded requests.
	ModeFailClosed = "fail-closed"
)

// Defaults filled by SetDefaults.
const (
	DefaultFileMaxBytes  = 100 << 20
	DefaultFileMaxFiles  = 10
	DefaultSpoolMaxBytes = 1 << 30
	DefaultBuffer        = 10000
)

// Config is the audit section of the configuration file (SPEC §2).
//
// Extensions to SPEC §2: instance, buffer, file.max_bytes, file.max_files.
type Config struct {
	// Sink is "file" (default) or "pulsar".
	Sink string `yaml:"sink"`
	// Instance fixes this proxy's instance id (letters, digits, '.', '_',
	// '-'; at most 64 characters). Empty (the default): an id of the form
	// "portcullis-<8 hex>" is generated once and kept in
	// <data_dir>/instance. Two running proxies must never share an id.
	Instance string `yaml:"instance"`
	// File configures the JSONL sink (sink: file).
	File FileConfig `yaml:"file"`
	// Pulsar configures the Pulsar sink (sink: pulsar) and the Pulsar source
	// of `portcullis audit`.
	Pulsar PulsarConfig `yaml:"pulsar"`
	// Spool configures the local write-ahead log of durable and fail-closed
	// modes.
	Spool SpoolConfig `yaml:"spool"`
	// Mode is "durable" (default), "best-effort" or "fail-closed".
	Mode string `yaml:"mode"`
	// Buffer is how many events best-effort mode queues in memory before it
	// drops new ones (default 10000).
	Buffer int `yaml:"buffer"`

	// dataDir is remembered by SetDefaults for the instance id file.
	dataDir string
}

// FileConfig configures the JSONL file sink.
type FileConfig struct {
	// Path of the live file (default <data_dir>/audit.jsonl). Rotated files
	// are Path.1 (newest) to Path.<max_files-1> (oldest).
	Path string `yaml:"path"`
	// MaxBytes is the size at which the live file is rotated (default
	// 100MiB). An event is never split across files.
	MaxBytes confkit.ByteSize `yaml:"max_bytes"`
	// MaxFiles is how many files are kept, the live one included (default
	// 10); the oldest is deleted on rotation.
	MaxFiles int `yaml:"max_files"`
}

// PulsarConfig names the Pulsar cluster and topic events go to.
type PulsarConfig struct {
	// URL is pulsar://host:port or pulsar+ssl://host:port.
	URL string `yaml:"url"`
	// Topic is the audit topic, e.g. persistent://public/default/portcullis-audit.
	// It must be persistent and not partitioned.
	Topic string `yaml:"topic"`
	// TokenFile holds a JWT for Pulsar token authentication ("" for none).
	TokenFile string `yaml:"token_file"`
	// TLSTrustCertsFile is a PEM bundle trusted for pulsar+ssl:// ("" for
	// the system roots).
	TLSTrustCertsFile string `yaml:"tls_trust_certs_file"`
}

// SpoolConfig configures the write-ahead spool.
type SpoolConfig struct {
	// Dir holds the spool's segment files (default <data_dir>/spool).
	Dir string `yaml:"dir"`
	// MaxBytes bounds the spool on disk (default 1GiB). When it is full,
	// Record fails with ErrUnavailable.
	MaxBytes confkit.ByteSize `yaml:"max_bytes"`
}

// SetDefaults fills every unset field. Paths default to files under
// dataDir. It has no side effects besides changing c.
func (c *Config) SetDefaults(dataDir string) {
	c.dataDir = dataDir
	if c.Sink == "" {
		c.Sink = SinkFile
	}
	if c.Mode == "" {
		c.Mode = ModeDurable
	}
	if c.Buffer == 0 {
		c.Buffer = DefaultBuffer
	}
	if c.File.Path == "" {
		c.File.Path = filepath.Join(dataDir, "audit.jsonl")
	}
	if c.File.MaxBytes == 0 {
		c.File.MaxBytes = DefaultFileMaxBytes
	}
	if c.File.MaxFiles == 0 {
		c.File.MaxFiles = DefaultFileMaxFiles
	}
	if c.Spool.Dir == "" {
		c.Spool.Dir = filepath.Join(dataDir, "spool")
	}
	if c.Spool.MaxBytes == 0 {
		c.Spool.MaxBytes = DefaultSpoolMaxBytes
	}
}

// DataDir is the data directory given to SetDefaults ("" before).
func (c *Config) DataDir() string { return c.dataDir }

var instancePattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Minimum sizes: smaller values are almost certainly unit mistakes.
const (
	minSpoolBytes = 64 << 10
	minFileBytes  = 4 << 10
)

// Validate records every problem of c (after SetDefaults) in p, each with
// its path below path (for example "audit.pulsar.url"). It reads no file and
// contacts no broker.
func (c *Config) Validate(p *confkit.Problems, path string) {
	confkit.OneOf(p, confkit.Join(path, "sink"), c.Sink, SinkFile, SinkPulsar)
	confkit.OneOf(p, confkit.Join(path, "mode"), c.Mode, ModeDurable, ModeBestEffort, ModeFailClosed)
	if c.Instance != "" && !instancePattern.MatchString(c.Instance) {
		p.Add(confkit.Join(path, "instance"), "must be 1 to 64 letters, digits, '.', '_' or '-', got %q", c.Instance)
	}
	if c.Buffer < 1 {
		p.Add(confkit.Join(path, "buffer"), "must be at least 1, got %d", c.Buffer)
	}

	fp := confkit.Join(path, "file")
	if c.File.Path == "" {
		p.Add(confkit.Join(fp, "path"), "is required")
	}
	if c.File.MaxBytes < minFileBytes {
		p.Add(confkit.Join(fp, "max_bytes"), "must be at least %s, got %s", confkit.ByteSize(minFileBytes), c.File.MaxBytes)
	}
	if c.File.MaxFiles < 1 {
		p.Add(confkit.Join(fp, "max_files"), "must be at least 1, got %d", c.File.MaxFiles)
	}

	sp := confkit.Join(path, "spool")
	if c.Spool.Dir == "" {
		p.Add(confkit.Join(sp, "dir"), "is required")
	}
	if c.Spool.MaxBytes < minSpoolBytes {
		p.Add(confkit.Join(sp, "max_bytes"), "must be at least %s, got %s", confkit.ByteSize(minSpoolBytes), c.Spool.MaxBytes)
	}

	// The pulsar section is checked when it is used, or when it is filled in
	// (`portcullis audit --pulsar` and `dev --pulsar` read it too).
	if c.Sink == SinkPulsar || c.Pulsar != (PulsarConfig{}) {
		c.Pulsar.Validate(p, confkit.Join(path, "pulsar"))
	}
}

// Validate records every problem of the Pulsar settings in p below path.
// It does not read the token or certificate files.
func (c *PulsarConfig) Validate(p *confkit.Problems, path string) {
	confkit.ParseURL(p, confkit.Join(path, "url"), c.URL, true, "pulsar", "pulsar+ssl")
	validateTopic(p, confkit.Join(path, "topic"), c.Topic)
	if c.TLSTrustCertsFile != "" && !strings.HasPrefix(strings.ToLower(c.URL), "pulsar+ssl://") {
		p.Add(confkit.Join(path, "tls_trust_certs_file"), "is set but url does not use pulsar+ssl://")
	}
}

// validateTopic accepts a short topic name ("portcullis-audit", which Pulsar
// places in public/default) or persistent://tenant/namespace/topic. A
// non-persistent topic keeps nothing and is refused.
func validateTopic(p *confkit.Problems, path, topic string) {
	if topic == "" {
		p.Add(path, "is required, e.g. persistent://public/default/portcullis-audit")
		return
	}
	scheme, rest, found := strings.Cut(topic, "://")
	if !found {
		if strings.Contains(topic, "/") {
			p.Add(path, "must be a short name or persistent://tenant/namespace/topic, got %q", topic)
		}
		return
	}
	if scheme != "persistent" {
		p.Add(path, "must be a persistent:// topic (audit events must be kept), got %q", topic)
		return
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		p.Add(path, "must be persistent://tenant/namespace/topic, got %q", topic)
	}
}
