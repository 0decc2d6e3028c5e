package audit

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/internal/pulsartest"
)

// TestPulsarOutage records events under steady load through a durable
// Pipeline into a private broker, stops the broker for more than 10 seconds
// and starts it again: every recorded event must end up in the topic
// exactly once (count and ids compared), and the sink must have reported the
// outage.
func TestPulsarOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts, stops and restarts a broker (about two minutes)")
	}
	// The shared broker being reachable shows that brokers can run here
	// (and skips this test locally when none can).
	pulsartest.Require(t)
	const topic = "persistent://public/default/portcullis-outage"
	const instance = "portcullis-outage"
	broker := pulsartest.StartPrivateBroker(t, pulsartest.PrivateBrokerOptions{Topics: []string{topic}})

	dir := t.TempDir()
	cfg := Config{Sink: SinkPulsar, Mode: ModeDurable, Pulsar: PulsarConfig{URL: broker.URL, Topic: topic}}
	cfg.SetDefaults(dir)
	opts := pulsarTestOptions(t, instance)
	opts.RetryMax = time.Second
	opts.SendTimeout = 5 * time.Second
	sink := newTestPulsarSink(t, cfg.Pulsar, opts)
	p, err := Open(context.Background(), cfg, dir, sink, Options{Instance: instance, Registerer: prometheus.NewRegistry(),
		RetryMax: time.Second, Logger: opts.Logger})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	runDone := make(chan error, 1)
	go func() { runDone <- p.Run(runCtx) }()

	// Steady load: 20 events every 10ms (about 2000/s) until told to stop.
	var (
		mu       sync.Mutex
		recorded []string
		sawDown  bool
	)
	loadCtx, stopLoad := context.WithCancel(context.Background())
	loadDone := make(chan error, 1)
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for n := uint64(1); ; {
			select {
			case <-loadCtx.Done():
				loadDone <- nil
				return
			case <-tick.C:
			}
			for i := 0; i < 20; i, n = i+1, n+1 {
				ev := pulsarTestEvent(instance, n, time.Time{})
				ev.Time = time.Time{}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := p.Record(ctx, ev)
				cancel()
				if err != nil {
					loadDone <- err
					return
				}
				mu.Lock()
				recorded = append(recorded, ev.ID)
				mu.Unlock()
			}
			if st := p.Status(); !st.Sink.Live {
				mu.Lock()
				sawDown = true
				mu.Unlock()
			}
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(recorded) }

	time.Sleep(3 * time.Second)
	before := count()
	if err := broker.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	time.Sleep(12 * time.Second)
	if err := broker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("broker down for %v; %d events recorded before the stop, %d by the restart", time.Since(stopped).Round(time.Second), before, count())
	time.Sleep(3 * time.Second)
	stopLoad()
	if err := <-loadDone; err != nil {
		t.Fatalf("Record failed during the outage (durable mode must spool): %v", err)
	}

	// Wait for the backlog to drain.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st := p.Status()
		if st.Acked == st.Seq {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backlog not delivered: seq %d, acked %d, sink %+v", st.Seq, st.Acked, st.Sink)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	if err := p.Close(cctx); err != nil {
		t.Errorf("Close: %v", err)
	}
	stopRun()
	<-runDone

	mu.Lock()
	defer mu.Unlock()
	if !sawDown {
		t.Error("the sink never reported the outage (Status().Live stayed true)")
	}
	msgs := readTopic(t, broker.URL, topic)
	checkExactlyOnce(t, msgs, instance, 1, uint64(len(recorded)))
	inTopic := make(map[string]bool, len(msgs))
	for _, m := range msgs {
		inTopic[m.event.ID] = true
	}
	for _, id := range recorded {
		if !inTopic[id] {
			t.Fatalf("recorded event %s is not in the topic", id)
		}
	}
	t.Logf("%d events recorded, %d in the topic, each once", len(recorded), len(msgs))
}
