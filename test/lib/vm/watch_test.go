package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"
)

// The judge alone: a fake console fed at fake times.

var testWindows = windows{boot: 60 * time.Second, bootBudget: 5 * time.Minute, stall: 2 * time.Minute, budget: 3 * time.Minute}

const rcuReport = "[   22.100000] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n" +
	"[   22.100100] rcu: \t0-...!: (1 GPs behind) idle=4a4c/0/0x1 softirq=1/1 fqs=0\n" +
	"[   22.100200] rcu: \t(detected by 1, t=21002 jiffies, g=-1011, q=55 ncpus=2)\n" +
	"[   22.100300] Sending NMI from CPU 1 to CPUs 0:\n" +
	"[   22.100400] rcu: rcu_preempt kthread timer wakeup didn't happen for 21001 jiffies! g-1011 f0x0 RCU_GP_WAIT_FQS(5) ->state=0x402\n" +
	"[   22.100500] rcu: \tPossible timer handling issue on cpu=0 timer-softirq=1\n"

func TestJudgeSilentBootStalls(t *testing.T) {
	t0 := time.Unix(1000, 0)
	j := newJudge(testWindows, t0)
	j.observe("SeaBIOS (version 1.16.3)\nBooting from ROM...\n[    0.000000] Linux version 6.12\n", t0.Add(time.Second))
	if v := j.verdict(t0.Add(60*time.Second), t0); v != nil {
		t.Fatalf("stall 59 s after the last line: %v", v)
	}
	v := j.verdict(t0.Add(61*time.Second), t0)
	if v == nil || !v.BeforeInit || !v.Retryable || !strings.Contains(v.Cause, "printed nothing for 1m0s before init") ||
		!strings.Contains(v.Cause, "Linux version 6.12") {
		t.Fatalf("silent boot: %+v", v)
	}
}

func TestJudgeRCUStallBeforeInit(t *testing.T) {
	t0 := time.Unix(1000, 0)
	j := newJudge(testWindows, t0)
	j.observe("SeaBIOS\n[    0.000000] Linux version 6.12\n", t0.Add(time.Second))
	if v := j.verdict(t0.Add(2*time.Second), t0); v != nil {
		t.Fatalf("stall on a healthy boot: %v", v)
	}
	// The report comes in pieces, and the kernel goes on printing it.
	j.observe(rcuReport[:40], t0.Add(22*time.Second))
	j.observe(rcuReport[40:], t0.Add(22*time.Second))
	v := j.verdict(t0.Add(22*time.Second), t0)
	if v == nil || !v.BeforeInit || !v.Retryable || !strings.Contains(v.Cause, "rcu_preempt detected stalls") ||
		!strings.Contains(v.Cause, "stalled before init, 22s after QEMU started") {
		t.Fatalf("RCU stall before init: %+v", v)
	}
	if j.booted() {
		t.Fatal("booted")
	}
}

func TestJudgeSlowSteadyProgress(t *testing.T) {
	t0 := time.Unix(1000, 0)
	j := newJudge(testWindows, t0)
	now := t0
	// A boot 4 times slower than ReferenceBoot, a line every 50 s.
	for i := 0; now.Sub(t0) < 4*ReferenceBoot; i++ {
		now = now.Add(ReferenceBoot / 8)
		j.observe(fmt.Sprintf("[ %d.0] booting\n", i), now)
		if v := j.verdict(now, t0); v != nil {
			t.Fatalf("slow boot at %v: %v", now.Sub(t0), v)
		}
	}
	// Silent for 50 s, then init.
	now = now.Add(50 * time.Second)
	if v := j.verdict(now, t0); v != nil {
		t.Fatalf("slow boot at %v: %v", now.Sub(t0), v)
	}
	j.observe("GUEST BOOTED 6.", now) // the end of the line comes later
	j.observe("12\n", now.Add(time.Second))
	if !j.booted() || j.bootTime() != 90*time.Second || j.slowdown() != 5 {
		t.Fatalf("boot %v slowdown %v", j.bootTime(), j.slowdown())
	}
	if j.stallWindow() != 10*time.Minute || j.budget() != 15*time.Minute {
		t.Fatalf("window %v budget %v, want 10m and 15m", j.stallWindow(), j.budget())
	}
	// The guest program prints every 4 minutes (past the 2 minutes of the
	// unscaled window), a piece of a line at a time, for 12 minutes: slow,
	// not stalled.
	initAt := now
	for _, piece := range []string{"GUEST RES", "ULT x PASS\n", "GUEST RESULT y"} {
		now = now.Add(4 * time.Minute)
		j.observe(piece, now)
		if v := j.verdict(now, initAt); v != nil {
			t.Fatalf("slow guest at %v: %v", now.Sub(initAt), v)
		}
	}
	if v := j.verdict(initAt.Add(14*time.Minute+59*time.Second), initAt); v != nil {
		t.Fatalf("slow guest at 14m59s: %v", v)
	}
	if j.longest != 4*time.Minute {
		t.Errorf("longest silence %v", j.longest)
	}
	// The budget: 15 minutes after init, progress or not.
	now = initAt.Add(15 * time.Minute)
	j.observe(" PASS\n", now)
	if v := j.verdict(now, now); v == nil || v.BeforeInit || v.Retryable || !strings.Contains(v.Cause, "past its budget") {
		t.Fatalf("over budget: %+v", v)
	}
}

