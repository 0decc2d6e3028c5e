package audit

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// trickyStrings are the cases where a hand-written JSON encoder tends to
// differ from encoding/json.
var trickyStrings = []string{
	"", "plain", `quote " and backslash \`, "<script>&amp;</script>",
	"tab\tnewline\nreturn\rbackspace\bformfeed\f", "\x00\x01\x1f\x7f",
	"é日本語🙂", "line\u2028para\u2029", "bad utf8 \xff\xfe end", "\xc3", "\xe2\x80",
	"\xed\xa0\x80 surrogate", "\uFFFD replacement", strings.Repeat("ab<", 50),
}

var trickyFloats = []float64{
	0, 1, -1, 0.02, 4.2, 1e-6, 1e-7, 9.99e-7, 1.5e-9, 1e20, 1e21, 1.7976931348623157e308,
	5e-324, -0.000001, 123456789.123456789, math.Copysign(0, -1), 0.1 + 0.2,
}

func checkEncoding(t *testing.T, ev *Event) {
	t.Helper()
	body, err := encodeBody(ev)
	if err != nil {
		t.Fatalf("encodeBody: %v", err)
	}
	full, err := json.Marshal(ev)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	at := bytes.Index(full, []byte(`,"request_id":`))
	if at < 0 {
		t.Fatalf("no request_id in %s", full)
	}
	if want := full[at+1:]; !bytes.Equal(body, want) {
		t.Errorf("encodeBody differs from encoding/json:\n got %s\nwant %s", body, want)
	}
}

func TestEncodeBodyMatchesJSON(t *testing.T) {
	for _, s := range trickyStrings {
		ev := sampleEvent()
		ev.RequestID, ev.Reason, ev.Request.Path, ev.Request.UserAgent = s, s, "/"+s, s
		ev.User.Groups = []string{s, "x"}
		checkEncoding(t, ev)
	}
	for _, f := range trickyFloats {
		ev := sampleEvent()
		ev.DurationMS = Durations{Authn: f, Policy: -f, Upstream: f / 3, Total: f * 0.5}
		checkEncoding(t, ev)
	}
	for _, groups := range [][]string{nil, {}, {"a"}, {"a", "b", "c"}} {
		ev := sampleEvent()
		ev.User.Groups = groups
		checkEncoding(t, ev)
	}
	ev := sampleEvent()
	ev.Response.Status = -12
	checkEncoding(t, ev)

	// Random strings and numbers.
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []rune{'a', 'Z', '0', ' ', '"', '\\', '<', '>', '&', '\n', '\x00', '\x1f', '\x7f', 'é', '日', '\u2028', '\u2029', '🙂', utf8RuneError}
	randString := func() string {
		var b []byte
		for range r.IntN(12) {
			if r.IntN(8) == 0 {
				b = append(b, byte(r.IntN(256))) // any byte, often invalid UTF-8
				continue
			}
			b = append(b, string(alphabet[r.IntN(len(alphabet))])...)
		}
		return string(b)
	}
	randFloat := func() float64 {
		switch r.IntN(3) {
		case 0:
			return r.Float64() * math.Pow(10, float64(r.IntN(50)-25))
		case 1:
			return float64(r.IntN(100000)) / 1000
		}
		return math.Float64frombits(r.Uint64()&^(0x7ff<<52) | uint64(r.IntN(0x7ff))<<52) // finite
	}
	for range 2000 {
		ev := &Event{
			RequestID: randString(), Decision: randString(), Reason: randString(), Route: randString(),
			Policy:     PolicyRef{Package: randString(), Revision: randString()},
			User:       User{Sub: randString(), Email: randString(), Groups: []string{randString(), randString()}, Provider: randString(), AuthMethod: randString()},
			Request:    Request{Method: randString(), Host: randString(), Path: randString(), RemoteAddr: randString(), UserAgent: randString()},
			Response:   Response{Status: r.IntN(1000) - 100},
			DurationMS: Durations{Authn: randFloat(), Policy: randFloat(), Upstream: -randFloat(), Total: randFloat()},
		}
		checkEncoding(t, ev)
	}
}

const utf8RuneError = '\uFFFD'

// TestAppendMillisMatchesJSON checks the fast path for whole microseconds
// against encoding/json: every n/1000 up to 2,000 ms, random ones up to
// its bound, and the values around the bound and the non-multiples it
// must leave to strconv.
func TestAppendMillisMatchesJSON(t *testing.T) {
	check := func(f float64) {
		t.Helper()
		want, err := json.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendJSONFloat(nil, f)
		if err != nil || string(got) != string(want) {
			t.Fatalf("appendJSONFloat(%v) = %q, %v; encoding/json writes %q", f, got, err, want)
		}
	}
	for n := range 2_000_000 {
		check(float64(n) / 1000)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 1_000_000 {
		check(float64(r.Int64N(1e12)) / 1000)
	}
	for _, f := range []float64{1e9, 1e9 - 0.001, 999999999.999, 1e9 + 0.001, 0.0005, 0.0015, 1.0001, 4.1, 4.2,
		0.1 + 0.2, 1e-6, math.Copysign(0, -1), -0.001, math.Nextafter(0.001, 1), math.Nextafter(4.2, 0)} {
		check(f)
	}
	if _, ok := appendMillis(nil, math.Nextafter(4.2, 0)); ok {
		t.Error("appendMillis took a double that is not n/1000")
	}
}

func TestEncodeBodyRejectsNaN(t *testing.T) {
	for _, f := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		ev := sampleEvent()
		ev.DurationMS.Upstream = f
		if _, err := encodeBody(ev); err == nil {
			t.Errorf("duration %v encoded; json.Marshal refuses it", f)
		}
	}
}

// FuzzEncodeBody compares the hand-written encoder with encoding/json:
//
//	go test ./audit -run '^$' -fuzz FuzzEncodeBody -fuzztime 1m
func FuzzEncodeBody(f *testing.F) {
	for i, s := range trickyStrings {
		f.Add(s, trickyFloats[i%len(trickyFloats)])
	}
	f.Fuzz(func(t *testing.T, s string, d float64) {
		if math.IsNaN(d) || math.IsInf(d, 0) {
			return
		}
		ev := sampleEvent()
		ev.Reason, ev.User.Email, ev.Request.Path = s, s, s
		ev.User.Groups = []string{s}
		ev.DurationMS.Total = d
		checkEncoding(t, ev)
	})
}

func TestValidInstanceMatchesPattern(t *testing.T) {
	for _, id := range []string{"", "a", "portcullis-7f9c", "A.b_c-9", strings.Repeat("x", 64), strings.Repeat("x", 65),
		"with space", "ü", "a/b", "a\n", "-", ".."} {
		if got, want := validInstance(id), instancePattern.MatchString(id); got != want {
			t.Errorf("validInstance(%q) = %v, pattern says %v", id, got, want)
		}
	}
}

func BenchmarkEncodeBody(b *testing.B) {
	ev := sampleEvent()
	normalize(ev, time.Now())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := encodeBody(ev); err != nil {
			b.Fatal(err)
		}
	}
}
