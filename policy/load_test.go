package policy

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/portcullis/portcullis/internal/confkit"
)

const allowAll = "package t.a\n\nallow := true\n"

func TestLoadFilesAndData(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"routes/app.rego": `package t.app
import data.t.lib
default allow := false
allow if input.user.sub in data.teams.app.members
allow if lib.is_admin
reason := data.settings.motd
`,
		"routes/app_test.rego": "package t.app_test\n\nthis is not rego at all",
		"lib/lib.rego":         "package t.lib\n\nis_admin if \"admins\" in input.user.groups\n",
		"teams/app/data.json":  `{"members": ["alice"]}`,
		"data.yaml":            "settings:\n  motd: hello from yaml\n",
		".hidden/broken.rego":  "this is not rego",
		"#lock.rego":           "this is not rego",
		"notes/other.json":     "not json and ignored: only data.json and data.yaml are data",
	})
	s := mustLoad(t, dir, LoadOptions{})
	if got, want := s.Files(), []string{"data.yaml", "lib/lib.rego", "routes/app.rego", "teams/app/data.json"}; !slices.Equal(got, want) {
		t.Errorf("Files() = %v, want %v", got, want)
	}
	if got, want := s.Packages(), []string{"t.app", "t.lib"}; !slices.Equal(got, want) {
		t.Errorf("Packages() = %v, want %v", got, want)
	}
	if !strings.HasPrefix(s.Revision(), "sha256:") || len(s.Revision()) != len("sha256:")+64 {
		t.Errorf("Revision() = %q, want sha256:<64 hex>", s.Revision())
	}
	ctx := context.Background()
	for _, tt := range []struct {
		who   userSpec
		allow bool
	}{{alice, true}, {bob, true}, {userSpec{sub: "carol"}, false}} {
		d := s.Eval(ctx, "t.app", input(tt.who, "GET", "/"))
		if d.Allow != tt.allow || d.Reason != "hello from yaml" {
			t.Errorf("%s: got allow=%v reason=%q, want allow=%v reason %q", tt.who.sub, d.Allow, d.Reason, tt.allow, "hello from yaml")
		}
	}
}

