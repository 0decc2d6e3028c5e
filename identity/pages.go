package identity

import (
	"bytes"
	"encoding/json"
	"html/template"
	"net/http"
)

// pageTmpl renders every HTML page the identity endpoints answer with:
// provider choice, signed out, and errors. Everything is escaped by
// html/template.
var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{{.Title}} · Portcullis</title>
<style>
:root{color-scheme:light dark;--fg:#1d2230;--muted:#5b6475;--bg:#f4f6fa;--card:#fff;--accent:#3856d6;--border:#dfe3ec}
@media (prefers-color-scheme:dark){:root{--fg:#e7eaf2;--muted:#9aa3b5;--bg:#12151c;--card:#1b2029;--accent:#7d95ff;--border:#2c3342}}
*{box-sizing:border-box}body{margin:0;min-height:100vh;display:grid;place-items:center;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif}
main{width:min(26rem,92vw);background:var(--card);border:1px solid var(--border);border-radius:14px;padding:2rem 2rem 1.5rem;box-shadow:0 8px 30px rgba(0,0,0,.06)}
.brand{display:flex;align-items:center;gap:.5rem;color:var(--muted);font-size:.85rem;letter-spacing:.04em;text-transform:uppercase;margin-bottom:1rem}
.brand svg{width:1.2rem;height:1.2rem}
h1{font-size:1.35rem;margin:0 0 .5rem}p{margin:.25rem 0 1rem;color:var(--muted)}
a.btn,button.btn{display:block;width:100%;font:inherit;cursor:pointer;background:none;text-align:center;text-decoration:none;padding:.7rem 1rem;margin:.5rem 0;border-radius:10px;border:1px solid var(--border);color:var(--fg);font-weight:600}
a.btn:hover,button.btn:hover{border-color:var(--accent);color:var(--accent)}.primary{background:var(--accent)!important;border-color:var(--accent)!important;color:#fff!important}.primary:hover{opacity:.9}
.code{font-family:ui-monospace,monospace;font-size:.8rem;color:var(--muted)}
</style></head><body><main>
<div class="brand"><svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2"><path d="M4 21V8l8-5 8 5v13"/><path d="M8 21v-8h8v8M8 17h8"/></svg>Portcullis</div>
<h1>{{.Title}}</h1>
{{if .Message}}<p>{{.Message}}</p>{{end}}
{{range .Providers}}<a class="btn" href="{{.URL}}">Continue with {{.Name}}</a>{{end}}
{{with .Form}}<form method="post" action="{{.Action}}">{{range .Fields}}<input type="hidden" name="{{.Name}}" value="{{.Value}}">{{end}}<button class="btn primary" type="submit">{{.Button}}</button></form>{{end}}
{{if .Link}}<a class="btn primary" href="{{.Link}}">{{.LinkText}}</a>{{end}}
{{if .Detail}}<p class="code">{{.Detail}}</p>{{end}}
</main></body></html>
`))

type page struct {
	Title, Message, Detail string
	Link, LinkText         string
	Providers              []providerChoice
	Form                   *pageForm
}

// pageForm is a same-origin POST form with hidden fields and one button.
type pageForm struct {
	Action, Button string
	Fields         []formField
}

type formField struct{ Name, Value string }

type providerChoice struct{ Name, URL string }

func writePage(w http.ResponseWriter, status int, p page) {
	var buf bytes.Buffer
	if err := pageTmpl.Execute(&buf, p); err != nil {
		http.Error(w, p.Title, status)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
