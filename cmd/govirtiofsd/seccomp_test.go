package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/passthrough"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// seccompChildEnv makes the test binary, re-executed, install the filter
// in the given mode and then make a system call: seccompCallEnv names it
// (getppid, which is not on the list, by default), seccompSyslogEnv set
// installs the filter as --syslog does. The child prints "survived" on
// stdout if it lives on, and the call's errno on stderr.
const (
	seccompChildEnv  = "GOVIRTIOFSD_SECCOMP_TEST_MODE"
	seccompCallEnv   = "GOVIRTIOFSD_SECCOMP_TEST_CALL"
	seccompSyslogEnv = "GOVIRTIOFSD_SECCOMP_TEST_SYSLOG"
)

// seccompTestCalls are the calls a child can make under the filter. Those
// the filter must refuse are ones the kernel would refuse too (EINVAL,
// EBADF) or that are harmless in the child, so that without the filter's
// narrowing the child just survives.
var seccompTestCalls = map[string]func() syscall.Errno{
	"getppid": func() syscall.Errno {
		_, _, e := syscall.Syscall(unix.SYS_GETPPID, 0, 0, 0)
		return e
	},
	// A new process rather than a thread (CLONE_SIGHAND without CLONE_VM
	// makes the kernel answer EINVAL).
	"clone-process": func() syscall.Errno {
		_, _, e := syscall.RawSyscall(unix.SYS_CLONE, unix.CLONE_SIGHAND, 0, 0)
		return e
	},
	// A thread in a new mount namespace (EINVAL for the kernel: CLONE_FS
	// with CLONE_NEWNS).
	"clone-thread-newns": func() syscall.Errno {
		_, _, e := syscall.RawSyscall(unix.SYS_CLONE, goThreadClone|unix.CLONE_NEWNS, 0, 0)
		return e
	},
	// A size of 0 makes the kernel answer EINVAL; the filter, ENOSYS.
	"clone3": func() syscall.Errno {
		_, _, e := syscall.RawSyscall(unix.SYS_CLONE3, 0, 0, 0)
		return e
	},
	// Goroutines locked to their threads make the runtime start new
	// threads (through pthread_create in a build with cgo).
	"threads": func() syscall.Errno {
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				runtime.LockOSThread()
				time.Sleep(100 * time.Millisecond)
			})
		}
		time.Sleep(50 * time.Millisecond)
		b, err := os.ReadFile("/proc/self/status")
		wg.Wait()
		if err != nil {
			return err.(*os.PathError).Err.(syscall.Errno)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if n, ok := strings.CutPrefix(l, "Threads:"); ok {
				if t, _ := strconv.Atoi(strings.TrimSpace(n)); t < 16 {
					return unix.ESRCH
				}
			}
		}
		return 0
	},
	"unshare-fs": func() syscall.Errno {
		_, _, e := syscall.RawSyscall(unix.SYS_UNSHARE, unix.CLONE_FS, 0, 0)
		return e
	},
	"unshare-newns": func() syscall.Errno {
		_, _, e := syscall.RawSyscall(unix.SYS_UNSHARE, unix.CLONE_NEWNS, 0, 0)
		return e
	},
	"prctl-vma": func() syscall.Errno {
		page, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return err.(syscall.Errno)
		}
		name := []byte("seccomp test\x00")
		_, _, e := syscall.Syscall6(unix.SYS_PRCTL, unix.PR_SET_VMA, unix.PR_SET_VMA_ANON_NAME,
			uintptr(unsafe.Pointer(&page[0])), 4096, uintptr(unsafe.Pointer(&name[0])), 0)
		return e
	},
	"prctl-get-dumpable": func() syscall.Errno {
		_, _, e := syscall.RawSyscall(unix.SYS_PRCTL, unix.PR_GET_DUMPABLE, 0, 0)
		return e
	},
	"socket-unix": func() syscall.Errno {
		_, _, e := syscall.RawSyscall(unix.SYS_SOCKET, unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return e
	},
	"socket-inet": func() syscall.Errno {
		_, _, e := syscall.RawSyscall(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return e
	},
	// EBADF when allowed.
	"connect": func() syscall.Errno {
		_, _, e := syscall.RawSyscall(unix.SYS_CONNECT, ^uintptr(0), 0, 0)
		return e
	},
}

func TestMain(m *testing.M) {
	if mode := os.Getenv(seccompChildEnv); mode != "" {
		// unshare(CLONE_FS) wants a thread of its own.
		runtime.LockOSThread()
		name := os.Getenv(seccompCallEnv)
		if name == "" {
			name = "getppid"
		}
		call, ok := seccompTestCalls[name]
		if !ok {
			os.Stderr.WriteString("unknown call " + name)
			os.Exit(3)
		}
		m, err := parseSeccompMode(mode)
		if err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(3)
		}
		if err := installSeccomp(m, os.Getenv(seccompSyslogEnv) != ""); err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(3)
		}
		e := call()
		fmt.Fprintf(os.Stderr, "errno=%d", int(e))
		os.Stdout.WriteString("survived")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runSeccompChild(t *testing.T, mode string, env ...string) (string, *os.ProcessState) {
	out, _, st := runSeccompCall(t, mode, env...)
	return out, st
}

// runSeccompCall runs a child under the filter in mode with env added and
// returns its stdout, stderr and status.
func runSeccompCall(t *testing.T, mode string, env ...string) (string, string, *os.ProcessState) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), seccompChildEnv+"="+mode), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, _ := cmd.Output()
	return string(out), stderr.String(), cmd.ProcessState
}

