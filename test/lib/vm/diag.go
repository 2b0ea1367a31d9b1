package vm

import (
	"debug/elf"
	"fmt"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"
)

// threadState is one thread of a process as /proc shows it.
type threadState struct {
	tid   string
	comm  string
	state string // R, S, D, ...
	wchan string // where it sleeps in the kernel
}

// threadStates returns the threads of process pid.
func threadStates(pid int) []threadState {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var out []threadState
	for _, task := range tasks {
		dir := fmt.Sprintf("/proc/%d/task/%s/", pid, task.Name())
		comm, err := os.ReadFile(dir + "comm")
		if err != nil {
			continue
		}
		ts := threadState{tid: task.Name(), comm: strings.TrimSpace(string(comm))}
		if stat, err := os.ReadFile(dir + "stat"); err == nil {
			if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) {
				ts.state = string(stat[i+2])
			}
		}
		if w, err := os.ReadFile(dir + "wchan"); err == nil {
			ts.wchan = strings.TrimSpace(string(w))
		}
		if ts.wchan == "" || ts.wchan == "0" {
			ts.wchan = "-"
		}
		out = append(out, ts)
	}
	return out
}

// describeThreads sums up threads: one line per name, state and wait
// channel, with a count.
func describeThreads(ts []threadState) string {
	counts := map[string]int{}
	for _, t := range ts {
		counts[fmt.Sprintf("%s: %s %s", t.comm, t.state, t.wchan)]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		if n := counts[k]; n > 1 {
			fmt.Fprintf(&b, "  %d× %s\n", n, k)
		} else {
			fmt.Fprintf(&b, "  %s\n", k)
		}
	}
	return b.String()
}

// blockedOnSocket returns the QEMU threads that sleep reading a unix
// socket: a vCPU (or the main loop) waiting for the vhost-user back-end's
// reply, which QEMU reads synchronously.
func blockedOnSocket(ts []threadState) []threadState {
	var out []threadState
	for _, t := range ts {
		if strings.HasPrefix(t.wchan, "unix_stream_read") || strings.HasPrefix(t.wchan, "unix_stream_data_wait") {
			out = append(out, t)
		}
	}
	return out
}

// isGoProgram tells whether process pid runs a Go binary (one with Go
// build information), which prints all its goroutines on SIGQUIT.
func isGoProgram(pid int) bool {
	f, err := elf.Open(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	defer f.Close()
	return f.Section(".go.buildinfo") != nil
}

// servingPid returns the process of a back-end that serves the guest: its
// sandboxed child if it has one (govirtiofsd's), else itself.
func servingPid(d *daemon.Proc) int {
	if c, ok := d.ChildPid(); ok {
		return c
	}
	return d.Pid()
}

func exited(d *daemon.Proc) bool {
	select {
	case <-d.Exited():
		return true
	default:
		return false
	}
}

// dumpGoroutines sends SIGQUIT to the serving process of a Go back-end,
// which makes the Go runtime print every goroutine to stderr and exit,
// and returns what the back-end printed from then on. It ends the
// back-end. It returns "" with a reason for anything else.
func dumpGoroutines(d *daemon.Proc, wait time.Duration) (dump, note string) {
	if exited(d) {
		return "", "the back-end had exited"
	}
	pid := servingPid(d)
	if !isGoProgram(pid) {
		return "", fmt.Sprintf("process %d is not a Go program", pid)
	}
	before := len(d.Stderr())
	if err := syscall.Kill(pid, syscall.SIGQUIT); err != nil {
		return "", fmt.Sprintf("SIGQUIT to %d: %v", pid, err)
	}
	_ = syscall.Kill(pid, syscall.SIGCONT) // a stopped back-end takes it too
	select {
	case <-d.Exited():
	case <-time.After(wait):
		note = fmt.Sprintf("the back-end still ran %v after SIGQUIT", wait)
	}
	out := d.Stderr()
	if len(out) < before {
		before = 0
	}
	return out[before:], note
}

// diagnose gathers what a stall leaves to see, before QEMU is killed: the
// last console lines, QEMU's threads and the back-end's. It may make a
// retryable stall final: a back-end that exited, or a QEMU that waits for
// the back-end's reply, is not the guest kernel's stall. With dump (or
// once final) it ends the back-end with a goroutine dump.
func (r *Run) diagnose(se *StallError, dump bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "last console lines:\n%s\n", daemon.LastLines(r.Console(), 30))
	if s := strings.TrimSpace(r.Stderr()); s != "" {
		fmt.Fprintf(&b, "QEMU stderr:\n%s\n", daemon.LastLines(s, 20))
	}
	qemu := threadStates(r.Cmd.Process.Pid)
	fmt.Fprintf(&b, "QEMU threads (pid %d; name: state wait-channel):\n%s", r.Cmd.Process.Pid, describeThreads(qemu))
	if blocked := blockedOnSocket(qemu); len(blocked) > 0 && r.daemon != nil {
		se.Retryable = false
		se.Cause += fmt.Sprintf("; QEMU thread %q sleeps in %s: it waits for the vhost-user back-end's reply", blocked[0].comm, blocked[0].wchan)
	}
	if d := r.daemon; d != nil {
		if exited(d) {
			if se.BeforeInit {
				se.Retryable = false
			}
			se.Cause += fmt.Sprintf("; the back-end %s had exited (code %d)", d.Name, d.ExitCode())
		} else {
			fmt.Fprintf(&b, "back-end %s threads (pid %d):\n%s", d.Name, servingPid(d), describeThreads(threadStates(servingPid(d))))
		}
		fmt.Fprintf(&b, "back-end %s output (last lines):\n%s\n", d.Name, daemon.LastLines(d.Stderr(), 40))
		if dump || !se.Retryable {
			out, note := dumpGoroutines(d, r.scale(10*time.Second))
			if out != "" {
				fmt.Fprintf(&b, "back-end %s goroutine dump (SIGQUIT):\n%s\n", d.Name, strings.TrimRight(out, "\n"))
			} else {
				fmt.Fprintf(&b, "no goroutine dump of %s: %s\n", d.Name, note)
			}
			if note != "" && out != "" {
				fmt.Fprintf(&b, "(%s)\n", note)
			}
		}
	}
	se.Diagnostics = strings.TrimRight(b.String(), "\n")
}