func TestJudgeHangAfterInit(t *testing.T) {
	t0 := time.Unix(1000, 0)
	j := newJudge(testWindows, t0)
	j.observe("SeaBIOS\nGUEST BOOTED 6.12\nGUEST MOUNTED myfs /mnt\n", t0.Add(5*time.Second))
	if j.slowdown() != 1 {
		t.Fatalf("slowdown %v", j.slowdown())
	}
	// A wait that begins late counts the silence from its start.
	late := t0.Add(2*time.Minute + 30*time.Second)
	if v := j.verdict(late, late); v != nil {
		t.Fatalf("stall at the start of a wait: %v", v)
	}
	// The partial line is progress once, not at every look.
	j.observe("GUEST RESULT half", t0.Add(6*time.Second))
	j.observe("", t0.Add(7*time.Second))
	if v := j.verdict(t0.Add(6*time.Second+2*time.Minute), t0); v == nil || v.BeforeInit || v.Retryable ||
		!strings.Contains(v.Cause, "hung after init: no console output for 2m0s") || !strings.Contains(v.Cause, "GUEST MOUNTED") {
		t.Fatalf("hang after init: %+v", v)
	}
	// Kernel stall reports are not progress either.
	j = newJudge(testWindows, t0)
	j.observe("GUEST BOOTED 6.12\n", t0.Add(5*time.Second))
	for at := 30 * time.Second; at < 3*time.Minute; at += 30 * time.Second {
		j.observe(rcuReport, t0.Add(at))
		j.observe("[ 99.0] RIP: 0010:default_idle+0x9/0x20\n", t0.Add(at+time.Second))
	}
	v := j.verdict(t0.Add(5*time.Second+2*time.Minute), t0)
	if v == nil || v.Retryable || !strings.Contains(v.Cause, "the guest kernel reported") {
		t.Fatalf("RCU reports after init: %+v", v)
	}
}

// A fake QEMU and a fake back-end: this test binary, run again (see
// TestMain and fakeMain). The fake QEMU connects to the back-end's socket
// as QEMU does and prints the console of a scenario; the fake back-end
// serves one connection and exits when it closes, as a back-end does.

const (
	fakeEnv     = "VM_TEST_FAKE"       // "qemu" or "daemon"
	fakeModeEnv = "VM_TEST_FAKE_MODE"  // the QEMU scenario
	fakeDirEnv  = "VM_TEST_FAKE_COUNT" // a file counting QEMU starts
)

// fakeMain runs the fake QEMU or back-end when this binary was started as
// one; it returns otherwise.
func fakeMain() {
	switch os.Getenv(fakeEnv) {
	case "qemu":
		fakeQEMU()
		os.Exit(0)
	case "daemon":
		fakeDaemon()
		os.Exit(0)
	}
}

