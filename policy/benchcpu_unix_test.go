//go:build unix

package policy

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cpuClock measures the CPU time (user and system, every thread, the
// garbage collector's included) that a benchmark loop costs this process
// and, for the sidecar, the OPA server. On a shared machine ns/op grows
// with other load while waiting for a core; cpu-ns/op much less so.
type cpuClock struct {
	pid   int // another process whose CPU counts too, or 0
	start time.Duration
	ok    bool
}

func startCPU(pid int) cpuClock {
	c := cpuClock{pid: pid}
	c.start, c.ok = c.now()
	return c
}

func (c cpuClock) now() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	total := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if c.pid != 0 {
		// /proc/PID/stat fields 14 and 15: utime and stime in clock ticks
		// (USER_HZ, 100 on Linux). The name in field 2 has no spaces here.
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.pid))
		if err != nil {
			return 0, false
		}
		f := strings.Fields(string(b))
		if len(f) < 15 {
			return 0, false
		}
		ut, err1 := strconv.ParseInt(f[13], 10, 64)
		st, err2 := strconv.ParseInt(f[14], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, false
		}
		total += time.Duration(ut+st) * 10 * time.Millisecond
	}
	return total, true
}

// report adds cpu-ns/op to the benchmark's results, when the CPU time
// could be read.
func (c cpuClock) report(b *testing.B) {
	end, ok := c.now()
	if !c.ok || !ok || b.N == 0 {
		return
	}
	b.ReportMetric(float64(end-c.start)/float64(b.N), "cpu-ns/op")
}
