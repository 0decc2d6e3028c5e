package audit

import (
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// The canonical encoding, written by hand.
//
// Record encodes every event once, on the request's goroutine; with
// encoding/json's reflection that was the largest cost of recording. The
// functions below append exactly the bytes json.Marshal writes for the
// same values (TestEncodeBodyMatchesJSON compares them on tricky strings
// and numbers), so the hash of chain.go is unchanged and any JSON decoder
// reads the events back.

// appendBody appends the fields after Hash (request_id to duration_ms)
// and the closing brace: what json.Marshal(eventBody{...}) writes after its
// opening brace.
func appendBody(b []byte, ev *Event) ([]byte, error) {
	b = append(b, `"request_id":`...)
	b = appendJSONString(b, ev.RequestID)
	b = append(b, `,"decision":`...)
	b = appendJSONString(b, ev.Decision)
	b = append(b, `,"reason":`...)
	b = appendJSONString(b, ev.Reason)
	b = append(b, `,"route":`...)
	b = appendJSONString(b, ev.Route)
	b = append(b, `,"policy":{"package":`...)
	b = appendJSONString(b, ev.Policy.Package)
	b = append(b, `,"revision":`...)
	b = appendJSONString(b, ev.Policy.Revision)
	b = append(b, `},"user":{"sub":`...)
	b = appendJSONString(b, ev.User.Sub)
	b = append(b, `,"email":`...)
	b = appendJSONString(b, ev.User.Email)
	b = append(b, `,"groups":`...)
	if ev.User.Groups == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, g := range ev.User.Groups {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, g)
		}
		b = append(b, ']')
	}
	b = append(b, `,"provider":`...)
	b = appendJSONString(b, ev.User.Provider)
	b = append(b, `,"auth_method":`...)
	b = appendJSONString(b, ev.User.AuthMethod)
	b = append(b, `},"request":{"method":`...)
	b = appendJSONString(b, ev.Request.Method)
	b = append(b, `,"host":`...)
	b = appendJSONString(b, ev.Request.Host)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, ev.Request.Path)
	b = append(b, `,"remote_addr":`...)
	b = appendJSONString(b, ev.Request.RemoteAddr)
	b = append(b, `,"user_agent":`...)
	b = appendJSONString(b, ev.Request.UserAgent)
	b = append(b, `},"response":{"status":`...)
	b = strconv.AppendInt(b, int64(ev.Response.Status), 10)
	b = append(b, `},"duration_ms":{"authn":`...)
	var err error
	if b, err = appendJSONFloat(b, ev.DurationMS.Authn); err != nil {
		return nil, err
	}
	b = append(b, `,"policy":`...)
	if b, err = appendJSONFloat(b, ev.DurationMS.Policy); err != nil {
		return nil, err
	}
	b = append(b, `,"upstream":`...)
	if b, err = appendJSONFloat(b, ev.DurationMS.Upstream); err != nil {
		return nil, err
	}
	b = append(b, `,"total":`...)
	if b, err = appendJSONFloat(b, ev.DurationMS.Total); err != nil {
		return nil, err
	}
	return append(b, "}}"...), nil
}

// appendJSONFloat appends f as encoding/json writes a float64 (ES6 number
// formatting); NaN and infinities are errors, as they are for json.Marshal.
func appendJSONFloat(b []byte, f float64) ([]byte, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return nil, fmt.Errorf("audit: encode event: unsupported duration %v", f)
	}
	if b, ok := appendMillis(b, f); ok {
		return b, nil
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-09 becomes e-9.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, nil
}

// appendMillis is appendJSONFloat's fast path for the durations the proxy
// records: whole microseconds in milliseconds, f == float64(n)/1000 for an
// integer n >= 0 below 1e12. Such an f is the double nearest to the
// decimal n/1000 (IEEE division rounds correctly), and no decimal with
// fewer digits is nearest to it (another multiple of 0.001 is at least
// 0.001 away, and doubles below 1e9 are far closer together than that),
// so n/1000 without its trailing zeros is the shortest decimal that reads
// back as f: exactly what strconv, and so encoding/json, writes. It
// reports false, appending nothing, for any other f (and for -0).
func appendMillis(b []byte, f float64) ([]byte, bool) {
	if !(f >= 0 && f < 1e9) || math.Signbit(f) {
		return b, false
	}
	r := math.Round(f * 1000)
	if r/1000 != f {
		return b, false
	}
	n := uint64(r)
	b = strconv.AppendUint(b, n/1000, 10)
	frac := n % 1000
	if frac == 0 {
		return b, true
	}
	d := [4]byte{'.', byte('0' + frac/100), byte('0' + frac/10%10), byte('0' + frac%10)}
	end := 4
	for d[end-1] == '0' {
		end--
	}
	return append(b, d[:end]...), true
}

// appendJSONString appends s quoted as encoding/json quotes a string with
// HTML escaping on: ", \ and control characters escaped (\b \f \n \r \t
// short), <, > and & as \u003c \u003e \u0026, U+2028 and U+2029 escaped,
// and each byte of invalid UTF-8 replaced by \ufffd.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if jsonSafe[c] {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// jsonSafe marks the bytes appendJSONString copies as they are without
// looking further: printable ASCII but ", \, <, > and &. (Bytes from 0x80
// start a UTF-8 sequence, which is checked.)
var jsonSafe = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// validInstance reports whether id is a valid instance id (what
// instancePattern matches), without the regular expression's cost.
func validInstance(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
