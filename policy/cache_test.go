package policy

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/portcullis/portcullis/internal/confkit"
)

// TestCachePlan: a package's decisions are remembered only when nothing
// it reaches, however deep, asks the clock, the network or a random
// source, and the key is exactly the input fields it reaches.
func TestCachePlan(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"lib/deep.rego": `package lib.deep

fetch(u) := http.send({"method": "GET", "url": u}).status_code

now_hour := time.clock([time.now_ns(), "UTC"])[0]

valid(tok) if io.jwt.decode_verify(tok, {"secret": "x"})[0]

member(g) if g in input.user.groups
`,
		"lib/mid.rego": `package lib.mid

import data.lib.deep

ok if deep.fetch("http://127.0.0.1:1/") == 200
`,
		"routes/pure.rego": `package routes.pure

import data.lib.deep

default allow := false

allow if {
	deep.member("eng")
	input.request.method == "GET"
}

reason := sprintf("hello %s", [input.user.sub])
`,
		"routes/network.rego": `package routes.network

import data.lib.mid

default allow := false

allow if mid.ok
`,
		"routes/clock.rego": `package routes.clock

import data.lib.deep

allow if deep.now_hour < 25
`,
		"routes/token.rego": `package routes.token

import data.lib.deep

allow if deep.valid(input.request.headers["x-token"][0])
`,
		"routes/reqtime.rego": `package routes.reqtime

allow if startswith(input.request.time, "2026")
`,
		"routes/reqid.rego": `package routes.reqid

status := 404 if input.request.id == ""

allow := true
`,
		"routes/whole.rego": `package routes.whole

allow if {
	u := input.user
	u.sub == "alice"
}
`,
		"routes/rand.rego": `package routes.rand

allow if rand.intn("x", 2) == 0
`,
		// The decision set from a parent package (reviewer's HIGH finding:
		// this rule was left out of the key, and bob's allow served alice).
		"routes/parent.rego": `package routes

fromparent.allow if "admins" in input.user.groups
`,
		"routes/fromparent.rego": `package routes.fromparent

default allow := false

reason := "fallback"
`,
		// Builtins put in place of a function with ` + "`with`" + `.
		"routes/withrand.rego": `package routes.withrand

h(_, _) := 1

allow if {
	x := h("k", 2) with h as rand.intn
	x == 0
}
`,
		"routes/withsend.rego": `package routes.withsend

g(_) := {"status_code": 200}

allow if {
	r := g({"method": "GET", "url": "http://127.0.0.1:1/"}) with g as http.send
	r.status_code == 200
}
`,
		"routes/withfn.rego": `package routes.withfn

import data.lib.deep

f := 0

allow if {
	x := f with f as deep.now_hour
	x < 25
}
`,
	})
	s := mustLoad(t, dir, LoadOptions{DecisionCache: 100})
	for _, tc := range []struct {
		pkg string
		use fieldMask
		why string
	}{
		{pkg: "routes.pure", use: fUserGroups | fRequestMethod | fUserSub},
		{pkg: "routes.whole", use: userFields},
		{pkg: "routes.network", why: "calls http.send"},
		{pkg: "routes.clock", why: "calls time.now_ns"},
		{pkg: "routes.token", why: "calls io.jwt.decode_verify"},
		{pkg: "routes.rand", why: "calls rand.intn"},
		{pkg: "routes.fromparent", use: fUserGroups},
		{pkg: "routes.withrand", why: "calls rand.intn"},
		{pkg: "routes.withsend", why: "calls http.send"},
		{pkg: "routes.withfn", why: "calls time.now_ns"},
		{pkg: "routes.reqtime", why: "reads input.request.time"},
		{pkg: "routes.reqid", why: "reads input.request.id"},
	} {
		t.Run(tc.pkg, func(t *testing.T) {
			ref, err := packageRef(tc.pkg)
			if err != nil {
				t.Fatal(err)
			}
			p := planCache(s.compiler, ref)
			if tc.why == "" {
				if p.why != "" || p.use != tc.use {
					t.Fatalf("plan = use %b, why %q; want use %b and cacheable", p.use, p.why, tc.use)
				}
			} else if !strings.HasPrefix(p.why, tc.why) {
				t.Fatalf("plan.why = %q, want it to start with %q", p.why, tc.why)
			}
			q, err := s.prepared(context.Background(), tc.pkg)
			if err != nil {
				t.Fatal(err)
			}
			if (q.cache != nil) != (tc.why == "") {
				t.Fatalf("query cache = %v, uncached %q; want cache only for cacheable packages", q.cache != nil, q.uncached)
			}
			info, err := s.CacheInfo(context.Background(), tc.pkg)
			wantInfo := "evaluated on every request: " + tc.why
			if tc.why == "" {
				wantInfo = "remembered per " + strings.Join(tc.use.names(), ", ")
			}
			if err != nil || !strings.HasPrefix(info, wantInfo) {
				t.Fatalf("CacheInfo = %q, %v; want %q", info, err, wantInfo)
			}
		})
	}
}

