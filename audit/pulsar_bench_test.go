package audit

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/pulsar-client-go/pulsar"
	pulsarlog "github.com/apache/pulsar-client-go/pulsar/log"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/portcullis/portcullis/internal/pulsartest"
)

// Throughput into a real broker, in the same run:
//
//	go test ./audit -run '^$' -bench BenchmarkPulsarThroughput -benchtime 200000x
//
// The sub-benchmarks:
//
//   - bare: a plain pulsar-client-go producer (default batching, LZ4)
//     sending the events in a SendAsync loop, then Flush. The payloads are
//     what the pipeline sends: the same events, with ULIDs, sealed into a
//     hash chain.
//   - sink: PulsarSink.PublishEncoded of the same payloads in the
//     pipeline's default batches, one after the other, each waiting for
//     its acknowledgement.
//   - drain: the shipper alone (Pipeline.Run): the spool already holds
//     the events, as after an outage, and is delivered with batches
//     streamed (the next sent while the previous is being acknowledged).
//   - pipeline-durable: Pipeline.Record (fsync'd spool, group commit) from
//     64 goroutines (requests in flight) until the sink has acknowledged
//     every event. Each Record gets a fresh Event copied from one of 4096
//     templates built before the clock starts (building events is the
//     proxy's work); Record completes, encodes and hashes them.
//     Each Record waits for the fsync covering its event, so with a fixed
//     number of requests in flight this measures latency as much as
//     capacity.
//   - pipeline-best-effort: the same with the in-memory queue (1Mi events).
//   - pipeline-durable-512: durable with 512 requests in flight, as a busy
//     proxy has.
//
// Each reports events/s: until the broker has acknowledged every event.
// The pipelines also report recorded/s (until the last Record returned),
// events per sink call and per fsync. Every run uses a fresh topic.
func BenchmarkPulsarThroughput(b *testing.B) {
	brokerURL, adminURL := pulsartest.Require(b)
	const instance = "portcullis-bench"
	encode := func(n int) []Encoded {
		start := time.Now().Add(-time.Hour)
		entropy := ulid.Monotonic(rand.Reader, 0)
		out := make([]Encoded, n)
		prev := ""
		for i := range out {
			ev := pulsarTestEvent(instance, uint64(i+1), start.Add(time.Duration(i)*time.Microsecond))
			normalize(ev, time.Time{})
			ev.ID = ulid.MustNew(ulid.Timestamp(ev.Time), entropy).String()
			ev.PrevHash = prev
			data, err := seal(ev)
			if err != nil {
				b.Fatal(err)
			}
			prev = ev.Hash
			out[i] = Encoded{Seq: ev.Seq, ID: ev.ID, Time: ev.Time, Key: ev.Key(), Data: data}
		}
		return out
	}
	var cpu0 float64
	report := func(b *testing.B, start time.Time) {
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		reportMachineCPU(b, cpu0)
	}

	// A broker fresh from its start runs its JIT-compiled paths cold and
	// would make whichever variant comes first look slow: warm it up with
	// the bare loop, untimed, on a topic of its own.
	sendBare(b, brokerURL, pulsartest.NewTopic(b, adminURL), encode(200000), nil)

	b.Run("bare", func(b *testing.B) {
		evs := encode(b.N)
		topic := pulsartest.NewTopic(b, adminURL)
		start := sendBare(b, brokerURL, topic, evs, func() {
			b.ResetTimer()
			cpu0 = machineCPU()
		})
		report(b, start)
	})

	b.Run("sink", func(b *testing.B) {
		evs := encode(b.N)
		topic := pulsartest.NewTopic(b, adminURL)
		s := newTestPulsarSink(b, PulsarConfig{URL: brokerURL, Topic: topic}, pulsarTestOptions(b, instance))
		defer s.Close()
		ctx := context.Background()
		b.ResetTimer()
		cpu0 = machineCPU()
		start := time.Now()
		batch := Options{}.withDefaults().BatchEvents
		for i := 0; i < len(evs); i += batch {
			if err := s.PublishEncoded(ctx, evs[i:min(i+batch, len(evs))]); err != nil {
				b.Fatal(err)
			}
		}
		report(b, start)
	})

	b.Run("drain", func(b *testing.B) { benchDrain(b, brokerURL, adminURL, instance) })

	for _, mode := range []string{ModeDurable, ModeBestEffort} {
		b.Run("pipeline-"+mode, func(b *testing.B) { benchPipeline(b, brokerURL, adminURL, instance, mode, 64) })
	}
	b.Run(fmt.Sprintf("pipeline-%s-%d", ModeDurable, 512), func(b *testing.B) {
		benchPipeline(b, brokerURL, adminURL, instance, ModeDurable, 512)
	})
}

// sendBare sends evs to topic with a plain pulsar-client-go producer
// (default batching, LZ4) in a SendAsync loop, then Flush, and waits for
// every acknowledgement. It calls onStart (when not nil) just before the
// loop and returns the time the loop started.
func sendBare(b *testing.B, brokerURL, topic string, evs []Encoded, onStart func()) time.Time {
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
	wg.Add(len(evs))
	if onStart != nil {
		onStart()
	}
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
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d sends failed", n)
	}
	return start
}

