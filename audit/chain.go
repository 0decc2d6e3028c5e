package audit

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// The hash chain.
//
// Every event carries its instance's Seq (1, 2, 3, ... without gaps) and
// PrevHash, the Hash of the instance's previous event. Hash is
//
//	"sha256:" + hex(SHA-256(canonical JSON of the event without "hash"))
//
// (SPEC §6: the member "hash" and its comma left out, everything else
// byte for byte as stored) where the canonical JSON is what Go's
// encoding/json writes for Event: compact, fields in the declared order,
// every other field present (Groups is [] when empty), Time in UTC with RFC 3339 nanosecond formatting (Record
// truncates it to microseconds), and encoding/json's string escaping
// (including \u003c, \u003e, \u0026). An event read back from any sink and
// decoded into Event re-encodes to the same bytes, so a verifier recomputes
// the hash from the decoded event (see ComputeHash and Verifier).
//
// Removing, altering, reordering or inserting an event breaks either a
// Hash, a PrevHash link or the Seq sequence; only an attacker who rewrites
// every later event of the instance (and its local chain state) goes
// unnoticed, which is why events leave the host quickly.

// HashPrefix starts every Hash and PrevHash.
const HashPrefix = "sha256:"

// hashLen is len(HashPrefix) + 64 hex digits.
const hashLen = len(HashPrefix) + 2*sha256.Size

// ComputeHash returns the Hash ev should carry: the SHA-256 of its
// canonical JSON without the "hash" member (ev is not modified).
func ComputeHash(ev *Event) (string, error) {
	cp := *ev
	cp.Hash = ""
	b, err := json.Marshal(&cp)
	if err != nil {
		return "", fmt.Errorf("audit: encode event: %w", err)
	}
	// The first `,"hash":""` is the member: inside a JSON string every
	// quote is escaped, and the members before it are fixed names.
	i := bytes.Index(b, []byte(hashMember+`"`))
	if i < 0 {
		return "", errors.New("audit: encode event: no hash member")
	}
	b = append(b[:i], b[i+len(hashMember)+1:]...)
	return hashOf(b), nil
}

// legacyHash is the hash Portcullis gave events before 2026-11-27: over the
// canonical JSON with an empty "hash" member rather than without it.
// Verifier accepts it, so that older trails still verify.
func legacyHash(ev *Event) string {
	cp := *ev
	cp.Hash = ""
	b, err := json.Marshal(&cp)
	if err != nil {
		return ""
	}
	return hashOf(b)
}

// hashMember opens the "hash" member in an event's encoding.
const hashMember = `,"hash":"`

func hashOf(canonical []byte) string {
	sum := sha256.Sum256(canonical)
	var out [hashLen]byte
	copy(out[:], HashPrefix)
	hex.Encode(out[len(HashPrefix):], sum[:])
	return string(out[:])
}

// Encoded is one recorded event in the form the spool stores and sinks
// publish: the event's JSON (canonical encoding with its Hash filled in,
// one line, no trailing newline) plus the fields a sink needs for routing,
// so that a sink never decodes or re-encodes the event.
//
// Data is shared and must not be modified; it stays valid after Publish
// returns (the shipper allocates new buffers for every batch).
type Encoded struct {
	// Seq is the event's per-instance sequence number.
	Seq uint64
	// ID is the event's ULID.
	ID string
	// Time is the event time (Event.Time).
	Time time.Time
	// Key is Event.Key(): the subject, or "anonymous".
	Key string
	// Data is the event's JSON; json.Unmarshal(Data, &ev) yields the event.
	Data []byte
}

// Decode parses Data into an Event.
func (e *Encoded) Decode() (*Event, error) {
	var ev Event
	if err := json.Unmarshal(e.Data, &ev); err != nil {
		return nil, fmt.Errorf("audit: decode event seq %d: %w", e.Seq, err)
	}
	return &ev, nil
}

