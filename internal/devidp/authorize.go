package devidp

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	sessionCookie = "devidp_session"
	bindingCookie = "devidp_browser"
	// formMarker distinguishes a sign-in form submission from an
	// authorization request sent with POST.
	formMarker = "devidp_form"
	// maxFailures ends a sign-in form after this many wrong passwords.
	maxFailures = 5
	maxFormBody = 64 << 10
)

// pkceChallenge is a base64url SHA-256 digest: 43 characters, no padding.
var pkceChallenge = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)

// authorize serves the authorization endpoint: the authorization request
// (GET, or POST without the form marker) and the sign-in form's submission.
func (p *Provider) authorize(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		p.authorizationRequest(w, r, r.URL.Query())
	case http.MethodPost:
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
		if err := r.ParseForm(); err != nil {
			p.errorPage(w, r, http.StatusBadRequest, "The request could not be read", "The form data was malformed or too large.")
			return
		}
		if r.PostForm.Has(formMarker) {
			p.signIn(w, r)
			return
		}
		p.authorizationRequest(w, r, r.PostForm)
	default:
		w.Header().Set("Allow", "GET, POST")
		p.errorPage(w, r, http.StatusMethodNotAllowed, "Method not allowed", "The authorization endpoint accepts GET and POST.")
	}
}

// authorizationRequest validates the request (RFC 6749 §4.1.1, RFC 7636,
// OpenID Connect Core §3.1.2) and either answers at once from the provider's
// own session or shows the sign-in form.
func (p *Provider) authorizationRequest(w http.ResponseWriter, r *http.Request, q url.Values) {
	// Until the client and its redirect URI are known to be good, errors
	// must not redirect: that is what turns a provider into an open
	// redirector.
	clientID := q.Get("client_id")
	client, ok := p.clients[clientID]
	if !ok {
		p.log.Warn("devidp: authorization request for unknown client", "client_id", clientID)
		p.errorPage(w, r, http.StatusBadRequest, "Unknown application",
			"The application that sent you here is not registered with this identity provider (client_id "+strconv.Quote(clientID)+").")
		return
	}
	redirectURI := q.Get("redirect_uri")
	if !slices.Contains(client.RedirectURIs, redirectURI) {
		p.log.Warn("devidp: authorization request with unregistered redirect_uri", "client_id", clientID, "redirect_uri", redirectURI)
		p.errorPage(w, r, http.StatusBadRequest, "Unregistered return address",
			"The application asked to return you to an address that is not registered for it, so this identity provider will not send you there.")
		return
	}
	state := q.Get("state")
	fail := func(code, desc string) {
		p.log.Warn("devidp: authorization request rejected", "client_id", clientID, "error", code, "description", desc)
		p.redirectResult(w, r, redirectURI, url.Values{"error": {code}, "error_description": {desc}}, state)
	}
	switch {
	case q.Has("request"):
		fail("request_not_supported", "request objects are not supported")
		return
	case q.Has("request_uri"):
		fail("request_uri_not_supported", "request_uri is not supported")
		return
	case q.Get("response_type") != "code":
		fail("unsupported_response_type", "only response_type=code is supported")
		return
	case q.Has("response_mode") && q.Get("response_mode") != "query":
		fail("invalid_request", "only response_mode=query is supported")
		return
	case !slices.Contains(strings.Fields(q.Get("scope")), "openid"):
		fail("invalid_scope", "the openid scope is required")
		return
	case q.Get("code_challenge") == "":
		fail("invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256")
		return
	case q.Get("code_challenge_method") != "S256":
		fail("invalid_request", "code_challenge_method must be S256")
		return
	case !pkceChallenge.MatchString(q.Get("code_challenge")):
		fail("invalid_request", "code_challenge must be a base64url-encoded SHA-256 digest")
		return
	}
	prompts := strings.Fields(q.Get("prompt"))
	if slices.Contains(prompts, "none") && len(prompts) > 1 {
		fail("invalid_request", "prompt=none cannot be combined with other values")
		return
	}
	maxAge := -1
	if v := q.Get("max_age"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			fail("invalid_request", "max_age must be a non-negative integer")
			return
		}
		maxAge = n
	}
	req := &authRequest{
		clientID:    clientID,
		redirectURI: redirectURI,
		state:       state,
		nonce:       q.Get("nonce"),
		scope:       q.Get("scope"),
		challenge:   q.Get("code_challenge"),
	}

	now := p.clock.Now()
	if !slices.Contains(prompts, "login") {
		if sess, user, ok := p.currentSession(r, now); ok && (maxAge < 0 || now.Sub(sess.authTime) <= time.Duration(maxAge)*time.Second) {
			p.issueCode(w, r, req, user, sess.authTime)
			return
		}
	}
	if slices.Contains(prompts, "none") {
		fail("login_required", "the user is not signed in at the identity provider")
		return
	}

	binding := p.browserBinding(w, r)
	req.csrf = randomToken()
	req.binding = binding
	req.expires = now.Add(p.formTTL)
	id := randomToken()
	p.mu.Lock()
	p.st.sweep(now)
	full := len(p.st.forms) >= maxEntries
	if !full {
		p.st.forms[id] = req
	}
	p.mu.Unlock()
	if full {
		p.errorPage(w, r, http.StatusServiceUnavailable, "Too many sign-ins in progress", errFull.Error())
		return
	}
	p.signInPage(w, r, http.StatusOK, id, req, "", "")
}

