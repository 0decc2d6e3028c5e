package identity

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

const (
	// loginCookieInfix: login-state cookies are named
	// <cookie_name>_login_<first 12 characters of the state>, so that
	// sign-ins started in several tabs do not overwrite each other.
	loginCookieInfix = "_login_"
	loginStateTTL    = 10 * time.Minute
	handoverTTL      = 60 * time.Second
	logoutStateTTL   = 10 * time.Minute
)

// loginState is sealed into the login-state cookie, bound to the state
// value (it is part of the additional data).
type loginState struct {
	State    string `json:"s"`
	Nonce    string `json:"n"`
	Verifier string `json:"v"`
	Return   string `json:"r"`
	Provider string `json:"p"`
	// Binding is the hand-over binding the sign-in was started with
	// (see bindHandover), carried to the hand-over code.
	Binding string `json:"b,omitempty"`
}

// handover carries a session to a route host outside cookie_domain: sealed
// for that host, valid for 60 seconds, usable once.
type handover struct {
	ID      string   `json:"id"`
	Session *session `json:"s"`
	Return  string   `json:"r"`
	// Binding ties the code to the browser that started the sign-in on
	// the target host (see bindHandover); "" when none did.
	Binding string `json:"b,omitempty"`
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (a *Authenticator) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(PathLogin, a.serveLogin)
	mux.HandleFunc(PathCallback, a.serveCallback)
	mux.HandleFunc(PathLogout, a.serveLogout)
	mux.HandleFunc(PathMe, a.serveMe)
	mux.HandleFunc(PathJWKS, a.serveJWKS)
	mux.HandleFunc(ownPrefix, func(w http.ResponseWriter, r *http.Request) {
		writePage(w, http.StatusNotFound, page{Title: "Not found", Message: "There is nothing at this address."})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		if r.URL.Path != PathJWKS {
			h.Set("Cache-Control", "no-store")
		}
		mux.ServeHTTP(w, r)
	})
}

// externalURL is external_url + path.
func (a *Authenticator) externalURL(path string, q url.Values) string {
	u := *a.cfg.external
	u.Path = path
	u.RawQuery = q.Encode()
	return u.String()
}

// reaches reports whether a cookie set while answering on host is sent to
// external_url's host (same host, or both under cookie_domain).
func (a *Authenticator) reaches(host string) bool {
	return host == a.externalHost || a.sharesCookie(host) && a.sharesCookie(a.externalHost)
}

// StartLogin answers an unauthenticated browser request to a non-public
// route: a 302 into sign-in that comes back to the request's full URL. When
// the login-state cookie can be read at external_url's host and there is a
// single provider, it redirects straight to the provider; otherwise it goes
// through external_url's /.portcullis/login.
func (a *Authenticator) StartLogin(w http.ResponseWriter, r *http.Request) {
	host, port := splitHost(r.Host)
	target, ok := a.returns.check(r.URL.RequestURI(), host, port)
	if !ok {
		target = "https://" + joinHostPort(host, port) + "/"
	}
	if len(a.providers) == 1 && a.sealer.usable() && a.reaches(host) {
		if d, err := a.providers[0].get(r.Context()); err == nil {
			a.redirectToProvider(w, r, a.providers[0].cfg.Name, d, target, "")
			return
		}
	}
	q := url.Values{"rd": {target}}
	if !a.reaches(host) {
		q.Set("hb", a.bindHandover(w))
	}
	http.Redirect(w, r, a.externalURL(PathLogin, q), http.StatusFound)
}

// bindHandover is called on a route host that gets its session through a
// hand-over code (outside cookie_domain) as it sends the browser to
// external_url's sign-in: it sets a host-only cookie holding a random value
// and returns that value's hash, which the sign-in seals into the code.
// The host then takes the code only from a browser that holds the value:
// an attacker's code (for the attacker's own session, minted on demand)
// opened in a victim's browser does not sign the victim in as the attacker
// (login CSRF).
func (a *Authenticator) bindHandover(w http.ResponseWriter) string {
	v := randomToken()
	http.SetCookie(w, &http.Cookie{
		Name: a.handoverCookieName(), Value: v, Path: PathCallback, MaxAge: int(loginStateTTL.Seconds()),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	})
	return handoverBinding(v)
}

