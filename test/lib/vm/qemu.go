package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"
	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"
)

// Defaults of Config.
const (
	DefaultTag       = "myfs"
	DefaultQueueSize = 1024
	DefaultMemory    = "1G"
	DefaultSMP       = 2
	DefaultTimeout   = 3 * time.Minute
)

// Config describes one guest boot.
type Config struct {
	// Lab provides QEMU (Lab.QEMU, or Lab.QEMUSid with DAXDevice) and the
	// kernel unless QEMU or Kernel are set.
	Lab *Lab
	// QEMU overrides the emulator binary (see Program).
	QEMU string
	// Kernel overrides the guest kernel image.
	Kernel string
	// Initrd is the initramfs (see BuildInitramfs). Required.
	Initrd string

	// Socket is the vhost-user-fs back-end's unix socket. QEMU connects to
	// it as the vhost-user front-end. Empty means no virtio-fs device.
	Socket string
	// Tag is the virtio-fs tag; DefaultTag when empty.
	Tag string
	// NumRequestQueues is the device's num-request-queues; 0 leaves
	// QEMU's default (1).
	NumRequestQueues int
	// QueueSize is the device's queue-size; DefaultQueueSize when 0. With
	// DAXDevice, 0 leaves the generic device's vq_size default (64).
	QueueSize int
	// Device, when set, replaces the whole -device value of the virtio-fs
	// device (the chardev is still "char0"), e.g.
	// "vhost-user-test-device-pci,chardev=char0,virtio-id=26,num_vqs=2,config_size=40".
	Device string
	// DAXDevice replaces vhost-user-fs-pci with QEMU 11.1's generic
	// vhost-user-test-device-pci as a virtio-fs device (virtio-id 26) that
	// can carry a DAX window (see DAXDeviceArg), and picks Lab.QEMUSid
	// unless QEMU is set. The generic device has no tag property: the
	// guest reads the tag (and the number of request queues) from the
	// back-end's config space (GET_CONFIG), so the back-end must offer
	// the CONFIG protocol feature, and Tag is not used. It asks for a
	// window with GET_SHMEM_CONFIG only when the back-end offers SHMEM.
	// It cannot be combined with Device.
	DAXDevice bool

	// Memory is the guest RAM size in QEMU syntax; DefaultMemory when
	// empty. RAM is a shared memfd, as vhost-user needs.
	Memory string
	// Slots and MaxMem enable memory hotplug ("-m 1G,slots=4,maxmem=4G")
	// when Slots > 0. The guest then onlines hot-added memory by itself
	// (memhp_default_state=online).
	Slots  int
	MaxMem string
	// SMP is the number of vCPUs; DefaultSMP when 0.
	SMP int
	// QMPSocket, when set, is a unix socket path on which QEMU serves QMP
	// (see DialQMP).
	QMPSocket string

	// Append is added to the kernel command line
	// ("console=ttyS0 loglevel=7 no_timer_check panic=-1").
	Append string
	// ExtraArgs are added to QEMU's command line.
	ExtraArgs []string
	// Timeout is the run's budget after the guest's init ran, on an
	// unloaded machine; DefaultTimeout when 0. It is scaled by the run's
	// slowdown (see ReferenceBoot); QEMU is killed past it.
	Timeout time.Duration
	// StallWindow is how long a wait after init accepts a guest that
	// prints nothing, on an unloaded machine; DefaultStallWindow when 0.
	// It is scaled like Timeout.
	StallWindow time.Duration
	// BootStallWindow is how long a boot may print nothing before the
	// guest's init runs; DefaultBootStallWindow when 0.
	BootStallWindow time.Duration
	// BootBudget bounds a boot that prints but never runs init;
	// DefaultBootBudget when 0.
	BootBudget time.Duration
	// Console, when set, receives the serial console output as it comes
	// (see LineLogger). If it has a Flush method, Wait calls it.
	Console io.Writer

	// Daemon is the back-end serving Socket, when the caller started one.
	// A stall's diagnostics show its threads and output, a stall after
	// init ends it with a goroutine dump when it is a Go program
	// (govirtiofsd), and a boot retry reuses it if it still runs once
	// QEMU is gone. Run.Daemon returns the one in use.
	Daemon *daemon.Proc
	// Restart starts a fresh back-end on Socket for a boot retry, when
	// Daemon has exited with the stalled QEMU (a back-end serves one
	// front-end and exits once it goes). Without it such a boot is not
	// retried.
	Restart func() (*daemon.Proc, error)
	// Logf receives the harness's notes: the boot time, a retried boot
	// and why. testing.T.Logf fits; nil writes them to os.Stderr.
	Logf func(format string, args ...any)
}

