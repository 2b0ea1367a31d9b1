package passthrough

import (
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	"golang.org/x/sys/unix"
)

// The gate: every descriptor other than O_PATH that the daemon opens on an
// entry a guest can name goes through openInode (an entry the guest knows
// by node id), openName (a name in a directory: CREATE of a name that
// exists), createNew (a name that does not exist yet) or openHeld (an O_PATH descriptor the daemon holds: a mount's
// descriptor for file handles). The gate opens only the kinds of file the request allows, and
// never a device node, a fifo or a socket, whatever the request: a guest
// can make such entries (MKNOD) and opening one would reach a host device
// or block the worker for good. The kind is the one the kernel reported
// for the O_PATH descriptor (or file handle) that holds the entry, which
// cannot change while that descriptor is held, and the entry is then
// opened through that descriptor (/proc/self/fd/N) or handle, never by its
// name again, so a rename in between cannot swap another file in.
// TestGateOnly checks the source: no other file of the package opens a
// descriptor but O_PATH ones and O_DIRECTORY ones (which the kernel
// refuses on anything but a directory, without opening it).

// openNever are the flags the gate never passes on: each would change what
// the open does rather than how the file is read and written.
const openNever = unix.O_PATH | unix.O_TMPFILE | unix.O_DIRECTORY | unix.O_NOCTTY

// kinds is the set of file kinds a request may open.
type kinds uint8

const (
	regular   kinds = 1 << iota // a regular file
	directory                   // a directory, read-only
)

// gateKind checks that an entry of file type mode (S_IFMT bits) may be
// opened for a request that allows want, with flags, and returns the flags
// to open it with.
func gateKind(mode uint32, want kinds, flags int) (int, syscall.Errno) {
	flags &^= openNever | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		if want&regular == 0 {
			return 0, syscall.ENOTDIR
		}
		return flags, 0
	case unix.S_IFDIR:
		if want&directory == 0 {
			return 0, syscall.EISDIR
		}
		if flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_TRUNC != 0 {
			return 0, syscall.EISDIR
		}
		return flags | unix.O_DIRECTORY, 0
	case unix.S_IFLNK:
		return 0, syscall.ELOOP
	}
	// Device nodes, fifos and sockets are never opened.
	return 0, syscall.EACCES
}

// createNew creates name in the directory pfd as a new regular file and
// opens it with flags: O_CREAT|O_EXCL|O_NOFOLLOW, which fails with EEXIST
// on any entry already there (a symlink included), so nothing but the new
// file is opened.
func createNew(pfd int, name fuse.Name, flags int, mode uint32) (int, syscall.Errno) {
	flags = flags&^openNever | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW
	return sysOpenat(pfd, name.CString(), flags, mode&0o7777)
}

// openInode opens inode i's file with flags, if its kind is in want,
// through its O_PATH descriptor or from its file handle.
func (fs *FS) openInode(i *inode, want kinds, flags int) (int, syscall.Errno) {
	flags, e := gateKind(i.mode, want, flags)
	if e != 0 {
		return -1, e
	}
	var pn [24]byte
	if i.fd < 0 {
		// A cached descriptor still reaches a file the host unlinked
		// since the lookup, where its handle would be stale.
		if fd, slot := i.mnt.cache.get(i); slot != nil {
			nfd, e := sysOpenat(fs.procFd, procName(&pn, fd), flags, 0)
			i.mnt.cache.release(slot)
			return nfd, e
		}
		// The handle is opened O_PATH and its kind read again before the
		// open that acts: on a filesystem whose handles do not tell one
		// use of an inode number from the next, a handle could reach a
		// newer file than the one the node id was given for.
		ofd, e := sysOpenByHandleAt(i.mnt.fd, i.fileHandle, unix.O_PATH|unix.O_NOFOLLOW)
		if e != 0 {
			return -1, e
		}
		defer unix.Close(ofd)
		var st unix.Statx_t
		if e := fstatx(ofd, &st); e != 0 {
			return -1, e
		}
		if uint32(st.Mode)&unix.S_IFMT != i.mode&unix.S_IFMT || keyOf(&st) != i.key {
			return -1, syscall.ESTALE
		}
		return sysOpenat(fs.procFd, procName(&pn, ofd), flags, 0)
	}
	return sysOpenat(fs.procFd, procName(&pn, i.fd), flags, 0)
}

// openHeld opens the entry that the O_PATH descriptor ofd holds, of file
// type mode (read from ofd), with flags, if its kind is in want.
func (fs *FS) openHeld(ofd int, mode uint32, want kinds, flags int) (int, syscall.Errno) {
	flags, e := gateKind(mode, want, flags)
	if e != 0 {
		return -1, e
	}
	var pn [24]byte
	return sysOpenat(fs.procFd, procName(&pn, ofd), flags, 0)
}

// openName opens the entry name of the directory pfd with flags, if its
// kind is in want: it is first held by an O_PATH descriptor (resolved
// beneath pfd, not following a symlink), its kind read from that, and it
// is then opened through that descriptor.
func (fs *FS) openName(pfd int, name fuse.Name, want kinds, flags int) (int, syscall.Errno) {
	var st unix.Statx_t
	ofd, e := openEntry(pfd, name, &st)
	if e != 0 {
		return -1, e
	}
	defer unix.Close(ofd)
	return fs.openHeld(ofd, uint32(st.Mode), want, flags)
}
