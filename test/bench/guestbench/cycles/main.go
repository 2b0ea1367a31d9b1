// Command cycles splits a real-guest run's request round trips into the
// daemon's part and the guest's part, from a scheduler trace. It shows how
// much of the guest's time a daemon can change at all.
//
// Record a guestbench run system-wide, then feed the trace in:
//
//	go run ./test/bench/guestbench --rounds 1 & sleep 5
//	perf record -o g.data -a -e sched:sched_wakeup -e sched:sched_switch \
//	    -e syscalls:sys_enter_write --filter 'count==8' -- sleep 60
//	perf script -i g.data -F comm,tid,time,event,trace | go run ./test/bench/guestbench/cycles
//
// A daemon thread's cycle starts when it is woken (the driver's kick), goes
// on when it gets a CPU, and ends at its next 8-byte write (the interrupt
// it sends back); the guest's part is from there to the thread's next
// wake-up. Cycles are grouped into runs at gaps of -gap or more, which
// guestbench's cache drops between workloads provide. Threads are picked
// by name: ours run as "exe" (the sandboxed child), the reference's queue
// threads as "vring_worker".
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/benchstat"
)

func main() {
	comms := flag.String("comm", "exe,vring_worker", "comma-separated thread names of the daemons' queue threads")
	gap := flag.Duration("gap", 300*time.Millisecond, "idle time that separates two runs")
	minCycles := flag.Int("min", 20, "runs with fewer cycles are left out")
	flag.Parse()
	cs, err := parse(os.Stdin, strings.Split(*comms, ","))
	if err != nil {
		fmt.Fprintln(os.Stderr, "cycles:", err)
		os.Exit(1)
	}
	report(os.Stdout, cs, gap.Seconds(), *minCycles)
}

// cycle is one round trip through a daemon thread, in seconds.
type cycle struct {
	comm             string
	tid              int
	wake, run, reply float64
}

// parse reads perf script lines ("comm tid [cpu] time: event: fields") and
// returns each named thread's cycles in order.
func parse(r io.Reader, comms []string) ([]cycle, error) {
	named := func(c string) bool { return slices.Contains(comms, c) }
	type state struct {
		comm      string
		wake, run float64
		woken, on bool
	}
	threads := map[int]*state{}
	get := func(tid int, comm string) *state {
		s := threads[tid]
		if s == nil {
			s = &state{comm: comm}
			threads[tid] = s
		}
		return s
	}
	var out []cycle
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// The time is the first field ending in ':' that parses as a number.
		k := -1
		for i := 1; i+1 < len(f); i++ {
			if strings.HasSuffix(f[i], ":") && strings.Contains(f[i], ".") {
				if _, err := strconv.ParseFloat(strings.TrimSuffix(f[i], ":"), 64); err == nil {
					k = i
					break
				}
			}
		}
		if k < 2 {
			continue
		}
		t, _ := strconv.ParseFloat(strings.TrimSuffix(f[k], ":"), 64)
		comm, tid := strings.Join(f[:k-1], " "), atoi(f[k-1])
		if k >= 3 && strings.HasPrefix(f[k-1], "[") {
			comm, tid = strings.Join(f[:k-2], " "), atoi(f[k-2])
		}
		ev, fields := f[k+1], kv(f[k+2:])
		switch ev {
		case "sched:sched_wakeup:":
			if named(fields["comm"]) {
				s := get(atoi(fields["pid"]), fields["comm"])
				s.wake, s.woken, s.on = t, true, false
			}
		case "sched:sched_switch:":
			if named(fields["next_comm"]) {
				if s := threads[atoi(fields["next_pid"])]; s != nil && s.woken && !s.on {
					s.run, s.on = t, true
				}
			}
		case "syscalls:sys_enter_write:":
			if !named(comm) || fields["count:"] != "" && fields["count:"] != "0x00000008" {
				continue
			}
			s := get(tid, comm)
			if s.woken && s.on {
				out = append(out, cycle{comm: s.comm, tid: tid, wake: s.wake, run: s.run, reply: t})
			}
			s.woken, s.on = false, false
		}
	}
	return out, sc.Err()
}

// kv reads perf's "key=value" fields; a "key: value," pair is kept under
// "key:".
func kv(f []string) map[string]string {
	m := map[string]string{}
	for i, w := range f {
		if k, v, ok := strings.Cut(w, "="); ok {
			m[k] = v
		} else if strings.HasSuffix(w, ":") && i+1 < len(f) {
			m[w] = strings.TrimSuffix(f[i+1], ",")
		}
	}
	return m
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// report prints one line per run of each thread: its cycles, how long the
// run took, and the medians of each part.
func report(w io.Writer, cs []cycle, gap float64, minCycles int) {
	byThread := map[int][]cycle{}
	var tids []int
	for _, c := range cs {
		if byThread[c.tid] == nil {
			tids = append(tids, c.tid)
		}
		byThread[c.tid] = append(byThread[c.tid], c)
	}
	var runs [][]cycle
	for _, tid := range tids {
		l := byThread[tid]
		start := 0
		for i := 1; i <= len(l); i++ {
			if i == len(l) || l[i].wake-l[i-1].reply >= gap {
				if i-start >= minCycles {
					runs = append(runs, l[start:i])
				}
				start = i
			}
		}
	}
	slices.SortFunc(runs, func(a, b []cycle) int { return cmpFloat(a[0].wake, b[0].wake) })
	fmt.Fprintln(w, "# per run of one daemon thread; µs medians; daemon% = time from wake-up to reply over the run's time")
	fmt.Fprintf(w, "%-20s %7s %12s %7s %8s %8s %8s %8s\n", "thread", "cycles", "start", "secs", "to-run", "to-reply", "guest", "daemon%")
	for _, r := range runs {
		var toRun, toReply, guest []float64
		busy := 0.0
		for i, c := range r {
			toRun = append(toRun, c.run-c.wake)
			toReply = append(toReply, c.reply-c.wake)
			busy += c.reply - c.wake
			if i > 0 {
				guest = append(guest, c.wake-r[i-1].reply)
			}
		}
		dur := r[len(r)-1].reply - r[0].wake
		fmt.Fprintf(w, "%-20s %7d %12.3f %7.3f %8.0f %8.0f %8.0f %7.1f%%\n", fmt.Sprintf("%s/%d", r[0].comm, r[0].tid), len(r), r[0].wake, dur,
			1e6*benchstat.Median(toRun), 1e6*benchstat.Median(toReply), 1e6*benchstat.Median(guest), 100*busy/dur)
	}
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
