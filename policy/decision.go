package policy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	opametrics "github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// Outcomes of a decision, as recorded in the audit event.
const (
	OutcomeAllow = "allow"
	OutcomeDeny  = "deny"
	OutcomeError = "error"
)

// DefaultDenyStatus is the status of a denial whose policy sets none.
const DefaultDenyStatus = http.StatusForbidden

// Decision is the answer of a route's policy for one request.
//
// Callers may rely on: Allow is true only when the package's allow rule
// evaluated to the literal boolean true, and then Outcome is "allow";
// otherwise Allow is false, Status is the response status (4xx or 5xx) and
// Outcome is "deny" or, when the policy could not give an answer, "error"
// with Err set. Reason is never empty.
type Decision struct {
	Allow bool
	// Reason explains the decision: the policy's reason rule, or what went
	// wrong. It is shown on the deny page and recorded in the audit event.
	// Values the policy gave but that were ignored (a status outside
	// 400-599, a refused header) are noted at its end.
	Reason string
	// Status is the response status for a denial (403 unless the policy's
	// status rule gives another 4xx or 5xx); zero when allowed.
	Status int
	// Headers are extra request headers for the upstream, from the policy's
	// headers rule, with canonical names; only set when allowed. Names the
	// proxy owns are refused: see refusedHeader. A remembered decision
	// shares its map with the cache: read it, never modify it.
	Headers map[string]string
	// Controls are the header names (canonical) the package's headers rule
	// can set, as far as they are literal in it (headers["X-Role"] := ...,
	// headers := {"X-Role": ...}), whether or not this decision sets them:
	// the proxy removes every client copy of them, so that an upstream
	// that trusts them only ever sees the policy's value. Shared: read only.
	Controls []string
	// Outcome is OutcomeAllow, OutcomeDeny or OutcomeError.
	Outcome string
	// Err is why the decision is an error (nil otherwise); test it with
	// errors.Is against ErrTimeout, ErrCanceled, ErrPackageNotFound,
	// ErrEvaluation, ErrBadAllow, ErrNotLoaded.
	Err error
	// Package and Revision identify the policy that decided.
	Package  string
	Revision string
	// Cached is true when the decision was not evaluated again but
	// remembered from an earlier request with the same values of every
	// input field the package reads (see policy.decision_cache).
	Cached bool
}

// errorDecision is a denial because no answer could be had.
func errorDecision(pkg, revision string, err error, reason string) Decision {
	return Decision{
		Reason:   reason,
		Status:   DefaultDenyStatus,
		Outcome:  OutcomeError,
		Err:      err,
		Package:  pkg,
		Revision: revision,
	}
}