// TestDecisionCache: a remembered decision is the one the policy gives for
// that input; a change in any field the package reads is decided afresh,
// a change in one it does not read is not; errors are never remembered;
// a reload starts from an empty cache.
func TestDecisionCache(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"app.rego": `package app

default allow := false

allow if {
	"eng" in input.user.groups
	input.request.method == "GET"
	not startswith(input.request.path, "/admin")
}

reason := sprintf("%s on %s", [input.user.sub, input.request.path])

status := 404 if startswith(input.request.path, "/missing")

headers["X-Team"] := input.user.claims.team if allow
`})
	e, err := NewEngine(Config{Dir: dir, DecisionTimeout: testTimeout}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	base := func() *Input {
		in := input(userSpec{sub: "carol", groups: []string{"eng"}}, "GET", "/docs")
		in.User.Claims["team"] = "blue"
		return in
	}
	want := func(d Decision, allow, cached bool, reason string) {
		t.Helper()
		if d.Allow != allow || d.Cached != cached || d.Reason != reason {
			t.Fatalf("decision = allow %v cached %v reason %q; want allow %v cached %v reason %q", d.Allow, d.Cached, d.Reason, allow, cached, reason)
		}
	}

	first := e.Eval(ctx, "app", base())
	want(first, true, false, "carol on /docs")
	if first.Headers["X-Team"] != "blue" {
		// headers["X-Team"] := ... has a reference head, which an exact
		// rule lookup misses.
		t.Fatalf("headers = %v, want X-Team: blue from a rule with a reference head", first.Headers)
	}
	again := e.Eval(ctx, "app", base())
	want(again, true, true, "carol on /docs")
	if again.Headers["X-Team"] != "blue" || again.Revision != first.Revision || again.Package != "app" || again.Outcome != OutcomeAllow {
		t.Fatalf("remembered decision differs from the evaluated one: %+v vs %+v", again, first)
	}

	// Fields the package does not read: the same decision, from the cache.
	in := base()
	in.Request.ID = "another-request"
	in.Request.Headers = map[string][]string{"user-agent": {"curl/8"}}
	in.Request.RemoteAddr = "198.51.100.7"
	in.Request.Time = in.Request.Time.Add(time.Hour)
	want(e.Eval(ctx, "app", in), true, true, "carol on /docs")

	// Every field it reads: decided afresh, and right.
	for name, change := range map[string]func(*Input){
		"groups":  func(in *Input) { in.User.Groups = []string{"sales"} },
		"groups2": func(in *Input) { in.User.Groups = []string{"eng", "x"} },
		"method":  func(in *Input) { in.Request.Method = "POST" },
		"path":    func(in *Input) { in.Request.Path = "/admin" },
		"sub":     func(in *Input) { in.User.Sub = "dave" },
		"claims":  func(in *Input) { in.User.Claims["team"] = "red" },
	} {
		in := base()
		change(in)
		d := e.Eval(ctx, "app", in)
		if d.Cached {
			t.Fatalf("%s changed, but the decision came from the cache: %+v", name, d)
		}
		fresh := mustLoad(t, dir, LoadOptions{}).Eval(ctx, "app", in)
		if d.Allow != fresh.Allow || d.Reason != fresh.Reason || d.Status != fresh.Status || fmt.Sprint(d.Headers) != fmt.Sprint(fresh.Headers) {
			t.Fatalf("%s: decision %+v differs from an uncached evaluation %+v", name, d, fresh)
		}
		if again := e.Eval(ctx, "app", in); !again.Cached || again.Allow != d.Allow || again.Reason != d.Reason {
			t.Fatalf("%s: repeated decision %+v, want the first one from the cache", name, again)
		}
	}
	// Denials are remembered with their status.
	in = base()
	in.Request.Path = "/missing"
	in.Request.Method = "DELETE"
	if d := e.Eval(ctx, "app", in); d.Allow || d.Status != 404 || d.Cached {
		t.Fatalf("first denial = %+v", d)
	}
	if d := e.Eval(ctx, "app", in); d.Allow || d.Status != 404 || !d.Cached || d.Outcome != OutcomeDeny {
		t.Fatalf("remembered denial = %+v", d)
	}

	// A key past maxCacheKey bytes (a very long path) is never kept: a
	// client cannot fill memory with long paths.
	in = base()
	in.Request.Path = "/" + strings.Repeat("a", maxCacheKey)
	for range 2 {
		if d := e.Eval(ctx, "app", in); d.Cached || !d.Allow {
			t.Fatalf("long-path decision %+v, want allowed and never from the cache", d)
		}
	}

	// A reload with other rules starts empty.
	writeFiles(t, dir, map[string]string{"app.rego": `package app

allow := false

reason := "closed"
`})
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	want(e.Eval(ctx, "app", base()), false, false, "closed")
	want(e.Eval(ctx, "app", base()), false, true, "closed")
}

