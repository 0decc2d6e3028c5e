package devidp

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

//go:embed pages/*.html pages/*.css
var pageFiles embed.FS

type pages struct {
	t   *template.Template
	css template.CSS
}

func newPages() (*pages, error) {
	t, err := template.New("").ParseFS(pageFiles, "pages/*.html")
	if err != nil {
		return nil, fmt.Errorf("devidp: parse page templates: %w", err)
	}
	css, err := pageFiles.ReadFile("pages/idp.css")
	if err != nil {
		return nil, fmt.Errorf("devidp: read stylesheet: %w", err)
	}
	return &pages{t: t, css: template.CSS(css)}, nil // #nosec G203 -- our own embedded file
}

// pageData is what every page template sees.
type pageData struct {
	Nonce string
	CSS   template.CSS
	Title string

	// sign-in form
	Action    string
	RequestID string
	CSRF      string
	Client    string
	Username  string
	Error     string
	Hints     []hint

	// error and signed-out pages
	Message string
}

type hint struct {
	Username string
	Name     string
	Email    string
	Password string
	Groups   []string
	Initial  string
}

// render writes a page with headers that keep it out of caches, frames and
// referrers, and a CSP that allows only the page's own inline style and
// script (by nonce). formTarget, when set, is an extra origin the page's
// form may lead to (the client's redirect URI after a sign-in).
func (p *Provider) render(w http.ResponseWriter, status int, name string, d pageData, formTarget string) {
	d.Nonce = randomToken()
	d.CSS = p.pages.css
	var buf bytes.Buffer
	if err := p.pages.t.ExecuteTemplate(&buf, name, d); err != nil {
		p.log.Error("devidp: render page", "page", name, "err", err)
		http.Error(w, "devidp: page could not be rendered", http.StatusInternalServerError)
		return
	}
	formAction := "'self'"
	if u, err := url.Parse(formTarget); err == nil && u.Scheme != "" && u.Host != "" {
		formAction += " " + u.Scheme + "://" + u.Host
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", fmt.Sprintf(
		"default-src 'none'; style-src 'nonce-%[1]s'; script-src 'nonce-%[1]s'; img-src data:; form-action %[2]s; frame-ancestors 'none'; base-uri 'none'",
		d.Nonce, formAction))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func (p *Provider) signInPage(w http.ResponseWriter, r *http.Request, status int, id string, req *authRequest, username, errMsg string) {
	client := p.clients[req.clientID]
	d := pageData{
		Title:     "Sign in",
		Action:    p.base + pathAuthorize,
		RequestID: id,
		CSRF:      req.csrf,
		Client:    client.displayName(),
		Username:  username,
		Error:     errMsg,
	}
	p.mu.Lock()
	for _, u := range p.users {
		if u.Hint {
			d.Hints = append(d.Hints, hint{
				Username: u.Username, Name: u.displayName(), Email: u.Email, Password: u.Password,
				Groups: slices.Clone(u.Groups), Initial: initial(u.displayName()),
			})
		}
	}
	p.mu.Unlock()
	slices.SortFunc(d.Hints, func(a, b hint) int { return strings.Compare(a.Username, b.Username) })
	p.render(w, status, "signin.html", d, req.redirectURI)
}

func (p *Provider) errorPage(w http.ResponseWriter, r *http.Request, status int, title, msg string) {
	p.render(w, status, "message.html", pageData{Title: title, Message: msg}, "")
}

func (p *Provider) signedOutPage(w http.ResponseWriter, r *http.Request, status int, extra string) {
	msg := "You have signed out of the Portcullis development identity provider. You can close this tab."
	if extra != "" {
		msg = extra + " " + msg
	}
	p.render(w, status, "message.html", pageData{Title: "You are signed out", Message: msg}, "")
}

// initial is the first letter of name, upper-cased, for an avatar.
func initial(name string) string {
	for _, r := range name {
		return strings.ToUpper(string(r))
	}
	return "?"
}