func (a *Authenticator) handoverCookieName() string {
	return a.cfg.Session.CookieName + loginCookieInfix + "ho"
}

func handoverBinding(v string) string {
	sum := sha256.Sum256([]byte("portcullis hand-over binding|" + v))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// validBinding accepts what handoverBinding returns (and "").
func validBinding(b string) bool {
	if b == "" {
		return true
	}
	if len(b) != 43 {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(b)
	return err == nil
}

func (a *Authenticator) redirectToProvider(w http.ResponseWriter, r *http.Request, name string, d *discovered, target, binding string) {
	ls := loginState{State: randomToken(), Nonce: randomToken(), Verifier: oauth2.GenerateVerifier(), Return: target, Provider: name, Binding: binding}
	b, _ := json.Marshal(ls)
	v, err := a.sealer.seal(a.loginPurpose(ls.State), a.clock.Now().Add(loginStateTTL), b)
	if err != nil {
		a.log.Error("identity: sealing login state", "err", err)
		writePage(w, http.StatusInternalServerError, page{Title: "Sign-in unavailable", Message: "Portcullis could not start the sign-in."})
		return
	}
	host, _ := splitHost(r.Host)
	c := &http.Cookie{
		Name: a.loginCookieName(ls.State), Value: v, Path: "/", MaxAge: int(loginStateTTL.Seconds()),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	}
	if host != a.externalHost {
		c.Domain = a.cfg.Session.CookieDomain
	}
	http.SetCookie(w, c)
	http.Redirect(w, r, d.oauth.AuthCodeURL(ls.State, oidc.Nonce(ls.Nonce), oauth2.S256ChallengeOption(ls.Verifier)), http.StatusFound)
}

func (a *Authenticator) loginPurpose(state string) string {
	return "login|" + a.cfg.Session.CookieName + "|" + state
}

func (a *Authenticator) loginCookieName(state string) string {
	if len(state) > 12 {
		state = state[:12]
	}
	return a.cfg.Session.CookieName + loginCookieInfix + state
}

// serveLogin is /.portcullis/login?rd=URL[&provider=NAME].
func (a *Authenticator) serveLogin(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writePage(w, http.StatusMethodNotAllowed, page{Title: "Method not allowed"})
		return
	}
	host, port := splitHost(r.Host)
	q := r.URL.Query()
	target, ok := a.returns.check(q.Get("rd"), host, port)
	if !ok {
		target = "https://" + joinHostPort(host, port) + "/"
	}
	if host != a.externalHost {
		nq := url.Values{"rd": {target}}
		if pr := q.Get("provider"); pr != "" {
			nq.Set("provider", pr)
		}
		if !a.reaches(host) {
			nq.Set("hb", a.bindHandover(w))
		}
		http.Redirect(w, r, a.externalURL(PathLogin, nq), http.StatusFound)
		return
	}
	binding := q.Get("hb")
	if !validBinding(binding) {
		binding = ""
	}
	if len(a.providers) == 0 || !a.sealer.usable() {
		writePage(w, http.StatusNotFound, page{Title: "Sign-in is not configured", Message: "No identity provider is configured for browser sign-in."})
		return
	}
	if s := a.currentSession(w, r); s != nil {
		a.finish(w, r, s, target, binding)
		return
	}
	name := q.Get("provider")
	if name == "" && len(a.providers) == 1 {
		name = a.providers[0].cfg.Name
	}
	if name == "" {
		choices := make([]providerChoice, len(a.providers))
		for i, p := range a.providers {
			cq := url.Values{"provider": {p.cfg.Name}, "rd": {target}}
			if binding != "" {
				cq.Set("hb", binding)
			}
			choices[i] = providerChoice{Name: p.cfg.Name, URL: PathLogin + "?" + cq.Encode()}
		}
		writePage(w, http.StatusOK, page{Title: "Sign in", Message: "Choose how you want to sign in.", Providers: choices})
		return
	}
	p := a.byName[name]
	if p == nil {
		writePage(w, http.StatusBadRequest, page{Title: "Unknown sign-in provider", Message: "There is no provider of that name.",
			Link: PathLogin + "?" + url.Values{"rd": {target}}.Encode(), LinkText: "Choose a provider"})
		return
	}
	d, err := p.get(r.Context())
	if err != nil {
		a.log.Warn("identity: sign-in while the provider is unreachable", "provider", name, "err", err)
		w.Header().Set("Retry-After", "10")
		writePage(w, http.StatusServiceUnavailable, page{
			Title:   "The sign-in service is unreachable",
			Message: "Portcullis cannot reach the identity provider right now. Please try again in a moment.",
			Link:    r.URL.RequestURI(), LinkText: "Try again", Detail: "provider: " + name,
		})
		return
	}
	a.redirectToProvider(w, r, name, d, target, binding)
}

// finish sends a signed-in user to target: directly when the session
// cookie just set reaches target's host, otherwise through a one-time
// hand-over code on that host's own /.portcullis/callback.
func (a *Authenticator) finish(w http.ResponseWriter, r *http.Request, s *session, target, binding string) {
	host, _ := splitHost(r.Host)
	tu, err := url.Parse(target)
	if err != nil {
		http.Redirect(w, r, "/", http.StatusFound)
		return
	}
	th, _ := splitHost(tu.Host)
	if th == host || a.sharesCookie(th) && a.sharesCookie(host) {
		http.Redirect(w, r, target, http.StatusFound)
		return
	}
	ho := handover{ID: randomToken(), Session: s, Return: target, Binding: binding}
	b, _ := json.Marshal(ho)
	code, err := a.sealer.seal(a.handoverPurpose(th), a.clock.Now().Add(handoverTTL), b)
	if err != nil {
		a.log.Error("identity: sealing hand-over", "err", err)
		writePage(w, http.StatusInternalServerError, page{Title: "Sign-in failed", Message: "Portcullis could not complete the sign-in."})
		return
	}
	http.Redirect(w, r, "https://"+tu.Host+PathCallback+"?"+url.Values{"handover": {code}}.Encode(), http.StatusFound)
}

func (a *Authenticator) expireHandoverCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: a.handoverCookieName(), Value: "", Path: PathCallback, MaxAge: -1,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
}

