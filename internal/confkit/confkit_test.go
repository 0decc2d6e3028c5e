package confkit

import (
	"strings"
	"testing"
	"time"
)

type inner struct {
	URL     string        `yaml:"url"`
	Timeout time.Duration `yaml:"timeout"`
	Size    ByteSize      `yaml:"size"`
}

type doc struct {
	Name  string   `yaml:"name"`
	Inner inner    `yaml:"inner"`
	Items []inner  `yaml:"items"`
	Tags  []string `yaml:"tags"`
	On    bool     `yaml:"on"`
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestDecodeStrictReportsEveryProblemWithItsPath(t *testing.T) {
	src := `
name: ${NAME}
inner:
  url: ${MISSING}
  timout: 5s
items:
  - url: a
    timeout: soon
  - url: b
    size: 2GiB
  - urll: c
tags: [a, b]
on: maybe
`
	var d doc
	var p Problems
	if err := DecodeStrict([]byte(src), &d, &p, env(map[string]string{"NAME": "portcullis"})); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"inner.url: environment variable MISSING is not set",
		`inner.timout: unknown key (did you mean "timeout"?)`,
		"items[0].timeout: ",
		`items[2].urll: unknown key (did you mean "url"?)`,
		"on: ",
	}
	got := p.List()
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(got), len(want), got)
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i].String(), w) {
			t.Errorf("problem %d = %q, want prefix %q", i, got[i], w)
		}
	}
	if d.Name != "portcullis" || d.Items[1].Size != 2<<30 || len(d.Tags) != 2 {
		t.Errorf("decoded values wrong: %+v", d)
	}
}

func TestExpandEnvDefaults(t *testing.T) {
	var p Problems
	lookup := env(map[string]string{"SET": "x", "EMPTY": ""})
	for in, want := range map[string]string{
		"${SET}":      "x",
		"${SET:-d}":   "x",
		"${EMPTY:-d}": "d",
		"${UNSET:-d}": "d",
		"a-${SET}-b":  "a-x-b",
		"$${SET}":     "${SET}",
		"no refs":     "no refs",
		"${UNSET:-}":  "",
	} {
		if got := ExpandEnv(&p, "k", in, lookup); got != want {
			t.Errorf("ExpandEnv(%q) = %q, want %q", in, got, want)
		}
	}
	if p.Len() != 0 {
		t.Errorf("unexpected problems: %v", p.List())
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"1GiB": 1 << 30, "512MiB": 512 << 20, "10KB": 10000, "42": 42, "1.5KiB": 1536} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "lots", "-1", "1XB"} {
		if _, err := ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) succeeded, want error", bad)
		}
	}
}
