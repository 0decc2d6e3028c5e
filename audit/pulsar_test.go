package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/pulsar-client-go/pulsar"
	pulsarlog "github.com/apache/pulsar-client-go/pulsar/log"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/portcullis/portcullis/internal/pulsartest"
)

// pulsarTestUsers and friends give generated events some variety for
// filters: event i gets user i%len(users), route i%len(routes), decision
// i%len(decisions).
var (
	pulsarTestUsers = []User{
		{Sub: "alice", Email: "alice@example.com", Groups: []string{"engineering"}, Provider: "corp", AuthMethod: "session"},
		{Sub: "bob", Email: "bob@example.com", Groups: []string{"engineering", "admins"}, Provider: "corp", AuthMethod: "bearer"},
		{},
		{Sub: "carol", Email: "carol@example.org", Groups: []string{}, Provider: "corp", AuthMethod: "session"},
	}
	pulsarTestRoutes    = []string{"admin", "app", "", "reports", "app"}
	pulsarTestDecisions = []string{DecisionAllow, DecisionDeny, DecisionUnauthenticated, DecisionAllow, DecisionError, DecisionAllow}
)

// pulsarTestEvent builds event seq of instance at t. The hash fields are
// filled by pulsarTestChain when a test needs a valid chain.
func pulsarTestEvent(instance string, seq uint64, t time.Time) *Event {
	i := int(seq)
	status := 200
	switch pulsarTestDecisions[i%len(pulsarTestDecisions)] {
	case DecisionDeny:
		status = 403
	case DecisionUnauthenticated:
		status = 302
	case DecisionError:
		status = 500
	}
	return &Event{
		Schema:    SchemaVersion,
		ID:        fmt.Sprintf("%s-%08d", instance, seq),
		Time:      t.UTC().Truncate(time.Microsecond),
		Instance:  instance,
		Seq:       seq,
		RequestID: fmt.Sprintf("req-%s-%d", instance, seq),
		Decision:  pulsarTestDecisions[i%len(pulsarTestDecisions)],
		Reason:    "test",
		Route:     pulsarTestRoutes[i%len(pulsarTestRoutes)],
		Policy:    PolicyRef{Package: "portcullis.routes.test", Revision: "sha256:00"},
		User:      pulsarTestUsers[i%len(pulsarTestUsers)],
		Request: Request{Method: "GET", Host: "app.example.com", Path: fmt.Sprintf("/items/%d", seq),
			RemoteAddr: "203.0.113.7", UserAgent: "pulsar-test/1.0"},
		Response:   Response{Status: status},
		DurationMS: Durations{Authn: 0.02, Policy: 0.01, Upstream: 4.1, Total: 4.2},
	}
}

// pulsarTestEvents returns events from..to (inclusive) of instance, one every
// step starting at start + (from-1)*step.
func pulsarTestEvents(instance string, from, to uint64, start time.Time, step time.Duration) []*Event {
	evs := make([]*Event, 0, to-from+1)
	for seq := from; seq <= to; seq++ {
		evs = append(evs, pulsarTestEvent(instance, seq, start.Add(time.Duration(seq-1)*step)))
	}
	return evs
}

func pulsarTestOptions(t testing.TB, instance string) PulsarOptions {
	return PulsarOptions{
		Instance:   instance,
		Logger:     slog.New(slog.NewTextHandler(newTestWriter(t), &slog.HandlerOptions{Level: slog.LevelWarn})),
		Registerer: prometheus.NewRegistry(),
	}
}

// testWriter sends log lines to t.Log until the test ends. The Pulsar
// client's connection goroutines can still log after that (a reader's
// connection closing), which t.Log must not see: the race detector flags it.
type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func newTestWriter(t testing.TB) *testWriter {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return w
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(p))
	}
	return len(p), nil
}

func newTestPulsarSink(t testing.TB, cfg PulsarConfig, opts PulsarOptions) *PulsarSink {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := NewPulsarSink(ctx, cfg, opts)
	if err != nil {
		t.Fatalf("NewPulsarSink: %v", err)
	}
	return s
}