func (a *Authenticator) handoverPurpose(host string) string {
	return "handover|" + a.cfg.Session.CookieName + "|" + host
}

func (a *Authenticator) badState(w http.ResponseWriter, r *http.Request, why string) {
	a.log.Info("identity: sign-in callback refused", "reason", why, "host", r.Host)
	writePage(w, http.StatusBadRequest, page{
		Title:   "This sign-in link is not valid",
		Message: "It may have expired, been used already, or been opened in another browser. Please start again.",
		Link:    "/", LinkText: "Start again", Detail: why,
	})
}

// serveCallback is the OIDC redirect URI, and the hand-over landing on
// route hosts outside cookie_domain.
func (a *Authenticator) serveCallback(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		writePage(w, http.StatusMethodNotAllowed, page{Title: "Method not allowed"})
		return
	}
	q := r.URL.Query()
	if code := q.Get("handover"); code != "" {
		a.serveHandover(w, r, code)
		return
	}
	state := q.Get("state")
	if len(state) < 16 || len(state) > 128 {
		a.badState(w, r, "missing or malformed state")
		return
	}
	name := a.loginCookieName(state)
	c, err := r.Cookie(name)
	// The login state is single-use whatever happens next.
	host, _ := splitHost(r.Host)
	a.expireCookie(w, name, "")
	if a.sharesCookie(host) {
		a.expireCookie(w, name, a.cfg.Session.CookieDomain)
	}
	if err != nil {
		a.badState(w, r, "no sign-in in progress in this browser")
		return
	}
	now := a.clock.Now()
	b, err := a.sealer.open(a.loginPurpose(state), now, c.Value)
	var ls loginState
	if err != nil || json.Unmarshal(b, &ls) != nil || ls.State != state {
		a.badState(w, r, "state does not match this browser's sign-in")
		return
	}
	if !a.used.use("state:"+state, now.Add(loginStateTTL), now) {
		a.badState(w, r, "state already used")
		return
	}
	if e := q.Get("error"); e != "" {
		a.log.Info("identity: provider refused the sign-in", "provider", ls.Provider, "error", e, "description", q.Get("error_description"))
		writePage(w, http.StatusForbidden, page{Title: "Sign-in was not completed", Message: "The identity provider did not sign you in.",
			Detail: e + ": " + q.Get("error_description"), Link: ls.Return, LinkText: "Try again"})
		return
	}
	code := q.Get("code")
	p := a.byName[ls.Provider]
	if code == "" || p == nil {
		a.badState(w, r, "no authorization code")
		return
	}
	d, err := p.get(r.Context())
	if err != nil {
		writePage(w, http.StatusServiceUnavailable, page{Title: "The sign-in service is unreachable", Message: "Please try again in a moment.", Link: ls.Return, LinkText: "Try again"})
		return
	}
	ctx := oidc.ClientContext(r.Context(), a.client)
	tok, err := d.oauth.Exchange(ctx, code, oauth2.VerifierOption(ls.Verifier))
	if err != nil {
		a.log.Warn("identity: code exchange failed", "provider", ls.Provider, "err", err)
		// The provider refusing the code (invalid_grant: not this
		// browser's, used, expired) is the request's fault: 400. A
		// provider that fails or cannot be reached is a 502.
		status := http.StatusBadGateway
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil && re.Response.StatusCode >= 400 && re.Response.StatusCode < 500 {
			status = http.StatusBadRequest
		}
		writePage(w, status, page{Title: "Sign-in failed", Message: "The identity provider did not accept the sign-in. Please try again.", Link: ls.Return, LinkText: "Try again"})
		return
	}
	s, err := a.sessionFromTokens(ctx, p, d, tok, ls.Nonce, nil)
	if err != nil {
		a.log.Warn("identity: provider's tokens refused", "provider", ls.Provider, "err", err)
		writePage(w, http.StatusBadRequest, page{Title: "Sign-in failed", Message: "The identity provider's answer did not verify.", Link: ls.Return, LinkText: "Try again"})
		return
	}
	if err := a.setSession(w, r, s); err != nil {
		a.log.Error("identity: setting session cookie", "err", err)
		writePage(w, http.StatusInternalServerError, page{Title: "Sign-in failed", Message: "Portcullis could not store the session."})
		return
	}
	a.log.Info("identity: signed in", "sub", s.Sub, "provider", s.Provider)
	report(r, s.identity())
	target := ls.Return
	th, tp := splitHost(r.Host)
	if t, ok := a.returns.check(target, th, tp); ok {
		target = t
	} else {
		target = "/"
	}
	a.finish(w, r, s, target, ls.Binding)
}