// signIn handles the sign-in form: it checks the form token, then the
// password, then starts a provider session and answers the client.
func (p *Provider) signIn(w http.ResponseWriter, r *http.Request) {
	id := r.PostForm.Get("request")
	now := p.clock.Now()
	p.mu.Lock()
	p.st.sweep(now)
	req, ok := p.st.forms[id]
	var pending authRequest
	if ok {
		pending = *req
	}
	p.mu.Unlock()
	if !ok {
		p.errorPage(w, r, http.StatusBadRequest, "This sign-in form has expired",
			"Go back to the application and sign in again; a fresh form will be shown.")
		return
	}
	cookie, _ := r.Cookie(bindingCookie)
	if cookie == nil || !equalSecret(cookie.Value, pending.binding) || !equalSecret(r.PostForm.Get("csrf"), pending.csrf) {
		p.log.Warn("devidp: sign-in form with a bad CSRF token", "client_id", pending.clientID)
		p.errorPage(w, r, http.StatusForbidden, "The sign-in form could not be verified",
			"Its security token did not match this browser, so nothing was done. Go back to the application and sign in again.")
		return
	}
	if r.PostForm.Get("action") == "cancel" {
		p.mu.Lock()
		delete(p.st.forms, id)
		p.mu.Unlock()
		p.redirectResult(w, r, pending.redirectURI, url.Values{"error": {"access_denied"}, "error_description": {"the user cancelled the sign-in"}}, pending.state)
		return
	}

	username := strings.TrimSpace(r.PostForm.Get("username"))
	user, ok := p.checkPassword(username, r.PostForm.Get("password"))
	if !ok {
		p.mu.Lock()
		req, still := p.st.forms[id]
		failures := 0
		if still {
			req.failures++
			failures = req.failures
			if failures >= maxFailures {
				delete(p.st.forms, id)
			}
		}
		p.mu.Unlock()
		p.log.Warn("devidp: wrong password", "username", username, "client_id", pending.clientID)
		if !still || failures >= maxFailures {
			p.errorPage(w, r, http.StatusForbidden, "Too many attempts",
				"This sign-in form has been closed after several wrong passwords. Go back to the application to try again.")
			return
		}
		p.signInPage(w, r, http.StatusUnauthorized, id, &pending, username, "That user name and password do not match. Try again.")
		return
	}

	p.mu.Lock()
	_, still := p.st.forms[id]
	delete(p.st.forms, id) // one form, one sign-in
	p.mu.Unlock()
	if !still {
		p.errorPage(w, r, http.StatusBadRequest, "This sign-in form has expired",
			"Go back to the application and sign in again; a fresh form will be shown.")
		return
	}
	authTime := now.Truncate(time.Second)
	if err := p.startSession(w, user, authTime); err != nil {
		p.errorPage(w, r, http.StatusServiceUnavailable, "Too many sign-ins in progress", err.Error())
		return
	}
	p.log.Info("devidp: signed in", "username", user.Username, "sub", user.subject(), "client_id", pending.clientID)
	p.issueCode(w, r, &pending, user, authTime)
}

// checkPassword compares in constant time, and does the same work for an
// unknown user name as for a known one.
func (p *Provider) checkPassword(username, password string) (User, bool) {
	p.mu.Lock()
	user, known := p.users[username]
	p.mu.Unlock()
	want := sha256.Sum256([]byte(user.Password))
	got := sha256.Sum256([]byte(password))
	match := subtle.ConstantTimeCompare(want[:], got[:]) == 1
	if !known || !match {
		return User{}, false
	}
	return cloneUser(user), true
}

