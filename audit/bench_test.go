package audit

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// countSink acknowledges everything and keeps only a count.
type countSink struct{ n atomic.Int64 }

func (s *countSink) PublishEncoded(_ context.Context, b []Encoded) error {
	s.n.Add(int64(len(b)))
	return nil
}
func (s *countSink) Publish(_ context.Context, b []*Event) error {
	s.n.Add(int64(len(b)))
	return nil
}
func (s *countSink) Status() SinkStatus { return SinkStatus{Live: true} }
func (s *countSink) Close() error       { return nil }

// benchRecord records b.N events from 64 goroutines per CPU (requests in
// flight) and reports events/s, and for the spool the events per fsync.
func benchRecord(b *testing.B, mode string, sink Sink, waitAcked func(n int64) bool) {
	env := newEnv(&testing.T{}, mode)
	env.dataDir = b.TempDir()
	env.cfg.SetDefaults(env.dataDir)
	env.cfg.Mode = mode
	env.cfg.Buffer = 1 << 16
	env.batch = 0 // the default
	t := &testing.T{}
	p, stop := env.open(t, sink, true)
	defer stop()
	b.ReportAllocs()
	b.SetParallelism(64)
	var dropped atomic.Int64
	b.ResetTimer()
	cpu0 := machineCPU()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			if err := p.Record(context.Background(), newTestEvent(i)); err != nil {
				dropped.Add(1)
			}
		}
	})
	if waitAcked != nil {
		for !waitAcked(int64(b.N) - dropped.Load()) {
			time.Sleep(time.Millisecond)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	reportMachineCPU(b, cpu0)
	b.ReportMetric(float64(dropped.Load()), "dropped")
	if s := p.Spool(); s != nil {
		st := s.Stats()
		if st.Commits > 0 {
			b.ReportMetric(float64(st.Records)/float64(st.Commits), "events/fsync")
		}
	}
}

// BenchmarkRecordDurable measures Record in durable mode: every Record
// waits for the group fsync that covers it, with 64 concurrent recorders
// per CPU sharing fsyncs.
func BenchmarkRecordDurable(b *testing.B) {
	benchRecord(b, ModeDurable, &countSink{}, nil)
}

// BenchmarkRecordDurableToFileSink measures durable recording until the
// file sink holds every event (spool fsync + file fsync per batch).
func BenchmarkRecordDurableToFileSink(b *testing.B) {
	env := newEnv(&testing.T{}, ModeDurable)
	env.cfg.SetDefaults(b.TempDir())
	s, err := NewFileSink(env.cfg.File, FileSinkOptions{})
	if err != nil {
		b.Fatal(err)
	}
	cs := &countingFile{FileSink: s}
	benchRecord(b, ModeDurable, cs, func(n int64) bool { return cs.n.Load() >= n })
}

type countingFile struct {
	*FileSink
	n atomic.Int64
}

func (c *countingFile) PublishEncoded(ctx context.Context, b []Encoded) error {
	err := c.FileSink.PublishEncoded(ctx, b)
	if err == nil {
		c.n.Add(int64(len(b)))
	}
	return err
}

// BenchmarkRecordBestEffort measures Record in best-effort mode (memory
// queue; never blocks).
func BenchmarkRecordBestEffort(b *testing.B) {
	benchRecord(b, ModeBestEffort, &countSink{}, nil)
}

// BenchmarkSeal measures encoding and hashing one event as Record does
// (one reused SHA-256 state, a pooled body buffer): work the bare producer
// loop of BenchmarkPulsarThroughput does before its clock starts.
func BenchmarkSeal(b *testing.B) {
	ev := pulsarTestEvent("portcullis-bench", 1, time.Time{})
	normalize(ev, time.Now())
	ev.ID = "01JD000000000000000000000A"
	var s sealer
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		ev.Seq++
		body, err := appendBody(buf[:0], ev)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.seal(ev, body); err != nil {
			b.Fatal(err)
		}
	}
}