func fakeQEMU() {
	var conn *net.UnixConn
	for i, a := range os.Args {
		if a == "-chardev" && i+1 < len(os.Args) {
			_, path, _ := strings.Cut(os.Args[i+1], "path=")
			c, err := net.Dial("unix", path)
			if err != nil {
				fmt.Fprintf(os.Stderr, "qemu: connecting %s: %v\n", path, err)
				os.Exit(1)
			}
			defer c.Close()
			conn = c.(*net.UnixConn)
		}
	}
	count := os.Getenv(fakeDirEnv)
	b, _ := os.ReadFile(count)
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	n++
	os.WriteFile(count, []byte(strconv.Itoa(n)), 0o644)
	say := func(s string) { fmt.Print(s + "\r\n") }
	boot := func() {
		say("SeaBIOS (version 1.16.3)")
		say("Booting from ROM...")
		say("[    0.000000] Linux version 6.12.95+deb12-amd64")
	}
	hang := func() { time.Sleep(time.Hour) }
	steady := func(what string, lines int) {
		for i := 0; i < lines; i++ {
			time.Sleep(300 * time.Millisecond)
			say(fmt.Sprintf("%s %d", what, i))
		}
	}
	done := func() {
		say("GUEST RESULT fake PASS ok")
		say("GUEST EXIT 0")
		say("GUEST DONE")
	}
	switch mode := os.Getenv(fakeModeEnv); {
	case mode == "rcu-once" && n == 1, mode == "rcu-always":
		boot()
		fmt.Print(strings.ReplaceAll(rcuReport, "\n", "\r\n"))
		hang()
	case mode == "abort-once" && n == 1:
		// As QEMU failing an assertion: a message and SIGABRT.
		boot()
		fmt.Fprintln(os.Stderr, "qemu-system-x86_64: hw/pci/msix.c:228: msix_table_mmio_write: Assertion `addr + size <= dev->msix_entries_nr * PCI_MSIX_ENTRY_SIZE' failed.")
		os.Stderr.Close()           // no runtime dump after the message
		debug.SetTraceback("crash") // the runtime dies of the signal
		syscall.Kill(os.Getpid(), syscall.SIGABRT)
		hang()
	case mode == "silent":
		boot()
		hang()
	case mode == "slow":
		boot()
		steady("[ 1.0] booting", 8)
		say("GUEST BOOTED 6.12.95+deb12-amd64")
		steady("posixtest: === RUN", 8)
		done()
	case mode == "blocked-on-backend":
		// As QEMU waits for a vhost-user reply: a blocking read of
		// the socket, which the fake back-end never answers.
		boot()
		f, err := conn.File()
		if err != nil {
			os.Exit(1)
		}
		syscall.SetNonblock(int(f.Fd()), false)
		var b [1]byte
		syscall.Read(int(f.Fd()), b[:])
		hang()
	case mode == "hang-after-init":
		boot()
		say("GUEST BOOTED 6.12.95+deb12-amd64")
		say("GUEST MOUNTED myfs /mnt")
		hang()
	default:
		boot()
		say("GUEST BOOTED 6.12.95+deb12-amd64")
		done()
	}
}

// fakeDaemon listens on its socket, serves one connection until it
// closes, and exits; with the argument "linger" it goes on running.
func fakeDaemon() {
	path := os.Args[1]
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, daemon.ReadyLine)
	c, err := l.Accept()
	if err != nil {
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "fake: client connected")
	fakeServe(c)
	fmt.Fprintln(os.Stderr, "fake: client disconnected")
	if len(os.Args) > 2 && os.Args[2] == "linger" {
		time.Sleep(time.Hour)
	}
}

func fakeServe(c net.Conn) { io.Copy(io.Discard, c) }

// fakeRetries counts the retries of fake boots, which TestMain leaves out.
var fakeRetries atomic.Int64

// fakeRig is a fake QEMU scenario with a fake back-end.
type fakeRig struct {
	t        *testing.T
	cfg      Config
	count    string
	restarts atomic.Int32
}

