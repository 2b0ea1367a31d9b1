package passthrough

import (
	"errors"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The wrappers below take NUL-terminated names as *byte so that serving a
// request does not convert names to Go strings (which allocates).

var emptyPath = [1]byte{0}

// errnoOf is the one conversion of an error into the errno a request
// fails with: 0 for nil, the errno itself (all that the golang.org/x/sys/unix
// calls return), the errno an error wraps, or EIO for an error that
// carries none.
func errnoOf(err error) syscall.Errno {
	switch e := err.(type) {
	case nil:
		return 0
	case syscall.Errno:
		return e
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.EIO
}

func sysStatx(dirfd int, name *byte, flags int, st *unix.Statx_t) syscall.Errno {
	_, _, e := syscall.Syscall6(unix.SYS_STATX, uintptr(dirfd), uintptr(unsafe.Pointer(name)), uintptr(flags),
		uintptr(unix.STATX_BASIC_STATS|unix.STATX_MNT_ID), uintptr(unsafe.Pointer(st)), 0)
	return e
}

func fstatx(fd int, st *unix.Statx_t) syscall.Errno {
	return sysStatx(fd, &emptyPath[0], unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, st)
}

func sysOpenat(dirfd int, name *byte, flags int, mode uint32) (int, syscall.Errno) {
	fd, _, e := syscall.Syscall6(unix.SYS_OPENAT, uintptr(dirfd), uintptr(unsafe.Pointer(name)), uintptr(flags|unix.O_CLOEXEC), uintptr(mode), 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), 0
}

// sysOpenat2 resolves name beneath dirfd, never leaving it and never
// following magic links.
func sysOpenat2(dirfd int, name *byte, flags int, mode uint32) (int, syscall.Errno) {
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Mode: uint64(mode),
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	fd, _, e := syscall.Syscall6(unix.SYS_OPENAT2, uintptr(dirfd), uintptr(unsafe.Pointer(name)),
		uintptr(unsafe.Pointer(&how)), unsafe.Sizeof(how), 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), 0
}

func sysMkdirat(dirfd int, name *byte, mode uint32) syscall.Errno {
	_, _, e := syscall.Syscall(unix.SYS_MKDIRAT, uintptr(dirfd), uintptr(unsafe.Pointer(name)), uintptr(mode))
	return e
}

func sysMknodat(dirfd int, name *byte, mode uint32, dev uint64) syscall.Errno {
	_, _, e := syscall.Syscall6(unix.SYS_MKNODAT, uintptr(dirfd), uintptr(unsafe.Pointer(name)), uintptr(mode), uintptr(dev), 0, 0)
	return e
}

func sysSymlinkat(target *byte, dirfd int, name *byte) syscall.Errno {
	_, _, e := syscall.Syscall(unix.SYS_SYMLINKAT, uintptr(unsafe.Pointer(target)), uintptr(dirfd), uintptr(unsafe.Pointer(name)))
	return e
}

func sysUnlinkat(dirfd int, name *byte, flags int) syscall.Errno {
	_, _, e := syscall.Syscall(unix.SYS_UNLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(name)), uintptr(flags))
	return e
}

func sysRenameat2(olddir int, oldName *byte, newdir int, newName *byte, flags uint32) syscall.Errno {
	_, _, e := syscall.Syscall6(unix.SYS_RENAMEAT2, uintptr(olddir), uintptr(unsafe.Pointer(oldName)),
		uintptr(newdir), uintptr(unsafe.Pointer(newName)), uintptr(flags), 0)
	return e
}

func sysLinkat(olddir int, oldName *byte, newdir int, newName *byte, flags int) syscall.Errno {
	_, _, e := syscall.Syscall6(unix.SYS_LINKAT, uintptr(olddir), uintptr(unsafe.Pointer(oldName)),
		uintptr(newdir), uintptr(unsafe.Pointer(newName)), uintptr(flags), 0)
	return e
}

func sysReadlinkat(dirfd int, name *byte, buf []byte) (int, syscall.Errno) {
	n, _, e := syscall.Syscall6(unix.SYS_READLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(name)),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

func sysFchownat(dirfd int, name *byte, uid, gid int, flags int) syscall.Errno {
	_, _, e := syscall.Syscall6(unix.SYS_FCHOWNAT, uintptr(dirfd), uintptr(unsafe.Pointer(name)), uintptr(uid), uintptr(gid), uintptr(flags), 0)
	return e
}

func sysFchmodat(dirfd int, name *byte, mode uint32) syscall.Errno {
	_, _, e := syscall.Syscall(unix.SYS_FCHMODAT, uintptr(dirfd), uintptr(unsafe.Pointer(name)), uintptr(mode))
	return e
}

func sysUtimensat(dirfd int, name *byte, ts *[2]unix.Timespec, flags int) syscall.Errno {
	var p uintptr
	if name != nil {
		p = uintptr(unsafe.Pointer(name))
	}
	_, _, e := syscall.Syscall6(unix.SYS_UTIMENSAT, uintptr(dirfd), p, uintptr(unsafe.Pointer(ts)), uintptr(flags), 0, 0)
	return e
}

func sysFaccessat(dirfd int, name *byte, mode uint32, flags int) syscall.Errno {
	_, _, e := syscall.Syscall6(unix.SYS_FACCESSAT2, uintptr(dirfd), uintptr(unsafe.Pointer(name)), uintptr(mode), uintptr(flags), 0, 0)
	return e
}

// iovecs converts guest memory segments into an iovec array without
// allocating: it fills the caller's array and returns how many it used.
func iovecs(dst []unix.Iovec, segs [][]byte) int {
	n := 0
	for _, s := range segs {
		if len(s) == 0 {
			continue
		}
		if n == len(dst) {
			break
		}
		dst[n].Base = &s[0]
		dst[n].SetLen(len(s))
		n++
	}
	return n
}

const maxIovecs = 1024

// rwv runs preadv (write false) or pwritev over segs at off until every
// byte moved, end of file, or an error. It returns the bytes moved.
func rwv(fd int, segs [][]byte, off int64, write bool) (int, syscall.Errno) {
	// Go zeroes a local array on every call, and zeroing one of
	// maxIovecs iovecs shows in the cost of small READs. Most requests
	// have a few segments: a small array serves them.
	if len(segs) <= smallIovecs {
		var iov [smallIovecs]unix.Iovec
		return rwvWith(iov[:], fd, segs, off, write)
	}
	var iov [maxIovecs]unix.Iovec
	return rwvWith(iov[:], fd, segs, off, write)
}

// smallIovecs is the iovec count rwv keeps a small array for.
const smallIovecs = 8

// rwvWith is rwv with iov as scratch.
func rwvWith(iov []unix.Iovec, fd int, segs [][]byte, off int64, write bool) (int, syscall.Errno) {
	nr := uintptr(unix.SYS_PREADV)
	if write {
		nr = unix.SYS_PWRITEV
	}
	done := 0
	for len(segs) > 0 {
		cnt := iovecs(iov, segs)
		if cnt == 0 {
			break
		}
		want := 0
		for i := 0; i < cnt; i++ {
			want += int(iov[i].Len)
		}
		pos := off + int64(done)
		n, _, e := syscall.Syscall6(nr, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(cnt), uintptr(pos), uintptr(pos>>32>>32), 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			if done > 0 {
				return done, 0
			}
			return 0, e
		}
		done += int(n)
		if int(n) < want && (!write || n == 0) {
			// A short read from a regular file is end of file.
			break
		}
		segs = advance(segs, int(n))
	}
	return done, 0
}

// advance drops the first n bytes of segs. It may shorten the first
// remaining segment in place, which is fine: segs is the worker's scratch.
func advance(segs [][]byte, n int) [][]byte {
	for len(segs) > 0 && n > 0 {
		if n >= len(segs[0]) {
			n -= len(segs[0])
			segs = segs[1:]
			continue
		}
		segs[0] = segs[0][n:]
		n = 0
	}
	for len(segs) > 0 && len(segs[0]) == 0 {
		segs = segs[1:]
	}
	return segs
}

// procName formats an fd number as a NUL-terminated name under
// /proc/self/fd into buf.
func procName(buf *[24]byte, fd int) *byte {
	i := len(buf) - 1
	buf[i] = 0
	if fd == 0 {
		i--
		buf[i] = '0'
	}
	for v := fd; v > 0; v /= 10 {
		i--
		buf[i] = byte('0' + v%10)
	}
	return &buf[i]
}