// Eval decides one request with package pkg. It never panics and never
// allows by accident: a missing package, an evaluation error, a panic inside
// OPA, a timeout (the set's decision timeout, or ctx ending) and a
// non-boolean allow all deny with Outcome "error".
func (s *Set) Eval(ctx context.Context, pkg string, in *Input) (d Decision) {
	pkg = strings.TrimPrefix(pkg, "data.")
	defer func() {
		if r := recover(); r != nil {
			err := fmt.Errorf("policy: package %s: %w: panic: %v", pkg, ErrEvaluation, r)
			d = errorDecision(pkg, s.revision, err, fmt.Sprintf("policy evaluation failed (internal panic: %v)", r))
		}
	}()
	q, err := s.prepared(ctx, pkg)
	if err == nil {
		defer func() { d.Controls = q.controls }()
	}
	if err != nil {
		if errors.Is(err, ErrPackageNotFound) {
			return errorDecision(pkg, s.revision, err,
				fmt.Sprintf("policy package %s not found in %s (revision %s): add a module declaring it or fix the route's policy", pkg, s.dir, shortRev(s.revision)))
		}
		return errorDecision(pkg, s.revision, err, fmt.Sprintf("policy package %s could not be prepared: %v", pkg, err))
	}
	var keyBuf [256]byte
	var key []byte
	if q.cache != nil {
		if key, err = appendKey(keyBuf[:0], in, q.cache.use); err == nil && len(key) <= maxCacheKey {
			if d, ok := q.cache.m.GetBytes(key); ok {
				d.Cached = true
				return d
			}
			defer func() {
				// Not errors, and not the zero Decision a panic leaves.
				if d.Outcome == OutcomeAllow || d.Outcome == OutcomeDeny {
					q.cache.m.Put(string(key), d)
				}
			}()
		}
	}
	input, err := s.keys.valueOf(in, s.use)
	if err != nil {
		return errorDecision(pkg, s.revision, fmt.Errorf("%w: %w", ErrEvaluation, err), "policy input could not be built: "+err.Error())
	}

	// Cancel through an explicit Cancel rather than letting OPA start a
	// goroutine per evaluation to watch ctx.
	cancel := topdown.NewCancel()
	timer := time.AfterFunc(s.timeout, cancel.Cancel)
	defer timer.Stop()
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, cancel.Cancel)
		defer stop()
	}
	rs, err := q.pq.Eval(ctx,
		rego.EvalParsedInput(input),
		rego.EvalTime(s.clock.Now()),
		rego.EvalMetrics(opametrics.NoOp()),
		rego.EvalExternalCancel(cancel))
	if err != nil {
		return s.evalError(ctx, pkg, err)
	}
	if len(rs) != 1 {
		// The query binds every rule it reads without ever being
		// undefined; this is unreachable unless OPA changes, and then it
		// must still deny.
		err := fmt.Errorf("policy: package %s: %w: %d results", pkg, ErrEvaluation, len(rs))
		return errorDecision(pkg, s.revision, err, "policy evaluation gave no result")
	}
	b := rs[0].Bindings
	return s.decide(pkg, func(name string) *ast.Term {
		t, _ := b[name].(*ast.Term)
		if t == nil || q.direct[name] {
			return t
		}
		// [x | x := data.pkg.name]: empty when the rule is undefined.
		if arr, ok := t.Value.(*ast.Array); ok && arr.Len() == 1 {
			return arr.Elem(0)
		}
		return nil
	})
}

// evalError turns an OPA evaluation error into an error decision whose
// reason says what to do about it.
func (s *Set) evalError(parent context.Context, pkg string, err error) Decision {
	var te *topdown.Error
	canceled := errors.As(err, &te) && te.Code == topdown.CancelErr
	switch {
	case canceled && parent.Err() != nil:
		return errorDecision(pkg, s.revision, fmt.Errorf("policy: package %s: %w: %w", pkg, ErrCanceled, parent.Err()),
			"policy evaluation canceled: the request ended before a decision")
	case canceled:
		return errorDecision(pkg, s.revision, fmt.Errorf("policy: package %s: %w after %s", pkg, ErrTimeout, s.timeout),
			fmt.Sprintf("policy evaluation exceeded decision_timeout (%s): simplify package %s or raise policy.decision_timeout", s.timeout, pkg))
	}
	msg := err.Error()
	if te != nil {
		msg = te.Error()
	}
	return errorDecision(pkg, s.revision, fmt.Errorf("policy: package %s: %w: %w", pkg, ErrEvaluation, err),
		"policy evaluation failed: "+msg)
}

