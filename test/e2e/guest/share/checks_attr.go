package main

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// checkChmod: chmod, fchmod, special bits, directories, symlinks, and root
// reading a file of mode 0000.
func checkChmod(t *T) error {
	f := t.P("f")
	if err := create(f, []byte("secret"), 0o644); err != nil {
		return err
	}
	for _, m := range []uint32{0o600, 0o4755, 0o2755, 0o1644, 0o7777, 0o0} {
		if err := ok(fmt.Sprintf("chmod %04o", m), unix.Chmod(f, m)); err != nil {
			return err
		}
		st, err := stat(f)
		if err != nil {
			return err
		}
		if err := wantMode(fmt.Sprintf("after chmod %04o", m), st, unix.S_IFREG|m); err != nil {
			return err
		}
	}
	// Root reads a file nobody may read.
	if err := wantContent(f, []byte("secret")); err != nil {
		return errf("root reading a mode 0000 file: %v", err)
	}
	fd, err := openFd(f, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	err = unix.Fchmod(fd, 0o751)
	unix.Close(fd)
	if err := ok("fchmod 0751", err); err != nil {
		return err
	}
	if st, err := stat(f); err != nil {
		return err
	} else if err := wantMode("after fchmod 0751", st, unix.S_IFREG|0o751); err != nil {
		return err
	}
	// File type bits in the argument are ignored.
	if err := ok("chmod S_IFDIR|0640", unix.Chmod(f, unix.S_IFDIR|0o640)); err != nil {
		return err
	}
	if st, err := stat(f); err != nil {
		return err
	} else if err := wantMode("after chmod with type bits", st, unix.S_IFREG|0o640); err != nil {
		return err
	}

	d := t.P("d")
	if err := ok("mkdir", unix.Mkdir(d, 0o755)); err != nil {
		return err
	}
	if err := ok("chmod dir 0700", unix.Chmod(d, 0o700)); err != nil {
		return err
	}
	if st, err := stat(d); err != nil {
		return err
	} else if err := wantMode("directory after chmod 0700", st, unix.S_IFDIR|0o700); err != nil {
		return err
	}
	if err := ok("chmod dir 01777", unix.Chmod(d, 0o1777)); err != nil {
		return err
	}
	if st, err := stat(d); err != nil {
		return err
	} else if err := wantMode("directory after chmod 01777", st, unix.S_IFDIR|0o1777); err != nil {
		return err
	}

	// chmod follows symlinks; the link keeps its 0777.
	l := t.P("l")
	if err := ok("symlink", unix.Symlink("f", l)); err != nil {
		return err
	}
	if err := ok("chmod through a symlink", unix.Chmod(l, 0o604)); err != nil {
		return err
	}
	if st, err := stat(f); err != nil {
		return err
	} else if err := wantMode("target after chmod through a symlink", st, unix.S_IFREG|0o604); err != nil {
		return err
	}
	if st, err := lstat(l); err != nil {
		return err
	} else if err := wantMode("symlink after chmod through it", st, unix.S_IFLNK|0o777); err != nil {
		return err
	}
	return wantErr("chmod of a missing file", unix.Chmod(t.P("missing"), 0o644), unix.ENOENT)
}

// checkChown: chown to 1234:5678, fchown, partial changes, lchown,
// clearing of setuid/setgid, setgid directory inheritance.
func checkChown(t *T) error {
	f := t.P("f")
	if err := create(f, []byte("x"), 0o755); err != nil {
		return err
	}
	steps := []struct {
		what     string
		do       func() error
		uid, gid uint32
	}{
		{"chown 1234:5678", func() error { return unix.Chown(f, 1234, 5678) }, 1234, 5678},
		{"fchown 4321:8765", func() error {
			fd, err := unix.Open(f, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Fchown(fd, 4321, 8765)
		}, 4321, 8765},
		{"chown -1:42", func() error { return unix.Chown(f, -1, 42) }, 4321, 42},
		{"chown 99:-1", func() error { return unix.Chown(f, 99, -1) }, 99, 42},
		{"chown -1:-1", func() error { return unix.Chown(f, -1, -1) }, 99, 42},
		{"chown 0:0", func() error { return unix.Chown(f, 0, 0) }, 0, 0},
		{"chown 1234:5678 again", func() error { return unix.Chown(f, 1234, 5678) }, 1234, 5678},
	}
	for _, s := range steps {
		if err := ok(s.what, s.do()); err != nil {
			return err
		}
		st, err := stat(f)
		if err != nil {
			return err
		}
		if err := first(wantOwner("after "+s.what, st, s.uid, s.gid), wantMode("after "+s.what, st, unix.S_IFREG|0o755)); err != nil {
			return err
		}
	}

	// lchown changes the link; chown through the link changes the target.
	l := t.P("l")
	if err := ok("symlink", unix.Symlink("f", l)); err != nil {
		return err
	}
	if err := ok("lchown 1111:2222", unix.Lchown(l, 1111, 2222)); err != nil {
		return err
	}
	if st, err := lstat(l); err != nil {
		return err
	} else if err := wantOwner("symlink after lchown", st, 1111, 2222); err != nil {
		return err
	}
	if st, err := stat(f); err != nil {
		return err
	} else if err := wantOwner("target after lchown of the link", st, 1234, 5678); err != nil {
		return err
	}
	if err := ok("chown through the link 7:8", unix.Chown(l, 7, 8)); err != nil {
		return err
	}
	if st, err := stat(f); err != nil {
		return err
	} else if err := wantOwner("target after chown through the link", st, 7, 8); err != nil {
		return err
	}
	if st, err := lstat(l); err != nil {
		return err
	} else if err := wantOwner("symlink after chown through it", st, 1111, 2222); err != nil {
		return err
	}

	// Changing the owner of a regular file clears setuid and setgid
	// (setgid because group execute is set), also for root.
	if err := ok("chmod 06755", unix.Chmod(f, 0o6755)); err != nil {
		return err
	}
	if err := ok("chown 1234:5678", unix.Chown(f, 1234, 5678)); err != nil {
		return err
	}
	if st, err := stat(f); err != nil {
		return err
	} else if err := first(wantOwner("setuid file after chown", st, 1234, 5678), wantMode("setuid/setgid file after chown", st, unix.S_IFREG|0o755)); err != nil {
		return err
	}

	// Directories.
	d := t.P("d")
	if err := ok("mkdir", unix.Mkdir(d, 0o755)); err != nil {
		return err
	}
	if err := ok("chown dir 1234:5678", unix.Chown(d, 1234, 5678)); err != nil {
		return err
	}
	if st, err := stat(d); err != nil {
		return err
	} else if err := wantOwner("directory after chown", st, 1234, 5678); err != nil {
		return err
	}
	// In a setgid directory new files take the directory's group and new
	// directories also the setgid bit.
	if err := ok("chmod dir 02775", unix.Chmod(d, 0o2775)); err != nil {
		return err
	}
	if err := create(d+"/file", nil, 0o644); err != nil {
		return err
	}
	if st, err := stat(d + "/file"); err != nil {
		return err
	} else if err := first(wantOwner("file in a setgid directory", st, uint32(unix.Geteuid()), 5678), wantMode("file in a setgid directory", st, unix.S_IFREG|0o644)); err != nil {
		return err
	}
	if err := ok("mkdir in a setgid directory", unix.Mkdir(d+"/sub", 0o755)); err != nil {
		return err
	}
	if st, err := stat(d + "/sub"); err != nil {
		return err
	} else if err := first(wantOwner("directory in a setgid directory", st, uint32(unix.Geteuid()), 5678), wantMode("directory in a setgid directory", st, unix.S_IFDIR|0o2755)); err != nil {
		return err
	}
	return wantErr("chown of a missing file", unix.Chown(t.P("missing"), 1, 1), unix.ENOENT)
}

// checkUtimensat: explicit nanosecond timestamps (also before 1970 and
// after 2038), UTIME_NOW, UTIME_OMIT, futimens, AT_SYMLINK_NOFOLLOW.
func checkUtimensat(t *T) error {
	f := t.P("f")
	if err := create(f, []byte("x"), 0o644); err != nil {
		return err
	}
	times := func(what string, p string, atime, mtime unix.Timespec) error {
		st, err := lstat(p)
		if err != nil {
			return err
		}
		return first(wantTime(what+": atime", st.Atim, atime), wantTime(what+": mtime", st.Mtim, mtime))
	}
	ts := [2]unix.Timespec{{Sec: 1000000000, Nsec: 123456789}, {Sec: 1500000000, Nsec: 987654321}}
	if err := ok("utimensat", utimensat(f, &ts, 0)); err != nil {
		return err
	}
	if err := times("explicit", f, ts[0], ts[1]); err != nil {
		return err
	}
	for _, c := range []struct {
		what         string
		atime, mtime unix.Timespec
	}{
		{"before 1970", unix.Timespec{Sec: -100000000, Nsec: 5}, unix.Timespec{Sec: -1, Nsec: 999999999}},
		{"after 2038", unix.Timespec{Sec: 4102444800, Nsec: 1}, unix.Timespec{Sec: 4294967296 + 7, Nsec: 999999999}},
		{"epoch", unix.Timespec{}, unix.Timespec{Sec: 0, Nsec: 1}},
	} {
		ts := [2]unix.Timespec{c.atime, c.mtime}
		if err := ok("utimensat "+c.what, utimensat(f, &ts, 0)); err != nil {
			return err
		}
		if err := times(c.what, f, c.atime, c.mtime); err != nil {
			return err
		}
	}
	if err := ok("utimensat", utimensat(f, &ts, 0)); err != nil {
		return err
	}

	// UTIME_OMIT keeps a time; only the other one changes.
	newM := unix.Timespec{Sec: 1600000000, Nsec: 1}
	omit := [2]unix.Timespec{{Nsec: unix.UTIME_OMIT}, newM}
	if err := ok("utimensat(UTIME_OMIT, t)", utimensat(f, &omit, 0)); err != nil {
		return err
	}
	if err := times("atime UTIME_OMIT", f, ts[0], newM); err != nil {
		return err
	}
	newA := unix.Timespec{Sec: 1700000000, Nsec: 2}
	omit = [2]unix.Timespec{newA, {Nsec: unix.UTIME_OMIT}}
	if err := ok("utimensat(t, UTIME_OMIT)", utimensat(f, &omit, 0)); err != nil {
		return err
	}
	if err := times("mtime UTIME_OMIT", f, newA, newM); err != nil {
		return err
	}
	both := [2]unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
	if err := ok("utimensat(UTIME_OMIT, UTIME_OMIT)", utimensat(f, &both, 0)); err != nil {
		return err
	}
	if err := times("both UTIME_OMIT", f, newA, newM); err != nil {
		return err
	}

	// UTIME_NOW takes the current time (of the host, allow for skew).
	near := func(what string, got unix.Timespec, before, after time.Time) error {
		const skew = 10 * time.Minute
		g := time.Unix(got.Sec, got.Nsec)
		if g.Before(before.Add(-skew)) || g.After(after.Add(skew)) {
			return errf("%s %s, want the current time %s (± %s)", what, g.UTC().Format(time.RFC3339Nano), before.UTC().Format(time.RFC3339), skew)
		}
		return nil
	}
	before := time.Now()
	now := [2]unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_NOW}}
	if err := ok("utimensat(UTIME_OMIT, UTIME_NOW)", utimensat(f, &now, 0)); err != nil {
		return err
	}
	after := time.Now()
	st, err := stat(f)
	if err != nil {
		return err
	}
	if err := first(wantTime("UTIME_NOW for mtime: atime", st.Atim, newA), near("mtime after UTIME_NOW", st.Mtim, before, after)); err != nil {
		return err
	}
	if d := time.Unix(st.Mtim.Sec, st.Mtim.Nsec).Sub(after); d > time.Second || d < -time.Second-after.Sub(before) {
		t.Note("host clock differs from the guest's by about %s", d.Round(time.Second))
	}
	if err := ok("utimensat(UTIME_NOW, UTIME_OMIT)", utimensat(f, &[2]unix.Timespec{{Nsec: unix.UTIME_NOW}, {Nsec: unix.UTIME_OMIT}}, 0)); err != nil {
		return err
	}
	st2, err := stat(f)
	if err != nil {
		return err
	}
	if err := first(near("atime after UTIME_NOW", st2.Atim, before, time.Now()), wantTime("UTIME_NOW for atime: mtime", st2.Mtim, st.Mtim)); err != nil {
		return err
	}
	// A NULL times pointer means both now.
	if err := ok("utimensat(NULL)", utimensat(f, &ts, 0)); err != nil {
		return err
	}
	before = time.Now()
	if err := ok("utimensat(NULL)", utimensat(f, nil, 0)); err != nil {
		return err
	}
	if st, err := stat(f); err != nil {
		return err
	} else if err := first(near("atime after utimensat(NULL)", st.Atim, before, time.Now()), near("mtime after utimensat(NULL)", st.Mtim, before, time.Now())); err != nil {
		return err
	}

	// futimens on a descriptor.
	fd, err := openFd(f, unix.O_WRONLY, 0)
	if err != nil {
		return err
	}
	fts := [2]unix.Timespec{{Sec: 1111111111, Nsec: 111111111}, {Sec: 1222222222, Nsec: 222222222}}
	err = futimens(fd, &fts)
	unix.Close(fd)
	if err := ok("futimens", err); err != nil {
		return err
	}
	if err := times("futimens", f, fts[0], fts[1]); err != nil {
		return err
	}

	// AT_SYMLINK_NOFOLLOW sets the link's times, not the target's.
	l := t.P("l")
	if err := ok("symlink", unix.Symlink("f", l)); err != nil {
		return err
	}
	lts := [2]unix.Timespec{{Sec: 1333333333, Nsec: 3}, {Sec: 1444444444, Nsec: 4}}
	if err := ok("utimensat(AT_SYMLINK_NOFOLLOW)", utimensat(l, &lts, unix.AT_SYMLINK_NOFOLLOW)); err != nil {
		return err
	}
	if st, err := lstat(l); err != nil {
		return err
	} else if err := wantTime("symlink mtime", st.Mtim, lts[1]); err != nil {
		return err
	}
	if err := times("target of a symlink set with AT_SYMLINK_NOFOLLOW", f, fts[0], fts[1]); err != nil {
		return err
	}
	// Without it, the target.
	if err := ok("utimensat through a symlink", utimensat(l, &ts, 0)); err != nil {
		return err
	}
	if err := times("target after utimensat through a symlink", f, ts[0], ts[1]); err != nil {
		return err
	}

	// Directories.
	d := t.P("d")
	if err := ok("mkdir", unix.Mkdir(d, 0o755)); err != nil {
		return err
	}
	if err := ok("utimensat dir", utimensat(d, &ts, 0)); err != nil {
		return err
	}
	if err := times("directory", d, ts[0], ts[1]); err != nil {
		return err
	}

	bad := [2]unix.Timespec{{Sec: 1, Nsec: 1000000000}, {Sec: 1}}
	if err := wantErr("utimensat with tv_nsec 1e9", utimensat(f, &bad, 0), unix.EINVAL); err != nil {
		return err
	}
	return wantErr("utimensat of a missing file", utimensat(t.P("missing"), &ts, 0), unix.ENOENT)
}

