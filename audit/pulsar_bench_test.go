package audit

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/pulsar-client-go/pulsar"
	pulsarlog "github.com/apache/pulsar-client-go/pulsar/log"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/portcullis/portcullis/internal/pulsartest"
)

// Throughput into a real broker, in the same run:
//
//	go test ./audit -run '^$' -bench BenchmarkPulsarThroughput -benchtime 200000x
//
// bare:     a plain pulsar-client-go producer (default batching, LZ4) sending
//
//	the encoded events in a SendAsync loop, then Flush;
//
// sink:     PulsarSink.PublishEncoded in batches of 1000 (the pipeline's
//
//	default batch);
//
// pipeline-durable: Pipeline.Record (fsync'd spool, group commit) from 64
//
//	goroutines until the sink has acknowledged every event;
//
// pipeline-best-effort: the same with the in-memory queue (1Mi events).
//
// Each reports events/s. Every run uses a fresh topic.
func BenchmarkPulsarThroughput(b *testing.B) {
	brokerURL, adminURL := pulsartest.Require(b)
	const instance = "portcullis-bench"
	encode := func(n int) []Encoded {
		start := time.Now().Add(-time.Hour)
		out := make([]Encoded, n)
		for i := range out {
			ev := pulsarTestEvent(instance, uint64(i+1), start.Add(time.Duration(i)*time.Microsecond))
			data, err := json.Marshal(ev)
			if err != nil {
				b.Fatal(err)
			}
			out[i] = Encoded{Seq: ev.Seq, ID: ev.ID, Time: ev.Time, Key: ev.Key(), Data: data}
		}
		return out
	}
	report := func(b *testing.B, start time.Time) {
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	}

	b.Run("bare", func(b *testing.B) {
		evs := encode(b.N)
		topic := pulsartest.NewTopic(b, adminURL)
		client, err := pulsar.NewClient(pulsar.ClientOptions{URL: brokerURL, MetricsRegisterer: prometheus.NewRegistry(),
			Logger: pulsarlog.NewLoggerWithSlog(slog.New(slog.DiscardHandler))})
		if err != nil {
			b.Fatal(err)
		}
		defer client.Close()
		p, err := client.CreateProducer(pulsar.ProducerOptions{Topic: topic, CompressionType: pulsar.LZ4, MaxPendingMessages: 8000})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		var wg sync.WaitGroup
		var failed atomic.Int64
		wg.Add(b.N)
		b.ResetTimer()
		start := time.Now()
		for i := range evs {
			p.SendAsync(context.Background(), &pulsar.ProducerMessage{Payload: evs[i].Data, Key: evs[i].Key, EventTime: evs[i].Time},
				func(_ pulsar.MessageID, _ *pulsar.ProducerMessage, err error) {
					if err != nil {
						failed.Add(1)
					}
					wg.Done()
				})
		}
		if err := p.Flush(); err != nil {
			b.Fatal(err)
		}
		wg.Wait()
		report(b, start)
		if n := failed.Load(); n > 0 {
			b.Fatalf("%d sends failed", n)
		}
	})

	b.Run("sink", func(b *testing.B) {
		evs := encode(b.N)
		topic := pulsartest.NewTopic(b, adminURL)
		s := newTestPulsarSink(b, PulsarConfig{URL: brokerURL, Topic: topic}, pulsarTestOptions(b, instance))
		defer s.Close()
		ctx := context.Background()
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < len(evs); i += 1000 {
			if err := s.PublishEncoded(ctx, evs[i:min(i+1000, len(evs))]); err != nil {
				b.Fatal(err)
			}
		}
		report(b, start)
	})

	for _, mode := range []string{ModeDurable, ModeBestEffort} {
		b.Run("pipeline-"+mode, func(b *testing.B) { benchPipeline(b, brokerURL, adminURL, instance, mode) })
	}
}

func benchPipeline(b *testing.B, brokerURL, adminURL, instance, mode string) {
	{
		topic := pulsartest.NewTopic(b, adminURL)
		dir := b.TempDir()
		cfg := Config{Sink: SinkPulsar, Mode: mode, Buffer: 1 << 20, Pulsar: PulsarConfig{URL: brokerURL, Topic: topic}}
		cfg.SetDefaults(dir)
		s := newTestPulsarSink(b, cfg.Pulsar, pulsarTestOptions(b, instance))
		p, err := Open(context.Background(), cfg, dir, s, Options{Instance: instance, Registerer: prometheus.NewRegistry()})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		runDone := make(chan error, 1)
		go func() { runDone <- p.Run(ctx) }()
		const workers = 64
		var next atomic.Int64
		var wg sync.WaitGroup
		b.ResetTimer()
		start := time.Now()
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1)
					if i > int64(b.N) {
						return
					}
					ev := pulsarTestEvent(instance, uint64(i), time.Time{})
					ev.Time = time.Time{} // stamped by the pipeline
					if err := p.Record(ctx, ev); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		for p.Status().Acked < uint64(b.N) {
			time.Sleep(time.Millisecond)
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		b.StopTimer()
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		if err := p.Close(cctx); err != nil {
			b.Error(err)
		}
		cancel()
		<-runDone
	}
}
