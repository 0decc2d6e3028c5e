package proxy

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/portcullis/portcullis/identity"
	"github.com/portcullis/portcullis/policy"
)

// Explanation is what the proxy would decide for a request, without
// forwarding it (`portcullis policy eval`).
type Explanation struct {
	// Route is the matched route, nil when none matched (404).
	Route *Route
	// Input is the policy input document; nil when no policy ran.
	Input *policy.Input
	// Decision is the policy's decision; zero when no policy ran.
	Decision policy.Decision
	// Outcome is the audit decision: allow, deny, unauthenticated or error.
	Outcome string
	// Status is the status the client would receive before forwarding
	// (200 stands for "forwarded").
	Status int
	// Reason explains the outcome.
	Reason string
}

// Explain runs r through the same hygiene, routing and policy steps as
// ServeHTTP, with who as the caller (nil: anonymous), and reports the
// outcome. No upstream is contacted and nothing is audited.
func Explain(ctx context.Context, routes []Route, ev Evaluator, r *http.Request, who *identity.Identity, now time.Time) (*Explanation, error) {
	x := &exchange{start: now, client: clientInfo{Addr: r.RemoteAddr, Proto: "https", Host: r.Host}, who: who}
	if r.URL.Scheme == "http" {
		x.client.Proto = "http"
	}
	host, ok := NormalizeHost(r.Host)
	if !ok {
		return &Explanation{Outcome: "deny", Status: http.StatusBadRequest, Reason: "invalid host"}, nil
	}
	x.host = host
	t, err := ParseTarget(r)
	if err != nil {
		return &Explanation{Outcome: "deny", Status: http.StatusBadRequest, Reason: err.Error()}, nil
	}
	x.target = t
	x.route = newTable(routes).match(host, t.Path)
	if x.route == nil {
		return &Explanation{Outcome: "deny", Status: http.StatusNotFound, Reason: fmt.Sprintf("no route for host %q and path %q", host, t.Path)}, nil
	}
	x.id = "dry-run"
	out := &Explanation{Route: x.route}
	if (who == nil || !who.Authenticated) && !x.route.Public {
		out.Outcome, out.Status, out.Reason = "unauthenticated", http.StatusUnauthorized, "sign-in required: the route is not public"
		// Still show what the policy would say.
	}
	out.Input = policyInput(r, x)
	out.Decision = ev.Eval(ctx, x.route.Policy, out.Input)
	if out.Outcome != "" {
		return out, nil
	}
	switch {
	case out.Decision.Allow:
		out.Outcome, out.Status = "allow", http.StatusOK
	case out.Decision.Outcome == "error":
		out.Outcome, out.Status = "error", http.StatusForbidden
	default:
		out.Outcome, out.Status = "deny", out.Decision.Status
		if out.Status < 400 || out.Status > 599 {
			out.Status = http.StatusForbidden
		}
	}
	out.Reason = out.Decision.Reason
	return out, nil
}
