package identity

import (
	"bufio"
	"net/url"
	"os"
	"path/filepath"
	"testing"
)

const allowedHost = "www.whitelisteddomain.tld"

func corpusChecker() *returnChecker {
	return &returnChecker{
		externalHost: "auth.example.com",
		hostAllowed:  func(h string) bool { return h == allowedHost || h == "xn--bcher-kva.example" },
		httpsPort:    "8443",
	}
}

// TestOpenRedirectCorpus: none of the 559 public open-redirect payloads
// (testdata/openredirects.txt, query-unescaped once as a browser
// would deliver ?rd=...) may be followed.
func TestOpenRedirectCorpus(t *testing.T) {
	path := filepath.Join("..", "testdata", "openredirects.txt")
	f, err := os.Open(path)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("open-redirect corpus missing under CI: %v", err)
		}
		t.Skipf("open-redirect corpus not found (%v): it lives in testdata/ at the repository root", err)
	}
	defer f.Close()
	c := corpusChecker()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := sc.Text()
		rd, err := url.QueryUnescape(line)
		if err != nil {
			continue // a browser could not deliver it either: nothing to follow
		}
		if got, ok := c.check(rd, allowedHost, ""); ok {
			t.Errorf("line %d %q: followed to %q", n, line, got)
		}
	}
	if n < 559 {
		t.Errorf("read %d lines, want 559", n)
	}
}

func TestReturnTargetsRefused(t *testing.T) {
	payloads := []string{
		"//evil.com",
		"///evil.com",
		"////evil.com",
		"/\\evil.com",
		"\\\\evil.com",
		"\\/evil.com",
		"/%2fevil.com",
		"/%2F%2Fevil.com",
		"/%5cevil.com",
		"/%5Cevil.com",
		"%2f%2fevil.com",
		"/%252f%252fevil.com",
		"/%25%32%66evil.com",
		"/%09/evil.com",
		"/ /evil.com",
		"/\t/evil.com",
		"/\n/evil.com",
		"/foo\r\nLocation: https://evil.com",
		"/./\\evil.com",
		"/../evil.com",
		"/a/../../evil.com",
		"/a/./b",
		"https://evil.com",
		"http://www.whitelisteddomain.tld/",
		"HTTP://www.whitelisteddomain.tld/",
		"javascript:alert(1)",
		"JaVaScRiPt:alert(1)",
		"data:text/html,<script>alert(1)</script>",
		"vbscript:msgbox(1)",
		"ftp://www.whitelisteddomain.tld/",
		"https:evil.com",
		"https:/evil.com",
		"https:///evil.com",
		"https:\\\\evil.com",
		"https://www.whitelisteddomain.tld@evil.com/",
		"https://evil.com@www.whitelisteddomain.tld/",
		"https://user:pass@www.whitelisteddomain.tld/",
		"https://www.whitelisteddomain.tld.evil.com/",
		"https://evil.com/www.whitelisteddomain.tld",
		"https://evil.com?www.whitelisteddomain.tld",
		"https://evil.com#www.whitelisteddomain.tld",
		"https://www.whitelisteddomain.tld%2eevil.com/",
		"https://www.whitelisteddomain.tld%2fevil.com",
		"https://www.whitelisteddomain.tld:8080/",
		"https://www.whitelisteddomain.tld:443@evil.com/",
		"https://www.whitelisteddomain.tld:/",
		"https://www.whitelisteddomain.tld:abc/",
		"https://www.whitelisteddomain.tld./",
		"https://www.whitelisteddomaın.tld/", // dotless i
		"https://ｗｗｗ.whitelisteddomain.tld/", // full-width
		"https://bücher.example/",            // IDN not in its ASCII form
		"https://xn--bcher-kva.example.evil/",
		"https://[::1]/",
		"https://127.0.0.1/",
		"https://0x7f.1/",
		"https://www.whitelisteddomain.tld//evil.com",
		"https://www.whitelisteddomain.tld/\\evil.com",
		"https://www.whitelisteddomain.tld/%2f%2fevil.com",
		"https://www.whitelisteddomain.tld/?next=//evil.com",
		"https://www.whitelisteddomain.tld/a b",
		"https://www.whitelisteddomain.tld/%00",
		"/<script>",
		"/\"onload=alert(1)",
		"/`x`",
		"/%0d%0aSet-Cookie:x=1",
		"〱evil.com",
		"ゝevil.com",
		"@evil.com",
		".evil.com",
		"evil.com",
		"?x=1",
		"#frag",
		" /x",
		"/x ",
		"",
	}
	if len(payloads) < 40 {
		t.Fatalf("only %d payloads", len(payloads))
	}
	c := corpusChecker()
	for _, p := range payloads {
		t.Run(p, func(t *testing.T) {
			if got, ok := c.check(p, allowedHost, ""); ok {
				t.Errorf("check(%q) followed to %q, want refusal", p, got)
			}
		})
	}
	long := "/" + string(make([]byte, 0)) + repeat("a", maxReturnLen)
	if _, ok := c.check(long, allowedHost, ""); ok {
		t.Error("an over-long target was followed")
	}
}

func repeat(s string, n int) string {
	out := make([]byte, 0, n)
	for len(out) < n {
		out = append(out, s...)
	}
	return string(out)
}

func TestReturnTargetsFollowed(t *testing.T) {
	c := corpusChecker()
	cases := []struct{ raw, host, port, want string }{
		{"/", allowedHost, "", "https://www.whitelisteddomain.tld/"},
		{"/reports/q3", allowedHost, "", "https://www.whitelisteddomain.tld/reports/q3"},
		{"/reports/q3?year=2026&tab=a%20b#top", allowedHost, "", "https://www.whitelisteddomain.tld/reports/q3?year=2026&tab=a%20b#top"},
		{"/files/my%20doc.pdf", allowedHost, "", "https://www.whitelisteddomain.tld/files/my%20doc.pdf"},
		{"/caf%C3%A9", allowedHost, "", "https://www.whitelisteddomain.tld/caf%C3%A9"},
		{"/x", "localhost", "8443", "https://localhost:8443/x"},
		{"/.portcullis/me", allowedHost, "", "https://www.whitelisteddomain.tld/.portcullis/me"},
		{"https://www.whitelisteddomain.tld/", allowedHost, "", "https://www.whitelisteddomain.tld/"},
		{"https://www.whitelisteddomain.tld", allowedHost, "", "https://www.whitelisteddomain.tld"},
		{"https://WWW.WhitelistedDomain.tld/Path", "other", "", "https://www.whitelisteddomain.tld/Path"},
		{"https://www.whitelisteddomain.tld:8443/a?b=c", "other", "", "https://www.whitelisteddomain.tld:8443/a?b=c"},
		{"https://www.whitelisteddomain.tld:443/a", "other", "", "https://www.whitelisteddomain.tld:443/a"},
		{"https://www.whitelisteddomain.tld:9443/a", "other", "9443", "https://www.whitelisteddomain.tld:9443/a"},
		{"https://auth.example.com/done", "other", "", "https://auth.example.com/done"},
		{"https://xn--bcher-kva.example/", "other", "", "https://xn--bcher-kva.example/"},
		{"HTTPS://www.whitelisteddomain.tld/", "other", "", "https://www.whitelisteddomain.tld/"},
	}
	for _, tc := range cases {
		t.Run(tc.raw, func(t *testing.T) {
			got, ok := c.check(tc.raw, tc.host, tc.port)
			if !ok || got != tc.want {
				t.Errorf("check(%q) = %q, %v; want %q, true", tc.raw, got, ok, tc.want)
			}
		})
	}
}
