package policy

import (
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Input is the document a route's policy sees as `input` (SPEC §5). Its JSON
// form is exactly the one policies are written against; `portcullis policy
// eval` prints it.
type Input struct {
	Request RequestInput `json:"request"`
	User    UserInput    `json:"user"`
	Route   RouteInput   `json:"route"`
}

// RequestInput describes the HTTP request being decided.
type RequestInput struct {
	// ID is the request id (X-Request-Id).
	ID     string `json:"id"`
	Method string `json:"method"`
	// Scheme is "https" or "http".
	Scheme string `json:"scheme"`
	// Host is the request host without port.
	Host string `json:"host"`
	// Path is the normalized path, the one the upstream receives.
	Path string `json:"path"`
	// Query holds the decoded query parameters; nil renders as {}.
	Query map[string][]string `json:"query"`
	// Headers holds the request headers with lower-case names. The proxy
	// removes cookie and authorization before building the input; nil
	// renders as {}.
	Headers map[string][]string `json:"headers"`
	// RemoteAddr is the client IP address (no port), after trusted-proxy
	// handling.
	RemoteAddr string `json:"remote_addr"`
	// Time is when the request arrived; it renders as RFC 3339 in UTC
	// (time.RFC3339Nano), which time.parse_rfc3339_ns reads.
	Time time.Time `json:"-"`
}

// UserInput describes who is asking. For an anonymous request on a public
// route Authenticated is false and the other fields are empty.
type UserInput struct {
	Authenticated bool     `json:"authenticated"`
	Sub           string   `json:"sub"`
	Email         string   `json:"email"`
	EmailVerified bool     `json:"email_verified"`
	Groups        []string `json:"groups"`
	Issuer        string   `json:"issuer"`
	Provider      string   `json:"provider"`
	// AuthMethod is "session" or "bearer" (empty when not authenticated).
	AuthMethod string `json:"auth_method"`
	// Claims holds the ID token's or bearer JWT's claims as decoded from
	// JSON (map[string]any, []any, string, float64 or json.Number, bool,
	// nil); nil renders as {}.
	Claims map[string]any `json:"claims"`
}

// RouteInput describes the route the request matched.
type RouteInput struct {
	Name     string `json:"name"`
	Host     string `json:"host"`
	Path     string `json:"path"`
	Upstream string `json:"upstream"`
}

// FormatTime renders t the way input.request.time carries it.
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

type requestJSON struct {
	ID         string              `json:"id"`
	Method     string              `json:"method"`
	Scheme     string              `json:"scheme"`
	Host       string              `json:"host"`
	Path       string              `json:"path"`
	Query      map[string][]string `json:"query"`
	Headers    map[string][]string `json:"headers"`
	RemoteAddr string              `json:"remote_addr"`
	Time       string              `json:"time"`
}

// MarshalJSON renders the request with time in RFC 3339 and empty maps as {}.
func (r RequestInput) MarshalJSON() ([]byte, error) {
	return json.Marshal(requestJSON{
		ID: r.ID, Method: r.Method, Scheme: r.Scheme, Host: r.Host, Path: r.Path,
		Query: nonNilMap(r.Query), Headers: nonNilMap(r.Headers),
		RemoteAddr: r.RemoteAddr, Time: FormatTime(r.Time),
	})
}

// UnmarshalJSON reads the form MarshalJSON writes.
func (r *RequestInput) UnmarshalJSON(b []byte) error {
	var j requestJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = RequestInput{ID: j.ID, Method: j.Method, Scheme: j.Scheme, Host: j.Host, Path: j.Path,
		Query: j.Query, Headers: j.Headers, RemoteAddr: j.RemoteAddr}
	if j.Time != "" {
		t, err := time.Parse(time.RFC3339Nano, j.Time)
		if err != nil {
			return fmt.Errorf("policy: request.time: %w", err)
		}
		r.Time = t
	}
	return nil
}

type userJSON UserInput

// MarshalJSON renders the user with groups as [] and claims as {} when empty.
func (u UserInput) MarshalJSON() ([]byte, error) {
	j := userJSON(u)
	if j.Groups == nil {
		j.Groups = []string{}
	}
	if j.Claims == nil {
		j.Claims = map[string]any{}
	}
	return json.Marshal(j)
}

func nonNilMap(m map[string][]string) map[string][]string {
	if m == nil {
		return map[string][]string{}
	}
	return m
}

// inputKeys holds the object keys of the input document as terms, built once
// per Set so that converting an Input allocates only for its values.
type inputKeys struct {
	request, user, route                                               *ast.Term
	id, method, scheme, host, path, query, headers, remoteAddr, time   *ast.Term
	authenticated, sub, email, emailVerified, groups, issuer, provider *ast.Term
	authMethod, claims, name, upstream                                 *ast.Term

	// common holds ready terms for values most requests share (methods,
	// schemes, auth methods); read-only after newInputKeys.
	common map[string]*ast.Term
	// routes caches the route object per RouteInput: a route's fields are
	// the same on every request. At most maxCachedRoutes entries.
	routes     sync.Map // RouteInput -> *ast.Term
	routeCount atomic.Int32
}

const maxCachedRoutes = 1024

func newInputKeys() *inputKeys {
	s := ast.StringTerm
	k := &inputKeys{
		request: s("request"), user: s("user"), route: s("route"),
		id: s("id"), method: s("method"), scheme: s("scheme"), host: s("host"), path: s("path"),
		query: s("query"), headers: s("headers"), remoteAddr: s("remote_addr"), time: s("time"),
		authenticated: s("authenticated"), sub: s("sub"), email: s("email"),
		emailVerified: s("email_verified"), groups: s("groups"), issuer: s("issuer"),
		provider: s("provider"), authMethod: s("auth_method"), claims: s("claims"),
		name: s("name"), upstream: s("upstream"),
		common: map[string]*ast.Term{},
	}
	for _, v := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "https", "http", "session", "bearer"} {
		k.common[v] = s(v)
	}
	return k
}