func publishAll(t testing.TB, s *PulsarSink, evs []*Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.Publish(ctx, evs); err != nil {
		t.Fatalf("Publish(seq %d..%d): %v", evs[0].Seq, evs[len(evs)-1].Seq, err)
	}
}

// rawMessage is what a plain reader sees in the topic.
type rawMessage struct {
	batchSize int32 // messages in the broker entry (0: not batched)
	key       string
	eventTime time.Time
	payload   []byte
	event     Event
}

// readTopic reads every message in topic with a plain reader, independent of
// PulsarSource.
func readTopic(t testing.TB, brokerURL, topic string) []rawMessage {
	t.Helper()
	client, err := pulsar.NewClient(pulsar.ClientOptions{URL: brokerURL, MetricsRegisterer: prometheus.NewRegistry(),
		Logger: pulsarlog.NewLoggerWithSlog(slog.New(slog.DiscardHandler))})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	r, err := client.CreateReader(pulsar.ReaderOptions{Topic: topic, StartMessageID: pulsar.EarliestMessageID(), ReceiverQueueSize: 10000})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out []rawMessage
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for r.HasNext() {
		msg, err := r.Next(ctx)
		if err != nil {
			t.Fatalf("read %s: %v", topic, err)
		}
		m := rawMessage{batchSize: msg.ID().BatchSize(), key: msg.Key(), eventTime: msg.EventTime(), payload: msg.Payload()}
		if err := json.Unmarshal(m.payload, &m.event); err != nil {
			t.Fatalf("message %s: %v", msg.ID(), err)
		}
		out = append(out, m)
	}
	return out
}

// seqCounts counts messages per (instance, seq).
func seqCounts(msgs []rawMessage) map[string]int {
	c := make(map[string]int)
	for _, m := range msgs {
		c[fmt.Sprintf("%s/%d", m.event.Instance, m.event.Seq)]++
	}
	return c
}

// checkExactlyOnce fails unless msgs hold seq from..to of instance exactly
// once each, in order, and nothing else.
func checkExactlyOnce(t testing.TB, msgs []rawMessage, instance string, from, to uint64) {
	t.Helper()
	want := int(to - from + 1)
	counts := seqCounts(msgs)
	var dups, missing []string
	for seq := from; seq <= to; seq++ {
		k := fmt.Sprintf("%s/%d", instance, seq)
		switch n := counts[k]; {
		case n == 0:
			missing = append(missing, k)
		case n > 1:
			dups = append(dups, fmt.Sprintf("%s x%d", k, n))
		}
	}
	if len(msgs) != want || len(dups) > 0 || len(missing) > 0 {
		t.Fatalf("topic holds %d messages, want %d (seq %d..%d once each); duplicated: %s; missing: %s",
			len(msgs), want, from, to, headList(dups), headList(missing))
	}
	for i := 1; i < len(msgs); i++ {
		if msgs[i].event.Seq <= msgs[i-1].event.Seq {
			t.Fatalf("message %d has seq %d after seq %d: out of order", i, msgs[i].event.Seq, msgs[i-1].event.Seq)
		}
	}
}

func headList(s []string) string {
	if len(s) > 10 {
		return fmt.Sprintf("%v ... (%d)", s[:10], len(s))
	}
	return fmt.Sprint(s)
}