func (cfg *Config) logf(format string, args ...any) {
	if cfg.Logf != nil {
		cfg.Logf(format, args...)
		return
	}
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

// incoming tells whether QEMU waits for an incoming migration: the guest's
// init ran on the source, and its console goes on from there.
func (cfg *Config) incoming() bool {
	for _, a := range cfg.ExtraArgs {
		if a == "-incoming" {
			return true
		}
	}
	return false
}

// Args returns QEMU's command line (without the program) for cfg.
func (cfg *Config) Args() ([]string, error) {
	kernel := cfg.Kernel
	if kernel == "" && cfg.Lab != nil {
		kernel = cfg.Lab.Kernel
	}
	if kernel == "" {
		return nil, errors.New("vm: Config needs a Lab or a Kernel")
	}
	if cfg.Initrd == "" {
		return nil, errors.New("vm: Config needs an Initrd")
	}
	mem := cfg.Memory
	if mem == "" {
		mem = DefaultMemory
	}
	smp := cfg.SMP
	if smp == 0 {
		smp = DefaultSMP
	}
	m := mem
	// The kernel logs its boot (loglevel=7) so that a boot shows progress
	// on the console; /init lowers the console's level to that of
	// "quiet" first thing (see InitScript). no_timer_check skips the
	// kernel's test of the IO-APIC timer, which a TCG vCPU starved by a
	// loaded host fails ("IO-APIC + timer doesn't work!", a panic); the
	// timer works.
	appendArgs := "console=ttyS0 loglevel=7 no_timer_check panic=-1"
	if cfg.Slots > 0 {
		if cfg.MaxMem == "" {
			return nil, errors.New("vm: Config.Slots needs MaxMem")
		}
		m = fmt.Sprintf("%s,slots=%d,maxmem=%s", mem, cfg.Slots, cfg.MaxMem)
		appendArgs += " memhp_default_state=online"
	}
	if cfg.Append != "" {
		appendArgs += " " + cfg.Append
	}
	args := []string{
		"-machine", "q35,accel=tcg", "-cpu", "max",
		"-m", m, "-smp", strconv.Itoa(smp),
		"-nographic", "-no-reboot", "-nic", "none",
		"-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on",
		"-numa", "node,memdev=mem",
	}
	if cfg.DAXDevice && cfg.Device != "" {
		return nil, errors.New("vm: Config.DAXDevice and Config.Device both set")
	}
	if cfg.DAXDevice && cfg.Socket == "" {
		return nil, errors.New("vm: Config.DAXDevice needs a Socket")
	}
	if cfg.Socket != "" {
		dev := cfg.Device
		if cfg.DAXDevice {
			dev = DAXDeviceArg(cfg.NumRequestQueues, cfg.QueueSize)
		}
		if dev == "" {
			tag := cfg.Tag
			if tag == "" {
				tag = DefaultTag
			}
			qs := cfg.QueueSize
			if qs == 0 {
				qs = DefaultQueueSize
			}
			dev = "vhost-user-fs-pci,chardev=char0,tag=" + tag
			if cfg.NumRequestQueues > 0 {
				dev += ",num-request-queues=" + strconv.Itoa(cfg.NumRequestQueues)
			}
			dev += ",queue-size=" + strconv.Itoa(qs)
		}
		args = append(args,
			"-chardev", "socket,id=char0,path="+cfg.Socket,
			"-device", dev)
	}
	if cfg.QMPSocket != "" {
		args = append(args, "-qmp", "unix:"+cfg.QMPSocket+",server=on,wait=off")
	}
	args = append(args, "-kernel", kernel, "-initrd", cfg.Initrd, "-append", appendArgs)
	args = append(args, cfg.ExtraArgs...)
	return args, nil
}

// DAXDeviceName is QEMU 11.1's generic vhost-user device, which maps the
// back-end's shared memory regions (GET_SHMEM_CONFIG) as PCI BAR 4.
const DAXDeviceName = "vhost-user-test-device-pci"

// DAXDeviceArg returns the -device value that makes DAXDeviceName a
// virtio-fs device on chardev char0:
//
//	vhost-user-test-device-pci,chardev=char0,virtio-id=26,num_vqs=N,config_size=40
//
// N is 1 + numRequestQueues (the hiprio queue and the request queues;
// numRequestQueues 0 counts as 1), and 40 is the size of struct
// virtio_fs_config (tag[36], num_request_queues). A queueSize other than
// 0 is added as vq_size.
func DAXDeviceArg(numRequestQueues, queueSize int) string {
	if numRequestQueues <= 0 {
		numRequestQueues = 1
	}
	dev := fmt.Sprintf("%s,chardev=char0,virtio-id=26,num_vqs=%d,config_size=40", DAXDeviceName, 1+numRequestQueues)
	if queueSize > 0 {
		dev += ",vq_size=" + strconv.Itoa(queueSize)
	}
	return dev
}

// Program returns the QEMU binary Boot runs for cfg: QEMU if set, else
// Lab.QEMUSid with DAXDevice, else Lab.QEMU.
func (cfg *Config) Program() (string, error) {
	if cfg.QEMU != "" {
		return cfg.QEMU, nil
	}
	if cfg.Lab == nil {
		return "", errors.New("vm: Config needs a Lab or a QEMU")
	}
	if cfg.DAXDevice {
		if cfg.Lab.QEMUSid == "" {
			return "", fmt.Errorf("vm: Config.DAXDevice needs QEMU %s (Lab.QEMUSid); run test/lib/lab/fetch.sh", QEMUSidVersion)
		}
		return cfg.Lab.QEMUSid, nil
	}
	if cfg.Lab.QEMU == "" {
		return "", errors.New("vm: Config needs a Lab with QEMU, or a QEMU")
	}
	return cfg.Lab.QEMU, nil
}

// Run is a running (or finished) guest.
type Run struct {
	// Cmd is the QEMU process; a test may SIGKILL Cmd.Process.
	Cmd *exec.Cmd
	// Args is QEMU's full command line.
	Args []string

	cfg     Config
	console *daemon.Output
	stderr  *daemon.Output
	exited  chan struct{}
	start   time.Time
	last    bool // the last attempt: a stall before init is final

	judgeMu sync.Mutex
	judge   *judge

	mu       sync.Mutex
	waitErr  error
	killedBy string // why the harness killed QEMU, if it did
	elapsed  time.Duration
	daemon   *daemon.Proc
	retried  []string

	stallOnce sync.Once
	stall     *StallError
}

// judgeWriter feeds the console to the run's judge as it comes.
type judgeWriter struct{ r *Run }

func (w judgeWriter) Write(p []byte) (int, error) {
	w.r.judgeMu.Lock()
	w.r.judge.observe(string(p), time.Now())
	w.r.judgeMu.Unlock()
	return len(p), nil
}

// Boot starts QEMU for cfg and, unless QEMU waits for an incoming
// migration (ExtraArgs hold -incoming), waits until the guest's init ran
// (InitMarker): the run is then past the part that a loaded machine can
// stall. A boot that stalls before init (see StallError) is retried once
// with a fresh QEMU, and with a fresh back-end from cfg.Restart if
// cfg.Daemon exited with the first; the retry is logged through cfg.Logf
// and counted (RetriedBoots). A second stall fails, naming both causes.
// The run is bounded by ctx and by cfg.Timeout scaled; call Wait to
// collect it.
func Boot(ctx context.Context, cfg Config) (*Run, error) {
	args, err := cfg.Args()
	if err != nil {
		return nil, err
	}
	qemu, err := cfg.Program()
	if err != nil {
		return nil, err
	}
	var causes []string
	for attempt := 1; ; attempt++ {
		r, err := launch(ctx, cfg, qemu, args, attempt == 2)
		if err != nil {
			return nil, err
		}
		r.retried = causes
		if cfg.incoming() {
			return r, nil
		}
		err = r.await(ctx, func(console string) bool { return strings.Contains(console, InitMarker) })
		if err == nil {
			r.judgeMu.Lock()
			boot, slow := r.judge.bootTime(), r.judge.slowdown()
			window, budget := r.judge.stallWindow(), r.judge.budget()
			r.judgeMu.Unlock()
			lastSlowdown.Store(math.Float64bits(slow))
			if slow > 1 || attempt > 1 {
				cfg.logf("vm: the guest booted in %v (attempt %d): slowdown %.1f, stall window %v, budget %v",
					boot.Round(100*time.Millisecond), attempt, slow, window, budget)
			}
			return r, nil
		}
		r.stop()
		if errors.Is(err, errExited) {
			return nil, fmt.Errorf("vm: QEMU exited before the guest's init ran (%s); last console lines:\n%s%s%s",
				r.exitString(), daemon.LastLines(r.Console(), 20), r.stderrNote(), r.retriedNote())
		}
		var se *StallError
		if !errors.As(err, &se) {
			return nil, err
		}
		if !se.Retryable {
			return nil, fmt.Errorf("%w%s", se, r.retriedNote())
		}
		causes = append(causes, se.Cause)
		if attempt == 2 {
			return nil, fmt.Errorf("vm: the guest stalled before init twice; first: %s; then: %w", causes[0], se)
		}
		n := retriedBoots.Add(1)
		cfg.logf("vm: !!! RETRYING A BOOT THAT STALLED BEFORE INIT (retry %d in this process): %s\n%s", n, se.Cause, se.Diagnostics)
		if f, ok := cfg.Console.(interface{ Flush() }); ok {
			f.Flush()
		}
		if d := cfg.Daemon; d != nil {
			select {
			case <-d.Exited():
			case <-time.After(retryDaemonWait):
			}
			if exited(d) {
				if cfg.Restart == nil {
					return nil, fmt.Errorf("vm: cannot retry the boot that stalled before init (%s): the back-end %s exited with QEMU and Config.Restart is not set", se.Cause, d.Name)
				}
				nd, err := cfg.Restart()
				if err != nil {
					return nil, fmt.Errorf("vm: restarting the back-end to retry the boot that stalled before init (%s): %w", se.Cause, err)
				}
				cfg.logf("vm: retrying with a fresh back-end %s (pid %d); the first exited with code %d", nd.Name, nd.Pid(), d.ExitCode())
				cfg.Daemon = nd
			} else {
				cfg.logf("vm: retrying with the same back-end %s (pid %d), still running", d.Name, d.Pid())
			}
		}
	}
}

// launch starts one QEMU for cfg.
func launch(ctx context.Context, cfg Config, qemu string, args []string, last bool) (*Run, error) {
	r := &Run{
		Args:   append([]string{qemu}, args...),
		cfg:    cfg,
		stderr: daemon.NewOutput(nil),
		exited: make(chan struct{}),
		last:   last,
		daemon: cfg.Daemon,
	}
	tee := io.Writer(judgeWriter{r})
	if cfg.Console != nil {
		tee = io.MultiWriter(tee, cfg.Console)
	}
	r.console = daemon.NewOutput(tee)
	cmd := exec.Command(qemu, args...)
	cmd.Stdout = r.console
	cmd.Stderr = r.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	r.Cmd = cmd
	r.start = time.Now()
	r.judge = newJudge(cfg.windows(), r.start)
	if cfg.incoming() {
		slow := 1.0
		if b := lastSlowdown.Load(); b != 0 {
			slow = math.Float64frombits(b)
		}
		r.judge.assumeBooted(slow)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("vm: starting %s: %w", qemu, err)
	}
	go func() {
		err := cmd.Wait()
		r.mu.Lock()
		r.waitErr = err
		r.elapsed = time.Since(r.start)
		r.mu.Unlock()
		close(r.exited)
	}()
	// The budget holds whether or not anybody waits.
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-r.exited:
				return
			case <-ctx.Done():
				r.kill(fmt.Sprintf("context ended: %v", ctx.Err()))
				return
			case now := <-tick.C:
				r.judgeMu.Lock()
				var v *StallError
				if r.judge.booted() {
					v = r.judge.verdict(now, now) // a wait starting now: the budget alone
				}
				r.judgeMu.Unlock()
				if v != nil {
					_ = r.stalled(v)
					return
				}
			}
		}
	}()
	return r, nil
}

