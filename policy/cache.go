package policy

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/portcullis/portcullis/internal/twogen"
)

// maxCacheKey bounds the key of a remembered decision: requests whose
// read fields are longer (a long path, many groups, large claims) are
// evaluated every time, so that a client choosing long paths cannot make
// the cache hold more than size x maxCacheKey bytes per package.
const maxCacheKey = 1024

// DefaultDecisionCache is the number of decisions remembered per route
// package unless policy.decision_cache says otherwise.
const DefaultDecisionCache = 10000

// A route package's decision is a function of the input fields it reads and
// of the loaded files, as long as nothing it reaches asks the world: the
// clock, the network, a random source. Such packages get a decisionCache,
// keyed by exactly the input fields the package can read, and owned by one
// Set, so that a reload starts from an empty cache. Repeated requests (the
// same user on the same path with the same method, as browsers and API
// clients make them all the time) then cost a lookup instead of an
// evaluation.
//
// Only allow and deny decisions are remembered; errors (timeouts,
// evaluation errors) are decided again every time.

// timeDependent lists builtins that are not marked nondeterministic in OPA
// but read the evaluation's clock (token expiry, certificate validity).
var timeDependent = map[string]bool{
	"io.jwt.decode_verify":                                   true,
	"crypto.x509.parse_and_verify_certificates":              true,
	"crypto.x509.parse_and_verify_certificates_with_options": true,
}

// cachePlan is what the analysis of one route package found.
type cachePlan struct {
	// use is the input fields the package can read: the cache key.
	use fieldMask
	// why is empty when decisions may be cached, and otherwise says what
	// prevents it ("calls time.now_ns", "reads input.request.time").
	why string
}

// planCache analyses the rules a query over pkg's decision rules can reach.
func planCache(c *ast.Compiler, pkg ast.Ref) cachePlan {
	var roots []*ast.Rule
	for _, name := range decisionRules {
		roots = append(roots, contributingRules(c, pkg.Append(ast.StringTerm(name)))...)
	}
	seen := map[*ast.Rule]bool{}
	var plan cachePlan
	var visit func(r *ast.Rule)
	visit = func(r *ast.Rule) {
		for ; r != nil; r = r.Else {
			if seen[r] {
				return
			}
			seen[r] = true
			plan.use |= inputUseOf(r)
			if plan.why == "" {
				plan.why = impureCall(r)
			}
			for dep := range c.Graph.Dependencies(r) {
				if d, ok := dep.(*ast.Rule); ok {
					visit(d)
				}
			}
			// A function or document put in place with `with` (f as g)
			// is evaluated too, whether or not the graph lists it.
			for _, ref := range withValueRefs(r) {
				for _, d := range contributingRules(c, ref) {
					visit(d)
				}
			}
		}
	}
	for _, r := range roots {
		visit(r)
	}
	switch {
	case plan.why != "":
	case plan.use&fRequestID != 0:
		plan.why = "reads input.request.id, which differs on every request"
	case plan.use&fRequestTime != 0:
		plan.why = "reads input.request.time, which differs on every request"
	}
	return plan
}

// contributingRules returns every rule, in any package, that can produce
// part of the document at target: rules at or below it (a package's
// `allow`, `headers["X-Team"]`), and rules that produce a document
// containing it (a parent package's `demo.allow if ...`, or
// `routes[name] := {...}`). More rules only make the plan more cautious.
func contributingRules(c *ast.Compiler, target ast.Ref) []*ast.Rule {
	var out []*ast.Rule
	for _, m := range c.Modules {
		for _, r := range m.Rules {
			if r.Module == nil {
				continue
			}
			gp := r.Ref().GroundPrefix()
			if gp.HasPrefix(target) || target.HasPrefix(gp) {
				out = append(out, r)
			}
		}
	}
	return out
}

// withValueRefs returns the references named as the value of a `with` in
// x (`with f as g`, `with data.x as data.y`) that point into data.
func withValueRefs(x any) []ast.Ref {
	var out []ast.Ref
	ast.NewGenericVisitor(func(x any) bool {
		if e, ok := x.(*ast.Expr); ok {
			for _, w := range e.With {
				if ref, ok := w.Value.Value.(ast.Ref); ok && ref.HasPrefix(ast.DefaultRootRef) {
					out = append(out, ref)
				}
			}
		}
		return false
	}).Walk(x)
	return out
}