// serveHandover accepts a hand-over code sealed for this host, once.
func (a *Authenticator) serveHandover(w http.ResponseWriter, r *http.Request, code string) {
	host, port := splitHost(r.Host)
	now := a.clock.Now()
	b, err := a.sealer.open(a.handoverPurpose(host), now, code)
	var ho handover
	if err != nil || json.Unmarshal(b, &ho) != nil || ho.Session == nil || ho.ID == "" {
		a.badState(w, r, "hand-over code not valid for this host")
		return
	}
	if !a.used.use("handover:"+ho.ID, now.Add(handoverTTL), now) {
		a.badState(w, r, "hand-over code already used")
		return
	}
	if ho.Session.Exp <= now.Unix() {
		a.badState(w, r, "session expired")
		return
	}
	if ho.Binding == "" {
		// Minted by a sign-in this host did not start (a link straight to
		// external_url's sign-in): no proof that this browser asked for
		// it. Start this host's own sign-in, which binds, for the same
		// target; a signed-in user goes through without a prompt.
		target := "https://" + joinHostPort(host, port) + "/"
		if t, ok := a.returns.check(ho.Return, host, port); ok {
			if tu, err := url.Parse(t); err == nil && tu.Hostname() == host {
				target = t
			}
		}
		http.Redirect(w, r, a.externalURL(PathLogin, url.Values{"rd": {target}, "hb": {a.bindHandover(w)}}), http.StatusFound)
		return
	}
	c, err := r.Cookie(a.handoverCookieName())
	if err != nil || subtle.ConstantTimeCompare([]byte(handoverBinding(c.Value)), []byte(ho.Binding)) != 1 {
		a.badState(w, r, "hand-over code not started in this browser")
		return
	}
	a.expireHandoverCookie(w)
	if err := a.setSession(w, r, ho.Session); err != nil {
		a.log.Error("identity: setting session cookie", "err", err)
		writePage(w, http.StatusInternalServerError, page{Title: "Sign-in failed", Message: "Portcullis could not store the session."})
		return
	}
	report(r, ho.Session.identity())
	target := "/"
	if t, ok := a.returns.check(ho.Return, host, port); ok {
		if tu, err := url.Parse(t); err == nil && tu.Hostname() == host {
			target = t
		}
	}
	http.Redirect(w, r, target, http.StatusFound)
}

