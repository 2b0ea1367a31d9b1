package passthrough

import (
	"fmt"
	"syscall"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	"golang.org/x/sys/unix"
)

// Supplementary groups (CREATE_SUPP_GROUP). The guest checks permissions
// itself and tells the host only the caller's uid and fsgid. When a caller
// creates something in a directory whose group is not its fsgid but one
// of its supplementary groups, the host, running as uid/fsgid alone, would
// refuse what the guest allowed; so the guest names that group in the
// request (FUSE_EXT_GROUPS) and the creation runs with it as the thread's
// only supplementary group, as virtiofsd does.
//
// Groups, like the ids in creds.go, are switched per thread with the raw
// system call: Go's syscall.Setgroups applies to every thread of the
// process. The thread is locked around the switch, and the daemon's own
// groups (read once by New) are put back afterwards.

// callerSwitch records what asCallerExt changed on the thread.
type callerSwitch struct {
	ids    bool // the effective uid and gid (asCaller)
	groups bool // the supplementary groups
}

// initGroups reads the daemon's supplementary groups, to restore after a
// creation that set others.
func (fs *FS) initGroups() error {
	gs, err := unix.Getgroups()
	if err != nil {
		return fmt.Errorf("read supplementary groups: %w", err)
	}
	fs.groups = make([]uint32, len(gs))
	for i, g := range gs {
		fs.groups[i] = uint32(g)
	}
	return nil
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

// asCallerExt is asCaller for a request that may carry extensions: with a
// supplementary group in ext, the thread also takes that group (a guest
// gid, translated like the caller's: --translate-gid) as its only
// supplementary one, before the uid switch, which drops the capability to
// change groups. The thread must stay locked until restoreCaller.
func (fs *FS) asCallerExt(uid, gid uint32, ext *fuse.Extensions) (callerSwitch, syscall.Errno) {
	var sw callerSwitch
	if ext != nil && ext.HasSuppGroup && fs.switchCreds {
		hg, ok := fs.cfg.GIDMap.ToHost(ext.SuppGroup) // translate.go
		if !ok {
			return sw, errForbiddenID
		}
		g := [1]uint32{hg}
		if e := setThreadGroups(g[:]); e != 0 {
			return sw, e
		}
		sw.groups = true
	}
	ids, e := fs.asCaller(uid, gid)
	if e != 0 {
		fs.restoreGroups(sw.groups)
		return callerSwitch{}, e
	}
	sw.ids = ids
	return sw, 0
}

// restoreCaller undoes asCallerExt.
func (fs *FS) restoreCaller(sw callerSwitch) {
	fs.restore(sw.ids)
	fs.restoreGroups(sw.groups)
}

func (fs *FS) restoreGroups(switched bool) {
	if !switched {
		return
	}
	if e := setThreadGroups(fs.groups); e != 0 {
		panic("govirtiofsd: cannot restore supplementary groups: " + e.Error())
	}
}