// issueCode stores a one-time code for the request and redirects to the
// client with it.
func (p *Provider) issueCode(w http.ResponseWriter, r *http.Request, req *authRequest, user User, authTime time.Time) {
	code := randomToken()
	now := p.clock.Now()
	p.mu.Lock()
	p.st.sweep(now)
	full := len(p.st.codes) >= maxEntries
	if !full {
		p.st.codes[digest(code)] = &codeEntry{
			grant: grant{
				clientID: req.clientID,
				subject:  user.subject(),
				scope:    req.scope,
				nonce:    req.nonce,
				authTime: authTime,
			},
			redirectURI: req.redirectURI,
			challenge:   req.challenge,
			expires:     now.Add(p.codeTTL),
		}
	}
	p.mu.Unlock()
	if full {
		p.redirectResult(w, r, req.redirectURI, url.Values{"error": {"temporarily_unavailable"}, "error_description": {errFull.Error()}}, req.state)
		return
	}
	p.redirectResult(w, r, req.redirectURI, url.Values{"code": {code}}, req.state)
}

// redirectResult sends the browser back to a registered redirect URI with
// the result parameters, the state and the issuer (RFC 9207).
func (p *Provider) redirectResult(w http.ResponseWriter, r *http.Request, redirectURI string, params url.Values, state string) {
	u, err := url.Parse(redirectURI)
	if err != nil { // registered URIs were parsed at New
		p.errorPage(w, r, http.StatusInternalServerError, "Bad redirect URI", err.Error())
		return
	}
	q := u.Query()
	for k, vs := range params {
		q[k] = vs
	}
	if state != "" {
		q.Set("state", state)
	}
	q.Set("iss", p.issuer)
	u.RawQuery = q.Encode()
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	status := http.StatusFound
	if r.Method == http.MethodPost {
		status = http.StatusSeeOther
	}
	http.Redirect(w, r, u.String(), status)
}

// browserBinding returns the value of the cookie that ties sign-in forms to
// the browser that loaded them, setting it when missing. A form token is
// accepted only together with this cookie, which another site can neither
// read nor set: that is what stops login CSRF.
func (p *Provider) browserBinding(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(bindingCookie); err == nil && len(c.Value) == 43 {
		return c.Value
	}
	v := randomToken()
	http.SetCookie(w, &http.Cookie{
		Name:     bindingCookie,
		Value:    v,
		Path:     p.cookiePath(),
		Secure:   p.secure,
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode,
	})
	return v
}

func (p *Provider) startSession(w http.ResponseWriter, user User, authTime time.Time) error {
	id := randomToken()
	now := p.clock.Now()
	p.mu.Lock()
	p.st.sweep(now)
	full := len(p.st.sessions) >= maxEntries
	if !full {
		p.st.sessions[digest(id)] = &sessionEntry{subject: user.subject(), authTime: authTime, expires: now.Add(p.sessionTTL)}
	}
	p.mu.Unlock()
	if full {
		return errFull
	}
	http.SetCookie(w, &http.Cookie{
		Name:     sessionCookie,
		Value:    id,
		Path:     p.cookiePath(),
		MaxAge:   int(p.sessionTTL / time.Second),
		Secure:   p.secure,
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode,
	})
	return nil
}

// currentSession returns the provider session named by the request's
// cookie, if it is live and its user still exists.
func (p *Provider) currentSession(r *http.Request, now time.Time) (sessionEntry, User, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return sessionEntry{}, User{}, false
	}
	p.mu.Lock()
	s, ok := p.st.sessions[digest(c.Value)]
	var sess sessionEntry
	if ok {
		sess = *s
	}
	p.mu.Unlock()
	if !ok || !now.Before(sess.expires) {
		return sessionEntry{}, User{}, false
	}
	user, ok := p.userBySubject(sess.subject)
	if !ok {
		return sessionEntry{}, User{}, false
	}
	return sess, user, true
}

// endProviderSession forgets the session named by the request's cookie and
// clears the cookie.
func (p *Provider) endProviderSession(w http.ResponseWriter, r *http.Request) (subject string) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		p.mu.Lock()
		if s, ok := p.st.sessions[digest(c.Value)]; ok {
			subject = s.subject
			delete(p.st.sessions, digest(c.Value))
		}
		p.mu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{
		Name:     sessionCookie,
		Value:    "",
		Path:     p.cookiePath(),
		MaxAge:   -1,
		Secure:   p.secure,
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode,
	})
	return subject
}

// equalSecret compares two secrets in constant time; empty never matches.
func equalSecret(got, want string) bool {
	if got == "" || want == "" {
		return false
	}
	g := sha256.Sum256([]byte(got))
	h := sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], h[:]) == 1
}
