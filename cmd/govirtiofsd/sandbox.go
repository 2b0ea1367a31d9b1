// Entering the sandbox, in the process that serves: the namespace
// sandbox's private mount tree rooted at the shared directory (nodev,
// nosuid) with a /proc of its own, or the chroot sandbox; both give the
// descriptor of /proc/self/fd the filesystem reaches its files' magic
// links through. The parent's side, which makes the namespaces, is in
// parent.go.

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// enterNamespaceSandbox runs in the child: it makes the shared directory
// the root of a private mount namespace, mounted nodev and nosuid, and
// returns an fd of /proc/self/fd opened beforehand, through which nothing
// else of /proc can be reached.
func enterNamespaceSandbox(shared string) (int, error) {
	// Slave, not private: mounts the host adds under the share later
	// (container volumes) must still propagate in.
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return -1, fmt.Errorf("make / a slave mount: %w", err)
	}
	// A proc of our own pid namespace, so that /proc/self is this process.
	// subset=pid (Linux 5.8) leaves out everything but the pid
	// directories: no sysrq-trigger, sys, kcore, keys, timer_list,
	// sched_debug, acpi, scsi or kmsg on this instance at all. Older
	// kernels reject the option; openProcSelfFd is the wall there.
	const procFlags = unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_NOSUID | unix.MS_RELATIME
	if err := unix.Mount("proc", "/proc", "proc", procFlags, "subset=pid"); err != nil {
		if err := unix.Mount("proc", "/proc", "proc", procFlags, ""); err != nil {
			return -1, fmt.Errorf("mount a fresh /proc: %w", err)
		}
	}
	procFd, err := openProcSelfFd(true)
	if err != nil {
		return -1, err
	}
	if err := unix.Mount(shared, shared, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return -1, fmt.Errorf("bind-mount %s: %w", shared, err)
	}
	if err := restrictShareMounts(shared); err != nil {
		return -1, err
	}
	if err := unix.Chdir(shared); err != nil {
		return -1, err
	}
	// pivot_root with the same new and old root stacks the old root on
	// top of the new one; detaching it leaves only the share.
	if err := unix.PivotRoot(".", "."); err != nil {
		return -1, fmt.Errorf("pivot_root into %s: %w", shared, err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return -1, fmt.Errorf("detach the old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return -1, err
	}
	return procFd, nil
}

// openProcSelfFd returns an O_PATH descriptor of /proc/self/fd that is the
// root of a mount of its own, so that ".." from it stays where it is: the
// serving process reaches its descriptors' magic links through it and no
// other part of /proc (sysrq-trigger, sys, other processes' directories,
// which with chroot are the host's, /proc/1/root among them). The mount is
// a detached clone (open_tree, Linux 5.2) that nothing else can see; in a
// mount namespace an older kernel gets the same with a bind mount of
// /proc/self/fd over /proc, which the old root's detachment then hides.
// Without either (chroot on a kernel before 5.2) the descriptor is
// /proc/self/fd of the whole /proc.
func openProcSelfFd(namespace bool) (int, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, "/proc/self/fd", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err == nil {
		return fd, nil
	}
	path := "/proc/self/fd"
	if namespace {
		if err := unix.Mount("/proc/self/fd", "/proc", "", unix.MS_BIND, ""); err != nil {
			return -1, fmt.Errorf("bind-mount /proc/self/fd over /proc: %w", err)
		}
		path = "/proc"
	}
	fd, err = unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /proc/self/fd: %w", err)
	}
	return fd, nil
}

// shareMountAttrs are the flags every mount of the share gets in the
// sandbox. nodev: the guest may MKNOD a block or character device (the
// daemon keeps CAP_MKNOD for it), but no device node opens through these
// mounts, whatever the guest asks the daemon to open. nosuid: a setuid,
// setgid or file-capability binary the guest writes gives no privilege
// when executed through them. Both bind what goes through the sandbox's
// mounts, that is everything the serving process does (and any process
// that enters its mount namespace); a host process using the host's own
// mount of the directory sees that mount's flags, which are the host's to
// set.
const shareMountAttrs = unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOSUID

// restrictShareMounts makes the bind mount of the share at shared, and
// every mount under it (--announce-submounts shows them to the guest),
// nodev and nosuid, keeping their other flags.
//
// What holds and what does not: the flags apply to the mounts present
// now. A mount the host adds under the share later propagates into the
// sandbox (the root is a slave of the host's mounts, on purpose) with the
// flags the host gave it: Linux has no way to make a mount pass its flags
// on to mounts arriving under it. Such a volume is nodev and nosuid in the
// sandbox only if the host mounted it so (TestSandboxWalls shows a device
// node on one opening).
func restrictShareMounts(shared string) error {
	// mount_setattr (Linux 5.12) sets the two flags on the whole tree at
	// once and only sets: it never clears a flag, so flags the mounts
	// already have stay, locked ones included.
	attr := unix.MountAttr{Attr_set: shareMountAttrs}
	err := unix.MountSetattr(unix.AT_FDCWD, shared, unix.AT_RECURSIVE|unix.AT_NO_AUTOMOUNT, &attr)
	if err == nil {
		return nil
	}
	// Older kernels: a bind remount of each mount. A remount sets all the
	// per-mount flags, so each keeps the ones it has: a bind mount made in
	// a user namespace (an unprivileged daemon) of a mount that is
	// read-only, noexec, nosuid, nodev or noatime on the host has them
	// locked, and a remount without them fails with EPERM.
	mounts, merr := mountsUnder(shared)
	if merr != nil {
		mounts = []string{shared}
	}
	for i, m := range mounts {
		// A submount that cannot be remounted (gone since, or hidden
		// under another) keeps its flags; the share's own must not.
		if err := remountRestricted(m); err != nil && i == 0 {
			return fmt.Errorf("make %s nodev,nosuid: %w", shared, err)
		}
	}
	return nil
}

// remountRestricted bind-remounts the mount at path nodev and nosuid with
// the per-mount flags statfs reports for it.
func remountRestricted(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return err
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_NODEV | unix.MS_NOSUID)
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_RDONLY, unix.MS_RDONLY}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME},
		{unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	if uintptr(st.Flags)&(unix.ST_NOATIME|unix.ST_RELATIME) == 0 {
		flags |= unix.MS_STRICTATIME
	}
	return unix.Mount("", path, "", flags, "")
}

// mountsUnder lists, from /proc/self/mountinfo, the mount points at or
// under dir, parents before children, the first being dir itself.
func mountsUnder(dir string) ([]string, error) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	mounts := []string{real}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		m := unescapeMountPath(f[4])
		if m != real && strings.HasPrefix(m, strings.TrimSuffix(real, "/")+"/") {
			mounts = append(mounts, m)
		}
	}
	return mounts, nil
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space,
// \011, \012, \134).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// enterChrootSandbox confines the process to the shared directory with
// chroot, as virtiofsd's chroot mode does. Without a mount namespace of its
// own the daemon cannot make the share nodev or nosuid: device nodes and
// setuid files on it are as restricted as the host's mount makes them.
func enterChrootSandbox(shared string) (int, error) {
	procFd, err := openProcSelfFd(false)
	if err != nil {
		return -1, err
	}
	if err := unix.Chroot(shared); err != nil {
		return -1, fmt.Errorf("chroot %s: %w", shared, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return -1, err
	}
	return procFd, nil
}