// checkStatfs: statfs and fstatfs of the share give sane, equal numbers.
func checkStatfs(t *T) error {
	var s unix.Statfs_t
	if err := ok("statfs", unix.Statfs(t.env.mnt, &s)); err != nil {
		return err
	}
	if t.env.mounted && s.Type != unix.FUSE_SUPER_MAGIC {
		return errf("f_type %#x, want FUSE_SUPER_MAGIC %#x", s.Type, unix.FUSE_SUPER_MAGIC)
	}
	switch {
	case s.Blocks == 0:
		return errf("f_blocks 0")
	case s.Bsize <= 0:
		return errf("f_bsize %d", s.Bsize)
	case s.Frsize <= 0:
		return errf("f_frsize %d", s.Frsize)
	case s.Namelen != 255:
		return errf("f_namelen %d, want 255", s.Namelen)
	case s.Bfree > s.Blocks:
		return errf("f_bfree %d > f_blocks %d", s.Bfree, s.Blocks)
	case s.Bavail > s.Bfree:
		return errf("f_bavail %d > f_bfree %d", s.Bavail, s.Bfree)
	case s.Ffree > s.Files:
		return errf("f_ffree %d > f_files %d", s.Ffree, s.Files)
	}
	if err := create(t.P("f"), []byte("x"), 0o644); err != nil {
		return err
	}
	fd, err := openFd(t.P("f"), unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var fs unix.Statfs_t
	if err := ok("fstatfs", unix.Fstatfs(fd, &fs)); err != nil {
		return err
	}
	if fs.Type != s.Type || fs.Bsize != s.Bsize || fs.Blocks != s.Blocks || fs.Namelen != s.Namelen || fs.Frsize != s.Frsize {
		return errf("fstatfs of a file (type %#x bsize %d blocks %d namelen %d) differs from statfs of the mount (type %#x bsize %d blocks %d namelen %d)",
			fs.Type, fs.Bsize, fs.Blocks, fs.Namelen, s.Type, s.Bsize, s.Blocks, s.Namelen)
	}
	t.Note("bsize %d blocks %d bfree %d files %d", s.Bsize, s.Blocks, s.Bfree, s.Files)
	return nil
}