func TestSeccompKillsDisallowedSyscall(t *testing.T) {
	out, st := runSeccompChild(t, "kill")
	ws := st.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled(), "process was not killed (output %q, status %v)", out, st)
	require.Equal(t, syscall.SIGSYS, ws.Signal())
	require.NotContains(t, out, "survived")
}

func TestSeccompLogAllowsDisallowedSyscall(t *testing.T) {
	out, st := runSeccompChild(t, "log")
	require.Equal(t, 0, st.ExitCode())
	require.Equal(t, "survived", out)
}

// TestSeccompNarrowing runs calls the filter allows in one form only, in
// that form and in others, under --seccomp=kill: a form outside the
// allowed one kills the process with SIGSYS, clone3 fails with ENOSYS,
// and the allowed forms go through (with --syslog for socket and
// connect).
func TestSeccompNarrowing(t *testing.T) {
	for _, c := range []struct {
		call   string
		syslog bool
		want   []syscall.Errno // the errnos allowed, or killed
	}{
		{"clone-process", false, nil},
		{"clone-thread-newns", false, nil},
		{"clone3", false, []syscall.Errno{unix.ENOSYS}},
		{"threads", false, []syscall.Errno{0}},
		{"unshare-fs", false, []syscall.Errno{0}},
		{"unshare-newns", false, nil},
		// EINVAL from a kernel without CONFIG_ANON_VMA_NAME.
		{"prctl-vma", false, []syscall.Errno{0, unix.EINVAL}},
		{"prctl-get-dumpable", false, nil},
		{"socket-unix", false, nil},
		{"connect", false, nil},
		{"socket-unix", true, []syscall.Errno{0}},
		{"socket-inet", true, nil},
		{"connect", true, []syscall.Errno{unix.EBADF}},
	} {
		name := c.call
		if c.syslog {
			name += "-syslog"
		}
		t.Run(name, func(t *testing.T) {
			env := []string{seccompCallEnv + "=" + c.call}
			if c.syslog {
				env = append(env, seccompSyslogEnv+"=1")
			}
			out, stderr, st := runSeccompCall(t, "kill", env...)
			ws := st.Sys().(syscall.WaitStatus)
			if c.want == nil {
				require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGSYS,
					"%s was not killed by the filter: output %q, stderr %q, status %v", c.call, out, stderr, st)
				return
			}
			require.Equal(t, "survived", out, "stderr %q, status %v", stderr, st)
			e, err := strconv.Atoi(strings.TrimPrefix(stderr, "errno="))
			require.NoError(t, err, stderr)
			require.Contains(t, c.want, syscall.Errno(e), "%s: errno %d (%v)", c.call, e, syscall.Errno(e))
		})
	}
}

func TestCapSet(t *testing.T) {
	never, prefer := passthrough.FileHandlesNever, passthrough.FileHandlesPrefer
	set, err := capSet("", never, false)
	require.NoError(t, err)
	require.NotZero(t, set&(1<<unix.CAP_CHOWN))
	require.Zero(t, set&(1<<unix.CAP_SYS_ADMIN))
	require.Zero(t, set&(1<<unix.CAP_DAC_READ_SEARCH))
	set, err = capSet("+sys_admin:-chown", prefer, false)
	require.NoError(t, err)
	require.NotZero(t, set&(1<<unix.CAP_SYS_ADMIN))
	require.Zero(t, set&(1<<unix.CAP_CHOWN))
	require.NotZero(t, set&(1<<unix.CAP_DAC_READ_SEARCH))
	set, err = capSet("-dac_read_search:+DAC_READ_SEARCH", prefer, false)
	require.NoError(t, err, "the last one counts")
	require.NotZero(t, set&(1<<unix.CAP_DAC_READ_SEARCH))
	set, err = capSet("-dac_read_search", never, true)
	require.NoError(t, err)
	require.Zero(t, set&(1<<unix.CAP_DAC_READ_SEARCH))
	// virtiofsd's messages.
	for bad, msg := range map[string]string{
		"sys_admin":        "invalid modcap action: expecting '+'|'-' but found 's'",
		"+nonsense":        "invalid capability 'NONSENSE': failed to get the ID for the capability with name NONSENSE",
		"+cap_chown":       "invalid capability 'CAP_CHOWN': failed to get the ID for the capability with name CAP_CHOWN",
		"+":                "invalid capability '': failed to get the ID for the capability with name ",
		"+chown:":          "empty modcap found: expected (+|-)capability:...",
		"-dac_read_search": "can't disable DAC_READ_SEARCH when using --inode-file-handles=Prefer",
	} {
		_, err := capSet(bad, prefer, false)
		require.EqualError(t, err, msg, bad)
	}
}