// serveLogout is /.portcullis/logout?rd=URL. It clears the session cookie
// (host-only and on cookie_domain). On a host whose cookies do not reach
// external_url's host it continues at external_url's logout, so the
// central session ends too. There, when the provider advertises
// end_session_endpoint, it performs RP-initiated logout with
// id_token_hint (when the session kept it), client_id, and
// post_logout_redirect_uri = external_url + /.portcullis/logout (register
// that URI at the provider), carrying the validated rd in a sealed `state`;
// the provider sends the browser back there and Portcullis redirects to rd.
// Without rd it shows a "signed out" page.
func (a *Authenticator) serveLogout(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		writePage(w, http.StatusMethodNotAllowed, page{Title: "Method not allowed"})
		return
	}
	host, port := splitHost(r.Host)
	q := r.URL.Query()
	if r.Method == http.MethodPost {
		// The confirmation form posts rd and confirm.
		r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
		if err := r.ParseForm(); err == nil {
			q = r.Form
		}
	}
	target := ""
	if rd := q.Get("rd"); rd != "" {
		if t, ok := a.returns.check(rd, host, port); ok {
			target = t
		}
	}
	s, _ := a.readSession(r)
	if s != nil && r.Header.Get("Sec-Fetch-Site") == "cross-site" && !a.logoutConfirmed(s, q.Get("confirm")) {
		// A page on another site sent the browser here (a link, an
		// image, a form): ask before signing the user out for it.
		a.confirmLogout(w, s, target)
		return
	}
	a.clearSession(w, r)
	if s != nil {
		report(r, s.identity())
	}

	if st := q.Get("state"); st != "" && s == nil {
		// Back from the provider's end-session endpoint.
		if b, err := a.sealer.open(a.logoutPurpose(), a.clock.Now(), st); err == nil {
			if t, ok := a.returns.check(string(b), host, port); ok {
				http.Redirect(w, r, t, http.StatusFound)
				return
			}
		}
	}
	if !a.reaches(host) {
		nq := url.Values{}
		if target != "" {
			nq.Set("rd", target)
		}
		if s != nil {
			// The central logout is this user's own next step, though the
			// browser arrives there from another site.
			if c, err := a.logoutConfirmation(s); err == nil {
				nq.Set("confirm", c)
			}
		}
		http.Redirect(w, r, a.externalURL(PathLogout, nq), http.StatusFound)
		return
	}
	if s != nil {
		a.log.Info("identity: signed out", "sub", s.Sub, "provider", s.Provider)
		if end := a.endSessionURL(r, s, target); end != "" {
			http.Redirect(w, r, end, http.StatusFound)
			return
		}
	}
	if target != "" {
		http.Redirect(w, r, target, http.StatusFound)
		return
	}
	writePage(w, http.StatusOK, page{Title: "You are signed out", Message: "Your Portcullis session has ended."})
}

