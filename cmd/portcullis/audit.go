package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/portcullis/portcullis/audit"
	"github.com/portcullis/portcullis/internal/config"
)

const auditUsageText = `Usage: portcullis audit COMMAND [flags]

Commands:
  query    print the stored events that match, in time order
  tail     follow new events as they arrive
  verify   check the hash chain of every proxy instance in the range

Source (one of):
  --pulsar URL --topic T [--token-file F] [--tls-trust-certs-file F]
  --file PATH               the JSONL file sink (rotated files are read too);
                            query and verify fail when there is no file at
                            PATH, tail waits for it to appear
  --config FILE             the audit sink of a Portcullis configuration

Run "portcullis help audit COMMAND" (or "portcullis audit COMMAND --help") for every flag.
`

// defaultAuditTopic is the topic deploy/pulsar creates and the example
// configuration uses; --topic overrides it.
const defaultAuditTopic = "persistent://public/default/portcullis-audit"

func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, auditUsageText)
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help", "-help", "help":
		fmt.Fprint(stdout, auditUsageText)
		return exitOK
	case "query":
		return runAuditQuery(ctx, args[1:], stdout, stderr)
	case "tail":
		return runAuditTail(ctx, args[1:], stdout, stderr)
	case "verify":
		return runAuditVerify(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "portcullis audit: unknown command %q\n\n%s", args[0], auditUsageText)
	return exitUsage
}

// auditFlags are the flags the audit commands share.
type auditFlags struct {
	pulsarURL, topic, tokenFile, trustFile string
	file, config                           string
	since, until                           string
	user, route, decision                  string
	routeSet                               bool // --route was given, perhaps as ""
	limit                                  int
	output                                 string
	foreign                                int // records skipped: not audit events
}

const (
	withFilters = 1 << iota
	withOutput
)

func (a *auditFlags) register(fs *flag.FlagSet, what int) {
	fs.StringVar(&a.pulsarURL, "pulsar", "", "read from the Pulsar cluster at `URL` (pulsar:// or pulsar+ssl://)")
	fs.StringVar(&a.topic, "topic", "", "the audit `topic` (with --pulsar; default "+defaultAuditTopic+")")
	fs.StringVar(&a.tokenFile, "token-file", "", "`file` holding a Pulsar JWT (with --pulsar)")
	fs.StringVar(&a.trustFile, "tls-trust-certs-file", "", "PEM `file` of CAs trusted for pulsar+ssl:// (with --pulsar)")
	fs.StringVar(&a.file, "file", "", "read the JSONL audit file at `PATH`")
	fs.StringVar(&a.config, "config", "", "read from the audit sink configured in `FILE`")
	fs.StringVar(&a.since, "since", "", "only events at or after `DUR|TIME` (2h: two hours ago; or RFC 3339)")
	fs.StringVar(&a.until, "until", "", "only events before `TIME` (RFC 3339, or a duration ago)")
	if what&withFilters != 0 {
		fs.StringVar(&a.user, "user", "", "only events of this user (`SUB|EMAIL`)")
		fs.Func("route", "only events of the route `NAME` (\"\": of requests no route served)", func(v string) error {
			a.route, a.routeSet = v, true
			return nil
		})
		fs.StringVar(&a.decision, "decision", "", "only events with this `decision`: allow, deny, unauthenticated or error")
		fs.IntVar(&a.limit, "limit", 0, "print at most `N` events (0: no limit)")
	}
	if what&withOutput != 0 {
		fs.StringVar(&a.output, "output", "table", "output `format`: table, json or jsonl")
	}
}

// usageError is bad usage: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// check validates flag combinations and values.
func (a *auditFlags) check() error {
	n := 0
	for _, s := range []string{a.pulsarURL, a.file, a.config} {
		if s != "" {
			n++
		}
	}
	switch {
	case n == 0:
		return usagef("a source is required: --pulsar URL, --file PATH or --config FILE")
	case n > 1:
		return usagef("choose one source: --pulsar, --file or --config")
	case a.pulsarURL == "" && (a.topic != "" || a.tokenFile != "" || a.trustFile != ""):
		return usagef("--topic, --token-file and --tls-trust-certs-file go with --pulsar")
	}
	switch a.decision {
	case "", audit.DecisionAllow, audit.DecisionDeny, audit.DecisionUnauthenticated, audit.DecisionError:
	default:
		return usagef("--decision must be allow, deny, unauthenticated or error, not %q", a.decision)
	}
	switch a.output {
	case "", "table", "json", "jsonl":
	default:
		return usagef("--output must be table, json or jsonl, not %q", a.output)
	}
	if a.limit < 0 {
		return usagef("--limit must not be negative")
	}
	return nil
}

