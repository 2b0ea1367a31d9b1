// Package daemon starts a vhost-user-fs back-end program (govirtiofsd, the
// reference virtiofsd, or any other) as a child process, waits until it
// listens, and watches it: its output, its exit, its sandboxed child. It is
// the part of the harness that knows about processes; harness/frontend
// drives what it starts. It trusts nothing the back-end prints beyond the
// ready line.
package daemon

import (
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
)

// ReadyLine is the stderr line virtiofsd prints once its socket listens;
// Kata's Rust runtime waits for it.
const ReadyLine = "Waiting for vhost-user socket connection"

// Daemon is a vhost-user-fs back-end program that tests can start.
type Daemon struct {
	// Name names the daemon in logs and errors ("virtiofsd-ref").
	Name string
	// Argv builds the command line, program first, for a shared folder, a
	// socket path and extra arguments.
	Argv func(sharedDir, socket string, extra []string) []string
	// Env is added to the environment (e.g. "RUST_LOG=debug").
	Env []string
}

// Reference is the reference virtiofsd at binary (the lab's virtiofsd-ref),
// run as "BINARY --shared-dir D --socket-path S --sandbox none --seccomp
// none EXTRA...".
func Reference(binary string) Daemon {
	return Daemon{
		Name: "virtiofsd-ref",
		Argv: func(sharedDir, socket string, extra []string) []string {
			return append([]string{binary,
				"--shared-dir", sharedDir, "--socket-path", socket,
				"--sandbox", "none", "--seccomp", "none"}, extra...)
		},
	}
}

// Ours is govirtiofsd built at binary, run with its defaults (namespace
// sandbox, seccomp kill): "--shared-dir D --socket-path S EXTRA...".
func Ours(binary string) Daemon {
	return Daemon{
		Name: "govirtiofsd",
		Argv: func(sharedDir, socket string, extra []string) []string {
			// The defaults: namespace sandbox and seccomp kill.
			return append([]string{binary,
				"--shared-dir", sharedDir, "--socket-path", socket}, extra...)
		},
	}
}

// Options are the per-start settings of a Daemon.
type Options struct {
	// SharedDir is the host folder to share.
	SharedDir string
	// Socket is the vhost-user socket path the daemon creates. A file
	// already there is removed first unless KeepSocket is set. When
	// Socket is empty (e.g. a daemon given --fd through Extra), readiness
	// is the ReadyLine on stderr alone.
	Socket     string
	KeepSocket bool
	// Extra are extra command-line arguments.
	Extra []string
	// ExtraFiles become the daemon's fds 3, 4, ...
	ExtraFiles []*os.File
	// Log, when set, receives the daemon's stderr and stdout as they come.
	Log io.Writer
	// LogFile, when set, is a file that receives the same output.
	LogFile string
	// ReadyTimeout bounds the wait for readiness; 10 s when 0.
	ReadyTimeout time.Duration
	// NoReadyWait makes Start return once the daemon runs, without
	// waiting for readiness: for a caller that hands it a listening
	// socket (ExtraFiles) and, like Kata's Go runtime, has nothing to
	// wait for, since a front-end can connect to that socket at once. A
	// daemon that logs nowhere (--syslog without a syslog socket) prints
	// no ReadyLine.
	NoReadyWait bool
}

// Proc is a started daemon.
type Proc struct {
	// Name is the Daemon's name.
	Name string
	// Cmd is the daemon process.
	Cmd *exec.Cmd
	// Args is its full command line.
	Args []string

	out     *Output
	logFile *os.File
	exited  chan struct{}
	mu      sync.Mutex
	waitErr error
	state   *os.ProcessState
}

