// Package slow scales a guest program's deadlines by how slow the machine
// is, as the guest measures it: how long its kernel took to boot up to the
// program's start (/proc/uptime; under TCG the guest's clock follows the
// host's), over ReferenceUptime. A guest on a loaded machine, many times
// slower than alone, then waits as much longer for the host's signals and
// for its own watchdog, as the host's harness (test/lib/vm) does for the
// guest.
package slow

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ReferenceUptime is the guest's uptime when its program starts, on an
// unloaded machine.
const ReferenceUptime = 4 * time.Second

// MaxFactor caps Factor.
const MaxFactor = 5.0

var factor = sync.OnceValues(func() (float64, time.Duration) {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 1, 0
	}
	f, _, _ := strings.Cut(string(b), " ")
	secs, err := strconv.ParseFloat(f, 64)
	if err != nil {
		return 1, 0
	}
	up := time.Duration(secs * float64(time.Second))
	return min(max(float64(up)/float64(ReferenceUptime), 1), MaxFactor), up
})

// Factor returns the machine's slowdown as the guest measured it at its
// first call (call it early): from 1 to MaxFactor.
func Factor() float64 {
	f, _ := factor()
	return f
}

// Uptime returns the uptime Factor measured.
func Uptime() time.Duration {
	_, up := factor()
	return up
}

// Scale returns d times Factor.
func Scale(d time.Duration) time.Duration {
	return time.Duration(float64(d) * Factor()).Round(time.Millisecond)
}