// seal computes ev.Hash from its canonical JSON and returns the event's
// encoding with that hash in place.
func seal(ev *Event) ([]byte, error) {
	body, err := encodeBody(ev)
	if err != nil {
		return nil, err
	}
	return sealBody(ev, body)
}

// encodeBody encodes the fields after Hash (see appendBody): the JSON
// object without its opening brace. It is the expensive part of encoding,
// done before the chain lock is taken.
func encodeBody(ev *Event) ([]byte, error) {
	return appendBody(make([]byte, 0, 512), ev)
}

// sealBody seals ev with a fresh SHA-256 state (see sealer.seal).
func sealBody(ev *Event, body []byte) ([]byte, error) {
	var s sealer
	return s.seal(ev, body)
}

// sealer seals events, reusing one SHA-256 state. It is not safe for
// concurrent use: the Pipeline's is guarded by its chain lock.
type sealer struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

// hashPlaceholder reserves the hash's place in an event being sealed.
var hashPlaceholder = strings.Repeat("0", hashLen)

// seal writes the head fields (schema to prev_hash: values that need no
// JSON escaping, checked here) and body into one new buffer, leaving room
// for the hash; hashes the event as it reads without its hash member (the
// bytes before the member and after it); sets ev.Hash and writes it into
// the room.
// It produces exactly what json.Marshal(ev) produces.
func (s *sealer) seal(ev *Event, body []byte) ([]byte, error) {
	if y := ev.Time.Year(); y < 0 || y > 9999 {
		return nil, fmt.Errorf("audit: encode event: time %s out of range", ev.Time)
	}
	if !validInstance(ev.Instance) || !plainJSON(ev.ID) || !plainJSON(ev.PrevHash) {
		return nil, errors.New("audit: encode event: id, instance or prev_hash holds characters that need escaping")
	}
	n := 128 + len(ev.ID) + len(ev.Instance) + len(ev.PrevHash) + hashLen + len(body)
	out := make([]byte, 0, n)
	out = append(out, `{"schema":`...)
	out = strconv.AppendInt(out, int64(ev.Schema), 10)
	out = append(out, `,"id":"`...)
	out = append(out, ev.ID...)
	out = append(out, `","time":"`...)
	out = ev.Time.AppendFormat(out, time.RFC3339Nano)
	out = append(out, `","instance":"`...)
	out = append(out, ev.Instance...)
	out = append(out, `","seq":`...)
	out = strconv.AppendUint(out, ev.Seq, 10)
	out = append(out, `,"prev_hash":"`...)
	out = append(out, ev.PrevHash...)
	out = append(out, '"')
	member := len(out)
	out = append(out, hashMember...)
	at := len(out)
	out = append(out, hashPlaceholder...)
	out = append(out, `",`...)
	out = append(out, body...)
	if s.h == nil {
		s.h = sha256.New()
	} else {
		s.h.Reset()
	}
	s.h.Write(out[:member])
	s.h.Write(out[at+hashLen+1:]) // from the comma after the member's closing quote
	sum := s.h.Sum(s.sum[:0])
	copy(out[at:], HashPrefix)
	hex.Encode(out[at+len(HashPrefix):at+hashLen], sum)
	ev.Hash = string(out[at : at+hashLen])
	return out, nil
}

// plainJSON reports whether s encodes in JSON as itself (no escaping).
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// normalize prepares a caller's event for sealing: schema, UTC time at
// microsecond precision, [] rather than null for groups, and valid UTF-8 in
// every string (see validUTF8).
func normalize(ev *Event, now time.Time) {
	ev.Schema = SchemaVersion
	if ev.Time.IsZero() {
		ev.Time = now
	}
	ev.Time = ev.Time.UTC().Truncate(time.Microsecond)
	for _, f := range []*string{&ev.RequestID, &ev.Decision, &ev.Reason, &ev.Route, &ev.Policy.Package, &ev.Policy.Revision,
		&ev.User.Sub, &ev.User.Email, &ev.User.Provider, &ev.User.AuthMethod,
		&ev.Request.Method, &ev.Request.Host, &ev.Request.Path, &ev.Request.RemoteAddr, &ev.Request.UserAgent} {
		*f = validUTF8(*f)
	}
	if ev.User.Groups == nil {
		ev.User.Groups = []string{}
	}
	for i, g := range ev.User.Groups {
		if v := validUTF8(g); v != g {
			// The caller's slice (an identity's groups) is not ours to edit.
			gs := slices.Clone(ev.User.Groups)
			for j := i; j < len(gs); j++ {
				gs[j] = validUTF8(gs[j])
			}
			ev.User.Groups = gs
			break
		}
	}
}