func newFakeRig(t *testing.T, mode string, linger bool) *fakeRig {
	t.Helper()
	dir := t.TempDir()
	rig := &fakeRig{t: t, count: filepath.Join(dir, "count")}
	t.Setenv(fakeEnv, "qemu")
	t.Setenv(fakeModeEnv, mode)
	t.Setenv(fakeDirEnv, rig.count)
	sock := filepath.Join(dir, "vhost.sock")
	args := []string{os.Args[0], sock}
	if linger {
		args = append(args, "linger")
	}
	dm := daemon.Daemon{Name: "fake-daemon", Env: []string{fakeEnv + "=daemon"},
		Argv: func(string, string, []string) []string { return args }}
	start := func() (*daemon.Proc, error) {
		p, err := dm.Start(daemon.Options{Socket: sock, Log: NewLineLogger("daemon: ", t.Logf)})
		if err == nil {
			t.Cleanup(p.Stop)
		}
		return p, err
	}
	d, err := start()
	if err != nil {
		t.Fatal(err)
	}
	rig.cfg = Config{QEMU: os.Args[0], Kernel: "/nonexistent/vmlinuz", Initrd: "/nonexistent/initrd", Socket: sock,
		BootStallWindow: 2 * time.Second, StallWindow: 2 * time.Second,
		Console: NewLineLogger("console: ", t.Logf), Logf: t.Logf, Daemon: d,
		Restart: func() (*daemon.Proc, error) { rig.restarts.Add(1); return start() }}
	return rig
}

// starts returns how many times the fake QEMU started.
func (rig *fakeRig) starts() int {
	b, _ := os.ReadFile(rig.count)
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

func (rig *fakeRig) boot() (*Run, error) {
	rig.t.Helper()
	stallReportBurst, retryDaemonWait = 500*time.Millisecond, time.Second
	rig.t.Cleanup(func() { stallReportBurst, retryDaemonWait = 5*time.Second, 5*time.Second })
	before := RetriedBoots()
	r, err := Boot(context.Background(), rig.cfg)
	fakeRetries.Add(RetriedBoots() - before)
	if r != nil {
		rig.t.Cleanup(func() { r.Kill(); <-r.Exited() })
	}
	return r, err
}

// TestBootRetriesRCUStall: a boot whose kernel reports an RCU stall before
// init is retried once, with a fresh back-end (the first exited with its
// QEMU), logged and counted; the retry's run works.
func TestBootRetriesRCUStall(t *testing.T) {
	rig := newFakeRig(t, "rcu-once", false)
	first := rig.cfg.Daemon
	before := RetriedBoots()
	r, err := rig.boot()
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Wait()
	if err != nil || !res.Done {
		t.Fatalf("retried run: %v", err)
	}
	if rig.starts() != 2 || RetriedBoots() != before+1 || rig.restarts.Load() != 1 {
		t.Errorf("%d QEMU starts, %d retries counted, %d restarts; want 2, 1, 1", rig.starts(), RetriedBoots()-before, rig.restarts.Load())
	}
	if len(r.Retried()) != 1 || !strings.Contains(r.Retried()[0], "rcu_preempt detected stalls") {
		t.Errorf("Retried() = %q", r.Retried())
	}
	if r.Daemon() == first || r.Daemon() == nil {
		t.Errorf("the run does not use the fresh back-end")
	}
}

// TestBootRetriesQEMUCrash: a QEMU that dies of a signal before init (an
// assertion under TCG) is retried like a stall.
func TestBootRetriesQEMUCrash(t *testing.T) {
	rig := newFakeRig(t, "abort-once", false)
	r, err := rig.boot()
	if err != nil {
		t.Fatal(err)
	}
	if rig.starts() != 2 || len(r.Retried()) != 1 || !strings.Contains(r.Retried()[0], "QEMU crashed before init (aborted): qemu-system-x86_64: hw/pci/msix.c:228") {
		t.Errorf("%d QEMU starts, Retried() = %q", rig.starts(), r.Retried())
	}
	if res, err := r.Wait(); err != nil || !res.Done {
		t.Errorf("retried run: %v", err)
	}
}

// TestBootRetryKeepsRunningDaemon: a back-end still running once the
// stalled QEMU is gone is reused.
func TestBootRetryKeepsRunningDaemon(t *testing.T) {
	rig := newFakeRig(t, "rcu-once", true)
	first := rig.cfg.Daemon
	r, err := rig.boot()
	// The lingering fake serves one connection only: the retry's QEMU
	// connects but is never served, which the fake does not mind.
	if err != nil {
		t.Fatal(err)
	}
	if rig.starts() != 2 || rig.restarts.Load() != 0 || r.Daemon() != first {
		t.Errorf("%d QEMU starts, %d restarts, same daemon %v; want 2, 0, true", rig.starts(), rig.restarts.Load(), r.Daemon() == first)
	}
}

// TestBootFailsOnSecondStall: a boot that stalls twice before init fails,
// naming both causes; a silent one is a stall too.
func TestBootFailsOnSecondStall(t *testing.T) {
	for _, tc := range []struct{ mode, want string }{
		{"rcu-always", "rcu_preempt detected stalls"},
		{"silent", "printed nothing for 2s before init"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			rig := newFakeRig(t, tc.mode, false)
			_, err := rig.boot()
			var se *StallError
			if err == nil || !errors.As(err, &se) || !se.BeforeInit || rig.starts() != 2 {
				t.Fatalf("Boot: %v after %d starts; want a StallError after 2", err, rig.starts())
			}
			if msg := err.Error(); !strings.Contains(msg, "stalled before init twice") || strings.Count(msg, tc.want) < 2 ||
				!strings.Contains(msg, "last console lines:") {
				t.Errorf("error does not name the cause twice: %v", err)
			}
		})
	}
}

