package passthrough

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	"golang.org/x/sys/unix"
)

// The guard: the one place where a request changes the state of the thread
// that serves it. Effective uid and gid, supplementary groups, umask,
// CAP_FSETID in the effective set and the working directory are per thread
// in Linux when set with the raw system calls (Go's syscall.Setresuid and
// friends apply to every thread of the process), so a change is only safe
// while the goroutine that made it stays on its thread, and only until it
// is undone. A guard pins the goroutine itself on its first change (the
// caller need not, and a pool worker or an assistant is not pinned), records
// each change, and end undoes them in reverse order and unpins. Nothing else
// in the package makes these system calls; TestGuardOnly checks the source.
//
// A guard is used by one request on one goroutine:
//
//	var g guard
//	defer g.end(fs)
//	if e := fs.asCaller(&g, uid, gid); e != 0 { ... }
//
// If a change cannot be undone the thread is not fit to serve anything
// else, as whatever ran on it next would run as the guest's caller; the
// daemon then exits (guestFatal) rather than carry on.
type guard struct {
	pinned bool
	ids    bool   // effective uid and gid switched (asCaller, asHost)
	groups bool   // supplementary groups switched (asCallerExt)
	umask  bool   // umask switched; oldUmask holds the thread's own
	fsetid bool   // CAP_FSETID dropped from the effective set
	cwd    bool   // working directory moved (chdir)
	unshFS bool   // the thread has its own fs struct (unshare(CLONE_FS))
	oldUm  uint32 // the umask to put back
}

// pin locks the goroutine to its thread for the guard's lifetime.
func (g *guard) pin() {
	if !g.pinned {
		runtime.LockOSThread()
		g.pinned = true
	}
}

// ownFS gives the thread its own working directory, root and umask, so that
// changing them does not change the process's. Only the first call on a
// thread does work; a thread keeps its private copy afterwards, holding the
// process's values again once every change is put back. So after serving
// starts the process itself must not chdir, chroot or set its umask, or such
// threads would not follow.
func (g *guard) ownFS() syscall.Errno {
	g.pin()
	if g.unshFS {
		return 0
	}
	if _, _, e := syscall.RawSyscall(unix.SYS_UNSHARE, unix.CLONE_FS, 0, 0); e != 0 {
		return e
	}
	g.unshFS = true
	return 0
}

// asCaller makes the thread's effective ids those of the guest's caller
// uid and gid (translated to host ids, see translate.go), so that what the
// request creates belongs to the caller. Nothing is switched when the
// daemon is not root or the ids are its own.
func (fs *FS) asCaller(g *guard, uid, gid uint32) syscall.Errno {
	uid, gid, e := fs.hostIDs(uid, gid)
	if e != 0 {
		return e
	}
	return fs.asHost(g, uid, gid)
}

// asHost makes the thread's effective ids the host ids uid and gid; see
// asCaller. The caller gets none of the daemon's supplementary groups:
// the thread's groups are emptied too, unless asCallerExt set the one the
// request names.
func (fs *FS) asHost(g *guard, uid, gid uint32) syscall.Errno {
	if !fs.switchCreds || (uid == fs.euid && gid == fs.egid) || g.ids {
		return 0
	}
	g.pin()
	if len(fs.groups) > 0 && !g.groups {
		if e := setThreadGroups(nil); e != 0 {
			return e
		}
		g.groups = true
	}
	if _, _, e := syscall.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), uintptr(gid), ^uintptr(0)); e != 0 {
		return e
	}
	if _, _, e := syscall.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
		if _, _, e2 := syscall.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), uintptr(fs.egid), ^uintptr(0)); e2 != 0 {
			guestFatal("effective gid", e2)
		}
		return e
	}
	g.ids = true
	return 0
}

// asCallerExt is asCaller for a request that may carry extensions: with a
// supplementary group in ext (CREATE_SUPP_GROUP), the thread also takes
// that group (a guest gid, translated like the caller's) as its only
// supplementary one, before the uid switch, which drops the capability to
// change groups.
func (fs *FS) asCallerExt(g *guard, uid, gid uint32, ext *fuse.Extensions) syscall.Errno {
	if ext != nil && ext.HasSuppGroup && fs.switchCreds && !g.groups {
		hg, ok := fs.cfg.GIDMap.ToHost(ext.SuppGroup) // translate.go
		if !ok {
			return errForbiddenID
		}
		g.pin()
		gs := [1]uint32{hg}
		if e := setThreadGroups(gs[:]); e != 0 {
			return e
		}
		g.groups = true
	}
	return fs.asCaller(g, uid, gid)
}