// TestDecisionCacheNeverKeepsErrors: a decision that timed out is an error
// every time it is asked, and never turns into a remembered answer.
func TestDecisionCacheNeverKeepsErrors(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"slow.rego": `package slow

allow if {
	count([x | some x in numbers.range(1, 2000000); x % 7 == 0]) > 0
	input.request.method == "GET"
}
`})
	s := mustLoad(t, dir, LoadOptions{DecisionTimeout: time.Millisecond, DecisionCache: 10})
	in := input(alice, "GET", "/")
	for i := range 3 {
		d := s.Eval(context.Background(), "slow", in)
		if d.Allow || d.Outcome != OutcomeError || d.Cached {
			t.Fatalf("attempt %d: %+v, want an uncached error", i, d)
		}
	}
}

// TestCacheKeyInjective: inputs that differ in a field the key covers
// never share a key, however their values could be concatenated.
func TestCacheKeyInjective(t *testing.T) {
	mk := func(f func(*Input)) *Input {
		in := &Input{}
		f(in)
		return in
	}
	pairs := [][2]*Input{
		{mk(func(in *Input) { in.Request.Method, in.Request.Path = "GE", "T/x" }), mk(func(in *Input) { in.Request.Method, in.Request.Path = "GET", "/x" })},
		{mk(func(in *Input) { in.User.Groups = []string{"ab"} }), mk(func(in *Input) { in.User.Groups = []string{"a", "b"} })},
		{mk(func(in *Input) { in.User.Groups = []string{"a", ""} }), mk(func(in *Input) { in.User.Groups = []string{"a"} })},
		{mk(func(in *Input) { in.Request.Headers = map[string][]string{"a": {"b", "c"}} }), mk(func(in *Input) { in.Request.Headers = map[string][]string{"a": {"b"}, "c": {}} })},
		{mk(func(in *Input) { in.Request.Query = map[string][]string{"a": {"1"}} }), mk(func(in *Input) { in.Request.Query = map[string][]string{"a": {"2"}} })},
		{mk(func(in *Input) { in.User.Authenticated = true }), mk(func(in *Input) {})},
		{mk(func(in *Input) { in.User.Claims = map[string]any{"amr": []any{"otp"}} }), mk(func(in *Input) { in.User.Claims = map[string]any{"amr": []any{"pwd"}} })},
		{mk(func(in *Input) { in.User.Sub, in.User.Email = "a", "" }), mk(func(in *Input) { in.User.Sub, in.User.Email = "", "a" })},
		{mk(func(in *Input) { in.Route.Name = "x" }), mk(func(in *Input) { in.Route.Host = "x" })},
	}
	for i, p := range pairs {
		a, err := appendKey(nil, p[0], allFields)
		if err != nil {
			t.Fatal(err)
		}
		b, err := appendKey(nil, p[1], allFields)
		if err != nil {
			t.Fatal(err)
		}
		if string(a) == string(b) {
			t.Errorf("pair %d: different inputs share the key %q", i, a)
		}
	}
	// Map order does not matter.
	h1 := &Input{Request: RequestInput{Headers: map[string][]string{"a": {"1"}, "b": {"2"}, "c": {"3"}}}}
	h2 := &Input{Request: RequestInput{Headers: map[string][]string{"c": {"3"}, "b": {"2"}, "a": {"1"}}}}
	k1, _ := appendKey(nil, h1, allFields)
	k2, _ := appendKey(nil, h2, allFields)
	if string(k1) != string(k2) {
		t.Error("equal header maps give different keys")
	}
}

func TestDecisionCacheConfig(t *testing.T) {
	neg := -1
	var p confkit.Problems
	c := Config{Dir: "p", DecisionCache: &neg}
	c.SetDefaults()
	c.Validate(&p, "policy")
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "policy.decision_cache") {
		t.Fatalf("negative decision_cache: %v, want a problem at policy.decision_cache", err)
	}
	var unset Config
	unset.SetDefaults()
	if unset.DecisionCache == nil || *unset.DecisionCache != DefaultDecisionCache {
		t.Fatalf("default decision_cache = %v", unset.DecisionCache)
	}
}
