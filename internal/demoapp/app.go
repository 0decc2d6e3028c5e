// Package demoapp is the upstream application of `portcullis dev`: it shows
// a person (as a page) or a program (as JSON) exactly what Portcullis told
// it about the caller, and proves that the signed assertion verifies.
//
// Paths:
//
//	/          the identity report (any other path too)
//	/admin     "Admin area": the route's policy decides who gets here
//	/events    a server-sent events stream, to show streaming through the proxy
//
// The report holds the identity headers of SPEC §4 (X-Portcullis-User,
// -Email, -Groups), X-Request-Id, X-Forwarded-*, every other header received
// (Cookie and Authorization redacted), and the result of verifying
// X-Portcullis-Assertion against the JWKS: signature (ES256), iss, aud, exp,
// and sub against X-Portcullis-User.
package demoapp

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Clock tells the time; tests pass a fake to check expiry.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Options configure an App. JWKSURL and Issuer are required.
type Options struct {
	// Logger receives failed verifications; nil discards.
	Logger *slog.Logger
	// Clock checks exp; nil means the system clock.
	Clock Clock
	// JWKSURL is where the assertion's public keys are fetched, e.g.
	// "https://localhost:8443/.well-known/portcullis/jwks.json".
	JWKSURL string
	// Issuer is the required iss (Portcullis's identity.external_url).
	Issuer string
	// Audience is the required aud: this app's origin as Portcullis sees it
	// (the route's upstream, scheme://host[:port]). Empty means the origin
	// of each request as it arrives (http or https, and the Host header).
	Audience string
	// HTTPClient fetches the JWKS; `portcullis dev` passes one that trusts
	// its local CA. Nil means a client with a 5 s timeout. A client without
	// a timeout is used as is: give it one.
	HTTPClient *http.Client
	// VerifyTimeout bounds the wait for keys while answering one request
	// (default 5s).
	VerifyTimeout time.Duration
	// LogoutURL is the sign-out link (default "/.portcullis/logout").
	LogoutURL string
	// EventInterval is the time between two /events messages (default 1s).
	EventInterval time.Duration
	// EventLimit ends an /events stream after this many ticks (default
	// 600), so a forgotten tab does not hold a connection for ever.
	EventLimit int
}

// App is the demo upstream. It is an http.Handler and safe for concurrent
// use.
type App struct {
	log           *slog.Logger
	clock         Clock
	audience      string
	logoutURL     string
	eventInterval time.Duration
	eventLimit    int
	verifier      *verifier
	tmpl          *template.Template
	css           template.CSS
}

var _ http.Handler = (*App)(nil)

//go:embed pages/*.html pages/*.css
var pageFiles embed.FS

// New checks opts and returns an App. It does not contact the JWKS URL: keys
// are fetched on the first assertion.
func New(opts Options) (*App, error) {
	var problems []error
	if u, err := url.Parse(opts.JWKSURL); opts.JWKSURL == "" || err != nil || !u.IsAbs() {
		problems = append(problems, fmt.Errorf("jwks url %q: want an absolute URL", opts.JWKSURL))
	}
	if opts.Issuer == "" {
		problems = append(problems, errors.New("issuer is required"))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("demoapp: invalid options: %w", errors.Join(problems...))
	}
	a := &App{
		log:           opts.Logger,
		clock:         opts.Clock,
		audience:      opts.Audience,
		logoutURL:     opts.LogoutURL,
		eventInterval: opts.EventInterval,
		eventLimit:    opts.EventLimit,
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.clock == nil {
		a.clock = systemClock{}
	}
	if a.logoutURL == "" {
		a.logoutURL = "/.portcullis/logout"
	}
	if a.eventInterval <= 0 {
		a.eventInterval = time.Second
	}
	if a.eventLimit <= 0 {
		a.eventLimit = 600
	}
	client := opts.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	timeout := opts.VerifyTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	a.verifier = newVerifier(opts.JWKSURL, opts.Issuer, client, a.clock, timeout)
	t, err := template.New("").ParseFS(pageFiles, "pages/*.html")
	if err != nil {
		return nil, fmt.Errorf("demoapp: parse templates: %w", err)
	}
	css, err := pageFiles.ReadFile("pages/app.css")
	if err != nil {
		return nil, fmt.Errorf("demoapp: read stylesheet: %w", err)
	}
	a.tmpl, a.css = t, template.CSS(css) // #nosec G203 -- our own embedded file
	return a, nil
}

// Report is the JSON the app answers to non-browser clients (and the data
// behind its page).
type Report struct {
	Area      string          `json:"area"` // "home" or "admin"
	Method    string          `json:"method"`
	Path      string          `json:"path"`
	User      string          `json:"user"`
	Email     string          `json:"email"`
	Groups    []string        `json:"groups"`
	RequestID string          `json:"request_id"`
	Forwarded Forwarded       `json:"forwarded"`
	Assertion AssertionReport `json:"assertion"`
	Headers   http.Header     `json:"headers"`
}

// Forwarded holds the X-Forwarded-* headers.
type Forwarded struct {
	For   string `json:"for"`
	Proto string `json:"proto"`
	Host  string `json:"host"`
}

// ServeHTTP serves the report, the admin area and the event stream.
func (a *App) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/events":
		a.events(w, r)
	case r.URL.Path == "/favicon.ico":
		w.WriteHeader(http.StatusNoContent)
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "demoapp: method not allowed", http.StatusMethodNotAllowed)
	case r.URL.Path == "/admin" || strings.HasPrefix(r.URL.Path, "/admin/"):
		a.report(w, r, "admin")
	default:
		a.report(w, r, "home")
	}
}