// routeTerm returns the route object, from the cache when possible.
func (k *inputKeys) routeTerm(rt RouteInput) *ast.Term {
	if t, ok := k.routes.Load(rt); ok {
		return t.(*ast.Term)
	}
	t := ast.NewTerm(ast.NewObject(
		ast.Item(k.name, ast.StringTerm(rt.Name)),
		ast.Item(k.host, ast.StringTerm(rt.Host)),
		ast.Item(k.path, ast.StringTerm(rt.Path)),
		ast.Item(k.upstream, ast.StringTerm(rt.Upstream)),
	))
	if k.routeCount.Load() < maxCachedRoutes {
		if _, loaded := k.routes.LoadOrStore(rt, t); !loaded {
			k.routeCount.Add(1)
		}
	}
	return t
}

// value converts in to an ast.Value directly, without a JSON round trip. It
// produces the same document as json.Marshal(in) would, which the tests
// check.
func (k *inputKeys) value(in *Input) (ast.Value, error) { return k.valueOf(in, allFields) }

// valueOf converts the fields of in that use selects: the others are left
// out of the document, which no policy of the set can tell (see
// inputUseOf). Leaving out what no policy reads is most of what a
// conversion costs: request headers alone are a third of it. (Converting
// claims or headers lazily with ast.LazyObject does not pay: building the
// enclosing object hashes its values, which converts them at once.)
func (k *inputKeys) valueOf(in *Input, use fieldMask) (ast.Value, error) {
	r, u, rt := &in.Request, &in.User, &in.Route
	// One slab for the terms of every scalar: fewer, larger allocations.
	slab := make([]ast.Term, 0, 16+len(u.Groups))
	term := func(v ast.Value) *ast.Term {
		slab = append(slab, ast.Term{Value: v})
		return &slab[len(slab)-1]
	}
	str := func(s string) *ast.Term {
		if s == "" {
			return ast.InternedEmptyString
		}
		return term(ast.String(s))
	}
	common := func(s string) *ast.Term {
		if t, ok := k.common[s]; ok {
			return t
		}
		return str(s)
	}
	var buf [9][2]*ast.Term
	items := buf[:0]
	add := func(f fieldMask, key *ast.Term, value func() *ast.Term) {
		if use&f != 0 {
			items = append(items, [2]*ast.Term{key, value()})
		}
	}
	var top [3][2]*ast.Term
	doc := top[:0]

	if use&requestFields != 0 {
		add(fRequestID, k.id, func() *ast.Term { return str(r.ID) })
		add(fRequestMethod, k.method, func() *ast.Term { return common(r.Method) })
		add(fRequestScheme, k.scheme, func() *ast.Term { return common(r.Scheme) })
		add(fRequestHost, k.host, func() *ast.Term { return str(r.Host) })
		add(fRequestPath, k.path, func() *ast.Term { return str(r.Path) })
		add(fRequestQuery, k.query, func() *ast.Term { return multiMap(r.Query) })
		add(fRequestHeaders, k.headers, func() *ast.Term { return multiMap(r.Headers) })
		add(fRequestRemoteAddr, k.remoteAddr, func() *ast.Term { return str(r.RemoteAddr) })
		add(fRequestTime, k.time, func() *ast.Term { return str(FormatTime(r.Time)) })
		doc = append(doc, [2]*ast.Term{k.request, term(ast.NewObject(items...))})
		items = buf[:0]
	}
	if use&userFields != 0 {
		claims := ast.InternedEmptyObject
		if use&fUserClaims != 0 && len(u.Claims) > 0 {
			v, err := ast.InterfaceToValue(u.Claims)
			if err != nil {
				return nil, fmt.Errorf("policy: user.claims: %w", err)
			}
			claims = term(v)
		}
		add(fUserAuthenticated, k.authenticated, func() *ast.Term { return ast.InternedTerm(u.Authenticated) })
		add(fUserSub, k.sub, func() *ast.Term { return str(u.Sub) })
		add(fUserEmail, k.email, func() *ast.Term { return str(u.Email) })
		add(fUserEmailVerified, k.emailVerified, func() *ast.Term { return ast.InternedTerm(u.EmailVerified) })
		add(fUserGroups, k.groups, func() *ast.Term {
			groups := make([]*ast.Term, len(u.Groups))
			for i, g := range u.Groups {
				groups[i] = str(g)
			}
			return term(ast.NewArray(groups...))
		})
		add(fUserIssuer, k.issuer, func() *ast.Term { return str(u.Issuer) })
		add(fUserProvider, k.provider, func() *ast.Term { return str(u.Provider) })
		add(fUserAuthMethod, k.authMethod, func() *ast.Term { return common(u.AuthMethod) })
		add(fUserClaims, k.claims, func() *ast.Term { return claims })
		doc = append(doc, [2]*ast.Term{k.user, term(ast.NewObject(items...))})
		items = buf[:0]
	}
	if use&routeFields == routeFields {
		doc = append(doc, [2]*ast.Term{k.route, k.routeTerm(*rt)})
	} else if use&routeFields != 0 {
		add(fRouteName, k.name, func() *ast.Term { return str(rt.Name) })
		add(fRouteHost, k.host, func() *ast.Term { return str(rt.Host) })
		add(fRoutePath, k.path, func() *ast.Term { return str(rt.Path) })
		add(fRouteUpstream, k.upstream, func() *ast.Term { return str(rt.Upstream) })
		doc = append(doc, [2]*ast.Term{k.route, term(ast.NewObject(items...))})
	}
	return ast.NewObject(doc...), nil
}

