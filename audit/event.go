// Package audit records every access decision Portcullis makes as a
// hash-chained event, delivers it to a sink (a JSONL file or Apache Pulsar)
// without losing it, and reads events back for query, tail and verify.
//
// The proxy only ever talks to a Recorder; sinks, the spool and the chain are
// this package's business.
//
// The path of an event: Pipeline.Record completes it (ID, Seq, PrevHash,
// Hash; see chain.go for the hash) and encodes it once, as Encoded. In
// durable and fail-closed modes it is appended to the Spool and Record
// returns after the group fsync that covers it; in best-effort mode it is
// queued in memory. Pipeline.Run reads batches in Seq order and hands them
// to the Sink (FileSink, PulsarSink, or a MultiSink of both), publishing
// the spool's bytes as they are (EncodedSink), and acknowledges them, which
// frees the spool. Sources (FileSource, PulsarSource) read events back;
// Filter and Verifier implement `portcullis audit query` and `verify`.
//
// Files under the data directory: "instance" (the generated instance id),
// "audit-chain.json" (the chain's last seq and hash, written at Close and,
// in best-effort mode, before each batch leaves), "spool/" (segment files,
// the acknowledgement, a lock) and, for the file sink, "audit.jsonl" with
// its rotated predecessors.
package audit

import "time"

// SchemaVersion is the version of Event written in the "schema" field.
const SchemaVersion = 1

// Event is one access decision (SPEC §6, schema version 1). Field order is the
// order of the JSON document and part of the hash input; do not reorder.
type Event struct {
	// Schema is SchemaVersion.
	Schema int `json:"schema"`
	// ID is a ULID: unique, sortable by time, and the de-duplication key.
	ID string `json:"id"`
	// Time is when the decision was made, UTC, microsecond precision.
	Time time.Time `json:"time"`
	// Instance identifies the proxy instance whose chain this event belongs to.
	Instance string `json:"instance"`
	// Seq is the per-instance sequence number: 1, 2, 3, ... without gaps,
	// continuing across restarts.
	Seq uint64 `json:"seq"`
	// PrevHash is the Hash of this instance's previous event ("" for seq 1).
	PrevHash string `json:"prev_hash"`
	// Hash is "sha256:" + hex of SHA-256 over the canonical JSON of this event
	// without its "hash" member (see ComputeHash).
	Hash string `json:"hash"`
	// RequestID is the request's X-Request-Id.
	RequestID string `json:"request_id"`
	// Decision is one of DecisionAllow, DecisionDeny, DecisionUnauthenticated,
	// DecisionError.
	Decision string `json:"decision"`
	// Reason explains the decision (the policy's reason, or why Portcullis
	// decided without a policy, e.g. "no route").
	Reason string `json:"reason"`
	// Route is the matched route's name, "" when no route matched.
	Route string `json:"route"`
	// Policy names the evaluated package and the revision of the loaded set.
	Policy PolicyRef `json:"policy"`
	// User is who made the request; Sub is "" for anonymous requests.
	User User `json:"user"`
	// Request describes the request without query string, cookies or
	// credentials.
	Request Request `json:"request"`
	// Response carries the status the client received.
	Response Response `json:"response"`
	// DurationMS holds the time spent in each phase, in milliseconds.
	DurationMS Durations `json:"duration_ms"`
}

// Decisions.
const (
	DecisionAllow           = "allow"
	DecisionDeny            = "deny"
	DecisionUnauthenticated = "unauthenticated"
	DecisionError           = "error"
)

// PolicyRef names the policy that decided.
type PolicyRef struct {
	Package  string `json:"package"`
	Revision string `json:"revision"`
}

// User is the identity the decision was made for.
type User struct {
	Sub        string   `json:"sub"`
	Email      string   `json:"email"`
	Groups     []string `json:"groups"`
	Provider   string   `json:"provider"`
	AuthMethod string   `json:"auth_method"`
}

// Request is what was asked. Path never includes the query string: it is
// the normalized path the policy saw, with '%' and '?' written as %25 and
// %3F.
type Request struct {
	Method     string `json:"method"`
	Host       string `json:"host"`
	Path       string `json:"path"`
	RemoteAddr string `json:"remote_addr"`
	UserAgent  string `json:"user_agent"`
}

// Response is what the client got.
type Response struct {
	Status int `json:"status"`
}

// Durations are phase timings in milliseconds.
type Durations struct {
	Authn    float64 `json:"authn"`
	Policy   float64 `json:"policy"`
	Upstream float64 `json:"upstream"`
	Total    float64 `json:"total"`
}

// Key is the Pulsar message key of the event: the user's subject, or
// "anonymous".
func (e *Event) Key() string {
	if e.User.Sub == "" {
		return "anonymous"
	}
	return e.User.Sub
}