// filter builds the event filter; durations count back from now.
func (a *auditFlags) filter(now time.Time) (audit.Filter, error) {
	f := audit.Filter{User: a.user, Route: a.route, RouteSet: a.routeSet, Decision: a.decision}
	var err error
	if a.since != "" {
		if f.Since, err = parseWhen(a.since, now); err != nil {
			return f, usagef("--since: %v", err)
		}
	}
	if a.until != "" {
		if f.Until, err = parseWhen(a.until, now); err != nil {
			return f, usagef("--until: %v", err)
		}
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return f, usagef("--since must be before --until")
	}
	return f, nil
}

// parseWhen reads a point in time: a duration ago ("90m", "2h"), an RFC 3339
// time, or a date (midnight UTC).
func parseWhen(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: a duration counts back from now and must not be negative", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is neither a duration (2h) nor an RFC 3339 time (2026-11-26T17:00:00Z)", s)
}

// openSource opens the chosen source. Logs of the Pulsar client go to
// stderr, warnings and errors only.
func (a *auditFlags) openSource(stderr io.Writer) (audit.Source, error) {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	switch {
	case a.pulsarURL != "":
		topic := a.topic
		if topic == "" {
			topic = defaultAuditTopic
		}
		return audit.NewPulsarSource(audit.PulsarConfig{
			URL: a.pulsarURL, Topic: topic, TokenFile: a.tokenFile, TLSTrustCertsFile: a.trustFile,
		}, audit.PulsarOptions{Logger: log})
	case a.file != "":
		return audit.NewFileSource(a.file, audit.FileSourceOptions{}), nil
	}
	f, err := config.Load(a.config, nil)
	if err != nil {
		return nil, err
	}
	if f.Audit.Sink == audit.SinkPulsar {
		return audit.NewPulsarSource(f.Audit.Pulsar, audit.PulsarOptions{Logger: log})
	}
	return audit.NewFileSource(f.Audit.File.Path, audit.FileSourceOptions{}), nil
}

// prepare parses the flags of one audit command and opens its source. A
// non-negative code means: return it.
func prepare(fs *flag.FlagSet, a *auditFlags, args []string, stderr io.Writer) (audit.Filter, audit.Source, int) {
	if code := parseFlags(fs, args); code >= 0 {
		return audit.Filter{}, nil, code
	}
	f, err := a.filter(time.Now())
	if err == nil {
		err = a.check()
	}
	if err != nil {
		fmt.Fprintf(stderr, "portcullis %s: %s\n", fs.Name(), oneLine(err.Error()))
		return f, nil, exitUsage
	}
	src, err := a.openSource(stderr)
	if err != nil {
		return f, nil, auditFail(stderr, fs.Name(), err)
	}
	if fr, ok := src.(audit.ForeignReporter); ok {
		// A record that is not an audit event (a stray message in the
		// topic, a foreign line in the file) is named and skipped, so that
		// one cannot hide the rest; verify fails on it.
		name := fs.Name()
		fr.ReportForeign(func(where string, err error) {
			a.foreign++
			fmt.Fprintf(stderr, "portcullis %s: skipped %s: not an audit event: %v\n", name, where, err)
		})
	}
	return f, src, -1
}

// auditFail prints err as one line and returns the exit status for it.
func auditFail(stderr io.Writer, cmd string, err error) int {
	msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
	fmt.Fprintf(stderr, "portcullis %s: %s\n", cmd, msg)
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFail
}

func runAuditQuery(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var a auditFlags
	fs := newFlagSet("audit query", "audit query [source] [--since DUR|TIME] [--until TIME] [--user SUB|EMAIL] [--route NAME] [--decision D] [--limit N] [--output table|json|jsonl]", stderr)
	a.register(fs, withFilters|withOutput)
	f, src, code := prepare(fs, &a, args, stderr)
	if code >= 0 {
		return code
	}
	defer src.Close()

	// Sources give time order per instance; merge by time across
	// instances. With --limit only the earliest N are kept.
	var got []*audit.Event
	trim := func() {
		slices.SortStableFunc(got, func(x, y *audit.Event) int { return x.Time.Compare(y.Time) })
		if a.limit > 0 && len(got) > a.limit {
			got = got[:a.limit]
		}
	}
	err := src.Read(ctx, f, func(ev *audit.Event) (bool, error) {
		if f.Match(ev) {
			got = append(got, ev)
			if a.limit > 0 && len(got) >= 2*a.limit+1024 {
				trim()
			}
		}
		return true, nil
	})
	if err != nil {
		return auditFail(stderr, "audit query", err)
	}
	trim()
	w := newEventWriter(stdout, a.output, false)
	for _, ev := range got {
		if err := w.write(ev); err != nil {
			return auditFail(stderr, "audit query", err)
		}
	}
	if err := w.close(); err != nil {
		return auditFail(stderr, "audit query", err)
	}
	return exitOK
}