// validUTF8 replaces each run of bytes that are not UTF-8 (a client's
// User-Agent or path can hold any) with U+FFFD. Encoding such a string,
// encoding/json writes the escape \ufffd, which decodes to U+FFFD, which
// encodes as itself: the event a verifier decodes and re-encodes would not
// be the bytes that were hashed, and the chain would break at an
// untampered event. Valid strings are returned as they are, without
// allocating.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// ChainState is where an instance's chain stands: the Seq and Hash of its
// last recorded event (zero values before the first event).
type ChainState struct {
	Instance string `json:"instance"`
	Seq      uint64 `json:"seq"`
	Hash     string `json:"hash"`
}

// chainStateFile is the name, under the data directory, of the persisted
// ChainState.
const chainStateFile = "audit-chain.json"

// loadChainState reads the persisted state of instance from dataDir. A
// missing file, or one for another instance, yields a fresh chain.
func loadChainState(dataDir, instance string) (ChainState, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, chainStateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return ChainState{Instance: instance}, nil
	}
	if err != nil {
		return ChainState{}, fmt.Errorf("audit: chain state: %w", err)
	}
	var st ChainState
	if err := json.Unmarshal(b, &st); err != nil {
		return ChainState{}, fmt.Errorf("audit: chain state %s is corrupt (remove it only if the spool holds the chain): %w", filepath.Join(dataDir, chainStateFile), err)
	}
	if st.Instance != instance {
		return ChainState{Instance: instance}, nil
	}
	return st, nil
}

// saveChainState writes st atomically (temporary file, fsync, rename).
func saveChainState(dataDir string, st ChainState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("audit: chain state: %w", err)
	}
	return writeFileAtomic(filepath.Join(dataDir, chainStateFile), append(b, '\n'))
}

// writeFileAtomic replaces path with data so that a crash leaves either the
// old or the new content.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("audit: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("audit: sync %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("audit: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("audit: sync %s: %w", dir, err)
	}
	return nil
}

// instanceFile is the name, under the data directory, of the generated
// instance id.
const instanceFile = "instance"

// InstanceID returns the instance id for cfg: cfg.Instance when set,
// otherwise the id kept in <dataDir>/instance, generating and storing
// "portcullis-<8 hex>" the first time. Every caller with the same data
// directory gets the same id.
func InstanceID(cfg Config, dataDir string) (string, error) {
	if cfg.Instance != "" {
		return cfg.Instance, nil
	}
	if dataDir == "" {
		dataDir = cfg.dataDir
	}
	if dataDir == "" {
		return "", errors.New("audit: instance id: no data directory")
	}
	path := filepath.Join(dataDir, instanceFile)
	if id, err := readInstance(path); err == nil {
		return id, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", fmt.Errorf("audit: instance id: %w", err)
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("audit: instance id: %w", err)
	}
	id := "portcullis-" + hex.EncodeToString(b[:])
	// Create exclusively: when two processes race, the first id wins.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return readInstance(path)
	}
	if err != nil {
		return "", fmt.Errorf("audit: instance id: %w", err)
	}
	_, werr := f.WriteString(id + "\n")
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("audit: instance id: %w", err)
	}
	if err := syncDir(dataDir); err != nil {
		return "", err
	}
	return id, nil
}

func readInstance(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("audit: instance id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if !instancePattern.MatchString(id) {
		return "", fmt.Errorf("audit: instance id in %s is invalid (%q): fix or remove the file", path, id)
	}
	return id, nil
}