// impureCall names the first builtin in x whose result may change between
// two evaluations with the same input and data, called or put in place of
// a function with `with` (`with f as rand.intn`), or is "".
func impureCall(x any) string {
	var found string
	check := func(op ast.Ref) {
		name := op.String()
		if b, ok := ast.BuiltinMap[name]; (ok && b.Nondeterministic) || timeDependent[name] {
			found = "calls " + name
		}
	}
	ast.NewGenericVisitor(func(x any) bool {
		if found != "" {
			return true
		}
		switch x := x.(type) {
		case *ast.Expr:
			if x.IsCall() {
				check(x.Operator())
			}
			for _, w := range x.With {
				switch v := w.Value.Value.(type) {
				case ast.Ref:
					check(v)
				case ast.Var:
					check(ast.Ref{ast.NewTerm(v)})
				}
			}
		case ast.Call:
			if op, ok := x[0].Value.(ast.Ref); ok {
				check(op)
			}
		}
		return false
	}).Walk(x)
	return found
}

// decisionCache holds the decisions of one package by key (appendKey over
// use).
type decisionCache struct {
	use fieldMask
	m   *twogen.Map[Decision]
}

func newDecisionCache(use fieldMask, size int) *decisionCache {
	return &decisionCache{use: use, m: twogen.New[Decision](size)}
}

// appendKey appends to b an encoding of the fields of in that use selects,
// such that two inputs get the same key exactly when those fields are
// equal. Every value is length-prefixed; maps are written in key order.
func appendKey(b []byte, in *Input, use fieldMask) ([]byte, error) {
	r, u, rt := &in.Request, &in.User, &in.Route
	str := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	boolean := func(v bool) {
		if v {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	}
	multi := func(m map[string][]string) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = binary.AppendUvarint(b, uint64(len(keys)))
		for _, k := range keys {
			str(k)
			b = binary.AppendUvarint(b, uint64(len(m[k])))
			for _, v := range m[k] {
				str(v)
			}
		}
	}
	for f := fieldMask(1); f <= fRouteUpstream; f <<= 1 {
		if use&f == 0 {
			continue
		}
		switch f {
		case fRequestID:
			str(r.ID)
		case fRequestMethod:
			str(r.Method)
		case fRequestScheme:
			str(r.Scheme)
		case fRequestHost:
			str(r.Host)
		case fRequestPath:
			str(r.Path)
		case fRequestQuery:
			multi(r.Query)
		case fRequestHeaders:
			multi(r.Headers)
		case fRequestRemoteAddr:
			str(r.RemoteAddr)
		case fRequestTime:
			str(FormatTime(r.Time))
		case fUserAuthenticated:
			boolean(u.Authenticated)
		case fUserSub:
			str(u.Sub)
		case fUserEmail:
			str(u.Email)
		case fUserEmailVerified:
			boolean(u.EmailVerified)
		case fUserGroups:
			b = binary.AppendUvarint(b, uint64(len(u.Groups)))
			for _, g := range u.Groups {
				str(g)
			}
		case fUserIssuer:
			str(u.Issuer)
		case fUserProvider:
			str(u.Provider)
		case fUserAuthMethod:
			str(u.AuthMethod)
		case fUserClaims:
			// encoding/json writes map keys sorted: equal claims, equal
			// bytes.
			j, err := json.Marshal(u.Claims)
			if err != nil {
				return nil, fmt.Errorf("policy: user.claims: %w", err)
			}
			str(string(j))
		case fRouteName:
			str(rt.Name)
		case fRouteHost:
			str(rt.Host)
		case fRoutePath:
			str(rt.Path)
		case fRouteUpstream:
			str(rt.Upstream)
		}
	}
	return b, nil
}

// CacheInfo says, for an operator, whether pkg's decisions are remembered
// and by which input fields ("remembered per request.method, user.groups"),
// or why each request is evaluated.
func (s *Set) CacheInfo(ctx context.Context, pkg string) (string, error) {
	q, err := s.prepared(ctx, pkg)
	if err != nil {
		return "", err
	}
	if q.cache == nil {
		return "evaluated on every request: " + q.uncached, nil
	}
	fields := q.cache.use.names()
	if len(fields) == 0 {
		return "remembered: the package reads no input, so one decision serves every request", nil
	}
	return "remembered per " + strings.Join(fields, ", "), nil
}

// names lists the fields of m as section.field, in input order.
func (m fieldMask) names() []string {
	var out []string
	for _, sec := range []string{"request", "user", "route"} {
		spec := inputSections[sec]
		var names []string
		for name, f := range spec.fields {
			if m&f != 0 {
				names = append(names, sec+"."+name)
			}
		}
		slices.SortFunc(names, func(a, b string) int {
			return cmp.Compare(spec.fields[strings.TrimPrefix(a, sec+".")], spec.fields[strings.TrimPrefix(b, sec+".")])
		})
		out = append(out, names...)
	}
	return out
}