func runAuditTail(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var a auditFlags
	fs := newFlagSet("audit tail", "audit tail [source] [--since DUR|TIME] [--until TIME] [--user SUB|EMAIL] [--route NAME] [--decision D] [--limit N] [--output table|json|jsonl]\n\n"+
		"With --file, a file that does not exist yet is waited for (query and verify fail instead).", stderr)
	a.register(fs, withFilters|withOutput)
	f, src, code := prepare(fs, &a, args, stderr)
	if code >= 0 {
		return code
	}
	defer src.Close()
	if f.Since.IsZero() {
		f.Since = time.Now() // like tail -f: what happens from now on
	}
	w := newEventWriter(stdout, a.output, true)
	n := 0
	err := src.Follow(ctx, f, func(ev *audit.Event) (bool, error) {
		if !f.Match(ev) {
			return true, nil
		}
		if err := w.write(ev); err != nil {
			return false, err
		}
		n++
		return a.limit == 0 || n < a.limit, nil
	})
	cerr := w.close()
	if err == nil {
		err = cerr
	}
	if err != nil {
		return auditFail(stderr, "audit tail", err)
	}
	return exitOK
}

// eventWriter prints events as a table, a JSON array or JSON lines.
type eventWriter struct {
	out    io.Writer
	format string
	follow bool // flush every event (tail)
	tw     *tabwriter.Writer
	n      int
}

func newEventWriter(out io.Writer, format string, follow bool) *eventWriter {
	if format == "" {
		format = "table"
	}
	return &eventWriter{out: out, format: format, follow: follow}
}

var tableHeader = []string{"TIME", "DECISION", "STATUS", "USER", "REQUEST", "ROUTE", "REASON"}

func (w *eventWriter) write(ev *audit.Event) error {
	defer func() { w.n++ }()
	switch w.format {
	case "jsonl", "json":
		b, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		prefix := ""
		if w.format == "json" {
			prefix = ",\n  "
			if w.n == 0 {
				prefix = "[\n  "
			}
		}
		if w.format == "jsonl" {
			b = append(b, '\n')
		}
		_, err = fmt.Fprintf(w.out, "%s%s", prefix, b)
		return err
	}
	if w.tw == nil {
		w.tw = tabwriter.NewWriter(w.out, 0, 8, 2, ' ', 0)
		if _, err := fmt.Fprintln(w.tw, strings.Join(tableHeader, "\t")); err != nil {
			return err
		}
	}
	if _, err := fmt.Fprintln(w.tw, strings.Join(tableRow(ev), "\t")); err != nil {
		return err
	}
	if w.follow {
		return w.tw.Flush()
	}
	return nil
}

func (w *eventWriter) close() error {
	switch w.format {
	case "json":
		end := "\n]\n"
		if w.n == 0 {
			end = "[]\n"
		}
		_, err := io.WriteString(w.out, end)
		return err
	case "jsonl":
		return nil
	}
	if w.tw == nil {
		return nil
	}
	return w.tw.Flush()
}

// tableRow is one event in the table: time, decision, status, user,
// "method host path", route, reason. Tabs and newlines inside values are
// replaced so that columns stay intact.
func tableRow(ev *audit.Event) []string {
	user := ev.User.Email
	if user == "" {
		user = ev.User.Sub
	}
	if user == "" {
		user = "-"
	}
	route := ev.Route
	if route == "" {
		route = "-"
	}
	cells := []string{
		ev.Time.UTC().Format("2006-01-02T15:04:05.000Z"),
		ev.Decision,
		fmt.Sprint(ev.Response.Status),
		user,
		ev.Request.Method + " " + ev.Request.Host + ev.Request.Path,
		route,
		ev.Reason,
	}
	for i, c := range cells {
		cells[i] = strings.Map(func(r rune) rune {
			if r == '\t' || r == '\n' || r == '\r' {
				return ' '
			}
			return r
		}, c)
	}
	return cells
}