// decide reads the four rules from an evaluated package.
func (s *Set) decide(pkg string, rule func(name string) *ast.Term) Decision {
	d := Decision{Package: pkg, Revision: s.revision}
	var notes []string

	reason := ""
	if t := rule(ruleReason); t != nil {
		if r, ok := t.Value.(ast.String); ok {
			reason = string(r)
		} else {
			notes = append(notes, fmt.Sprintf("reason %s ignored: not a string", truncate(t.String())))
		}
	}

	allowTerm := rule(ruleAllow)
	switch v := termValue(allowTerm).(type) {
	case nil:
		d.Outcome = OutcomeDeny
		if reason == "" {
			reason = "denied: no allow rule matched (allow is undefined)"
		}
	case ast.Boolean:
		if v {
			d.Allow, d.Outcome = true, OutcomeAllow
			if reason == "" {
				reason = "allowed by " + pkg
			}
		} else {
			d.Outcome = OutcomeDeny
			if reason == "" {
				reason = "denied by " + pkg
			}
		}
	default:
		// A policy that says allow := "true" is broken; treat it as an
		// error so that operators see it, not as an ordinary denial.
		d.Outcome = OutcomeError
		d.Err = fmt.Errorf("policy: package %s: %w: got %s", pkg, ErrBadAllow, truncate(allowTerm.String()))
		reason = fmt.Sprintf("policy error: allow in %s is %s, not a boolean; only allow := true allows", pkg, truncate(allowTerm.String()))
	}

	if d.Allow {
		d.Headers, notes = readHeaders(termValue(rule(ruleHeaders)), notes)
	} else {
		d.Status = DefaultDenyStatus
		if t := rule(ruleStatus); t != nil {
			st, ok := denyStatus(t.Value)
			if ok {
				d.Status = st
			} else {
				notes = append(notes, fmt.Sprintf("status %s ignored: a deny status must be an integer from 400 to 599", truncate(t.String())))
			}
		}
	}
	if len(notes) > 0 {
		reason += " [" + strings.Join(notes, "; ") + "]"
	}
	d.Reason = reason
	return d
}

func termValue(t *ast.Term) ast.Value {
	if t == nil {
		return nil
	}
	return t.Value
}

func denyStatus(v ast.Value) (int, bool) {
	n, ok := v.(ast.Number)
	if !ok {
		return 0, false
	}
	i, ok := n.Int()
	if !ok || i < 400 || i > 599 {
		return 0, false
	}
	return i, true
}

// readHeaders takes the headers rule's object, keeping string values under
// names the proxy does not own.
func readHeaders(v ast.Value, notes []string) (map[string]string, []string) {
	if v == nil {
		return nil, notes
	}
	obj, ok := v.(ast.Object)
	if !ok {
		return nil, append(notes, "headers ignored: not an object")
	}
	var out map[string]string
	obj.Foreach(func(k, val *ast.Term) {
		name, ok := k.Value.(ast.String)
		if !ok || !validToken(string(name)) {
			notes = append(notes, fmt.Sprintf("header %s ignored: not a valid header name", truncate(k.String())))
			return
		}
		canon := http.CanonicalHeaderKey(string(name))
		// Checked with '_' read as '-' as well: CGI, PHP and some Python
		// servers read X_Portcullis_User as X-Portcullis-User.
		if why := refusedHeader(http.CanonicalHeaderKey(strings.ReplaceAll(string(name), "_", "-"))); why != "" {
			notes = append(notes, fmt.Sprintf("header %s ignored: %s", canon, why))
			return
		}
		sv, ok := val.Value.(ast.String)
		if !ok {
			notes = append(notes, fmt.Sprintf("header %s ignored: value is not a string", canon))
			return
		}
		if strings.ContainsFunc(string(sv), func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }) {
			// net/http would refuse the whole upstream request.
			notes = append(notes, fmt.Sprintf("header %s ignored: value holds a control character", canon))
			return
		}
		if out == nil {
			out = map[string]string{}
		}
		out[canon] = string(sv)
	})
	return out, notes
}

// refusedHeader says why a policy may not set header name (canonical form),
// or "" when it may. Hop-by-hop headers would break the connection to the
// upstream; the identity, forwarding and request-id headers are the proxy's
// own (SPEC §4) and must not be forgeable by a policy mistake; Host, Cookie
// and Authorization would change who the upstream thinks is calling.
func refusedHeader(name string) string {
	switch name {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return "hop-by-hop header"
	case "Host", "Cookie", "Authorization", "Content-Length", "Forwarded", "X-Request-Id", "X-Real-Ip", "Http2-Settings":
		return "set by the client or the proxy, not by policy"
	}
	if strings.HasPrefix(name, "X-Portcullis-") || strings.HasPrefix(name, "X-Forwarded-") {
		return "reserved for the proxy"
	}
	return ""
}

// validToken reports whether s is an RFC 9110 token (a valid field name).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func truncate(s string) string {
	const max = 80
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

func shortRev(rev string) string {
	if len(rev) > len("sha256:")+12 {
		return rev[:len("sha256:")+12]
	}
	return rev
}