// Start launches the daemon and waits until it is ready: its socket path
// exists as a socket (a new one, if a file was kept there) or it printed
// ReadyLine. It fails, quoting stderr, when the daemon exits first or is
// not ready in time.
func (d Daemon) Start(opts Options) (*Proc, error) {
	if d.Argv == nil {
		return nil, fmt.Errorf("daemon: daemon %q has no Argv", d.Name)
	}
	args := d.Argv(opts.SharedDir, opts.Socket, opts.Extra)
	var oldIno uint64
	if opts.Socket != "" {
		if opts.KeepSocket {
			var st syscall.Stat_t
			if syscall.Stat(opts.Socket, &st) == nil {
				oldIno = st.Ino
			}
		} else if err := os.Remove(opts.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("daemon: removing stale socket %s: %w", opts.Socket, err)
		}
	}
	var tee []io.Writer
	if opts.Log != nil {
		tee = append(tee, opts.Log)
	}
	p := &Proc{Name: d.Name, Args: args, exited: make(chan struct{})}
	if opts.LogFile != "" {
		f, err := os.Create(opts.LogFile)
		if err != nil {
			return nil, fmt.Errorf("daemon: daemon log file: %w", err)
		}
		p.logFile = f
		tee = append(tee, f)
	}
	var teeW io.Writer
	if len(tee) > 0 {
		teeW = io.MultiWriter(tee...)
	}
	p.out = NewOutput(teeW)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), d.Env...)
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.ExtraFiles = opts.ExtraFiles
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	p.Cmd = cmd
	if err := cmd.Start(); err != nil {
		if p.logFile != nil {
			p.logFile.Close()
		}
		return nil, fmt.Errorf("daemon: starting %s (%s): %w", d.Name, args[0], err)
	}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.state = cmd.ProcessState
		p.mu.Unlock()
		if p.logFile != nil {
			p.logFile.Close()
		}
		close(p.exited)
	}()

	if opts.NoReadyWait {
		return p, nil
	}
	timeout := opts.ReadyTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	deadline := time.After(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if strings.Contains(p.out.String(), ReadyLine) {
			return p, nil
		}
		if opts.Socket != "" {
			var st syscall.Stat_t
			if syscall.Stat(opts.Socket, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFSOCK && st.Ino != oldIno {
				return p, nil
			}
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("daemon: %s exited before it was ready (%s); command %q; output:\n%s",
				d.Name, p.exitString(), strings.Join(args, " "), LastLines(p.Stderr(), 30))
		case <-deadline:
			_ = p.Kill()
			<-p.exited
			return nil, fmt.Errorf("daemon: %s not ready after %v (no socket at %s, no %q line); command %q; output:\n%s",
				d.Name, timeout, opts.Socket, ReadyLine, strings.Join(args, " "), LastLines(p.Stderr(), 30))
		case <-tick.C:
		}
	}
}

// Pid returns the daemon's process id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// ChildPid returns the pid of the daemon's first child (govirtiofsd's
// sandboxed serving process), if it has one. Any thread of the daemon may
// have forked it, so every thread's children are looked at.
func (p *Proc) ChildPid() (int, bool) {
	return ChildOf(p.Pid())
}

// ChildOf returns the pid of a child of process pid, if it has one.
func ChildOf(pid int) (int, bool) {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				return c, true
			}
		}
	}
	return 0, false
}

// Exited is closed once the daemon has exited and its output is collected.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Stderr returns the daemon's output (stderr and stdout) so far.
func (p *Proc) Stderr() string { return p.out.String() }

// Kill sends SIGKILL.
func (p *Proc) Kill() error { return p.Signal(syscall.SIGKILL) }

// Signal sends sig to the daemon; it is a no-op once the daemon exited.
func (p *Proc) Signal(sig os.Signal) error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	err := p.Cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// Wait waits for the daemon to exit and returns nil for exit status 0,
// else an error holding the status and the last lines of its output.
func (p *Proc) Wait() error {
	<-p.exited
	return p.result()
}

// WaitTimeout is Wait bounded by d; past it the daemon is killed and the
// error says it did not exit in time.
func (p *Proc) WaitTimeout(d time.Duration) error {
	select {
	case <-p.exited:
		return p.result()
	case <-time.After(d):
		_ = p.Kill()
		<-p.exited
		return fmt.Errorf("daemon: %s did not exit within %v (killed); output:\n%s", p.Name, d, LastLines(p.Stderr(), 30))
	}
}

// Stop kills the daemon if it still runs and waits for it; for cleanups.
func (p *Proc) Stop() {
	_ = p.Kill()
	<-p.exited
}

// ExitCode returns the exit status, or -1 while running or when a signal
// ended the daemon.
func (p *Proc) ExitCode() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return -1
	}
	return p.state.ExitCode()
}

// CPU returns the CPU time (user plus system) the daemon and the children
// it waited for used, once it has exited; 0 before.
func (p *Proc) CPU() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return 0
	}
	return p.state.UserTime() + p.state.SystemTime()
}

func (p *Proc) exitString() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return "running"
	}
	return p.state.String()
}

func (p *Proc) result() error {
	p.mu.Lock()
	err := p.waitErr
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("daemon: %s: %v; output:\n%s", p.Name, err, LastLines(p.Stderr(), 30))
	}
	return nil
}

// CtxSwitches returns the exited daemon's voluntary and involuntary
// context switches, over all its threads and the children it waited for
// (0, 0 while it runs).
func (p *Proc) CtxSwitches() (voluntary, involuntary int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return 0, 0
	}
	ru, _ := p.state.SysUsage().(*syscall.Rusage)
	if ru == nil {
		return 0, 0
	}
	return ru.Nvcsw, ru.Nivcsw
}