// TestSlowSteadyGuestPasses: a guest that prints a line every 300 ms
// passes with windows of 2 s, however long it takes in all.
func TestSlowSteadyGuestPasses(t *testing.T) {
	rig := newFakeRig(t, "slow", false)
	r, err := rig.boot()
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Wait()
	if err != nil || !res.Done || rig.starts() != 1 {
		t.Fatalf("slow guest: %v, %d starts", err, rig.starts())
	}
	if s := r.LongestSilence(); s < 200*time.Millisecond || s > 2*time.Second {
		t.Errorf("longest silence %v", s)
	}
}

// TestHangAfterInitIsNotRetried: a guest silent after init fails the wait
// without a retry, with the console, QEMU's threads, the back-end's output
// and its goroutine dump (the fake back-end is a Go program).
func TestHangAfterInitIsNotRetried(t *testing.T) {
	rig := newFakeRig(t, "hang-after-init", false)
	before := RetriedBoots()
	r, err := rig.boot()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := r.WaitConsole(context.Background(), "GUEST RESULT never"); err == nil {
		t.Fatal("WaitConsole succeeded")
	}
	_, err = r.Wait()
	took := time.Since(t0)
	var se *StallError
	if err == nil || !errors.As(err, &se) || se.BeforeInit || se.Retryable {
		t.Fatalf("Wait: %v", err)
	}
	if rig.starts() != 1 || RetriedBoots() != before || rig.restarts.Load() != 0 {
		t.Errorf("a hang after init was retried: %d starts", rig.starts())
	}
	if took < 2*time.Second {
		t.Errorf("the wait failed after %v, before its 2 s window", took)
	}
	msg := err.Error()
	for _, want := range []string{"hung after init: no console output for 2s", "GUEST MOUNTED myfs /mnt",
		"QEMU threads", "back-end fake-daemon output", "fake: client connected",
		"goroutine dump (SIGQUIT)", "SIGQUIT: quit", "vm.fakeServe"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error lacks %q:\n%s", want, msg)
		}
	}
	if !exited(r.Daemon()) {
		t.Errorf("the back-end survived its goroutine dump")
	}
}

// TestBootBlockedOnBackendIsNotRetried: a silent boot whose QEMU sleeps
// reading the back-end's socket is the back-end's fault, not the guest
// kernel's: it fails at once, with the back-end's goroutine dump.
func TestBootBlockedOnBackendIsNotRetried(t *testing.T) {
	rig := newFakeRig(t, "blocked-on-backend", false)
	_, err := rig.boot()
	var se *StallError
	if err == nil || !errors.As(err, &se) || !se.BeforeInit || se.Retryable || rig.starts() != 1 {
		t.Fatalf("Boot: %v after %d starts; want a final StallError after 1", err, rig.starts())
	}
	for _, want := range []string{"printed nothing for 2s before init", "sleeps in unix_stream_read",
		"waits for the vhost-user back-end's reply", "goroutine dump (SIGQUIT)", "vm.fakeServe"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error lacks %q:\n%v", want, err)
		}
	}
}