// fieldMask is a set of fields of the input document, one bit each.
type fieldMask uint32

const (
	fRequestID fieldMask = 1 << iota
	fRequestMethod
	fRequestScheme
	fRequestHost
	fRequestPath
	fRequestQuery
	fRequestHeaders
	fRequestRemoteAddr
	fRequestTime
	fUserAuthenticated
	fUserSub
	fUserEmail
	fUserEmailVerified
	fUserGroups
	fUserIssuer
	fUserProvider
	fUserAuthMethod
	fUserClaims
	fRouteName
	fRouteHost
	fRoutePath
	fRouteUpstream

	requestFields = fRequestID | fRequestMethod | fRequestScheme | fRequestHost | fRequestPath |
		fRequestQuery | fRequestHeaders | fRequestRemoteAddr | fRequestTime
	userFields = fUserAuthenticated | fUserSub | fUserEmail | fUserEmailVerified | fUserGroups |
		fUserIssuer | fUserProvider | fUserAuthMethod | fUserClaims
	routeFields = fRouteName | fRouteHost | fRoutePath | fRouteUpstream
	allFields   = requestFields | userFields | routeFields
)

// inputSections maps input.<section>.<field> to its bit; the JSON names of
// Input.
var inputSections = map[string]struct {
	all    fieldMask
	fields map[string]fieldMask
}{
	"request": {requestFields, map[string]fieldMask{
		"id": fRequestID, "method": fRequestMethod, "scheme": fRequestScheme, "host": fRequestHost,
		"path": fRequestPath, "query": fRequestQuery, "headers": fRequestHeaders,
		"remote_addr": fRequestRemoteAddr, "time": fRequestTime,
	}},
	"user": {userFields, map[string]fieldMask{
		"authenticated": fUserAuthenticated, "sub": fUserSub, "email": fUserEmail,
		"email_verified": fUserEmailVerified, "groups": fUserGroups, "issuer": fUserIssuer,
		"provider": fUserProvider, "auth_method": fUserAuthMethod, "claims": fUserClaims,
	}},
	"route": {routeFields, map[string]fieldMask{
		"name": fRouteName, "host": fRouteHost, "path": fRoutePath, "upstream": fRouteUpstream,
	}},
}