func TestPulsarSinkPublishesEvents(t *testing.T) {
	brokerURL, adminURL := pulsartest.Require(t)
	topic := pulsartest.NewTopic(t, adminURL)
	cfg := PulsarConfig{URL: brokerURL, Topic: topic}
	s := newTestPulsarSink(t, cfg, pulsarTestOptions(t, "portcullis-a1"))
	defer s.Close()
	// NewPulsarSink returns after its first attempt to create a producer;
	// a broker still loading a topic just created can refuse that one,
	// and the sink keeps trying.
	for deadline := time.Now().Add(30 * time.Second); !s.Status().Live; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Status() 30s after connecting = %+v, want live", s.Status())
		}
	}
	start := time.Date(2026, 11, 26, 17, 0, 0, 123456000, time.UTC)
	evs := pulsarTestEvents("portcullis-a1", 1, 12, start, 1500*time.Microsecond)
	publishAll(t, s, evs[:5])
	publishAll(t, s, evs[5:])

	msgs := readTopic(t, brokerURL, topic)
	if len(msgs) != len(evs) {
		t.Fatalf("topic holds %d messages, want %d", len(msgs), len(evs))
	}
	for i, m := range msgs {
		want := evs[i]
		t.Run(fmt.Sprintf("seq%d", want.Seq), func(t *testing.T) {
			if got, wantKey := m.key, want.Key(); got != wantKey {
				t.Errorf("key = %q, want %q", got, wantKey)
			}
			if want.User.Sub == "" && m.key != "anonymous" {
				t.Errorf("key of anonymous event = %q, want anonymous", m.key)
			}
			// Pulsar keeps event time in milliseconds.
			if got, wantT := m.eventTime, want.Time.Truncate(time.Millisecond); !got.Equal(wantT) {
				t.Errorf("event time = %v, want %v", got, wantT)
			}
			wantPayload, _ := json.Marshal(want)
			if string(m.payload) != string(wantPayload) {
				t.Errorf("payload = %s\nwant      %s", m.payload, wantPayload)
			}
		})
	}
}

func TestPulsarSinkReplayDeduplicates(t *testing.T) {
	brokerURL, adminURL := pulsartest.Require(t)
	const instance = "portcullis-r1"
	start := time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)
	all := pulsarTestEvents(instance, 1, 4000, start, time.Millisecond)
	span := func(from, to uint64) []*Event { return all[from-1 : to] }

	// A step publishes through a NEW sink instance with the same instance
	// id, as a restarted proxy replaying its spool would, unless same is
	// set. noSkip turns off the sink's own skipping so that only the
	// broker's de-duplication stands between a replay and a duplicate.
	type step struct {
		from, to     uint64
		same, noSkip bool
	}
	tests := []struct {
		name   string
		steps  []step
		wantTo uint64
	}{
		{"exact replay", []step{{from: 1, to: 2500}, {from: 1, to: 2500}}, 2500},
		{"overlapping replays", []step{{from: 1, to: 1700}, {from: 1200, to: 3100}, {from: 1, to: 100}, {from: 3000, to: 4000}, {from: 2999, to: 3001}}, 4000},
		{"replay inside one broker batch", []step{{from: 1, to: 10}, {from: 11, to: 1500, same: true}, {from: 1001, to: 1499}, {from: 1400, to: 2200}}, 2200},
		{"replay after batched publishing", []step{{from: 1, to: 10}, {from: 11, to: 1700, same: true}, {from: 1701, to: 2345, same: true}, {from: 5, to: 3000}}, 3000},
		{"broker drops re-sent batches", []step{{from: 1, to: 10}, {from: 11, to: 2500, same: true}, {from: 1, to: 2500, same: true, noSkip: true},
			{from: 1001, to: 2000, same: true, noSkip: true}, {from: 1, to: 2500, noSkip: true}, {from: 2501, to: 2600, same: true}}, 2600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topic := pulsartest.NewTopic(t, adminURL)
			cfg := PulsarConfig{URL: brokerURL, Topic: topic}
			var s *PulsarSink
			for _, st := range tt.steps {
				if !st.same {
					if s != nil {
						s.Close()
					}
					s = newTestPulsarSink(t, cfg, pulsarTestOptions(t, instance))
				}
				s.noSkip = st.noSkip
				publishAll(t, s, span(st.from, st.to))
			}
			s.Close()
			checkExactlyOnce(t, readTopic(t, brokerURL, topic), instance, 1, tt.wantTo)
		})
	}
}