// kill kills QEMU, noting why.
func (r *Run) kill(why string) {
	r.mu.Lock()
	if r.killedBy == "" {
		r.killedBy = why
	}
	r.mu.Unlock()
	_ = r.Cmd.Process.Kill()
}

// stop kills QEMU and waits for it.
func (r *Run) stop() {
	r.kill("stopped by the harness")
	<-r.exited
}

// stalled makes v the run's stall, once: it gathers the diagnostics and
// kills QEMU. It returns the run's stall (the first one, if two waits saw
// one).
func (r *Run) stalled(v *StallError) error {
	r.stallOnce.Do(func() {
		r.diagnose(v, !v.BeforeInit || r.last)
		r.mu.Lock()
		r.stall = v
		r.mu.Unlock()
		r.kill(v.Cause)
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stall
}

func (r *Run) retriedNote() string {
	if len(r.retried) == 0 {
		return ""
	}
	return fmt.Sprintf(" (after a retried boot: %s)", strings.Join(r.retried, "; "))
}

func (r *Run) exitString() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waitErr != nil {
		return r.waitErr.Error()
	}
	return "exit status 0"
}

// Process returns the QEMU process.
func (r *Run) Process() *os.Process { return r.Cmd.Process }

// Kill sends SIGKILL to QEMU.
func (r *Run) Kill() error { return r.Cmd.Process.Kill() }

// Exited is closed once QEMU has exited and its output is collected.
func (r *Run) Exited() <-chan struct{} { return r.exited }

// Console returns the serial console output so far.
func (r *Run) Console() string { return r.console.String() }

// Stderr returns QEMU's own stderr so far.
func (r *Run) Stderr() string { return r.stderr.String() }

// Results parses the console output so far.
func (r *Run) Results() *Results { return ParseResults(r.Console()) }

// Elapsed is how long QEMU ran (valid after Exited).
func (r *Run) Elapsed() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.elapsed
}

