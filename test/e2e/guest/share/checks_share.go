package main

import (
	"os"
	"path/filepath"

	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"
	"golang.org/x/sys/unix"
)

// checkHostPrepared: the tree the host made before boot
// (guestspec.PrepareHost) reads back exactly in the guest.
func checkHostPrepared(t *T) error {
	dir := filepath.Join(t.env.mnt, guestspec.HostPreparedDir)
	if _, err := os.Lstat(dir); err != nil {
		return errf("%s: %s (did the host run guestspec.PrepareHost on the shared directory?)", dir, errnoName(err))
	}
	if err := guestspec.VerifyPrepared(dir); err != nil {
		return err
	}
	t.Note("%d entries match", len(guestspec.HostEntries()))
	return nil
}

// checkHostCheck: writes the tree the host checks after the run
// (guestspec.VerifyHost) and checks it here first.
func checkHostCheck(t *T) error {
	dir := filepath.Join(t.env.work, guestspec.HostCheckDir)
	if err := guestspec.WriteGuestFiles(dir); err != nil {
		return errf("writing %s: %v", dir, err)
	}
	if err := guestspec.VerifyGuestFiles(dir); err != nil {
		return errf("reading back %s: %v", dir, err)
	}
	fd, err := openFd(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := ok("syncfs", unix.Syncfs(fd)); err != nil {
		return err
	}
	t.Note("%d entries in %s", len(guestspec.GuestEntries()), dir)
	return nil
}

// checkRemount: data and attributes survive unmounting and mounting the
// share again.
func checkRemount(t *T) error {
	e := t.env
	if !e.mounted {
		return skipf("the share was not mounted by the guest (-no-mount)")
	}
	p := t.P("persist")
	data := guestspec.NamedPattern("remount", 0, 64<<10+7)
	if err := create(p, data, 0o644); err != nil {
		return err
	}
	mtime := [2]unix.Timespec{{Sec: 1234567890, Nsec: 5}, {Sec: 1234567891, Nsec: 6}}
	if err := first(
		ok("chmod", unix.Chmod(p, 0o640)),
		ok("chown", unix.Chown(p, 1234, 5678)),
		ok("utimensat", utimensat(p, &mtime, 0)),
		ok("mkdir", unix.Mkdir(t.P("sub"), 0o750)),
		ok("symlink", unix.Symlink("persist", t.P("link"))),
		ok("link", unix.Link(p, t.P("hard"))),
	); err != nil {
		return err
	}
	before, err := stat(p)
	if err != nil {
		return err
	}

	if err := unix.Unmount(e.mnt, 0); err != nil {
		return errf("umount %s: %s", e.mnt, errnoName(err))
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(e.mnt, &sfs); err == nil && sfs.Type == unix.FUSE_SUPER_MAGIC {
		// Another virtio-fs mount below ours, most likely.
		t.Note("a FUSE file system is still at %s after umount", e.mnt)
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err == nil {
		t.Note("%s exists below the mount point", p)
	}
	if err := e.mount(); err != nil {
		e.mountLost.Store(true)
		return errf("mounting again: %v", err)
	}

	if err := wantContent(p, data); err != nil {
		return errf("after remount: %v", err)
	}
	after, err := stat(p)
	if err != nil {
		return errf("after remount: %v", err)
	}
	if err := first(
		wantSize("after remount", after, before.Size),
		wantMode("after remount", after, unix.S_IFREG|0o640),
		wantOwner("after remount", after, 1234, 5678),
		wantNlink("after remount", after, 2),
		wantTime("mtime after remount", after.Mtim, mtime[1]),
	); err != nil {
		return err
	}
	if after.Ino != before.Ino {
		return errf("st_ino %d after remount, was %d", after.Ino, before.Ino)
	}
	if names, err := readdirNames(t.dir); err != nil {
		return err
	} else if err := wantNames("directory after remount", names, "hard", "link", "persist", "sub"); err != nil {
		return err
	}
	if target, err := os.Readlink(t.P("link")); err != nil || target != "persist" {
		return errf("readlink after remount: %q, %v", target, err)
	}
	if st, err := stat(t.P("sub")); err != nil {
		return err
	} else if err := wantMode("directory after remount", st, unix.S_IFDIR|0o750); err != nil {
		return err
	}
	return nil
}
