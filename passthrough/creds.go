package passthrough

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Credentials are switched per thread with raw system calls: the Go
// runtime's setresuid wrappers apply to every thread of the process. The
// vhost-user workers lock their goroutines to their OS threads, so a switch
// made here stays on the thread serving the request.

// asCaller makes the calling thread's effective ids those of the guest's
// caller uid and gid (translated to host ids, see translate.go), so that
// what the request creates belongs to the caller. It returns false when no
// switch was needed or possible (the daemon is not root).
func (fs *FS) asCaller(uid, gid uint32) (bool, syscall.Errno) {
	uid, gid, e := fs.hostIDs(uid, gid)
	if e != 0 {
		return false, e
	}
	return fs.asHost(uid, gid)
}

// asHost makes the calling thread's effective ids the host ids uid and
// gid; see asCaller.
func (fs *FS) asHost(uid, gid uint32) (bool, syscall.Errno) {
	if !fs.switchCreds || (uid == fs.euid && gid == fs.egid) {
		return false, 0
	}
	if _, _, e := syscall.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), uintptr(gid), ^uintptr(0)); e != 0 {
		return false, e
	}
	if _, _, e := syscall.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
		syscall.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), uintptr(fs.egid), ^uintptr(0))
		return false, e
	}
	return true, 0
}

// restore undoes asCaller.
func (fs *FS) restore(switched bool) {
	if !switched {
		return
	}
	if _, _, e := syscall.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(fs.euid), ^uintptr(0)); e != 0 {
		panic("govirtiofsd: cannot restore effective uid: " + e.Error())
	}
	if _, _, e := syscall.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), uintptr(fs.egid), ^uintptr(0)); e != 0 {
		panic("govirtiofsd: cannot restore effective gid: " + e.Error())
	}
}