func (a *Authenticator) logoutPurpose() string { return "logout|" + a.cfg.Session.CookieName }

// logoutConfirmation seals a short-lived proof that signing s out was asked
// for here (the confirmation page's button, or Portcullis's own redirect to
// the central logout), bound to the session so that it cannot sign out
// another.
func (a *Authenticator) logoutConfirmation(s *session) (string, error) {
	return a.sealer.seal(a.logoutConfirmPurpose(s), a.clock.Now().Add(logoutStateTTL), []byte{1})
}

func (a *Authenticator) logoutConfirmed(s *session, c string) bool {
	if c == "" {
		return false
	}
	_, err := a.sealer.open(a.logoutConfirmPurpose(s), a.clock.Now(), c)
	return err == nil
}

func (a *Authenticator) logoutConfirmPurpose(s *session) string {
	sum := sha256.Sum256([]byte(s.Issuer + "\x00" + s.Sub + "\x00" + strconv.FormatInt(s.Exp, 10)))
	return "logout-confirm|" + a.cfg.Session.CookieName + "|" + hex.EncodeToString(sum[:16])
}

// confirmLogout answers a cross-site logout with a page whose button posts
// the logout from this origin.
func (a *Authenticator) confirmLogout(w http.ResponseWriter, s *session, target string) {
	c, err := a.logoutConfirmation(s)
	if err != nil {
		writePage(w, http.StatusInternalServerError, page{Title: "Sign-out failed", Message: "Portcullis could not prepare the sign-out."})
		return
	}
	fields := []formField{{"confirm", c}}
	if target != "" {
		fields = append(fields, formField{"rd", target})
	}
	w.Header().Set("Cache-Control", "no-store")
	writePage(w, http.StatusOK, page{Title: "Sign out?", Message: "Another site asked to sign you out of Portcullis.",
		Form: &pageForm{Action: PathLogout, Button: "Sign out", Fields: fields}, Link: "/", LinkText: "Stay signed in"})
}

// endSessionURL builds the RP-initiated logout URL, or "" when the
// session's provider has no end_session_endpoint (or is not reachable).
func (a *Authenticator) endSessionURL(r *http.Request, s *session, target string) string {
	p := a.byName[s.Provider]
	if p == nil {
		return ""
	}
	d, err := p.get(r.Context())
	if err != nil || d.endSession == "" {
		return ""
	}
	u, err := url.Parse(d.endSession)
	if err != nil {
		return ""
	}
	q := u.Query()
	q.Set("client_id", p.cfg.ClientID)
	q.Set("post_logout_redirect_uri", a.externalURL(PathLogout, nil))
	if s.IDToken != "" {
		q.Set("id_token_hint", s.IDToken)
	}
	if target != "" {
		if st, err := a.sealer.seal(a.logoutPurpose(), a.clock.Now().Add(logoutStateTTL), []byte(target)); err == nil {
			q.Set("state", st)
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// serveMe answers the caller's identity as JSON, 401 when signed out.
func (a *Authenticator) serveMe(w http.ResponseWriter, r *http.Request) {
	id, err := a.Authenticate(w, r)
	switch {
	case errors.Is(err, ErrProviderUnavailable):
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "provider_unavailable"})
	case err != nil:
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_credentials"})
	case id == nil:
		w.Header().Set("WWW-Authenticate", `Bearer realm="portcullis"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "unauthenticated"})
	default:
		report(r, id)
		writeJSON(w, http.StatusOK, id)
	}
}

func (a *Authenticator) serveJWKS(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "application/jwk-set+json")
	h.Set("Cache-Control", "public, max-age=300")
	h.Set("Access-Control-Allow-Origin", "*")
	_, _ = w.Write(a.signer.jwks)
}