// benchDrain measures the shipper alone: a durable pipeline whose spool
// already holds b.N events (as after an outage) delivers them; the clock
// runs from Run's start until the broker has acknowledged the last one.
func benchDrain(b *testing.B, brokerURL, adminURL, instance string) {
	p := openBenchPipeline(b, brokerURL, adminURL, instance, ModeDurable)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				if err := p.Record(ctx, pulsarTestEvent(instance, uint64(i), time.Time{})); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	runDone := make(chan error, 1)
	b.ResetTimer()
	cpu0 := machineCPU()
	start := time.Now()
	go func() { runDone <- p.Run(ctx) }()
	waitAcked(b, p, runDone)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	reportMachineCPU(b, cpu0)
	b.StopTimer()
	reportShape(b, p)
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	if err := p.Close(cctx); err != nil {
		b.Error(err)
	}
	cancel()
	<-runDone
}

// benchPipeline records b.N events from workers goroutines (requests in
// flight) and waits until the sink has acknowledged all of them.
func benchPipeline(b *testing.B, brokerURL, adminURL, instance, mode string, workers int) {
	{
		p := openBenchPipeline(b, brokerURL, adminURL, instance, mode)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		runDone := make(chan error, 1)
		go func() { runDone <- p.Run(ctx) }()
		// Templates built before the clock starts; each Record gets a fresh
		// copy, as a proxy fills a new Event from strings it already has.
		templates := make([]Event, min(b.N, 4096))
		for i := range templates {
			templates[i] = *pulsarTestEvent(instance, uint64(i+1), time.Time{})
			templates[i].Time = time.Time{} // stamped by the pipeline
		}
		var next atomic.Int64
		var wg sync.WaitGroup
		b.ResetTimer()
		cpu0 := machineCPU()
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
					ev := new(Event)
					*ev = templates[int(i-1)%len(templates)]
					if err := p.Record(ctx, ev); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		recorded := time.Since(start)
		waitAcked(b, p, runDone)
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		reportMachineCPU(b, cpu0)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/recorded.Seconds(), "recorded/s")
		reportShape(b, p)
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		if err := p.Close(cctx); err != nil {
			b.Error(err)
		}
		cancel()
		<-runDone
	}
}

// openBenchPipeline opens a pipeline in mode (best-effort: a 1Mi-event
// queue) onto a Pulsar sink and a fresh topic.
func openBenchPipeline(b *testing.B, brokerURL, adminURL, instance, mode string) *Pipeline {
	topic := pulsartest.NewTopic(b, adminURL)
	dir := b.TempDir()
	cfg := Config{Sink: SinkPulsar, Mode: mode, Buffer: 1 << 20, Pulsar: PulsarConfig{URL: brokerURL, Topic: topic}}
	cfg.SetDefaults(dir)
	s := newTestPulsarSink(b, cfg.Pulsar, pulsarTestOptions(b, instance))
	p, err := Open(context.Background(), cfg, dir, s, Options{Instance: instance, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// waitAcked waits until the sink has acknowledged b.N events, failing if
// Run ends first.
func waitAcked(b *testing.B, p *Pipeline, runDone <-chan error) {
	for p.Status().Acked < uint64(b.N) {
		select {
		case err := <-runDone:
			b.Fatalf("Run ended with %d of %d events acknowledged: %v", p.Status().Acked, b.N, err)
		case <-time.After(time.Millisecond):
		}
	}
}

// machineCPU is the CPU time, in seconds, that the whole machine has spent
// busy (not idle, not waiting for I/O) since boot, from /proc/stat; 0
// where there is no /proc/stat. The broker runs on the same machine: on
// two cores, the events per second any variant reaches are bounded by the
// CPU per event that client and broker spend together, which this makes
// visible.
func machineCPU() float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	fields := strings.Fields(line)
	if len(fields) < 8 || fields[0] != "cpu" {
		return 0
	}
	var busy float64
	for i, f := range fields[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return 0
		}
		busy += v
	}
	return busy / 100 // USER_HZ
}

// reportMachineCPU reports the machine's busy CPU per event since cpu0
// (µs), when /proc/stat is there.
func reportMachineCPU(b *testing.B, cpu0 float64) {
	if cpu0 == 0 {
		return
	}
	b.ReportMetric((machineCPU()-cpu0)*1e6/float64(b.N), "machine-cpu-µs/event")
}

// reportShape reports the events per sink call and, for the spool, per
// fsync: the batching the pipeline achieved.
func reportShape(b *testing.B, p *Pipeline) {
	ch := make(chan prometheus.Metric, 1)
	p.m.publish.Collect(ch)
	var m dto.Metric
	if err := (<-ch).Write(&m); err != nil {
		b.Fatal(err)
	}
	if n := m.GetHistogram().GetSampleCount(); n > 0 {
		b.ReportMetric(float64(p.Status().Acked)/float64(n), "events/publish")
	}
	if s := p.Spool(); s != nil {
		if st := s.Stats(); st.Commits > 0 {
			b.ReportMetric(float64(st.Records)/float64(st.Commits), "events/fsync")
		}
	}
}