// TestPulsarSinkBatchShape checks the batches the broker stores: the first
// Publish of a producer session goes unbatched, later ones in batches of
// BatchMessages events cut where the sink cut them.
func TestPulsarSinkBatchShape(t *testing.T) {
	const instance = "portcullis-b1"
	brokerURL, topic, s := newBatchSink(t, instance)
	defer s.Close()
	all := pulsarTestEvents(instance, 1, 400, time.Now().Add(-time.Hour), time.Millisecond)
	publishAll(t, s, all[:5])    // unbatched
	publishAll(t, s, all[5:255]) // 100, 100, 50
	publishAll(t, s, all[255:])  // 100, 45
	msgs := readTopic(t, brokerURL, topic)
	checkExactlyOnce(t, msgs, instance, 1, 400)
	got := entrySizes(msgs)
	want := []int32{1, 1, 1, 1, 1, 100, 100, 50, 100, 45}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("broker entries hold %v messages, want %v", got, want)
	}
}

// TestPulsarSinkSkipsAcknowledged checks that one sink instance re-publishing
// a batch (the pipeline retrying after an error it did not see the end of)
// neither duplicates nor loses events.
func TestPulsarSinkSkipsAcknowledged(t *testing.T) {
	brokerURL, adminURL := pulsartest.Require(t)
	topic := pulsartest.NewTopic(t, adminURL)
	const instance = "portcullis-s1"
	s := newTestPulsarSink(t, PulsarConfig{URL: brokerURL, Topic: topic}, pulsarTestOptions(t, instance))
	defer s.Close()
	all := pulsarTestEvents(instance, 1, 3000, time.Now().Add(-time.Hour), time.Millisecond)
	publishAll(t, s, all[:1234])
	publishAll(t, s, all[:2000])
	publishAll(t, s, all[1500:2100])
	publishAll(t, s, all)
	checkExactlyOnce(t, readTopic(t, brokerURL, topic), instance, 1, 3000)
}

func TestPulsarSinkRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  PulsarConfig
		opts PulsarOptions
	}{
		{"no instance", PulsarConfig{URL: "pulsar://127.0.0.1:1", Topic: "t"}, PulsarOptions{}},
		{"no url", PulsarConfig{Topic: "t"}, PulsarOptions{Instance: "i"}},
		{"bad scheme", PulsarConfig{URL: "http://127.0.0.1:1", Topic: "t"}, PulsarOptions{Instance: "i"}},
		{"no topic", PulsarConfig{URL: "pulsar://127.0.0.1:1"}, PulsarOptions{Instance: "i"}},
		{"missing token file", PulsarConfig{URL: "pulsar://127.0.0.1:1", Topic: "t", TokenFile: "/nonexistent/token"}, PulsarOptions{Instance: "i"}},
		{"missing trust file", PulsarConfig{URL: "pulsar+ssl://127.0.0.1:1", Topic: "t", TLSTrustCertsFile: "/nonexistent/ca.pem"}, PulsarOptions{Instance: "i"}},
		{"bad compression", PulsarConfig{URL: "pulsar://127.0.0.1:1", Topic: "t"}, PulsarOptions{Instance: "i", Compression: "gzip"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewPulsarSink(context.Background(), tt.cfg, tt.opts)
			if err == nil {
				s.Close()
				t.Fatalf("NewPulsarSink(%+v) succeeded, want an error", tt.cfg)
			}
		})
	}
}