// Daemon returns the back-end the run uses: Config.Daemon, or the fresh one
// Config.Restart started for a retried boot.
func (r *Run) Daemon() *daemon.Proc { return r.daemon }

// Retried returns the causes of the stalled boots Boot retried before this
// run (empty for a first boot that worked).
func (r *Run) Retried() []string { return r.retried }

// BootTime returns how long the boot took, from QEMU's start to the
// guest's InitMarker (0 for an incoming migration).
func (r *Run) BootTime() time.Duration {
	r.judgeMu.Lock()
	defer r.judgeMu.Unlock()
	if r.judge.assumed != 0 {
		return 0
	}
	return r.judge.bootTime()
}

// Slowdown returns the run's slowdown: its boot time over ReferenceBoot,
// from 1 to MaxSlowdown (for an incoming migration, the latest boot's).
func (r *Run) Slowdown() float64 {
	r.judgeMu.Lock()
	defer r.judgeMu.Unlock()
	return r.judge.slowdown()
}

// Scale returns d times the run's slowdown: a host-side deadline that a
// test keeps while the guest runs (a daemon's exit after poweroff, a host
// event) grows with the machine's load as the guest's windows do.
func (r *Run) Scale(d time.Duration) time.Duration { return r.scale(d) }

func (r *Run) scale(d time.Duration) time.Duration {
	if r.judge == nil {
		return d
	}
	return time.Duration(float64(d) * r.Slowdown())
}

