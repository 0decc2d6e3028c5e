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
// check. (Converting claims or headers lazily with ast.LazyObject does not
// pay: building the enclosing object hashes its values, which converts them
// at once.)
func (k *inputKeys) value(in *Input) (ast.Value, error) {
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
	claims := ast.InternedEmptyObject
	if len(u.Claims) > 0 {
		v, err := ast.InterfaceToValue(u.Claims)
		if err != nil {
			return nil, fmt.Errorf("policy: user.claims: %w", err)
		}
		claims = term(v)
	}
	groups := make([]*ast.Term, len(u.Groups))
	for i, g := range u.Groups {
		groups[i] = str(g)
	}
	req := ast.NewObject(
		ast.Item(k.id, str(r.ID)),
		ast.Item(k.method, common(r.Method)),
		ast.Item(k.scheme, common(r.Scheme)),
		ast.Item(k.host, str(r.Host)),
		ast.Item(k.path, str(r.Path)),
		ast.Item(k.query, multiMap(r.Query)),
		ast.Item(k.headers, multiMap(r.Headers)),
		ast.Item(k.remoteAddr, str(r.RemoteAddr)),
		ast.Item(k.time, str(FormatTime(r.Time))),
	)
	user := ast.NewObject(
		ast.Item(k.authenticated, ast.InternedTerm(u.Authenticated)),
		ast.Item(k.sub, str(u.Sub)),
		ast.Item(k.email, str(u.Email)),
		ast.Item(k.emailVerified, ast.InternedTerm(u.EmailVerified)),
		ast.Item(k.groups, term(ast.NewArray(groups...))),
		ast.Item(k.issuer, str(u.Issuer)),
		ast.Item(k.provider, str(u.Provider)),
		ast.Item(k.authMethod, common(u.AuthMethod)),
		ast.Item(k.claims, claims),
	)
	return ast.NewObject(
		ast.Item(k.request, term(req)),
		ast.Item(k.user, term(user)),
		ast.Item(k.route, k.routeTerm(*rt)),
	), nil
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