// inputUseOfModules finds the input fields that the compiled modules can read.
// Rego reads input only through references rooted at input, so a field no
// module names (input.request.headers, input.request.headers[k], ...) can
// be left out of the document without any policy telling the difference.
// Every module of the set counts, not only those a route's package reaches:
// simpler, and still leaves out what matters (headers, query). Anything
// that may read input as a whole (input, input[x], walk(input), x :=
// input.user) selects the whole document or section.
func inputUseOfModules(modules map[string]*ast.Module) fieldMask {
	var use fieldMask
	for _, m := range modules {
		use |= inputUseOf(m)
	}
	return use
}

// inputUseOf is what x (a module, a rule, any AST node) can read of input.
func inputUseOf(x any) fieldMask {
	var use fieldMask
	var vis *ast.GenericVisitor
	vis = ast.NewGenericVisitor(func(x any) bool {
		if use == allFields {
			return true
		}
		switch x := x.(type) {
		case ast.Ref:
			if !x.HasPrefix(ast.InputRootRef) {
				return false
			}
			use |= refUse(x)
			// Indexes may hold references of their own:
			// input.request.headers[input.user.sub].
			for _, t := range x[1:] {
				vis.Walk(t)
			}
			return true
		case ast.Var:
			// input outside a reference: the whole document.
			if x.Equal(ast.InputRootDocument.Value) {
				use = allFields
			}
		}
		return false
	})
	vis.Walk(x)
	return use
}

// refUse is what a reference rooted at input may read.
func refUse(ref ast.Ref) fieldMask {
	if len(ref) < 2 {
		return allFields
	}
	name, ok := ref[1].Value.(ast.String)
	if !ok {
		return allFields
	}
	sec, ok := inputSections[string(name)]
	if !ok {
		return 0 // input.nothing is undefined with or without the other fields
	}
	if len(ref) < 3 {
		return sec.all
	}
	field, ok := ref[2].Value.(ast.String)
	if !ok {
		return sec.all
	}
	return sec.fields[string(field)]
}

func multiMap(m map[string][]string) *ast.Term {
	if len(m) == 0 {
		return ast.InternedEmptyObject
	}
	n := 0
	for _, vs := range m {
		n += 2 + len(vs)
	}
	slab := make([]ast.Term, 0, n+1)
	term := func(v ast.Value) *ast.Term {
		slab = append(slab, ast.Term{Value: v})
		return &slab[len(slab)-1]
	}
	obj := ast.NewObjectWithCapacity(len(m))
	for k, vs := range m {
		terms := make([]*ast.Term, len(vs))
		for i, v := range vs {
			terms[i] = term(ast.String(v))
		}
		obj.Insert(term(ast.String(k)), term(ast.NewArray(terms...)))
	}
	return term(obj)
}