func TestLoadCompileErrorsCarryFileLine(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"syntax", map[string]string{"a.rego": allowAll, "sub/b.rego": "package t.b\n\nallow if {\n  input.x ==\n"}, []string{"sub/b.rego:"}},
		{"unsafe variable", map[string]string{"c.rego": "package t.c\n\nallow if {\n\tx == 1\n}\n"}, []string{"c.rego:4", "var x is unsafe"}},
		{"undefined function", map[string]string{"d.rego": "package t.d\n\n\nallow if nope(1)\n"}, []string{"d.rego:4", "undefined function nope"}},
		{"data conflicts", map[string]string{"a.rego": allowAll, "x/data.json": `{"k": 1}`, "data.json": `{"x": {"k": 2}}`}, []string{"data key x.k"}},
		{"data not an object", map[string]string{"a.rego": allowAll, "data.json": `[1, 2]`}, []string{"data.json", "object"}},
		{"bad yaml", map[string]string{"a.rego": allowAll, "data.yaml": "a: [1, 2"}, []string{"data.yaml", "not valid JSON or YAML"}},
		{"v0 syntax", map[string]string{"old.rego": "package t.old\n\nallow { true }\n"}, []string{"old.rego:3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			_, err := Load(context.Background(), dir, LoadOptions{})
			var ce *CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a *CompileError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestLoadEmptyOrMissingDir(t *testing.T) {
	_, err := Load(context.Background(), t.TempDir(), LoadOptions{})
	if !errors.Is(err, ErrNoPolicies) {
		t.Errorf("empty dir: got %v, want ErrNoPolicies", err)
	}
	_, err = Load(context.Background(), filepath.Join(t.TempDir(), "nope"), LoadOptions{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing dir: got %v, want os.ErrNotExist", err)
	}
}

func TestRevisionFollowsContent(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.rego": allowAll, "a_test.rego": "package t.a_test\n\ntest_x if true\n"})
	r1 := mustLoad(t, dir, LoadOptions{}).Revision()
	if r := mustLoad(t, dir, LoadOptions{}).Revision(); r != r1 {
		t.Errorf("same files: revision %s then %s", r1, r)
	}
	writeFiles(t, dir, map[string]string{"a_test.rego": "package t.a_test\n\ntest_y if true\n"})
	if r := mustLoad(t, dir, LoadOptions{}).Revision(); r != r1 {
		t.Errorf("a test file changed the revision: %s then %s", r1, r)
	}
	writeFiles(t, dir, map[string]string{"a.rego": allowAll + "\n"})
	r2 := mustLoad(t, dir, LoadOptions{}).Revision()
	if r2 == r1 {
		t.Errorf("content changed but revision stayed %s", r1)
	}
	// Same content under another name is another revision.
	if err := os.Rename(filepath.Join(dir, "a.rego"), filepath.Join(dir, "b.rego")); err != nil {
		t.Fatal(err)
	}
	if r := mustLoad(t, dir, LoadOptions{}).Revision(); r == r2 {
		t.Errorf("file renamed but revision stayed %s", r)
	}
}

func TestPrepareAndValidatePackage(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.rego": allowAll, "lib.rego": "package t.lib\n\nx := 1\n"})
	s := mustLoad(t, dir, LoadOptions{})
	err := s.Prepare(context.Background(), []string{"t.a", "data.t.a", "t.b", "t.c"})
	var me *MissingPackagesError
	if !errors.As(err, &me) || !slices.Equal(me.Packages, []string{"t.b", "t.c"}) || !errors.Is(err, ErrPackageNotFound) {
		t.Errorf("Prepare: got %v, want t.b and t.c missing", err)
	}
	if err := s.Prepare(context.Background(), []string{"t.lib"}); !errors.Is(err, ErrNoAllowRule) {
		t.Errorf("Prepare(t.lib): got %v, want ErrNoAllowRule", err)
	}
	if err := s.Prepare(context.Background(), []string{"t.a"}); err != nil {
		t.Errorf("Prepare(t.a): %v", err)
	}

	var p confkit.Problems
	s.ValidatePackage(&p, "routes[0].policy", "t.a")
	s.ValidatePackage(&p, "routes[1].policy", "t.x")
	s.ValidatePackage(&p, "routes[2].policy", "t.lib")
	s.ValidatePackage(&p, "routes[3].policy", "t..bad")
	got := p.List()
	if len(got) != 3 {
		t.Fatalf("got problems %v, want 3", got)
	}
	for i, want := range []string{"routes[1].policy: package t.x not found in policy.dir", "routes[2].policy: package t.lib has no allow rule", "routes[3].policy: "} {
		if !strings.HasPrefix(got[i].String(), want) {
			t.Errorf("problem %d = %q, want prefix %q", i, got[i], want)
		}
	}
}

func TestConfig(t *testing.T) {
	var c Config
	c.SetDefaults()
	if c.Dir != "./policies" || c.DecisionTimeout != 50*time.Millisecond {
		t.Errorf("defaults: got %+v, want ./policies and 50ms", c)
	}
	tests := []struct {
		name string
		cfg  Config
		want []string
	}{
		{"defaults", Config{Dir: "./policies", DecisionTimeout: 50 * time.Millisecond}, nil},
		{"empty dir", Config{Dir: " ", DecisionTimeout: time.Second}, []string{"policy.dir"}},
		{"negative timeout", Config{Dir: "p", DecisionTimeout: -time.Second}, []string{"policy.decision_timeout"}},
		{"huge timeout", Config{Dir: "p", DecisionTimeout: time.Minute}, []string{"policy.decision_timeout"}},
		{"missing dir is not Validate's business", Config{Dir: "/does/not/exist", DecisionTimeout: time.Second}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p confkit.Problems
			tt.cfg.Validate(&p, "policy")
			var got []string
			for _, pr := range p.List() {
				got = append(got, pr.Path)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("problem paths %v, want %v (%v)", got, tt.want, p.List())
			}
		})
	}
	var p confkit.Problems
	ValidatePackage(&p, "routes[0].policy", "portcullis.routes.admin")
	ValidatePackage(&p, "routes[1].policy", "")
	ValidatePackage(&p, "routes[2].policy", "portcullis/routes")
	if p.Len() != 2 {
		t.Errorf("ValidatePackage: got %v, want problems for routes[1] and routes[2]", p.List())
	}
}

// TestInputConversionMatchesJSON checks that the direct AST conversion gives
// exactly the document the JSON form describes (SPEC §5).
func TestInputConversionMatchesJSON(t *testing.T) {
	ins := map[string]*Input{
		"full":      input(userSpec{sub: "bob", groups: []string{"a", "b"}, amr: []any{"pwd", "otp"}}, "POST", "/x"),
		"anonymous": {Request: RequestInput{Method: "GET", Path: "/", Time: thursdayMorning}},
	}
	ins["full"].User.Claims["nested"] = map[string]any{"n": json.Number("1.5"), "list": []any{true, nil, "s"}}
	ins["full"].Request.Headers["x-multi"] = []string{"1", "2"}
	keys := newInputKeys()
	for name, in := range ins {
		t.Run(name, func(t *testing.T) {
			b, err := json.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			var doc any
			if err := util.UnmarshalJSON(b, &doc); err != nil {
				t.Fatal(err)
			}
			want, err := ast.InterfaceToValue(doc)
			if err != nil {
				t.Fatal(err)
			}
			got, err := keys.value(in)
			if err != nil {
				t.Fatal(err)
			}
			if got.Compare(want) != 0 {
				t.Errorf("AST input differs from JSON:\n got %s\nwant %s", got, want)
			}
			var back Input
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			if !back.Request.Time.Equal(in.Request.Time) {
				t.Errorf("time round trip: got %s, want %s", back.Request.Time, in.Request.Time)
			}
		})
	}
	b, _ := json.Marshal(ins["anonymous"])
	for _, want := range []string{`"query":{}`, `"headers":{}`, `"groups":[]`, `"claims":{}`, `"time":"2026-11-26T09:00:00Z"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON %s lacks %s", b, want)
		}
	}
}