// setUmask makes mask the thread's umask.
func (g *guard) setUmask(mask uint32) syscall.Errno {
	if e := g.ownFS(); e != 0 {
		return e
	}
	old, _, _ := syscall.RawSyscall(unix.SYS_UMASK, uintptr(mask&0o777), 0, 0)
	if !g.umask {
		g.oldUm, g.umask = uint32(old), true
	}
	return 0
}

// chdir makes the directory fd the thread's working directory (for the
// /proc/self/fd names of xattrTarget).
func (g *guard) chdir(fd int) syscall.Errno {
	if e := g.ownFS(); e != 0 {
		return e
	}
	g.cwd = true
	if _, _, e := syscall.RawSyscall(unix.SYS_FCHDIR, uintptr(fd), 0, 0); e != 0 {
		return e
	}
	return 0
}

// dropFsetid removes CAP_FSETID from the thread's effective set, so that
// what the request writes or truncates loses its setuid and setgid bits as
// an unprivileged writer's would (killpriv_v2).
func (g *guard) dropFsetid() syscall.Errno {
	if g.fsetid {
		return 0
	}
	g.pin()
	changed, e := setFsetid(false)
	if e != 0 {
		return e
	}
	g.fsetid = changed
	return 0
}

// end undoes every change the guard made, in reverse order, and unpins the
// goroutine. fs gives the daemon's own ids, groups and working directory.
func (g *guard) end(fs *FS) {
	if !g.pinned {
		return
	}
	if g.fsetid {
		if _, e := setFsetid(true); e != 0 {
			guestFatal("CAP_FSETID", e)
		}
	}
	if g.ids {
		if _, _, e := syscall.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(fs.euid), ^uintptr(0)); e != 0 {
			guestFatal("effective uid", e)
		}
		if _, _, e := syscall.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), uintptr(fs.egid), ^uintptr(0)); e != 0 {
			guestFatal("effective gid", e)
		}
	}
	if g.groups {
		if e := setThreadGroups(fs.groups); e != 0 {
			guestFatal("supplementary groups", e)
		}
	}
	if g.umask {
		syscall.RawSyscall(unix.SYS_UMASK, uintptr(g.oldUm), 0, 0)
	}
	if g.cwd {
		// The thread has a working directory of its own (ownFS), and
		// nothing the daemon does uses relative paths; so a directory
		// the guest made unreachable (mode 0 on the share's root, with
		// DAC capabilities dropped) is no reason to stop: the thread
		// stays in /proc/self/fd.
		syscall.RawSyscall(unix.SYS_FCHDIR, uintptr(fs.cwdFd), 0, 0)
	}
	*g = guard{}
	runtime.UnlockOSThread()
}

// clearProcessUmask sets the process's umask to 0, once, before serving:
// modes arrive with the guest's umask already applied (or, with DONT_MASK,
// deliberately unmasked), and the host's must not mask them again.
func clearProcessUmask() {
	syscall.RawSyscall(unix.SYS_UMASK, 0, 0, 0)
}

// guestFatal ends the daemon when a thread cannot be given back its own
// state: whatever ran on it next would run with a guest caller's.
func guestFatal(what string, e syscall.Errno) {
	fmt.Fprintf(os.Stderr, "govirtiofsd: cannot restore the serving thread's %s (%v); exiting rather than serve with it\n", what, e)
	os.Exit(1)
}

// setThreadGroups makes gs the calling thread's supplementary groups.
func setThreadGroups(gs []uint32) syscall.Errno {
	var p unsafe.Pointer
	if len(gs) > 0 {
		p = unsafe.Pointer(&gs[0])
	}
	_, _, e := syscall.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(gs)), uintptr(p), 0)
	return e
}

// setFsetid adds CAP_FSETID to or removes it from the calling thread's
// effective set (only a thread's own capabilities change). It reports
// whether the set changed.
func setFsetid(on bool) (bool, syscall.Errno) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if _, _, e := syscall.RawSyscall(unix.SYS_CAPGET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return false, e
	}
	const bit = 1 << unix.CAP_FSETID
	has := data[0].Effective&bit != 0
	if has == on || (on && data[0].Permitted&bit == 0) {
		return false, 0
	}
	data[0].Effective ^= bit
	if _, _, e := syscall.RawSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return false, e
	}
	return true, 0
}