// LongestSilence returns the longest time the console has been silent
// while the guest made progress, so far.
func (r *Run) LongestSilence() time.Duration {
	r.judgeMu.Lock()
	defer r.judgeMu.Unlock()
	return r.judge.longest
}

// await waits until done (when not nil) holds for the console, QEMU exits
// (errExited), ctx ends, or the guest stalls (a *StallError, with QEMU
// killed).
func (r *Run) await(ctx context.Context, done func(string) bool) error {
	waitStart := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		ch := r.console.Changed()
		if done != nil && done(r.console.String()) {
			return nil
		}
		r.mu.Lock()
		stall := r.stall
		r.mu.Unlock()
		if stall != nil {
			<-r.exited
			return stall
		}
		r.judgeMu.Lock()
		v := r.judge.verdict(time.Now(), waitStart)
		r.judgeMu.Unlock()
		if v != nil {
			err := r.stalled(v)
			<-r.exited
			return err
		}
		select {
		case <-ch:
		case <-tick.C:
		case <-r.exited:
			if done != nil && done(r.console.String()) {
				return nil
			}
			r.mu.Lock()
			stall := r.stall
			r.mu.Unlock()
			if stall != nil {
				return stall
			}
			return r.exitedBefore()
		case <-ctx.Done():
			return fmt.Errorf("vm: waiting on the console: %w; last console lines:\n%s",
				ctx.Err(), daemon.LastLines(r.Console(), 20))
		}
	}
}

