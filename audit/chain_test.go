package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func sampleEvent() *Event {
	return &Event{
		ID:         "01JD000000000000000000000A",
		Time:       time.Date(2026, 11, 26, 17, 0, 0, 123456789, time.FixedZone("x", 3600)),
		Instance:   "portcullis-test",
		Seq:        7,
		PrevHash:   "sha256:" + strings.Repeat("ab", 32),
		RequestID:  "req-1",
		Decision:   DecisionDeny,
		Reason:     `not in group "admins" <&>`,
		Route:      "admin",
		Policy:     PolicyRef{Package: "portcullis.routes.admin", Revision: "sha256:00"},
		User:       User{Sub: "alice", Email: "alice@example.com", Provider: "corp", AuthMethod: "session"},
		Request:    Request{Method: "GET", Host: "admin.example.com", Path: "/reports/\u00e9", RemoteAddr: "203.0.113.7", UserAgent: "curl/8"},
		Response:   Response{Status: 403},
		DurationMS: Durations{Authn: 0.02, Policy: 0.013, Upstream: 0, Total: 4.2},
	}
}

func TestSealMatchesComputeHashAndRoundTrips(t *testing.T) {
	ev := sampleEvent()
	normalize(ev, time.Now())
	data, err := seal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(ev.Hash) {
		t.Fatalf("hash %q has the wrong form", ev.Hash)
	}
	want, err := ComputeHash(ev)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Hash != want {
		t.Errorf("seal hash %s, ComputeHash %s", ev.Hash, want)
	}
	direct, _ := json.Marshal(ev)
	if string(direct) != string(data) {
		t.Errorf("sealed encoding differs from json.Marshal:\n got %s\nwant %s", data, direct)
	}
	var back Event
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	again, _ := ComputeHash(&back)
	if again != ev.Hash {
		t.Errorf("hash after decoding %s, want %s", again, ev.Hash)
	}
	// What a verifier following SPEC §6 computes: SHA-256 over the stored
	// event with its "hash" member left out.
	without := strings.Replace(string(data), `,"hash":"`+ev.Hash+`"`, "", 1)
	if sum := sha256.Sum256([]byte(without)); "sha256:"+hex.EncodeToString(sum[:]) != ev.Hash {
		t.Errorf("hash %s is not SHA-256 over the event without its hash member", ev.Hash)
	}
	if !strings.Contains(string(data), `"time":"2026-11-26T16:00:00.123456Z"`) {
		t.Errorf("time not normalized to UTC microseconds: %s", data)
	}
	if !strings.Contains(string(data), `"groups":[]`) {
		t.Errorf("groups not an empty array: %s", data)
	}
}

func TestComputeHashDetectsChanges(t *testing.T) {
	ev := sampleEvent()
	normalize(ev, time.Now())
	if _, err := seal(ev); err != nil {
		t.Fatal(err)
	}
	edits := map[string]func(*Event){
		"decision":  func(e *Event) { e.Decision = DecisionAllow },
		"seq":       func(e *Event) { e.Seq++ },
		"prev_hash": func(e *Event) { e.PrevHash = "" },
		"groups":    func(e *Event) { e.User.Groups = []string{"admins"} },
		"time":      func(e *Event) { e.Time = e.Time.Add(time.Microsecond) },
	}
	for name, edit := range edits {
		t.Run(name, func(t *testing.T) {
			cp := *ev
			edit(&cp)
			got, _ := ComputeHash(&cp)
			if got == ev.Hash {
				t.Errorf("hash unchanged after editing %s", name)
			}
		})
	}
}