// TestPulsarSinkBrokerDown checks that a sink starts without a broker,
// reports it, and that Publish gives up when its context ends.
func TestPulsarSinkBrokerDown(t *testing.T) {
	dir := t.TempDir()
	token := dir + "/token"
	if err := os.WriteFile(token, []byte("not-a-real-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Port 1 on loopback refuses connections.
	cfg := PulsarConfig{URL: "pulsar://127.0.0.1:1", Topic: "persistent://public/default/none", TokenFile: token}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := NewPulsarSink(ctx, cfg, pulsarTestOptions(t, "portcullis-down"))
	if err != nil {
		t.Fatalf("NewPulsarSink with the broker down: %v, want a sink that retries", err)
	}
	defer s.Close()
	if st := s.Status(); st.Live || st.Detail == "" {
		t.Errorf("Status() = %+v, want not live with a reason", st)
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer pcancel()
	err = s.Publish(pctx, pulsarTestEvents("portcullis-down", 1, 3, time.Now(), time.Millisecond))
	if err == nil {
		t.Fatal("Publish with the broker down succeeded")
	}
	if pctx.Err() == nil {
		t.Errorf("Publish returned %v before its context ended", err)
	}
}

// TestPulsarSinkRecoversFromProducerBusy reproduces what a broker restart
// can leave behind (CI saw it once): the broker holds a producer with the
// sink's name on the sink's own client connection, one the client no
// longer knows, so every new producer of that name is refused as
// ProducerBusy until that connection closes. The sink must get past it and
// deliver.
func TestPulsarSinkRecoversFromProducerBusy(t *testing.T) {
	brokerURL, adminURL := pulsartest.Require(t)
	topic := pulsartest.NewTopic(t, adminURL)
	s := newTestPulsarSink(t, PulsarConfig{URL: brokerURL, Topic: topic}, pulsarTestOptions(t, "portcullis-busy"))
	defer s.Close()
	start := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	evs := pulsarTestEvents("portcullis-busy", 1, 6, start, time.Millisecond)
	publishAll(t, s, evs[:3])

	// Take the producer away, and register a stray producer of the same
	// name on the sink's own client, as the half-finished creation would.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, _, err := s.awaitProducer(ctx) // the batching successor of the first
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	stray, err := s.client.CreateProducer(pulsar.ProducerOptions{Topic: topic, Name: s.name})
	if err == nil {
		// Same name, same client: the broker now refuses any other.
		if _, err := s.client.CreateProducer(pulsar.ProducerOptions{Topic: topic, Name: s.name}); err == nil || !strings.Contains(err.Error(), "ProducerBusy") {
			t.Fatalf("a second producer named %s was not refused as ProducerBusy: %v", s.name, err)
		}
	}
	if err != nil {
		t.Fatalf("stray producer: %v", err)
	}
	_ = stray // never closed: only its connection going away frees the name
	s.retire(p, false, errors.New("test: producer taken away"))

	publishAll(t, s, evs[3:])
	msgs := readTopic(t, brokerURL, topic)
	if len(msgs) != len(evs) {
		t.Fatalf("topic holds %d messages, want %d", len(msgs), len(evs))
	}
}

// TestPulsarSinkCountsDuplicates: events the broker drops as copies of
// events it already holds are counted (and logged): after a restart some
// are expected, but a new event dropped that way is lost, so it must show.
func TestPulsarSinkCountsDuplicates(t *testing.T) {
	const instance = "portcullis-dup1"
	brokerURL, topic, s := newBatchSink(t, instance)
	defer s.Close()
	all := pulsarTestEvents(instance, 1, 300, time.Now().Add(-time.Hour), time.Millisecond)
	publishAll(t, s, all[:10])    // unbatched session
	publishAll(t, s, all[10:300]) // batched
	if got := counterValueOf(t, s.dupCount); got != 0 {
		t.Fatalf("duplicates after fresh events = %v, want 0", got)
	}
	s.noSkip = true // as if the chain state had gone back to seq 100
	publishAll(t, s, all[100:300])
	if got := counterValueOf(t, s.dupCount); got != 200 {
		t.Errorf("portcullis_audit_pulsar_duplicates_total = %v, want 200", got)
	}
	checkExactlyOnce(t, readTopic(t, brokerURL, topic), instance, 1, 300)
}

func counterValueOf(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// newBatchSink is a sink for instance on a fresh topic, with broker batches
// of 100 events, for the tests that look at batch shapes.
func newBatchSink(t *testing.T, instance string) (brokerURL, topic string, s *PulsarSink) {
	t.Helper()
	brokerURL, adminURL := pulsartest.Require(t)
	topic = pulsartest.NewTopic(t, adminURL)
	opts := pulsarTestOptions(t, instance)
	opts.BatchMessages = 100
	return brokerURL, topic, newTestPulsarSink(t, PulsarConfig{URL: brokerURL, Topic: topic}, opts)
}

// entrySizes is how many messages each broker entry of msgs holds.
func entrySizes(msgs []rawMessage) []int32 {
	var out []int32
	for i := 0; i < len(msgs); {
		n := max(msgs[i].batchSize, 1) // a lone message reports 0 or 1
		out = append(out, n)
		i += int(n)
	}
	return out
}