// errExited tells a wait that QEMU exited first.
var errExited = errors.New("vm: QEMU exited")

// exitedBefore is the error of a wait that QEMU's exit ended. Before
// init, a kernel panic, or QEMU killed by a signal it did not get from
// the harness (an assertion under TCG: "msix_table_mmio_write: Assertion
// ... failed", seen on a loaded machine), is a failed boot that Boot may
// retry, as a stall: the share was not touched.
func (r *Run) exitedBefore() error {
	console := r.Console()
	r.judgeMu.Lock()
	booted := r.judge.booted()
	r.judgeMu.Unlock()
	if booted {
		return errExited
	}
	r.mu.Lock()
	killedBy := r.killedBy
	r.mu.Unlock()
	var cause string
	if i := strings.Index(console, "Kernel panic"); i >= 0 {
		line, _, _ := strings.Cut(console[i:], "\n")
		cause = "the guest kernel panicked before init: " + strings.TrimSpace(line)
	} else if ws, ok := r.Cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && killedBy == "" {
		last := daemon.LastLines(strings.TrimSpace(r.Stderr()), 1)
		cause = fmt.Sprintf("QEMU crashed before init (%v): %s", ws.Signal(), last)
	}
	if cause == "" {
		return errExited
	}
	se := &StallError{BeforeInit: true, Retryable: true, Cause: cause}
	se.Diagnostics = "last console lines:\n" + daemon.LastLines(console, 30) + r.stderrNote()
	if d := r.daemon; d != nil {
		se.Diagnostics += fmt.Sprintf("\nback-end %s output (last lines):\n%s", d.Name, daemon.LastLines(d.Stderr(), 20))
	}
	return se
}

// WaitConsole waits until the console output contains s. It fails when
// ctx ends or QEMU exits first, or when the guest stalls (a *StallError;
// QEMU is then killed, see StallError).
func (r *Run) WaitConsole(ctx context.Context, s string) error {
	return r.WaitConsoleAny(ctx, s)
}

