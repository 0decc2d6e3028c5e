package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestHTTP2DowngradeSmuggling sends HTTP/2 requests whose framing
// disagrees with itself (H2.CL, H2.TE), or whose header values and
// pseudo-headers carry CR LF or a whole request line, written frame by
// frame as an attacker's client would. The proxy speaks HTTP/1.1 to the
// upstream, where such requests become desync attacks if passed on: the
// upstream must only ever receive requests the proxy allowed and audited,
// never /smuggled, never a header the client smuggled in, and no request
// may end in a 500.
func TestHTTP2DowngradeSmuggling(t *testing.T) {
	up := newSmuggleUpstream(t)
	ps, _, rec, _ := newTestProxy(t, []Route{{Name: "app", Host: "app.test", Path: "/", Upstream: up.srv.URL}})

	const hidden = "GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n"
	base := func(method, path string, extra ...[2]string) [][2]string {
		h := [][2]string{{":method", method}, {":scheme", "https"}, {":authority", "app.test"}, {":path", path}, {"authorization", "Test alice"}}
		return append(h, extra...)
	}
	cases := []struct {
		name    string
		headers [][2]string
		data    []string
	}{
		{"H2.CL content-length 0 with a request as data", base("POST", "/a", [2]string{"content-length", "0"}), []string{hidden}},
		{"H2.CL content-length shorter than data", base("POST", "/a", [2]string{"content-length", "5"}), []string{"hello" + hidden}},
		{"H2.CL content-length longer than data", base("POST", "/a", [2]string{"content-length", "500"}), []string{"hello"}},
		{"H2.TE chunked", base("POST", "/a", [2]string{"transfer-encoding", "chunked"}), []string{"0\r\n\r\n" + hidden}},
		{"H2 connection header", base("POST", "/a", [2]string{"connection", "keep-alive"}), []string{"x"}},
		{"CRLF in a header value", base("GET", "/a", [2]string{"x-pad", "a\r\nTransfer-Encoding: chunked"}), nil},
		{"CRLF in a header value to smuggle identity", base("GET", "/a", [2]string{"x-pad", "a\r\nX-Portcullis-User: root"}), nil},
		{"request line in :path", base("GET", "/a HTTP/1.1\r\nHost: app.test\r\n\r\n"+hidden), nil},
		{"space in :path", base("GET", "/a /smuggled"), nil},
		{"CRLF in :method", base("GET /smuggled HTTP/1.1\r\nX:", "/a"), nil},
		{"upper-case header name", base("GET", "/a", [2]string{"X-Portcullis-User", "root"}), nil},
		{"colon in header name", base("GET", "/a", [2]string{"x:pad", "a"}), nil},
		{"host header beside :authority", base("GET", "/a", [2]string{"host", "other.test"}), nil},
		{"te: trailers is allowed", base("GET", "/a", [2]string{"te", "trailers"}), nil},
		{"clean request", base("POST", "/a", [2]string{"content-length", "5"}), []string{"hello"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(rec.all())
			outcome := h2Exchange(t, ps, tc.headers, tc.data)
			got := up.take()
			// The declared length may be forwarded and answered before the
			// extra DATA is seen (then the stream is reset): the upstream
			// must have the declared body only, which is checked below.
			mayAnswer := map[string]string{
				"H2.CL content-length 0 with a request as data": "",
				"H2.CL content-length shorter than data":        "hello",
				"host header beside :authority":                 "",
				"te: trailers is allowed":                       "",
				"clean request":                                 "hello",
			}
			declared, ok := mayAnswer[tc.name]
			if !ok && outcome == "200" {
				t.Errorf("outcome 200: an HTTP/2 request with malformed framing or fields must be refused (400, or the stream reset)")
			}
			for _, r := range got {
				if !r.broken && r.body != declared {
					t.Errorf("the upstream received the complete body %q, want the declared %q", r.body, declared)
				}
			}
			if strings.HasPrefix(outcome, "5") && outcome != "502" {
				t.Errorf("outcome %s: a framing trick must be refused, not a server error", outcome)
			}
			checkForwarded(t, got, rec, before)
			for _, r := range got {
				if strings.Contains(r.body, "HTTP/1.1") && !r.broken && outcome == "200" {
					t.Errorf("the upstream received a complete body holding a request: %q (client saw %s)", r.body, outcome)
				}
			}
			if tc.name == "clean request" && (outcome != "200" || len(got) != 1 || got[0].body != "hello") {
				t.Errorf("a clean HTTP/2 POST: outcome %s, upstream %+v", outcome, got)
			}
			if tc.name == "te: trailers is allowed" && outcome != "200" {
				t.Errorf("te: trailers: outcome %s, want 200", outcome)
			}
		})
	}
}

// h2Exchange sends one HTTP/2 request on stream 1 of a fresh connection,
// with the header fields exactly as given (hpack-encoded, no validation)
// and data as DATA frames, and returns the response's :status, "rst" when
// the stream was reset, or "goaway" when the connection was closed.
func h2Exchange(t *testing.T, ps *httptest.Server, headers [][2]string, data []string) string {
	t.Helper()
	conn, err := tls.Dial("tcp", ps.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, h := range headers {
		enc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true, EndStream: len(data) == 0}); err != nil {
		t.Fatal(err)
	}
	for i, d := range data {
		if err := fr.WriteData(1, i == len(data)-1, []byte(d)); err != nil {
			return "goaway" // the server may already have closed the connection
		}
	}
	status := ""
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			if status != "" {
				return status
			}
			return "goaway"
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				if s := f.PseudoValue("status"); s != "" {
					if _, err := strconv.Atoi(s); err != nil {
						t.Fatalf("bad :status %q", s)
					}
					status = s
				}
				if f.StreamEnded() {
					return status
				}
			}
		case *http2.DataFrame:
			if f.StreamID == 1 && f.StreamEnded() {
				return status
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				if status != "" {
					return status
				}
				return "rst"
			}
		case *http2.GoAwayFrame:
			if status != "" {
				return status
			}
			return fmt.Sprintf("goaway")
		}
	}
}
