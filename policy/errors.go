package policy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Errors callers may test for with errors.Is.
var (
	// ErrPackageNotFound: a route names a package no module declares.
	ErrPackageNotFound = errors.New("package not found")
	// ErrNoAllowRule: a route's package defines no allow rule.
	ErrNoAllowRule = errors.New("no allow rule")
	// ErrNoPolicies: the policy directory holds no .rego file to serve.
	ErrNoPolicies = errors.New("no policies")
	// ErrTimeout: an evaluation ran past decision_timeout.
	ErrTimeout = errors.New("decision timeout")
	// ErrCanceled: the caller's context ended during an evaluation.
	ErrCanceled = errors.New("evaluation canceled")
	// ErrEvaluation: the policy failed while evaluating (a builtin error, a
	// conflict between rule values, a panic).
	ErrEvaluation = errors.New("evaluation failed")
	// ErrBadAllow: allow is defined but is not a boolean.
	ErrBadAllow = errors.New("allow is not a boolean")
	// ErrNotLoaded: the engine has no compiled policy set yet.
	ErrNotLoaded = errors.New("no policy set loaded")
)

// Problem is one thing wrong with a policy directory, located by file and
// line when the compiler knows them.
type Problem struct {
	File    string // the policy directory joined with the file's path in it
	Line    int    // 1-based; 0 when unknown
	Col     int
	Code    string // OPA's error code, such as rego_parse_error
	Message string
}

func (p Problem) String() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
			if p.Col > 0 {
				fmt.Fprintf(&b, ":%d", p.Col)
			}
		}
		b.WriteString(": ")
	}
	if p.Code != "" {
		b.WriteString(p.Code + ": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// CompileError is a policy directory that does not load. It lists every
// problem found, each with its file:line.
type CompileError struct {
	Dir      string
	Problems []Problem
}

func (e *CompileError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	if len(lines) == 1 {
		return "policy: " + lines[0]
	}
	return fmt.Sprintf("policy: %d problems in %s:\n  %s", len(lines), e.Dir, strings.Join(lines, "\n  "))
}

func (e *CompileError) addAST(file string, err error) {
	var errs ast.Errors
	if errors.As(err, &errs) {
		for _, ae := range errs {
			e.addError(ae)
		}
		return
	}
	var ae *ast.Error
	if errors.As(err, &ae) {
		e.addError(ae)
		return
	}
	e.Problems = append(e.Problems, Problem{File: file, Message: err.Error()})
}

func (e *CompileError) addError(ae *ast.Error) {
	p := Problem{Code: ae.Code, Message: ae.Message}
	if ae.Location != nil {
		p.File, p.Line, p.Col = ae.Location.File, ae.Location.Row, ae.Location.Col
	}
	e.Problems = append(e.Problems, p)
}

// MissingPackagesError names route packages no module declares.
type MissingPackagesError struct {
	Dir      string
	Packages []string
}

func (e *MissingPackagesError) Error() string {
	return fmt.Sprintf("policy: package %s not found in policy.dir (%s)", strings.Join(e.Packages, ", "), e.Dir)
}

// Is makes errors.Is(err, ErrPackageNotFound) true.
func (e *MissingPackagesError) Is(target error) bool { return target == ErrPackageNotFound }
