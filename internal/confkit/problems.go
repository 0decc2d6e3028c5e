// Package confkit holds the small pieces every package's configuration shares:
// a list of problems that each carry the config path they belong to, typed
// values that YAML does not know (byte sizes), and strict decoding helpers.
//
// Validation in Portcullis collects every problem instead of stopping at the
// first, so that `portcullis check` can list them all at once, each with its
// path (`routes[2].upstream: ...`) and a hint of the fix.
package confkit

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong with a configuration, located by its path in
// the YAML document (for example `routes[2].upstream`).
type Problem struct {
	Path    string
	Message string
}

func (p Problem) String() string {
	if p.Path == "" {
		return p.Message
	}
	return p.Path + ": " + p.Message
}

// Problems collects configuration problems. The zero value is ready to use.
// It is not safe for concurrent use.
type Problems struct {
	list []Problem
}

// Add records a problem at path; msg is formatted with args like fmt.Sprintf.
func (p *Problems) Add(path, msg string, args ...any) {
	p.list = append(p.list, Problem{Path: path, Message: fmt.Sprintf(msg, args...)})
}

// List returns the problems in the order they were added.
func (p *Problems) List() []Problem { return p.list }

// Len reports how many problems were recorded.
func (p *Problems) Len() int { return len(p.list) }

// Err returns nil when no problem was recorded, otherwise an *Error holding
// them all.
func (p *Problems) Err() error {
	if len(p.list) == 0 {
		return nil
	}
	return &Error{Problems: append([]Problem(nil), p.list...)}
}

// Error is a configuration that failed validation. Callers inspect it with
// errors.As to print every problem on its own line.
type Error struct {
	Problems []Problem
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, pr := range e.Problems {
		lines[i] = pr.String()
	}
	return fmt.Sprintf("config: %d problem(s):\n  %s", len(e.Problems), strings.Join(lines, "\n  "))
}

// Join builds a child path: Join("routes[2]", "upstream") == "routes[2].upstream".
func Join(parent, child string) string {
	if parent == "" {
		return child
	}
	return parent + "." + child
}

// Index builds an element path: Index("routes", 2) == "routes[2]".
func Index(parent string, i int) string {
	return fmt.Sprintf("%s[%d]", parent, i)
}
