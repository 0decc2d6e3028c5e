package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// result is one measured round of one target.
type result struct {
	requests      int
	elapsed       time.Duration
	rps           float64
	p50, p90, p99 time.Duration
	// cpuPerReq is the proxy process's CPU (user+system) per request.
	cpuPerReq time.Duration
	// clientCPU is the load generator's CPU over the round, in cores.
	clientCPU float64
	// upConns is how many connections the upstream accepted in the round.
	upConns int
}

func (r result) String() string {
	return fmt.Sprintf("%8.0f req/s  p50 %7s  p90 %7s  p99 %7s  proxy CPU %6s/req  new upstream conns %5d  load generator %3.0f%% CPU",
		r.rps, fmtDur(r.p50), fmtDur(r.p90), fmtDur(r.p99), fmtDur(r.cpuPerReq), r.upConns, 100*r.clientCPU)
}

// loadClient is a client for conns connections to t over TLS and HTTP/1.1
// (HTTP/2 off for every target alike: oauth2-proxy does not offer it), no
// cookie jar (the session cookie is a fixed header) and no redirects.
func loadClient(t *target, conns int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{
				InsecureSkipVerify: true, // the proxies' certificates are not what is measured
				ServerName:         t.host,
				NextProtos:         []string{"http/1.1"},
			},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, t.addr)
			},
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			MaxConnsPerHost:     conns,
			DisableCompression:  true,
			IdleConnTimeout:     time.Minute,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
}

// measure runs one round against t: a warm-up on fresh connections, then
// the measured load, with CPU read before and after.
func (b *bench) measure(ctx context.Context, t *target) (result, error) {
	c := loadClient(t, b.opts.conns)
	defer c.CloseIdleConnections()
	if b.opts.warmup > 0 {
		if _, _, err := b.drive(ctx, c, t, b.opts.warmup, false); err != nil {
			return result{}, fmt.Errorf("warm-up: %w", err)
		}
	}
	conns0, err := b.upstreamConns(ctx)
	if err != nil {
		return result{}, err
	}
	cpu0, err := procCPU(t.proc.pid())
	if err != nil {
		return result{}, err
	}
	self0, err := procCPU(os.Getpid())
	if err != nil {
		return result{}, err
	}
	lat, elapsed, err := b.drive(ctx, c, t, b.opts.duration, true)
	if err != nil {
		return result{}, err
	}
	cpu1, err := procCPU(t.proc.pid())
	if err != nil {
		return result{}, err
	}
	self1, err := procCPU(os.Getpid())
	if err != nil {
		return result{}, err
	}
	conns1, err := b.upstreamConns(ctx)
	if err != nil {
		return result{}, err
	}
	n := len(lat)
	if n == 0 {
		return result{}, errors.New("no request completed")
	}
	slices.Sort(lat)
	return result{
		requests:  n,
		elapsed:   elapsed,
		rps:       float64(n) / elapsed.Seconds(),
		p50:       percentile(lat, 0.50),
		p90:       percentile(lat, 0.90),
		p99:       percentile(lat, 0.99),
		cpuPerReq: (cpu1 - cpu0) / time.Duration(n),
		clientCPU: (self1 - self0).Seconds() / elapsed.Seconds(),
		upConns:   conns1 - conns0 - 1, // the query itself is a connection
	}, nil
}

// drive sends GET / with t's session from b.opts.conns workers, each one
// request after another, until d has passed. Every answer must be the
// upstream's 200 and body: the first other answer or error stops the load
// and is returned. With record, it returns every request's latency.
func (b *bench) drive(ctx context.Context, c *http.Client, t *target, d time.Duration, record bool) ([]time.Duration, time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		failOnce sync.Once
		failErr  error
		sent     atomic.Int64
	)
	fail := func(err error) {
		failOnce.Do(func() { failErr = err; cancel() })
	}
	want := []byte(upstreamBody)
	u := t.url("/")
	lats := make([][]time.Duration, b.opts.conns)
	start := time.Now()
	stop := start.Add(d)
	for w := range b.opts.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf bytes.Buffer
			var mine []time.Duration
			if record {
				mine = make([]time.Duration, 0, 1<<14)
			}
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(stop) {
					break
				}
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
				if err != nil {
					fail(err)
					return
				}
				req.Header.Set("User-Agent", "portcullis-peers-bench")
				if t.cookie != "" {
					req.Header.Set("Cookie", t.cookie)
				}
				sent.Add(1)
				resp, err := c.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						fail(err)
					}
					return
				}
				buf.Reset()
				_, err = buf.ReadFrom(resp.Body)
				resp.Body.Close()
				elapsed := time.Since(t0)
				if err != nil {
					fail(fmt.Errorf("reading the body: %w", err))
					return
				}
				if resp.StatusCode != http.StatusOK || !bytes.Equal(buf.Bytes(), want) {
					fail(fmt.Errorf("got %d %.300q, want 200 and the upstream's body (after %d requests)", resp.StatusCode, buf.String(), sent.Load()))
					return
				}
				if record {
					mine = append(mine, elapsed)
				}
			}
			lats[w] = mine
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	t.sent += sent.Load()
	if failErr != nil {
		if gone, err := t.proc.exited(); gone {
			return nil, 0, fmt.Errorf("%w (the proxy exited: %v)", failErr, err)
		}
		return nil, 0, failErr
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if gone, err := t.proc.exited(); gone {
		return nil, 0, fmt.Errorf("the proxy exited: %v", err)
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	return all, elapsed, nil
}

// upstreamConns asks the upstream how many connections it has accepted.
func (b *bench) upstreamConns(ctx context.Context) (int, error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	code, body, err := get(ctx, c, b.upstreamURL+connsPath, "")
	if err != nil {
		return 0, fmt.Errorf("upstream connection count: %w", err)
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("upstream connection count: %d %s", code, body)
	}
	return strconv.Atoi(body)
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// procCPU is the user+system CPU time a process (all its threads) has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("CPU time of %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("CPU time of %d: unexpected /proc stat %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("CPU time of %d: unexpected /proc stat %q", pid, b)
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("CPU time of %d: unexpected /proc stat %q", pid, b)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// percentile of sorted latencies, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(float64(len(sorted))*p+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// cpuInfo is the online CPUs and their model, for the report header.
func cpuInfo() string {
	online, err := os.ReadFile("/sys/devices/system/cpu/online")
	info := "CPUs " + strings.TrimSpace(string(online))
	if err != nil {
		info = "CPUs unknown"
	}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return info
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return info + " online, " + strings.TrimSpace(v)
		}
	}
	return info + " online"
}

// loadavg is /proc/loadavg's first three fields, for the report header.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load average unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "load average unknown"
	}
	return "load average " + strings.Join(f[:3], " ")
}

// fmtDur prints a duration with three significant digits in µs or ms.
func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
}
