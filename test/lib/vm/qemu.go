package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"
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
	// ("console=ttyS0 quiet panic=-1").
	Append string
	// ExtraArgs are added to QEMU's command line.
	ExtraArgs []string
	// Timeout bounds the whole run; DefaultTimeout when 0. QEMU is killed
	// when it passes.
	Timeout time.Duration
	// Console, when set, receives the serial console output as it comes
	// (see LineLogger). If it has a Flush method, Wait calls it.
	Console io.Writer
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
	appendArgs := "console=ttyS0 quiet panic=-1"
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

	mu       sync.Mutex
	waitErr  error
	killedBy string // why the harness killed QEMU, if it did
	elapsed  time.Duration
}

// Boot starts QEMU for cfg. The run is bounded by ctx and cfg.Timeout;
// call Wait to collect it.
func Boot(ctx context.Context, cfg Config) (*Run, error) {
	args, err := cfg.Args()
	if err != nil {
		return nil, err
	}
	qemu, err := cfg.Program()
	if err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	r := &Run{
		Args:    append([]string{qemu}, args...),
		cfg:     cfg,
		console: daemon.NewOutput(cfg.Console),
		stderr:  daemon.NewOutput(nil),
		exited:  make(chan struct{}),
	}
	cmd := exec.Command(qemu, args...)
	cmd.Stdout = r.console
	cmd.Stderr = r.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	r.Cmd = cmd
	r.start = time.Now()
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
	go func() {
		timer := time.NewTimer(timeout)
		defer timer.Stop()
		var why string
		select {
		case <-r.exited:
			return
		case <-timer.C:
			why = fmt.Sprintf("timed out after %v", timeout)
		case <-ctx.Done():
			why = fmt.Sprintf("context ended: %v", ctx.Err())
		}
		r.mu.Lock()
		r.killedBy = why
		r.mu.Unlock()
		_ = cmd.Process.Kill()
	}()
	return r, nil
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

// WaitConsole waits until the console output contains s. It fails when
// ctx ends or QEMU exits first.
func (r *Run) WaitConsole(ctx context.Context, s string) error {
	for {
		ch := r.console.Changed()
		if strings.Contains(r.console.String(), s) {
			return nil
		}
		select {
		case <-ch:
		case <-r.exited:
			if strings.Contains(r.console.String(), s) {
				return nil
			}
			return fmt.Errorf("vm: QEMU exited before the console showed %q; last console lines:\n%s%s",
				s, daemon.LastLines(r.Console(), 20), r.stderrNote())
		case <-ctx.Done():
			return fmt.Errorf("vm: waiting for %q on the console: %w; last console lines:\n%s",
				s, ctx.Err(), daemon.LastLines(r.Console(), 20))
		}
	}
}

func (r *Run) stderrNote() string {
	if s := strings.TrimSpace(r.Stderr()); s != "" {
		return "\nQEMU stderr:\n" + daemon.LastLines(s, 20)
	}
	return ""
}

// Wait waits for QEMU to exit and returns the guest's results. It returns
// an error (with the results parsed so far) when QEMU failed, was killed,
// or the guest never printed GUEST DONE; the error quotes the last console
// lines.
func (r *Run) Wait() (*Results, error) {
	<-r.exited
	if f, ok := r.cfg.Console.(interface{ Flush() }); ok {
		f.Flush()
	}
	res := ParseResults(r.Console())
	r.mu.Lock()
	waitErr, killedBy := r.waitErr, r.killedBy
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
		return res, fmt.Errorf("vm: QEMU %s (guest done: %v)%s", killedBy, res.Done, tail())
	case waitErr != nil:
		return res, fmt.Errorf("vm: QEMU failed: %v%s", waitErr, tail())
	case !res.Done:
		return res, fmt.Errorf("vm: the guest never printed %q%s", doneMarker, tail())
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
