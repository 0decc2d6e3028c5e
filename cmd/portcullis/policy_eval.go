package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/portcullis/portcullis/identity"
	"github.com/portcullis/portcullis/internal/config"
	"github.com/portcullis/portcullis/policy"
	"github.com/portcullis/portcullis/proxy"
)

// runPolicy dispatches `portcullis policy test|eval`.
func runPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const usage = `Usage: portcullis policy COMMAND [flags]

Commands:
  test [DIR...]                   run the Rego unit tests (test_ rules) of each DIR (default ./policies)
  eval --config FILE --url URL    dry-run one request: the matched route, input, decision and reason

Run "portcullis help policy COMMAND" (or "portcullis policy COMMAND --help") for every flag.
`
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "test":
		return runPolicyTest(ctx, args[1:], stdout, stderr)
	case "eval":
		return runPolicyEval(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "portcullis policy: unknown subcommand %q\n%s", args[0], usage)
	return exitUsage
}

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func runPolicyEval(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("policy eval", "policy eval --config FILE --url URL [--method M] [--user SUB] [--email E] [--groups a,b] [--header K=V]...", stderr)
	cfgPath := fs.String("config", "", "configuration file (YAML)")
	rawURL := fs.String("url", "", "the request URL, e.g. https://app.example.com/reports?q=1")
	method := fs.String("method", "GET", "HTTP method")
	user := fs.String("user", "", "subject of the signed-in user (empty: anonymous)")
	email := fs.String("email", "", "email of the user")
	emailVerified := fs.Bool("email-verified", true, "whether the email is verified")
	groups := fs.String("groups", "", "comma-separated groups of the user")
	provider := fs.String("provider", "", "identity provider name (default: the config's provider, when it has one)")
	issuer := fs.String("issuer", "", "the user's issuer (default: the issuer of --provider in the config)")
	authMethod := fs.String("auth-method", identity.MethodSession, "how the user signed in: session or bearer")
	remote := fs.String("remote-addr", "127.0.0.1", "client IP address")
	claims := fs.String("claims", "", "extra token claims as a JSON object, e.g. '{\"amr\":[\"mfa\"]}'")
	output := fs.String("output", "text", "text or json")
	var headers multiFlag
	fs.Var(&headers, "header", "request header K=V (repeatable)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if *cfgPath == "" || *rawURL == "" {
		fmt.Fprintln(stderr, "portcullis policy eval: --config FILE and --url URL are required")
		return exitUsage
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintln(stderr, "portcullis policy eval: --output must be text or json")
		return exitUsage
	}
	cfg, err := config.Load(*cfgPath, nil)
	if err != nil {
		return reportConfigError(stderr, *cfgPath, err)
	}
	u, err := url.Parse(*rawURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fail(stderr, "--url %q: want an absolute http(s) URL such as https://app.example.com/path", *rawURL)
	}
	// The method as given: a live request's method reaches the policy as the
	// client sent it (methods are case-sensitive).
	req, err := http.NewRequestWithContext(ctx, *method, u.String(), nil)
	if err != nil {
		return fail(stderr, "--method/--url: %v", err)
	}
	req.RequestURI = u.RequestURI()
	req.RemoteAddr = *remote
	for _, h := range headers {
		k, v, ok := strings.Cut(h, "=")
		if !ok || k == "" {
			fmt.Fprintf(stderr, "portcullis policy eval: --header %q: want K=V\n", h)
			return exitUsage
		}
		if strings.EqualFold(k, "Host") {
			// A live request's Host is its URL's host, never a header
			// the policy sees.
			fmt.Fprintf(stderr, "portcullis policy eval: --header %q: give the host in --url\n", h)
			return exitUsage
		}
		req.Header.Add(k, v)
	}
	if *authMethod != identity.MethodSession && *authMethod != identity.MethodBearer {
		fmt.Fprintf(stderr, "portcullis policy eval: --auth-method must be session or bearer, not %q\n", *authMethod)
		return exitUsage
	}
	// As the live proxy would have them: the provider the user came
	// through, and its issuer.
	if provs := cfg.Identity.Providers; *provider == "" && len(provs) == 1 {
		*provider = provs[0].Name
	}
	if *issuer == "" {
		for _, p := range cfg.Identity.Providers {
			if p.Name == *provider {
				*issuer = p.Issuer
			}
		}
	}
	var who *identity.Identity
	if *user != "" {
		who = &identity.Identity{Authenticated: true, Sub: *user, Email: *email, EmailVerified: *email != "" && *emailVerified,
			Issuer: *issuer, Provider: *provider, AuthMethod: *authMethod, Groups: []string{}, Claims: map[string]any{}}
		for _, g := range strings.Split(*groups, ",") {
			if g = strings.TrimSpace(g); g != "" {
				who.Groups = append(who.Groups, g)
			}
		}
		if *claims != "" {
			if err := json.Unmarshal([]byte(*claims), &who.Claims); err != nil {
				return fail(stderr, "--claims: not a JSON object: %v", err)
			}
		}
	}
	set, err := policy.Load(ctx, cfg.Policy.Dir, policy.LoadOptions{DecisionTimeout: cfg.Policy.DecisionTimeout,
		DecisionCache: cfg.Policy.CacheSize()})
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if err := set.Prepare(ctx, cfg.Packages()); err != nil {
		return fail(stderr, "%v", err)
	}
	ex, err := proxy.Explain(ctx, cfg.Routes, set, req, who, time.Now())
	if err != nil {
		return fail(stderr, "%v", err)
	}
	cache := ""
	if ex.Route != nil {
		if cache, err = set.CacheInfo(ctx, ex.Route.Policy); err != nil {
			cache = err.Error()
		}
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		route := ""
		if ex.Route != nil {
			route = ex.Route.Name
		}
		_ = enc.Encode(map[string]any{
			"route": route, "input": ex.Input, "decision": ex.Outcome, "status": ex.Status,
			"reason": ex.Reason, "policy": ex.Decision.Package, "revision": ex.Decision.Revision,
			"cache": cache,
		})
		return exitOK
	}
	if ex.Route == nil {
		fmt.Fprintf(stdout, "route:    (none)\ndecision: %s (%d)\nreason:   %s\n", ex.Outcome, ex.Status, ex.Reason)
		return exitOK
	}
	in, _ := json.MarshalIndent(ex.Input, "          ", "  ")
	fmt.Fprintf(stdout, "route:    %s (host %s, path %s, upstream %s)\n", ex.Route.Name, ex.Route.Host, ex.Route.Path, ex.Route.Upstream)
	fmt.Fprintf(stdout, "policy:   %s @ %s\n", ex.Route.Policy, ex.Decision.Revision)
	fmt.Fprintf(stdout, "input:    %s\n", in)
	fmt.Fprintf(stdout, "decision: %s (%d)\n", ex.Outcome, ex.Status)
	if ex.Reason != "" {
		fmt.Fprintf(stdout, "reason:   %s\n", ex.Reason)
	}
	if ex.Decision.Err != nil {
		fmt.Fprintf(stdout, "error:    %v\n", ex.Decision.Err)
	}
	if len(ex.Decision.Headers) > 0 {
		fmt.Fprintf(stdout, "headers:  %v\n", ex.Decision.Headers)
	}
	fmt.Fprintf(stdout, "cache:    %s\n", cache)
	return exitOK
}