// WaitConsoleAny waits until the console output contains one of ss, and
// fails as WaitConsole does. Waiting for each whole word a guest may print
// next, rather than for their common prefix, keeps a caller from reading a
// line the guest has only half written.
func (r *Run) WaitConsoleAny(ctx context.Context, ss ...string) error {
	err := r.await(ctx, func(console string) bool {
		for _, s := range ss {
			if strings.Contains(console, s) {
				return true
			}
		}
		return false
	})
	s := strings.Join(ss, `" or "`)
	if errors.Is(err, errExited) {
		return fmt.Errorf("vm: QEMU exited before the console showed %q; last console lines:\n%s%s",
			s, daemon.LastLines(r.Console(), 20), r.stderrNote())
	}
	var se *StallError
	if errors.As(err, &se) {
		return fmt.Errorf("vm: waiting for %q on the console: %w", s, err)
	}
	return err
}

func (r *Run) stderrNote() string {
	if s := strings.TrimSpace(r.Stderr()); s != "" {
		return "\nQEMU stderr:\n" + daemon.LastLines(s, 20)
	}
	return ""
}

// Wait waits for QEMU to exit and returns the guest's results. It returns
// an error (with the results parsed so far) when QEMU failed, was killed,
// the guest stalled (the error holds the StallError's diagnostics), or
// the guest never printed GUEST DONE; the error quotes the last console
// lines.
func (r *Run) Wait() (*Results, error) {
	waitErr := r.await(context.Background(), nil)
	<-r.exited
	if f, ok := r.cfg.Console.(interface{ Flush() }); ok {
		f.Flush()
	}
	res := ParseResults(r.Console())
	if r.cfg.Logf != nil {
		r.judgeMu.Lock()
		boot, longest, window := r.judge.bootTime(), r.judge.longest, r.judge.stallWindow()
		r.judgeMu.Unlock()
		r.cfg.Logf("vm: QEMU ran %v (boot %v); the console's longest silence was %v (stall window %v)",
			r.Elapsed().Round(100*time.Millisecond), boot.Round(100*time.Millisecond), longest.Round(100*time.Millisecond), window)
	}
	var se *StallError
	if errors.As(waitErr, &se) {
		return res, fmt.Errorf("%w (guest done: %v)%s", se, res.Done, r.retriedNote())
	}
	r.mu.Lock()
	qemuErr, killedBy := r.waitErr, r.killedBy
	r.mu.Unlock()
	tail := func() string {
		console := r.Console()
		note := ""
		if i := strings.Index(console, "Kernel panic"); i >= 0 {
			line, _, _ := strings.Cut(console[i:], "\n")
			note = "; the guest kernel panicked: " + strings.TrimSpace(line)
		}
		return note + "; last console lines:\n" + daemon.LastLines(console, 20) + r.stderrNote()
	}
	switch {
	case killedBy != "":
		return res, fmt.Errorf("vm: QEMU killed: %s (guest done: %v)%s", killedBy, res.Done, tail())
	case qemuErr != nil:
		return res, fmt.Errorf("vm: QEMU failed: %v%s", qemuErr, tail())
	case !res.Done:
		return res, fmt.Errorf("vm: the guest never printed %q%s", guestspec.DoneLine, tail())
	}
	return res, nil
}

// LineLogger is an io.Writer that hands each complete line, without its
// line ending, to a printf-like function such as testing.T.Logf.
type LineLogger struct {
	mu     sync.Mutex
	prefix string
	logf   func(format string, args ...any)
	part   []byte
}

// NewLineLogger returns a LineLogger that logs each line as prefix+line.
func NewLineLogger(prefix string, logf func(format string, args ...any)) *LineLogger {
	return &LineLogger{prefix: prefix, logf: logf}
}

// Write logs the complete lines in p and keeps the rest for later.
func (l *LineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		l.logf("%s%s", l.prefix, strings.TrimRight(string(l.part[:i]), "\r"))
		l.part = l.part[i+1:]
	}
	return len(p), nil
}

// Flush logs a final partial line, if any.
func (l *LineLogger) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.part) > 0 {
		l.logf("%s%s", l.prefix, strings.TrimRight(string(l.part), "\r"))
		l.part = nil
	}
}