// verifySlack is how far an event's time (the request's start) can be
// from the moment its seq was assigned (when the decision was recorded,
// after the upstream's response headers): verify reads this much beyond a
// time window so that the window's edges cut no seq out of a chain.
const verifySlack = 15 * time.Minute

// verifyWindow feeds add, per instance, every event whose seq lies between
// the lowest and the highest seq of that instance's events in f's time
// window, in the order the source stores them (seq order). Event time is
// the request's start and seq the order of recording, so near the window's
// edges the two disagree: an event just outside the window in time can sit
// between two inside it in the chain. The first pass finds each instance's
// seq range inside the window; the second, over the window widened by
// verifySlack, verifies those whole ranges.
func verifyWindow(ctx context.Context, src audit.Source, f audit.Filter, add func(*audit.Event)) error {
	type span struct{ lo, hi uint64 }
	spans := map[string]*span{}
	err := src.Read(ctx, f, func(ev *audit.Event) (bool, error) {
		sp := spans[ev.Instance]
		if sp == nil {
			spans[ev.Instance] = &span{ev.Seq, ev.Seq}
		} else {
			sp.lo, sp.hi = min(sp.lo, ev.Seq), max(sp.hi, ev.Seq)
		}
		return true, nil
	})
	if err != nil || len(spans) == 0 {
		return err
	}
	wide := f
	if !wide.Since.IsZero() {
		wide.Since = wide.Since.Add(-verifySlack)
	}
	if !wide.Until.IsZero() {
		wide.Until = wide.Until.Add(verifySlack)
	}
	return src.Read(ctx, wide, func(ev *audit.Event) (bool, error) {
		if sp := spans[ev.Instance]; sp != nil && sp.lo <= ev.Seq && ev.Seq <= sp.hi {
			add(ev)
		}
		return true, nil
	})
}

func runAuditVerify(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var a auditFlags
	fs := newFlagSet("audit verify", "audit verify [source] [--since DUR|TIME] [--until TIME]", stderr)
	a.register(fs, 0)
	f, src, code := prepare(fs, &a, args, stderr)
	if code >= 0 {
		return code
	}
	defer src.Close()

	v := audit.NewVerifier()
	var events int
	var from, to time.Time
	add := func(ev *audit.Event) {
		events++
		if from.IsZero() || ev.Time.Before(from) {
			from = ev.Time
		}
		if ev.Time.After(to) {
			to = ev.Time
		}
		v.Add(ev) // breaks are read from v below
	}
	var err error
	if f.Since.IsZero() && f.Until.IsZero() {
		err = src.Read(ctx, f, func(ev *audit.Event) (bool, error) {
			add(ev)
			return true, nil
		})
	} else {
		err = verifyWindow(ctx, src, f, add)
	}
	if err != nil {
		return auditFail(stderr, "audit verify", err)
	}
	reports := v.Reports()
	broken := 0
	for _, r := range reports {
		state := "ok"
		if r.Err != nil {
			state = fmt.Sprintf("BROKEN at seq %d (event %s): %s", r.Err.Seq, r.Err.EventID, r.Err.Kind)
			broken++
		}
		if r.Legacy > 0 {
			state += fmt.Sprintf(" (%d hashed the pre-2026-11-27 way, with an empty hash member)", r.Legacy)
		}
		fmt.Fprintf(stdout, "%s: seq %d..%d, %d events: %s\n", r.Instance, r.First, r.Last, r.Events, state)
	}
	if a.foreign > 0 {
		fmt.Fprintf(stderr, "portcullis audit verify: %d stored records are not audit events (named above): the trail holds something Portcullis did not write\n", a.foreign)
		if v.First() == nil {
			return exitFail
		}
	}
	if first := v.First(); first != nil {
		more := ""
		if broken > 1 {
			more = fmt.Sprintf(" (%d instances broken)", broken)
		}
		fmt.Fprintf(stderr, "portcullis audit verify: instance %s: %s link at seq %d (event %s): %s%s\n",
			first.Instance, first.Kind, first.Seq, first.EventID, first.Detail, more)
		return exitFail
	}
	if events == 0 {
		fmt.Fprintln(stdout, "ok: no events in the range")
		return exitOK
	}
	fmt.Fprintf(stdout, "ok: %d instances, %d events, %s to %s\n", len(reports), events,
		from.UTC().Format(time.RFC3339Nano), to.UTC().Format(time.RFC3339Nano))
	return exitOK
}
