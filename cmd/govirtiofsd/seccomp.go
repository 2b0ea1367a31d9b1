package main

import (
	"fmt"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/govirtiofsd/govirtiofsd/passthrough"
)

// allowedSyscalls is everything the daemon, the Go runtime under it and
// logrus's syslog hook call once serving starts. Anything else is a bug or
// an attack and meets the --seccomp action.
var allowedSyscalls = []string{
	// Go runtime: memory, threads, signals, time, scheduling.
	"mmap", "munmap", "mprotect", "madvise", "mremap", "brk", "mincore",
	"clone", "clone3", "exit", "exit_group", "futex", "sched_yield", "sched_getaffinity",
	"nanosleep", "clock_gettime", "clock_nanosleep", "gettimeofday", "getpid", "gettid", "tgkill", "tkill",
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "arch_prctl", "set_robust_list",
	"rseq", "getrlimit", "prlimit64", "getrandom", "uname", "restart_syscall",
	"timer_create", "timer_settime", "timer_delete", "setitimer",
	// Event loops and wake-ups.
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd2", "pipe2",
	"poll", "ppoll", "read", "write", "readv", "writev", "close", "fcntl", "dup", "dup3",
	// The vhost-user socket and syslog.
	"accept4", "recvmsg", "sendmsg", "recvfrom", "sendto", "socket", "connect", "shutdown",
	"getsockopt", "setsockopt", "getsockname", "getpeername",
	// Serving the shared directory.
	"openat", "openat2", "statx", "newfstatat", "fstat", "fstatfs", "statfs", "lseek", "getdents64",
	"mkdirat", "mknodat", "symlinkat", "unlinkat", "renameat2", "linkat", "readlinkat",
	"fchownat", "fchown", "fchmodat", "fchmod", "utimensat", "truncate", "ftruncate", "faccessat", "faccessat2",
	"fsync", "fdatasync", "syncfs", "fallocate", "copy_file_range",
	"pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
	"getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr",
	"listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
	"name_to_handle_at", "open_by_handle_at", "flock", "fchdir", "chdir", "getcwd", "umask", "unshare",
	// Per-request credentials.
	"setresuid", "setresgid", "setgroups", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
	"capget", "capset", "prctl",
}

// allowedIoctls: the one ioctl the daemon makes, FS_IOC_FSGETXATTR (the
// DAX flag of a file, for dax=inode).
var allowedIoctls = []seccomp.NameWithConditions{{Name: "ioctl", Conditions: seccomp.ArgumentConditions{
	{Argument: 1, Operation: seccomp.Equal, Value: passthrough.IoctlFsGetXattr}}}}

// seccompAction maps --seccomp to the action for a syscall outside the
// list.
func seccompAction(mode string) (seccomp.Action, error) {
	switch mode {
	case "kill":
		return seccomp.ActionKillProcess, nil
	case "log":
		return seccomp.ActionLog, nil
	case "trap":
		return seccomp.ActionTrap, nil
	}
	return 0, fmt.Errorf("invalid seccomp action %q (want none, kill, log or trap)", mode)
}

// installSeccomp loads the allow-list on every thread of the process
// (TSYNC), so that no thread, present or future, escapes it.
func installSeccomp(mode string) error {
	if mode == "none" {
		return nil
	}
	action, err := seccompAction(mode)
	if err != nil {
		return err
	}
	f := seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: action,
			Syscalls: []seccomp.SyscallGroup{{Action: seccomp.ActionAllow, Names: allowedSyscalls,
				NamesWithCondtions: allowedIoctls}},
		},
	}
	if err := seccomp.LoadFilter(f); err != nil {
		return fmt.Errorf("install seccomp filter: %w", err)
	}
	return nil
}
