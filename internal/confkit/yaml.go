package confkit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}`)

// ExpandEnv replaces ${NAME} with lookup(NAME), and ${NAME:-default} with
// default when NAME is unset or empty. An unset variable without a default
// is reported as a problem at path (an empty secret is far more often a
// mistake than an intention) and expands to the empty string. "$${" escapes
// a literal "${".
func ExpandEnv(p *Problems, path, s string, lookup func(string) (string, bool)) string {
	if !strings.Contains(s, "${") {
		return s
	}
	const esc = "\x00dollar\x00"
	s = strings.ReplaceAll(s, "$${", esc)
	s = envRef.ReplaceAllStringFunc(s, func(m string) string {
		sub := envRef.FindStringSubmatch(m)
		name, def := sub[1], sub[2]
		v, ok := lookup(name)
		if def != "" {
			if !ok || v == "" {
				return def[2:]
			}
			return v
		}
		if !ok {
			p.Add(path, "environment variable %s is not set (set it, or write ${%s:-default})", name, name)
		}
		return v
	})
	return strings.ReplaceAll(s, esc, "${")
}

// DecodeStrict decodes a YAML document into out (a pointer to a struct),
// expanding ${ENV} in scalar values with lookup (os.LookupEnv when nil).
// Every unknown key and every value of the wrong type is recorded in p with
// its path; decoding goes on past them so that all problems are reported at
// once. It returns an error only when the document is not YAML at all.
func DecodeStrict(data []byte, out any, p *Problems, lookup func(string) (string, bool)) error {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return fmt.Errorf("config: not valid YAML: %w", err)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	root := doc.Content[0]
	expandNodes(p, "", root, lookup)
	walk(p, "", root, reflect.ValueOf(out).Elem())
	return nil
}

func expandNodes(p *Problems, path string, n *yaml.Node, lookup func(string) (string, bool)) {
	switch n.Kind {
	case yaml.ScalarNode:
		n.Value = ExpandEnv(p, path, n.Value, lookup)
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			expandNodes(p, Join(path, n.Content[i].Value), n.Content[i+1], lookup)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			expandNodes(p, Index(path, i), c, lookup)
		}
	}
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

// walk decodes n into v field by field so that each problem carries its path.
func walk(p *Problems, path string, n *yaml.Node, v reflect.Value) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Tag == "!!null" {
		return
	}
	t := v.Type()
	if reflect.PointerTo(t).Implements(unmarshalerType) || t.Kind() != reflect.Struct && t.Kind() != reflect.Slice {
		if err := n.Decode(v.Addr().Interface()); err != nil {
			p.Add(path, "%s", cleanYAMLError(err, t))
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			p.Add(path, "must be a mapping of keys (line %d)", n.Line)
			return
		}
		fields := yamlFields(t)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i].Value, n.Content[i+1]
			child := Join(path, key)
			if seen[key] {
				p.Add(child, "is set twice (line %d)", n.Content[i].Line)
				continue
			}
			seen[key] = true
			idx, ok := fields[key]
			if !ok {
				p.Add(child, "unknown key%s", suggest(key, fields))
				continue
			}
			walk(p, child, val, v.FieldByIndex(idx))
		}
	case reflect.Slice:
		if t.Elem().Kind() != reflect.Struct {
			if err := n.Decode(v.Addr().Interface()); err != nil {
				p.Add(path, "%s", cleanYAMLError(err, t))
			}
			return
		}
		if n.Kind != yaml.SequenceNode {
			p.Add(path, "must be a list (line %d)", n.Line)
			return
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, c := range n.Content {
			walk(p, Index(path, i), c, s.Index(i))
		}
		v.Set(s)
	}
}

func yamlFields(t reflect.Type) map[string][]int {
	m := map[string][]int{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") && f.Type.Kind() == reflect.Struct {
			for k, idx := range yamlFields(f.Type) {
				m[k] = append([]int{i}, idx...)
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = []int{i}
	}
	return m
}

func suggest(key string, fields map[string][]int) string {
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	best, bestD := "", 3
	for _, k := range names {
		if d := editDistance(strings.ToLower(key), k); d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return fmt.Sprintf(" (known keys: %s)", strings.Join(names, ", "))
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func cleanYAMLError(err error, t reflect.Type) string {
	msg := err.Error()
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = strings.Join(te.Errors, "; ")
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	switch t.String() {
	case "time.Duration":
		return msg + " (want a duration such as 500ms, 30s or 12h)"
	case "bool":
		return msg + " (want true or false)"
	}
	return msg
}
