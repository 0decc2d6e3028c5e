package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// checkSchema validates v (decoded with UseNumber) against the subset of
// JSON Schema 2020-12 that schema/event.schema.json uses: type, const, enum,
// pattern, minimum, maximum, properties, required, additionalProperties:
// false, items. It returns every violation with its JSON path.
func checkSchema(schema map[string]any, v any, path string) []string {
	var errs []string
	add := func(format string, args ...any) { errs = append(errs, path+": "+fmt.Sprintf(format, args...)) }
	if c, ok := schema["const"]; ok && fmt.Sprint(c) != fmt.Sprint(v) {
		add("want const %v, got %v", c, v)
	}
	if e, ok := schema["enum"].([]any); ok {
		found := false
		for _, x := range e {
			if fmt.Sprint(x) == fmt.Sprint(v) {
				found = true
			}
		}
		if !found {
			add("%v not in enum %v", v, e)
		}
	}
	switch schema["type"] {
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			add("want object, got %T", v)
			return errs
		}
		props, _ := schema["properties"].(map[string]any)
		for _, r := range schema["required"].([]any) {
			if _, ok := obj[r.(string)]; !ok {
				add("required field %q missing", r)
			}
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			sub, ok := props[k].(map[string]any)
			if !ok {
				if schema["additionalProperties"] == false {
					add("field %q is not in the schema", k)
				}
				continue
			}
			errs = append(errs, checkSchema(sub, obj[k], path+"."+k)...)
		}
	case "array":
		arr, ok := v.([]any)
		if !ok {
			add("want array, got %T", v)
			return errs
		}
		if items, ok := schema["items"].(map[string]any); ok {
			for i, x := range arr {
				errs = append(errs, checkSchema(items, x, fmt.Sprintf("%s[%d]", path, i))...)
			}
		}
	case "string":
		s, ok := v.(string)
		if !ok {
			add("want string, got %T", v)
			return errs
		}
		if p, ok := schema["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(s) {
			add("%q does not match %s", s, p)
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			add("want %s, got %T", schema["type"], v)
			return errs
		}
		f, _ := n.Float64()
		if schema["type"] == "integer" && (strings.ContainsAny(n.String(), ".eE") || f != math.Trunc(f)) {
			add("want integer, got %s", n)
		}
		if m, ok := schema["minimum"].(json.Number); ok {
			if mf, _ := m.Float64(); f < mf {
				add("%s below minimum %s", n, m)
			}
		}
		if m, ok := schema["maximum"].(json.Number); ok {
			if mf, _ := m.Float64(); f > mf {
				add("%s above maximum %s", n, m)
			}
		}
	}
	return errs
}

func decodeNumbers(t *testing.T, b []byte) any {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func loadSchema(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile("schema/event.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	return decodeNumbers(t, b).(map[string]any)
}

func TestPipelineEventsMatchSchema(t *testing.T) {
	schema := loadSchema(t)
	env := newEnv(t, ModeDurable)
	sink, err := NewSink(context.Background(), env.cfg, SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, stop := env.open(t, sink, true)
	events := []*Event{
		newTestEvent(1),
		{Decision: DecisionUnauthenticated, Reason: "sign-in required", Request: Request{Method: "GET", Path: "/"}, Response: Response{Status: 302}},
		{Decision: DecisionDeny, Reason: "no route", Response: Response{Status: 404}, DurationMS: Durations{Total: 0.0125}},
		{Decision: DecisionError, Reason: "policy timeout", Route: "admin", Policy: PolicyRef{Package: "portcullis.routes.admin", Revision: "sha256:00"}, Response: Response{Status: 403}},
	}
	for _, ev := range events {
		if err := p.Record(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	stop()

	f, err := os.Open(env.cfg.File.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		n++
		for _, e := range checkSchema(schema, decodeNumbers(t, sc.Bytes()), "$") {
			t.Errorf("line %d: %s", n, e)
		}
	}
	if n != len(events) {
		t.Errorf("file holds %d events, want %d", n, len(events))
	}
}

func TestSchemaCheckRejects(t *testing.T) {
	schema := loadSchema(t)
	ev := sampleEvent()
	normalize(ev, ev.Time)
	good, _ := seal(ev)
	if errs := checkSchema(schema, decodeNumbers(t, good), "$"); len(errs) != 0 {
		t.Fatalf("a sealed event fails the schema: %v", errs)
	}
	tests := map[string]func(map[string]any){
		"extra field":     func(m map[string]any) { m["query"] = "a=b" },
		"missing field":   func(m map[string]any) { delete(m, "prev_hash") },
		"bad decision":    func(m map[string]any) { m["decision"] = "maybe" },
		"nested missing":  func(m map[string]any) { delete(m["user"].(map[string]any), "groups") },
		"path with query": func(m map[string]any) { m["request"].(map[string]any)["path"] = "/x?a=b" },
		"string seq":      func(m map[string]any) { m["seq"] = "7" },
	}
	for name, edit := range tests {
		t.Run(name, func(t *testing.T) {
			v := decodeNumbers(t, good).(map[string]any)
			edit(v)
			if errs := checkSchema(schema, v, "$"); len(errs) == 0 {
				t.Error("schema check accepted a broken event")
			}
		})
	}
}
