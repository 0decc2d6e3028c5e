package proxy

import (
	"encoding/json"
	"html/template"
	"net/http"
	"strings"
)

// wantsHTML reports whether the client is a browser (SPEC §3: Accept
// contains text/html; media types are case-insensitive, RFC 9110 §8.3.1).
func wantsHTML(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		if containsFold(v, "text/html") {
			return true
		}
	}
	return false
}

// containsFold reports whether s contains the lower-case ASCII substr,
// ignoring ASCII case.
func containsFold(s, substr string) bool {
	for i := 0; i+len(substr) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(substr)], substr) {
			return true
		}
	}
	return false
}

var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{{.Status}} {{.Title}} · Portcullis</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;background:#f4f5f7;color:#1d2230;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}
main{background:#fff;border-radius:12px;box-shadow:0 4px 24px rgba(0,0,0,.08);padding:2.5rem 3rem;max-width:34rem}
h1{font-size:1.4rem;margin:0 0 .75rem}.code{color:#9aa1b1;font-weight:500}
p{line-height:1.5;margin:.5rem 0}.reason{background:#fff4f2;border-left:4px solid #e5484d;padding:.6rem .9rem;border-radius:4px}
.meta{color:#6b7280;font-size:.85rem;margin-top:1.5rem}code{font-family:ui-monospace,monospace}
a{color:#3451b2}
</style></head><body><main>
<h1><span class="code">{{.Status}}</span> {{.Title}}</h1>
<p>{{.Message}}</p>
{{if .Reason}}<p class="reason">{{.Reason}}</p>{{end}}
{{if .SignOut}}<p><a href="/.portcullis/logout">Sign out</a> or go <a href="/">home</a>.</p>{{end}}
<p class="meta">Request ID <code>{{.RequestID}}</code> · Portcullis</p>
</main></body></html>
`))

type page struct {
	Status    int
	Title     string
	Message   string
	Reason    string
	RequestID string
	SignOut   bool
	// Error is the machine-readable error code of the JSON form.
	Error string
}

// writePage answers with an HTML page for browsers and JSON otherwise.
// Responses Portcullis writes itself are never cached.
func writePage(w http.ResponseWriter, r *http.Request, p page) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if wantsHTML(r) {
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
		w.WriteHeader(p.Status)
		_ = pageTmpl.Execute(w, p)
		return
	}
	h.Set("Content-Type", "application/json")
	w.WriteHeader(p.Status)
	body := map[string]any{"error": p.Error, "request_id": p.RequestID}
	if p.Reason != "" {
		body["reason"] = p.Reason
	}
	_ = json.NewEncoder(w).Encode(body)
}