func (a *App) report(w http.ResponseWriter, r *http.Request, area string) {
	rep := a.inspect(r, area)
	if rep.Assertion.Present && !rep.Assertion.Verified {
		a.log.Warn("demoapp: assertion did not verify", "error", rep.Assertion.Error, "request_id", rep.RequestID)
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !wantsHTML(r) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
		return
	}
	a.page(w, r, rep)
}

// inspect reads what Portcullis sent.
func (a *App) inspect(r *http.Request, area string) Report {
	h := r.Header
	rep := Report{
		Area:      area,
		Method:    r.Method,
		Path:      r.URL.Path,
		User:      h.Get("X-Portcullis-User"),
		Email:     h.Get("X-Portcullis-Email"),
		Groups:    splitGroups(h.Get("X-Portcullis-Groups")),
		RequestID: h.Get("X-Request-Id"),
		Forwarded: Forwarded{
			For:   h.Get("X-Forwarded-For"),
			Proto: h.Get("X-Forwarded-Proto"),
			Host:  h.Get("X-Forwarded-Host"),
		},
		Headers: redacted(h),
	}
	aud := a.audience
	if aud == "" {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		aud = scheme + "://" + r.Host
	}
	rep.Assertion = a.verifier.check(r.Context(), h.Get("X-Portcullis-Assertion"), aud, rep.User, rep.RequestID)
	return rep
}

func splitGroups(s string) []string {
	out := []string{}
	for g := range strings.SplitSeq(s, ",") {
		if g = strings.TrimSpace(g); g != "" {
			// Portcullis percent-encodes "%", "," and control characters
			// inside a name.
			if dec, err := url.PathUnescape(g); err == nil {
				g = dec
			}
			out = append(out, g)
		}
	}
	return out
}

// redacted copies the headers, hiding credentials and shortening the
// assertion (shown decoded elsewhere).
func redacted(h http.Header) http.Header {
	out := h.Clone()
	for _, k := range []string{"Cookie", "Authorization", "Proxy-Authorization"} {
		if _, ok := out[k]; ok {
			out[k] = []string{"(redacted)"}
		}
	}
	if v := out.Get("X-Portcullis-Assertion"); len(v) > 40 {
		out.Set("X-Portcullis-Assertion", v[:32]+"…")
	}
	return out
}

// wantsHTML is true for browsers, unless ?format=json asks otherwise.
func wantsHTML(r *http.Request) bool {
	switch r.URL.Query().Get("format") {
	case "json":
		return false
	case "html":
		return true
	}
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

type pageData struct {
	Nonce     string
	CSS       template.CSS
	R         Report
	Initial   string
	Logout    string
	Headers   []headerRow
	Claims    []headerRow
	IsAdmin   bool
	LoginHint string
}

type headerRow struct{ Name, Value string }

func (a *App) page(w http.ResponseWriter, r *http.Request, rep Report) {
	d := pageData{
		Nonce:   nonce(),
		CSS:     a.css,
		R:       rep,
		Logout:  a.logoutURL,
		IsAdmin: rep.Area == "admin",
	}
	who := cmpOr(rep.Email, rep.User)
	for _, r := range who {
		d.Initial = strings.ToUpper(string(r))
		break
	}
	if rep.User == "" {
		d.LoginHint = "/.portcullis/login?rd=" + url.QueryEscape(r.URL.RequestURI())
	}
	for _, k := range slices.Sorted(mapsKeys(rep.Headers)) {
		d.Headers = append(d.Headers, headerRow{k, strings.Join(rep.Headers[k], ", ")})
	}
	for _, k := range slices.Sorted(mapsKeys(rep.Assertion.Claims)) {
		v, _ := json.Marshal(rep.Assertion.Claims[k])
		s := string(v)
		if k == "iat" || k == "exp" || k == "nbf" {
			if f, ok := rep.Assertion.Claims[k].(float64); ok {
				s += "  (" + time.Unix(int64(f), 0).UTC().Format(time.RFC3339) + ")"
			}
		}
		d.Claims = append(d.Claims, headerRow{k, s})
	}
	var buf bytes.Buffer
	if err := a.tmpl.ExecuteTemplate(&buf, "app.html", d); err != nil {
		a.log.Error("demoapp: render page", "err", err)
		http.Error(w, "demoapp: page could not be rendered", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", fmt.Sprintf(
		"default-src 'none'; style-src 'nonce-%[1]s'; script-src 'nonce-%[1]s'; connect-src 'self'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
		d.Nonce))
	_, _ = w.Write(buf.Bytes())
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// events streams one "hello" naming the caller, then a "tick" per interval
// with the server time, until the client goes away or EventLimit is reached.
func (a *App) events(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(event string, v any) bool {
		b, _ := json.Marshal(v)
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send("hello", map[string]string{"user": r.Header.Get("X-Portcullis-User"), "request_id": r.Header.Get("X-Request-Id")}) {
		return
	}
	t := time.NewTicker(a.eventInterval)
	defer t.Stop()
	for n := 1; n <= a.eventLimit; n++ {
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
			if !send("tick", map[string]any{"n": n, "time": a.clock.Now().UTC().Format(time.RFC3339)}) {
				return
			}
		}
	}
}

func nonce() string {
	return randomToken()
}
