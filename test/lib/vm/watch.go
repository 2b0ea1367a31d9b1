package vm

import (
	"fmt"
	"regexp"
	"strings"
	"sync/atomic"
	"time"
)

// How a guest's progress is judged. A guest under TCG on a loaded machine
// can be many times slower than alone, so no wait of the harness has a
// fixed wall-clock deadline: a wait fails when the guest makes no progress
// (prints nothing on its console) for a stall window, and the whole run is
// bounded by a budget that grows with the boot time the run measured.
//
// Until the guest's /init runs the kernel logs its boot on the console
// (loglevel=7, a line every second or so; /init quiets it to the level of
// "quiet" first thing), so that a boot shows progress too. A boot that
// stalls before /init (a kernel-level stall: the RCU stall detector's
// reports, or silence) has not touched the share yet: Boot retries it once
// with a fresh QEMU. A stall after /init is never retried: the guest
// program was running on the share, so it may be the back-end's fault; the
// wait fails with the last console lines, the back-end's output and, for a
// Go back-end such as govirtiofsd, a dump of its goroutines.
const (
	// InitMarker starts the first line /init prints ("GUEST BOOTED
	// <release>"): the guest's init runs, the share is not touched yet.
	InitMarker = "GUEST BOOTED"
	// DefaultBootStallWindow is how long a boot may print nothing before
	// /init runs (Config.BootStallWindow).
	DefaultBootStallWindow = 60 * time.Second
	// DefaultStallWindow is how long, scaled by the run's slowdown, a wait
	// after /init accepts a silent guest (Config.StallWindow). The longest
	// silence seen in make test on a loaded machine was 47 s (the guest
	// suite on the reference virtiofsd); a machine may get slower after
	// the boot that measured it.
	DefaultStallWindow = 3 * time.Minute
	// DefaultBootBudget bounds a boot that keeps printing but never runs
	// /init (Config.BootBudget); it is treated as a stall.
	DefaultBootBudget = 5 * time.Minute
	// ReferenceBoot is how long a boot (QEMU started to InitMarker) takes
	// on an unloaded machine; a run's slowdown is its boot time over this,
	// at least 1 and at most MaxSlowdown.
	ReferenceBoot = 10 * time.Second
	// MaxSlowdown caps the slowdown by which windows and budgets grow.
	MaxSlowdown = 5.0
)

// kernelStallLine matches the kernel's reports of a stuck CPU or task:
// the RCU stall detector, the soft and hard lockup watchdogs, the hung
// task detector.
var kernelStallLine = regexp.MustCompile(`rcu_\w+ (self-)?detected (expedited )?stalls?|detected stalls? on CPU|soft lockup - CPU#|hard LOCKUP|blocked for more than \d+ seconds`)

// stallReportBurst is how long after a kernel stall report's first line
// the console output is taken as more of the report (registers, call
// traces), not as progress. A variable for the tests.
var stallReportBurst = 5 * time.Second

// retryDaemonWait is how long Boot gives the back-end to exit after a
// stalled QEMU is killed, before it reuses it. A variable for the tests.
var retryDaemonWait = 5 * time.Second

// retriedBoots counts the boots retried after a stall before init, in this
// process.
var retriedBoots atomic.Int64

// RetriedBoots returns how many boots this process retried after they
// stalled before the guest's init ran.
func RetriedBoots() int64 { return retriedBoots.Load() }

// lastSlowdown is the slowdown the latest boot of this process measured
// (as float64 bits), for runs that measure none (an incoming migration).
var lastSlowdown atomic.Uint64

// StallError is the failure of a wait whose guest made no progress (or
// whose run went past its budget).
type StallError struct {
	// BeforeInit tells whether the guest's init had not run yet: the
	// share was not touched by the guest program.
	BeforeInit bool
	// Retryable tells whether Boot may retry the boot: a stall before
	// init that looks like the guest kernel's, not the back-end's.
	Retryable bool
	// Cause says what was seen, in one line.
	Cause string
	// Diagnostics holds what was gathered at the stall: the last console
	// lines, the state of QEMU's threads, the back-end's output and
	// goroutine dump.
	Diagnostics string
}

// Error returns the cause and the diagnostics.
func (e *StallError) Error() string {
	s := "vm: " + e.Cause
	if e.Diagnostics != "" {
		s += "\n" + e.Diagnostics
	}
	return s
}

// windows are the limits a judge applies.
type windows struct {
	boot       time.Duration // silence before init
	bootBudget time.Duration // a boot that never reaches init
	stall      time.Duration // silence after init, before scaling
	budget     time.Duration // the run after init, before scaling
}

func (c *Config) windows() windows {
	w := windows{c.BootStallWindow, c.BootBudget, c.StallWindow, c.Timeout}
	if w.boot == 0 {
		w.boot = DefaultBootStallWindow
	}
	if w.bootBudget == 0 {
		w.bootBudget = DefaultBootBudget
	}
	if w.stall == 0 {
		w.stall = DefaultStallWindow
	}
	if w.budget == 0 {
		w.budget = DefaultTimeout
	}
	return w
}