func TestInstanceID(t *testing.T) {
	dir := t.TempDir()
	id, err := InstanceID(Config{}, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^portcullis-[0-9a-f]{8}$`).MatchString(id) {
		t.Errorf("generated id %q, want portcullis-<8 hex>", id)
	}
	again, err := InstanceID(Config{}, dir)
	if err != nil || again != id {
		t.Errorf("second call = %q, %v; want %q", again, err, id)
	}
	if fixed, _ := InstanceID(Config{Instance: "edge-1"}, dir); fixed != "edge-1" {
		t.Errorf("configured id = %q, want edge-1", fixed)
	}
	os.WriteFile(filepath.Join(dir, instanceFile), []byte("bad id\n"), 0o600)
	if _, err := InstanceID(Config{}, dir); err == nil {
		t.Error("invalid stored id accepted")
	}
}

func TestChainStatePersists(t *testing.T) {
	dir := t.TempDir()
	st, err := loadChainState(dir, "a")
	if err != nil || st.Seq != 0 {
		t.Fatalf("fresh state = %+v, %v", st, err)
	}
	if err := saveChainState(dir, ChainState{Instance: "a", Seq: 9, Hash: "sha256:x"}); err != nil {
		t.Fatal(err)
	}
	st, _ = loadChainState(dir, "a")
	if st.Seq != 9 || st.Hash != "sha256:x" {
		t.Errorf("loaded %+v", st)
	}
	st, _ = loadChainState(dir, "b")
	if st.Seq != 0 || st.Instance != "b" {
		t.Errorf("other instance got %+v, want a fresh chain", st)
	}
}

// TestChainSurvivesAnyBytes: whatever bytes a client puts in the strings
// an event records (User-Agent, path, host), the sealed event decodes and
// re-encodes to the bytes that were hashed, so an untampered chain
// verifies. (Invalid UTF-8 used to be written as the escape \ufffd, which
// re-encodes as the raw character: the chain broke at that event and hid
// later tampering.)
func TestChainSurvivesAnyBytes(t *testing.T) {
	for _, s := range append(trickyStrings, "\xff", "ab\xc0\xaecd", "/nope/\xff", "\xed\xa0\x80", "a\x00b\x7f", "\xf4\x90\x80\x80") {
		checkRoundTrip(t, s)
	}
}

func FuzzChainSurvivesAnyBytes(f *testing.F) {
	for _, s := range trickyStrings {
		f.Add(s)
	}
	f.Fuzz(checkRoundTrip)
}

func checkRoundTrip(t *testing.T, s string) {
	t.Helper()
	ev := sampleEvent()
	ev.RequestID, ev.Reason, ev.Route, ev.Request.Path, ev.Request.UserAgent, ev.Request.Host = s, s, s, s, s, s
	ev.User = User{Sub: s, Email: s, Groups: []string{"ok", s}, Provider: s, AuthMethod: s}
	ev.Policy = PolicyRef{Package: s, Revision: s}
	groups := ev.User.Groups
	normalize(ev, time.Now())
	if groups[1] != s {
		t.Fatalf("normalize edited the caller's groups slice")
	}
	data, err := seal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var back Event
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if h, err := ComputeHash(&back); err != nil || h != ev.Hash {
		t.Fatalf("%q: hash after decoding %s (%v), sealed %s\n%s", s, h, err, ev.Hash, data)
	}
}

// TestVerifierAcceptsLegacyHashes: events hashed before the hash left out
// its own member (over the event with "hash":"") still verify, counted,
// and a changed one still does not.
func TestVerifierAcceptsLegacyHashes(t *testing.T) {
	ev := sampleEvent()
	normalize(ev, time.Now())
	ev.Seq, ev.PrevHash = 1, ""
	ev.Hash = legacyHash(ev)
	v := NewVerifier()
	v.Add(ev)
	r := v.Reports()
	if len(r) != 1 || r[0].Err != nil || r[0].Legacy != 1 {
		t.Fatalf("legacy event: %+v", r)
	}
	bad := *ev
	bad.Reason = "changed"
	v2 := NewVerifier()
	v2.Add(&bad)
	if r := v2.Reports(); len(r) != 1 || r[0].Err == nil || r[0].Err.Kind != BreakAltered {
		t.Errorf("changed legacy event: %+v, want altered", r)
	}
}
