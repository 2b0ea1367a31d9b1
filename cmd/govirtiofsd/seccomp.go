package main

import (
	"fmt"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/govirtiofsd/govirtiofsd/passthrough"
	"golang.org/x/sys/unix"
)

// allowedSyscalls is everything the daemon, the Go runtime under it and
// logrus's syslog hook call once serving starts, in any form; the calls
// made in one form only are in narrowedSyscalls. Anything else is a bug or
// an attack and meets the --seccomp action.
var allowedSyscalls = []string{
	// Go runtime: memory, threads, signals, time, scheduling.
	"mmap", "munmap", "mprotect", "madvise", "mremap", "brk", "mincore",
	"exit", "exit_group", "futex", "sched_yield", "sched_getaffinity",
	"nanosleep", "clock_gettime", "clock_nanosleep", "gettimeofday", "getpid", "gettid", "tgkill", "tkill",
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "arch_prctl", "set_robust_list",
	"rseq", "getrlimit", "prlimit64", "getrandom", "uname", "restart_syscall",
	"timer_create", "timer_settime", "timer_delete", "setitimer",
	// Event loops and wake-ups.
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd2", "pipe2",
	"poll", "ppoll", "read", "write", "readv", "writev", "close", "fcntl", "dup", "dup3",
	// The vhost-user socket (and syslog's, once connected).
	"accept4", "recvmsg", "sendmsg", "recvfrom", "sendto", "shutdown",
	"getsockopt", "setsockopt", "getsockname", "getpeername",
	// Serving the shared directory.
	"openat", "openat2", "statx", "newfstatat", "fstat", "fstatfs", "statfs", "lseek", "getdents64",
	"mkdirat", "mknodat", "symlinkat", "unlinkat", "renameat2", "linkat", "readlinkat",
	"fchownat", "fchown", "fchmodat", "fchmod", "utimensat", "truncate", "ftruncate", "faccessat", "faccessat2",
	"fsync", "fdatasync", "syncfs", "fallocate", "copy_file_range",
	"pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
	"getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr",
	"listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
	"name_to_handle_at", "open_by_handle_at", "flock", "fchdir", "chdir", "getcwd", "umask",
	// Per-request credentials.
	"setresuid", "setresgid", "setgroups", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
	"capget", "capset",
}

// Thread creation: the clone flags of the Go runtime's threads
// (newosproc's cloneFlags, with CLONE_SETTLS added on amd64 by
// runtime·clone, without it on other architectures), and those of glibc's
// pthread_create, which makes the threads of a build with cgo. All share
// memory, files and signal handlers and join the thread group: no new
// process, no namespace.
const (
	goThreadClone   = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_SYSVSEM | unix.CLONE_THREAD
	libcThreadClone = goThreadClone | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID | unix.CLONE_CHILD_CLEARTID
)

// narrowedSyscalls are the calls the daemon makes in one form only,
// allowed in that form; any other form meets the --seccomp action. With
// --syslog it adds socket for AF_UNIX (syslogCalls adds connect).
func narrowedSyscalls(syslog bool) []seccomp.NameWithConditions {
	eq := func(arg uint32, v uint64) seccomp.Condition {
		return seccomp.Condition{Argument: arg, Operation: seccomp.Equal, Value: v}
	}
	calls := []seccomp.NameWithConditions{
		// The one ioctl, FS_IOC_FSGETXATTR (the DAX flag of a file, for
		// dax=inode).
		{Name: "ioctl", Conditions: seccomp.ArgumentConditions{eq(1, passthrough.IoctlFsGetXattr)}},
		// New threads, with exactly the flags above.
		{Name: "clone", Conditions: seccomp.ArgumentConditions{eq(0, goThreadClone)}},
		{Name: "clone", Conditions: seccomp.ArgumentConditions{eq(0, goThreadClone|unix.CLONE_SETTLS)}},
		{Name: "clone", Conditions: seccomp.ArgumentConditions{eq(0, libcThreadClone)}},
		// A thread's own working directory for the /proc/self/fd xattr
		// calls (passthrough's unshareFS); no namespace flag.
		{Name: "unshare", Conditions: seccomp.ArgumentConditions{eq(0, unix.CLONE_FS)}},
		// The Go runtime names its anonymous mappings (Go 1.25 and
		// later). The capability calls (PR_CAPBSET_DROP in dropCaps,
		// PR_CAPBSET_READ in the parent) all come before the filter.
		{Name: "prctl", Conditions: seccomp.ArgumentConditions{eq(0, unix.PR_SET_VMA), eq(1, unix.PR_SET_VMA_ANON_NAME)}},
	}
	if syslog {
		calls = append(calls, seccomp.NameWithConditions{Name: "socket", Conditions: seccomp.ArgumentConditions{eq(0, unix.AF_UNIX)}})
	}
	return calls
}

// action is the filter's action for a syscall outside the list
// (seccompNone installs no filter).
func (m seccompMode) action() seccomp.Action {
	switch m {
	case seccompLog:
		return seccomp.ActionLog
	case seccompTrap:
		return seccomp.ActionTrap
	}
	return seccomp.ActionKillProcess
}

// syslogCalls is what reconnecting to syslog takes besides socket, allowed
// only with --syslog: logrus's syslog hook dials the syslog socket again
// after a failed write. connect's address is in memory, out of a filter's
// reach, so connect is allowed whole; the only sockets the daemon can make
// are AF_UNIX ones.
func syslogCalls(syslog bool) []string {
	if syslog {
		return []string{"connect"}
	}
	return nil
}

// installSeccomp loads the allow-list on every thread of the process
// (TSYNC), so that no thread, present or future, escapes it. syslog
// (--syslog) adds what reconnecting to syslog takes.
func installSeccomp(mode seccompMode, syslog bool) error {
	if mode == seccompNone {
		return nil
	}
	f := seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: mode.action(),
			Syscalls: []seccomp.SyscallGroup{
				{Action: seccomp.ActionAllow, Names: append(syslogCalls(syslog), allowedSyscalls...), NamesWithCondtions: narrowedSyscalls(syslog)},
				// clone3's flags are in memory, where a filter cannot
				// look: it fails with ENOSYS, which makes a caller
				// (glibc's pthread_create) fall back to clone, filtered
				// above. The Go runtime calls clone itself.
				{Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS), Names: []string{"clone3"}},
			},
		},
	}
	if err := seccomp.LoadFilter(f); err != nil {
		return fmt.Errorf("install seccomp filter: %w", err)
	}
	return nil
}