// judge follows a guest's console and decides whether it makes progress.
// It knows nothing of processes: it is fed the console and the time.
type judge struct {
	w       windows
	start   time.Time // QEMU started
	initAt  time.Time // InitMarker seen; zero before
	assumed float64   // slowdown to use when the boot was not seen

	part         string    // a partial last line
	lastProgress time.Time // last console output that counts as progress
	lastLine     string    // last complete line that counts as progress
	stallLine    string    // the first kernel stall report line
	stallAt      time.Time // when the latest stall report began
	longest      time.Duration
}

func newJudge(w windows, start time.Time) *judge {
	return &judge{w: w, start: start, lastProgress: start}
}

// assumeBooted is for a run whose init ran elsewhere (an incoming
// migration): it starts after init with the given slowdown.
func (j *judge) assumeBooted(slowdown float64) {
	j.initAt = j.start
	j.assumed = slowdown
}

// observe takes in p, the console output that came at now. New output
// is progress, but for a kernel stall report: its lines, and whatever
// follows within stallReportBurst of its first line.
func (j *judge) observe(p string, now time.Time) {
	if p == "" {
		return
	}
	inReport := func() bool { return !j.stallAt.IsZero() && now.Sub(j.stallAt) < stallReportBurst }
	progress := false
	// Complete lines are judged; a partial one is kept to be judged once
	// complete, and counts as progress now unless it is in a report.
	lines := strings.Split(j.part+p, "\n")
	j.part = lines[len(lines)-1]
	for _, line := range lines[:len(lines)-1] {
		line = strings.TrimSpace(line)
		if kernelStallLine.MatchString(line) {
			if j.stallLine == "" {
				j.stallLine = line
			}
			j.stallAt = now
			continue
		}
		if inReport() {
			continue
		}
		if !j.booted() && strings.Contains(line, InitMarker) {
			j.initAt = now
		}
		progress = true
		if line != "" {
			j.lastLine = line
		}
	}
	if j.part != "" && !inReport() {
		progress = true
		if !j.booted() && strings.Contains(j.part, InitMarker) {
			j.initAt = now // a wait may have seen it already
		}
	}
	if progress {
		if gap := now.Sub(j.lastProgress); gap > j.longest {
			j.longest = gap
		}
		j.lastProgress = now
	}
}

// booted tells whether the guest's init ran.
func (j *judge) booted() bool { return !j.initAt.IsZero() }

// bootTime is how long the boot took (0 before init).
func (j *judge) bootTime() time.Duration {
	if !j.booted() {
		return 0
	}
	return j.initAt.Sub(j.start)
}

// slowdown is the run's boot time over ReferenceBoot, in [1, MaxSlowdown].
func (j *judge) slowdown() float64 {
	if j.assumed != 0 {
		return j.assumed
	}
	return slowdownOf(j.bootTime())
}

func slowdownOf(boot time.Duration) float64 {
	s := float64(boot) / float64(ReferenceBoot)
	return min(max(s, 1), MaxSlowdown)
}

func scale(d time.Duration, s float64) time.Duration {
	return time.Duration(float64(d) * s).Round(time.Second)
}

// stallWindow is the silence a wait after init accepts.
func (j *judge) stallWindow() time.Duration { return scale(j.w.stall, j.slowdown()) }

// budget is how long the run may last after init.
func (j *judge) budget() time.Duration { return scale(j.w.budget, j.slowdown()) }

// verdict returns a stall for a wait that began at waitStart, or nil while
// the guest makes progress. The error has no diagnostics yet.
func (j *judge) verdict(now, waitStart time.Time) *StallError {
	quiet := now.Sub(later(j.lastProgress, waitStart))
	if !j.booted() {
		switch {
		case j.stallLine != "":
			return &StallError{BeforeInit: true, Retryable: true,
				Cause: fmt.Sprintf("the guest kernel stalled before init, %v after QEMU started: %q", j.stallAt.Sub(j.start).Round(time.Second), j.stallLine)}
		case quiet >= j.w.boot:
			return &StallError{BeforeInit: true, Retryable: true,
				Cause: fmt.Sprintf("the guest printed nothing for %v before init, %v after QEMU started (last line %q)", quiet.Round(time.Second), now.Sub(j.start).Round(time.Second), j.lastLine)}
		case now.Sub(j.start) >= j.w.bootBudget:
			return &StallError{BeforeInit: true, Retryable: true,
				Cause: fmt.Sprintf("the guest's init did not run within %v of QEMU starting (last line %q)", j.w.bootBudget, j.lastLine)}
		}
		return nil
	}
	note := ""
	if j.stallLine != "" {
		note = fmt.Sprintf("; the guest kernel reported %q", j.stallLine)
	}
	if w := j.stallWindow(); quiet >= w {
		return &StallError{Cause: fmt.Sprintf("the guest hung after init: no console output for %v (stall window %v × slowdown %.1f; boot took %v; last line %q)%s",
			quiet.Round(time.Second), j.w.stall, j.slowdown(), j.bootTime().Round(100*time.Millisecond), j.lastLine, note)}
	}
	if b := j.budget(); now.Sub(j.initAt) >= b {
		return &StallError{Cause: fmt.Sprintf("the guest ran past its budget: %v after init (Timeout %v × slowdown %.1f; boot took %v; last line %q)%s",
			now.Sub(j.initAt).Round(time.Second), j.w.budget, j.slowdown(), j.bootTime().Round(100*time.Millisecond), j.lastLine, note)}
	}
	return nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
