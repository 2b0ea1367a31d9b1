package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// dirNlinkCounts tells whether the file system counts subdirectories in
// a directory's link count (2 + subdirectories), as ext4, xfs and tmpfs
// do; some (btrfs) always report 1.
func dirNlinkCounts(p string) (bool, error) {
	st, err := stat(p)
	if err != nil {
		return false, err
	}
	return st.Nlink >= 2, nil
}

func wantDirNlink(counts bool, p string, want uint64) error {
	if !counts {
		return nil
	}
	st, err := stat(p)
	if err != nil {
		return err
	}
	return wantNlink("directory "+filepath.Base(p), st, want)
}

// checkMkdirRmdir: mkdir modes and errnos, rmdir errnos, link counts.
func checkMkdirRmdir(t *T) error {
	d := t.P("d")
	if err := ok("mkdir", unix.Mkdir(d, 0o777)); err != nil {
		return err
	}
	st, err := stat(d)
	if err != nil {
		return err
	}
	if err := first(wantMode("new directory", st, unix.S_IFDIR|0o755), wantOwner("new directory", st, uint32(unix.Geteuid()), uint32(unix.Getegid()))); err != nil {
		return err
	}
	counts := st.Nlink >= 2
	if counts {
		if err := wantNlink("empty directory", st, 2); err != nil {
			return err
		}
	} else {
		t.Note("the file system reports directory nlink %d: link counts of directories not checked", st.Nlink)
	}
	if err := wantErr("mkdir of an existing directory", unix.Mkdir(d, 0o755), unix.EEXIST); err != nil {
		return err
	}
	if err := wantErr("mkdir in a missing directory", unix.Mkdir(t.P("missing/x"), 0o755), unix.ENOENT); err != nil {
		return err
	}
	if err := create(t.P("file"), nil, 0o644); err != nil {
		return err
	}
	if err := wantErr("mkdir over a file", unix.Mkdir(t.P("file"), 0o755), unix.EEXIST); err != nil {
		return err
	}
	if err := wantErr("mkdir below a file", unix.Mkdir(t.P("file/x"), 0o755), unix.ENOTDIR); err != nil {
		return err
	}
	// Modes: explicit permissions and the sticky bit survive.
	for _, m := range []struct {
		mode, want uint32
	}{{0o700, 0o700}, {0o1777, 0o1755}, {0o555, 0o555}} {
		sub := t.P(fmt.Sprintf("mode-%04o", m.mode))
		if err := ok("mkdir", unix.Mkdir(sub, m.mode)); err != nil {
			return err
		}
		st, err := stat(sub)
		if err != nil {
			return err
		}
		if err := wantMode(fmt.Sprintf("mkdir with mode %04o", m.mode), st, unix.S_IFDIR|m.want); err != nil {
			return err
		}
	}

	// Subdirectories count in the parent's nlink.
	for _, n := range []string{"s1", "s2", "s3"} {
		if err := ok("mkdir", unix.Mkdir(filepath.Join(d, n), 0o755)); err != nil {
			return err
		}
	}
	if err := create(filepath.Join(d, "f"), []byte("x"), 0o644); err != nil {
		return err
	}
	if err := wantDirNlink(counts, d, 5); err != nil {
		return errf("after 3 mkdirs and a file: %v", err)
	}
	if err := wantErr("rmdir of a non-empty directory", unix.Rmdir(d), unix.ENOTEMPTY); err != nil {
		return err
	}
	if err := wantErr("rmdir of a file", unix.Rmdir(filepath.Join(d, "f")), unix.ENOTDIR); err != nil {
		return err
	}
	if err := wantErr("unlink of a directory", unix.Unlink(filepath.Join(d, "s1")), unix.EISDIR); err != nil {
		return err
	}
	if err := wantErr("rmdir of a missing directory", unix.Rmdir(t.P("missing")), unix.ENOENT); err != nil {
		return err
	}
	if err := wantErr(`rmdir of "d/."`, unix.Rmdir(d+"/."), unix.EINVAL); err != nil {
		return err
	}
	if err := ok("unlink", unix.Unlink(filepath.Join(d, "f"))); err != nil {
		return err
	}
	if err := wantErr("rmdir of a directory holding only directories", unix.Rmdir(d), unix.ENOTEMPTY); err != nil {
		return err
	}
	if err := ok("rmdir", unix.Rmdir(filepath.Join(d, "s1"))); err != nil {
		return err
	}
	if err := wantDirNlink(counts, d, 4); err != nil {
		return errf("after rmdir of a subdirectory: %v", err)
	}
	// A deep tree.
	deep := filepath.Join(d, "s2", "a", "b", "c", "d")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		return errf("mkdir -p: %v", err)
	}
	if _, err := stat(deep); err != nil {
		return err
	}
	if err := ok("rmdir", unix.Rmdir(filepath.Join(d, "s3"))); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(d, "s2")); err != nil {
		return errf("rm -r: %v", err)
	}
	if err := wantDirNlink(counts, d, 2); err != nil {
		return err
	}
	if err := ok("rmdir", unix.Rmdir(d)); err != nil {
		return err
	}
	var st2 unix.Stat_t
	if err := wantErr("stat after rmdir", unix.Stat(d, &st2), unix.ENOENT); err != nil {
		return err
	}
	return wantErr("rmdir again", unix.Rmdir(d), unix.ENOENT)
}

// checkRename: rename of files, over existing files, errnos for type
// mismatches, moves between directories.
func checkRename(t *T) error {
	a, b, c := t.P("a"), t.P("b"), t.P("c")
	if err := create(a, []byte("AAA"), 0o644); err != nil {
		return err
	}
	if err := create(c, []byte("CCCCC"), 0o644); err != nil {
		return err
	}
	sta, err := stat(a)
	if err != nil {
		return err
	}
	cfd, err := openFd(c, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(cfd)

	if err := ok("rename a b", unix.Rename(a, b)); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := wantErr("stat of the old name", unix.Lstat(a, &st), unix.ENOENT); err != nil {
		return err
	}
	stb, err := stat(b)
	if err != nil {
		return err
	}
	if !sameFile(sta, stb) {
		return errf("rename changed the inode: %d -> %d", sta.Ino, stb.Ino)
	}
	if err := wantContent(b, []byte("AAA")); err != nil {
		return err
	}

	// Over an existing file: the target is replaced; an open descriptor
	// of the replaced file still reads it, and it has no links.
	if err := ok("rename b c (c exists)", unix.Rename(b, c)); err != nil {
		return err
	}
	stc, err := stat(c)
	if err != nil {
		return err
	}
	if !sameFile(sta, stc) {
		return errf("after rename over c, c is inode %d, want %d", stc.Ino, sta.Ino)
	}
	if err := wantContent(c, []byte("AAA")); err != nil {
		return err
	}
	if err := wantPread("replaced file through an open descriptor", cfd, 0, []byte("CCCCC")); err != nil {
		return err
	}
	if st, err := fstat(cfd); err != nil {
		return err
	} else if err := wantNlink("replaced file (fstat)", st, 0); err != nil {
		return err
	}
	if names, err := readdirNames(t.dir); err != nil {
		return err
	} else if err := wantNames("directory after renames", names, "c"); err != nil {
		return err
	}

	// Renaming a file onto itself does nothing.
	if err := ok("rename c c", unix.Rename(c, c)); err != nil {
		return err
	}
	if err := wantContent(c, []byte("AAA")); err != nil {
		return err
	}
	if err := wantErr("rename of a missing file", unix.Rename(t.P("missing"), t.P("x")), unix.ENOENT); err != nil {
		return err
	}
	if err := wantErr("rename into a missing directory", unix.Rename(c, t.P("missing/x")), unix.ENOENT); err != nil {
		return err
	}

	// Type mismatches.
	dd, de, df := t.P("dd"), t.P("de"), t.P("df")
	for _, d := range []string{dd, de, df} {
		if err := ok("mkdir", unix.Mkdir(d, 0o755)); err != nil {
			return err
		}
	}
	if err := create(filepath.Join(df, "x"), nil, 0o644); err != nil {
		return err
	}
	if err := wantErr("rename a file over a directory", unix.Rename(c, dd), unix.EISDIR); err != nil {
		return err
	}
	if err := wantErr("rename a directory over a file", unix.Rename(dd, c), unix.ENOTDIR); err != nil {
		return err
	}
	if err := wantErr("rename a directory over a non-empty directory", unix.Rename(dd, df), unix.ENOTEMPTY); err != nil {
		return err
	}
	if err := wantErr("rename a directory below itself", unix.Rename(dd, filepath.Join(dd, "sub")), unix.EINVAL); err != nil {
		return err
	}
	if err := ok("rename a directory over an empty directory", unix.Rename(dd, de)); err != nil {
		return err
	}
	if err := wantErr("stat of the renamed directory's old name", unix.Lstat(dd, &st), unix.ENOENT); err != nil {
		return err
	}

	// Between directories.
	if err := ok("rename c df/moved", unix.Rename(c, filepath.Join(df, "moved"))); err != nil {
		return err
	}
	if err := wantContent(filepath.Join(df, "moved"), []byte("AAA")); err != nil {
		return err
	}
	if names, err := readdirNames(df); err != nil {
		return err
	} else if err := wantNames("target directory", names, "moved", "x"); err != nil {
		return err
	}
	if names, err := readdirNames(t.dir); err != nil {
		return err
	} else if err := wantNames("source directory", names, "de", "df"); err != nil {
		return err
	}
	return nil
}

// checkRenameDir: renaming directories with content, within and across
// parents; "..", link counts and open directory descriptors follow.
func checkRenameDir(t *T) error {
	src, p1, p2 := t.P("src"), t.P("p1"), t.P("p2")
	for _, d := range []string{src, src + "/sub", p1, p2} {
		if err := ok("mkdir", unix.Mkdir(d, 0o755)); err != nil {
			return err
		}
	}
	if err := create(src+"/sub/f", []byte("data"), 0o644); err != nil {
		return err
	}
	counts, err := dirNlinkCounts(p1)
	if err != nil {
		return err
	}
	stSrc, err := stat(src)
	if err != nil {
		return err
	}
	dfd, err := openFd(src, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)

	moved := filepath.Join(p1, "moved")
	if err := ok("rename src p1/moved", unix.Rename(src, moved)); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := wantErr("stat of the old name", unix.Stat(src, &st), unix.ENOENT); err != nil {
		return err
	}
	stMoved, err := stat(moved)
	if err != nil {
		return err
	}
	if !sameFile(stSrc, stMoved) {
		return errf("renamed directory has inode %d, want %d", stMoved.Ino, stSrc.Ino)
	}
	if err := wantContent(moved+"/sub/f", []byte("data")); err != nil {
		return err
	}
	stDotDot, err := stat(moved + "/..")
	if err != nil {
		return err
	}
	stP1, err := stat(p1)
	if err != nil {
		return err
	}
	if !sameFile(stDotDot, stP1) {
		return errf(`"moved/.." is inode %d, want the new parent %d`, stDotDot.Ino, stP1.Ino)
	}
	if err := wantDirNlink(counts, p1, 3); err != nil {
		return errf("new parent: %v", err)
	}
	if err := wantDirNlink(counts, t.dir, 4); err != nil {
		return errf("old parent (p1, p2 and the check directory's own links): %v", err)
	}

	// Move on to another parent and rename within it; the descriptor
	// opened before still works.
	final := filepath.Join(p2, "final")
	if err := ok("rename p1/moved p2/final", unix.Rename(moved, final)); err != nil {
		return err
	}
	fd, err := unix.Openat(dfd, "sub/f", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return ok("openat through a descriptor of the renamed directory", err)
	}
	err = wantPread("file below the renamed directory", fd, 0, []byte("data"))
	unix.Close(fd)
	if err != nil {
		return err
	}
	if err := create(final+"/new", []byte("n"), 0o644); err != nil {
		return err
	}
	if names, err := readdirNames(final); err != nil {
		return err
	} else if err := wantNames("renamed directory", names, "new", "sub"); err != nil {
		return err
	}
	if names, err := readdirNames(p1); err != nil {
		return err
	} else if err := wantNames("first parent", names); err != nil {
		return err
	}
	if err := wantDirNlink(counts, p1, 2); err != nil {
		return err
	}
	return wantDirNlink(counts, p2, 3)
}

// checkRenameExchange: renameat2(RENAME_EXCHANGE) swaps two names
// atomically, also a file with a directory.
func checkRenameExchange(t *T) error {
	a, b := t.P("a"), t.P("b")
	if err := create(a, []byte("AAAA"), 0o644); err != nil {
		return err
	}
	if err := create(b, []byte("BB"), 0o600); err != nil {
		return err
	}
	sta, err := stat(a)
	if err != nil {
		return err
	}
	stb, err := stat(b)
	if err != nil {
		return err
	}
	err = renameat2(a, b, unix.RENAME_EXCHANGE)
	if err == unix.EINVAL {
		return errf("renameat2(RENAME_EXCHANGE): EINVAL: flag not supported by the file system (FUSE_RENAME2)")
	}
	if err := ok("renameat2(a, b, RENAME_EXCHANGE)", err); err != nil {
		return err
	}
	if err := wantContent(a, []byte("BB")); err != nil {
		return err
	}
	if err := wantContent(b, []byte("AAAA")); err != nil {
		return err
	}
	sta2, err := stat(a)
	if err != nil {
		return err
	}
	stb2, err := stat(b)
	if err != nil {
		return err
	}
	if !sameFile(sta2, stb) || !sameFile(stb2, sta) {
		return errf("inodes after exchange: a=%d b=%d, want a=%d b=%d", sta2.Ino, stb2.Ino, stb.Ino, sta.Ino)
	}
	if err := first(wantMode("a after exchange", sta2, unix.S_IFREG|0o600), wantMode("b after exchange", stb2, unix.S_IFREG|0o644)); err != nil {
		return err
	}

	// A file with a directory, across directories.
	d := t.P("d")
	if err := ok("mkdir", unix.Mkdir(d, 0o755)); err != nil {
		return err
	}
	if err := create(d+"/inside", []byte("i"), 0o644); err != nil {
		return err
	}
	if err := ok("renameat2(a, d, RENAME_EXCHANGE)", renameat2(a, d, unix.RENAME_EXCHANGE)); err != nil {
		return err
	}
	if err := wantContent(a+"/inside", []byte("i")); err != nil {
		return errf("a is now the directory: %v", err)
	}
	if err := wantContent(d, []byte("BB")); err != nil {
		return errf("d is now the file: %v", err)
	}
	other := t.P("other")
	if err := ok("mkdir", unix.Mkdir(other, 0o755)); err != nil {
		return err
	}
	if err := create(other+"/y", []byte("yyy"), 0o644); err != nil {
		return err
	}
	if err := ok("renameat2(b, other/y, RENAME_EXCHANGE)", renameat2(b, other+"/y", unix.RENAME_EXCHANGE)); err != nil {
		return err
	}
	if err := wantContent(b, []byte("yyy")); err != nil {
		return err
	}
	if err := wantContent(other+"/y", []byte("AAAA")); err != nil {
		return err
	}
	if err := wantErr("RENAME_EXCHANGE with a missing target", renameat2(b, t.P("missing"), unix.RENAME_EXCHANGE), unix.ENOENT); err != nil {
		return err
	}
	if err := wantErr("RENAME_EXCHANGE|RENAME_NOREPLACE", renameat2(b, d, unix.RENAME_EXCHANGE|unix.RENAME_NOREPLACE), unix.EINVAL); err != nil {
		return err
	}
	if names, err := readdirNames(t.dir); err != nil {
		return err
	} else if err := wantNames("directory after exchanges", names, "a", "b", "d", "other"); err != nil {
		return err
	}
	return nil
}

// checkRenameNoreplace: renameat2(RENAME_NOREPLACE) fails with EEXIST on
// an existing target and leaves both alone; otherwise it renames.
func checkRenameNoreplace(t *T) error {
	a, b, c := t.P("a"), t.P("b"), t.P("c")
	if err := create(a, []byte("A"), 0o644); err != nil {
		return err
	}
	if err := create(b, []byte("B"), 0o644); err != nil {
		return err
	}
	if err := wantErr("renameat2(a, b, RENAME_NOREPLACE) with b existing", renameat2(a, b, unix.RENAME_NOREPLACE), unix.EEXIST); err != nil {
		return err
	}
	if err := wantContent(a, []byte("A")); err != nil {
		return err
	}
	if err := wantContent(b, []byte("B")); err != nil {
		return err
	}
	d := t.P("d")
	if err := ok("mkdir", unix.Mkdir(d, 0o755)); err != nil {
		return err
	}
	if err := wantErr("RENAME_NOREPLACE onto a directory", renameat2(a, d, unix.RENAME_NOREPLACE), unix.EEXIST); err != nil {
		return err
	}
	err := renameat2(a, c, unix.RENAME_NOREPLACE)
	if err == unix.EINVAL {
		return errf("renameat2(RENAME_NOREPLACE): EINVAL: flag not supported by the file system (FUSE_RENAME2)")
	}
	if err := ok("renameat2(a, c, RENAME_NOREPLACE) with c missing", err); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := wantErr("stat of the old name", unix.Lstat(a, &st), unix.ENOENT); err != nil {
		return err
	}
	if err := wantContent(c, []byte("A")); err != nil {
		return err
	}
	if err := ok("renameat2(d, d2, RENAME_NOREPLACE)", renameat2(d, t.P("d2"), unix.RENAME_NOREPLACE)); err != nil {
		return err
	}
	if names, err := readdirNames(t.dir); err != nil {
		return err
	} else if err := wantNames("directory", names, "b", "c", "d2"); err != nil {
		return err
	}
	return nil
}

// checkHardlink: link counts, shared content and attributes, errnos,
// rename between two links of one inode, unlink.
func checkHardlink(t *T) error {
	a, b := t.P("a"), t.P("b")
	sub := t.P("sub")
	c := sub + "/c"
	if err := create(a, []byte("hello"), 0o644); err != nil {
		return err
	}
	if err := ok("mkdir", unix.Mkdir(sub, 0o755)); err != nil {
		return err
	}
	if err := ok("link a b", unix.Link(a, b)); err != nil {
		return err
	}
	sta, err := stat(a)
	if err != nil {
		return err
	}
	stb, err := stat(b)
	if err != nil {
		return err
	}
	if err := first(wantNlink("a", sta, 2), wantNlink("b", stb, 2)); err != nil {
		return err
	}
	if !sameFile(sta, stb) {
		return errf("a and b are inodes %d and %d, want one", sta.Ino, stb.Ino)
	}
	// Writing through one name shows through the other.
	fd, err := openFd(b, unix.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = pwriteAll(fd, []byte("HELLO"), 0)
	unix.Close(fd)
	if err != nil {
		return err
	}
	if err := wantContent(a, []byte("HELLO")); err != nil {
		return err
	}
	if err := ok("link a sub/c", unix.Link(a, c)); err != nil {
		return err
	}
	for _, p := range []string{a, b, c} {
		st, err := stat(p)
		if err != nil {
			return err
		}
		if err := wantNlink(filepath.Base(p)+" after a third link", st, 3); err != nil {
			return err
		}
	}
	// Attributes are shared.
	if err := ok("chmod a", unix.Chmod(a, 0o600)); err != nil {
		return err
	}
	if st, err := stat(c); err != nil {
		return err
	} else if err := wantMode("sub/c after chmod of a", st, unix.S_IFREG|0o600); err != nil {
		return err
	}

	if err := wantErr("link onto an existing name", unix.Link(a, b), unix.EEXIST); err != nil {
		return err
	}
	if err := wantErr("link of a missing file", unix.Link(t.P("missing"), t.P("x")), unix.ENOENT); err != nil {
		return err
	}
	if err := wantErr("link of a directory", unix.Link(sub, t.P("dirlink")), unix.EPERM); err != nil {
		return err
	}
	// rename between two names of one inode succeeds and does nothing.
	if err := ok("rename a b (same inode)", unix.Rename(a, b)); err != nil {
		return err
	}
	if names, err := readdirNames(t.dir); err != nil {
		return err
	} else if err := wantNames("after rename between links of one inode", names, "a", "b", "sub"); err != nil {
		return err
	}

	bfd, err := openFd(b, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(bfd)
	if err := ok("unlink a", unix.Unlink(a)); err != nil {
		return err
	}
	if st, err := stat(b); err != nil {
		return err
	} else if err := wantNlink("b after unlink a", st, 2); err != nil {
		return err
	}
	if err := ok("unlink sub/c", unix.Unlink(c)); err != nil {
		return err
	}
	if st, err := fstat(bfd); err != nil {
		return err
	} else if err := wantNlink("b (fstat) after unlinking the other names", st, 1); err != nil {
		return err
	}
	return wantContent(b, []byte("HELLO"))
}

// checkSymlink: symlink, readlink, lstat, following, loops, errnos.
func checkSymlink(t *T) error {
	l := t.P("l")
	const target = "target-file"
	if err := ok("symlink", unix.Symlink(target, l)); err != nil {
		return err
	}
	if got, err := os.Readlink(l); err != nil {
		return ok("readlink", err)
	} else if got != target {
		return errf("readlink: %q, want %q", got, target)
	}
	st, err := lstat(l)
	if err != nil {
		return err
	}
	if err := first(wantMode("lstat of a symlink", st, unix.S_IFLNK|0o777), wantSize("lstat of a symlink", st, int64(len(target))), wantNlink("symlink", st, 1)); err != nil {
		return err
	}
	if err := wantErr("stat of a dangling symlink", unix.Stat(l, &st), unix.ENOENT); err != nil {
		return err
	}
	if err := create(t.P(target), []byte("T"), 0o640); err != nil {
		return err
	}
	if st, err := stat(l); err != nil {
		return err
	} else if err := first(wantMode("stat through a symlink", st, unix.S_IFREG|0o640), wantSize("stat through a symlink", st, 1)); err != nil {
		return err
	}
	if err := wantContent(l, []byte("T")); err != nil {
		return err
	}
	if err := wantErr("symlink onto an existing name", unix.Symlink("x", l), unix.EEXIST); err != nil {
		return err
	}
	buf := make([]byte, 100)
	_, err = unix.Readlink(t.P(target), buf)
	if err := wantErr("readlink of a regular file", err, unix.EINVAL); err != nil {
		return err
	}
	_, err = unix.Readlink(t.P("missing"), buf)
	if err := wantErr("readlink of a missing name", err, unix.ENOENT); err != nil {
		return err
	}
	_, err = unix.Open(l, unix.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err := wantErr("open(O_NOFOLLOW) of a symlink", err, unix.ELOOP); err != nil {
		return err
	}

	// Long and absolute targets are stored verbatim.
	long := strings.Repeat("long/", 200) + "end"
	abs := "/absolute/target with space"
	for _, tg := range []string{long, abs, "../../x", "a//b/./c/"} {
		p := t.P(fmt.Sprintf("t%d", len(tg)))
		if err := ok("symlink", unix.Symlink(tg, p)); err != nil {
			return err
		}
		if got, err := os.Readlink(p); err != nil {
			return ok("readlink", err)
		} else if got != tg {
			return errf("readlink: %q, want %q", got, tg)
		}
		if st, err := lstat(p); err != nil {
			return err
		} else if err := wantSize("symlink to "+tg, st, int64(len(tg))); err != nil {
			return err
		}
	}

	// Loops.
	if err := first(ok("symlink", unix.Symlink("loop2", t.P("loop1"))), ok("symlink", unix.Symlink("loop1", t.P("loop2")))); err != nil {
		return err
	}
	if err := wantErr("stat of a symlink loop", unix.Stat(t.P("loop1"), &st), unix.ELOOP); err != nil {
		return err
	}

	// A symlink to a directory is followed in the middle of a path.
	if err := ok("mkdir", unix.Mkdir(t.P("dir"), 0o755)); err != nil {
		return err
	}
	if err := create(t.P("dir/inner"), []byte("inner"), 0o644); err != nil {
		return err
	}
	if err := ok("symlink", unix.Symlink("dir", t.P("dirlink"))); err != nil {
		return err
	}
	if err := wantContent(t.P("dirlink/inner"), []byte("inner")); err != nil {
		return err
	}
	// unlink removes the link, not the target.
	if err := ok("unlink symlink", unix.Unlink(l)); err != nil {
		return err
	}
	if err := wantContent(t.P(target), []byte("T")); err != nil {
		return err
	}
	return wantErr("lstat of the removed symlink", unix.Lstat(l, &st), unix.ENOENT)
}

// checkMkfifo: mkfifo and mknod make special files of the right type;
// a FIFO on the share works as a pipe.
func checkMkfifo(t *T) error {
	p := t.P("fifo")
	if err := ok("mkfifo", unix.Mkfifo(p, 0o666)); err != nil {
		return err
	}
	st, err := lstat(p)
	if err != nil {
		return err
	}
	if err := first(wantMode("fifo", st, unix.S_IFIFO|0o644), wantSize("fifo", st, 0)); err != nil {
		return err
	}
	if err := wantErr("mkfifo of an existing name", unix.Mkfifo(p, 0o644), unix.EEXIST); err != nil {
		return err
	}
	r, err := openFd(p, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer unix.Close(r)
	w, err := openFd(p, unix.O_WRONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	if err := writeAll(w, []byte("ping")); err != nil {
		unix.Close(w)
		return err
	}
	unix.Close(w)
	buf := make([]byte, 10)
	n, err := unix.Read(r, buf)
	if err != nil || string(buf[:n]) != "ping" {
		return errf("read from the fifo: %q, %s; want \"ping\"", buf[:n], errnoName(err))
	}
	if n, err := unix.Read(r, buf); n != 0 || err != nil {
		return errf("read from the fifo after the writer closed: %d, %s; want EOF", n, errnoName(err))
	}
	// Nothing of the pipe's data went to the file system.
	if st, err := lstat(p); err != nil {
		return err
	} else if err := wantMode("fifo after use", st, unix.S_IFIFO|0o644); err != nil {
		return err
	}

	// mknod of a FIFO and of a regular file.
	if err := ok("mknod S_IFIFO", unix.Mknod(t.P("fifo2"), unix.S_IFIFO|0o600, 0)); err != nil {
		return err
	}
	if st, err := lstat(t.P("fifo2")); err != nil {
		return err
	} else if err := wantMode("mknod S_IFIFO|0600", st, unix.S_IFIFO|0o600); err != nil {
		return err
	}
	if err := ok("mknod S_IFREG", unix.Mknod(t.P("reg"), unix.S_IFREG|0o666, 0)); err != nil {
		return err
	}
	if st, err := lstat(t.P("reg")); err != nil {
		return err
	} else if err := first(wantMode("mknod S_IFREG|0666", st, unix.S_IFREG|0o644), wantSize("mknod S_IFREG", st, 0)); err != nil {
		return err
	}
	ents, err := os.ReadDir(t.dir)
	if err != nil {
		return ok("readdir", err)
	}
	var types []string
	for _, e := range ents { // sorted by name
		types = append(types, e.Name()+":"+e.Type().String())
	}
	if want := "fifo:p---------,fifo2:p---------,reg:----------"; strings.Join(types, ",") != want {
		return errf("readdir types %s, want %s", strings.Join(types, ","), want)
	}
	if err := ok("unlink fifo", unix.Unlink(p)); err != nil {
		return err
	}
	return wantErr("lstat of the removed fifo", unix.Lstat(p, &st), unix.ENOENT)
}

// checkReaddirLarge: getdents64 over many entries returns each exactly
// once, with types and inode numbers, with small and large buffers and
// after rewinding.
func checkReaddirLarge(t *T) error {
	n := t.env.readdirCount
	if n < 1 {
		return skipf("-readdir-count %d", n)
	}
	d := t.P("many")
	if err := ok("mkdir", unix.Mkdir(d, 0o755)); err != nil {
		return err
	}
	// Names of varying length, one of the maximum 255 bytes.
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("entry-%05d-%s", i, strings.Repeat("x", i%41))
	}
	names[n-1] = fmt.Sprintf("%05d-", n-1) + strings.Repeat("L", 249)
	want := make(map[string]bool, n+2)
	for _, name := range names {
		fd, err := unix.Open(filepath.Join(d, name), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return errf("create %s: %s", name, errnoName(err))
		}
		unix.Close(fd)
		want[name] = true
	}

	fd, err := openFd(d, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var first []dirent
	for pass, bufSize := range []int{4096, 64 << 10} {
		if _, err := lseek(fd, 0, unix.SEEK_SET); err != nil {
			return ok("rewind directory", err)
		}
		ents, err := getdents(fd, bufSize)
		if err != nil {
			return err
		}
		if err := compareDirents(ents, want, d); err != nil {
			return errf("pass %d (buffer %d): %v", pass+1, bufSize, err)
		}
		if pass == 0 {
			first = ents
		}
	}
	// Inode numbers in the entries are those stat reports.
	for i := 0; i < len(first); i += max(1, len(first)/20) {
		e := first[i]
		if e.name == "." || e.name == ".." {
			continue
		}
		st, err := lstat(filepath.Join(d, e.name))
		if err != nil {
			return err
		}
		if st.Ino != e.ino {
			return errf("%s: d_ino %d, st_ino %d", e.name, e.ino, st.Ino)
		}
	}
	if list, err := readdirNames(d); err != nil {
		return err
	} else if len(list) != n {
		return errf("os.ReadDir: %d entries, want %d", len(list), n)
	}

	for _, name := range names {
		if err := unix.Unlink(filepath.Join(d, name)); err != nil {
			return errf("unlink %s: %s", name, errnoName(err))
		}
	}
	if _, err := lseek(fd, 0, unix.SEEK_SET); err != nil {
		return ok("rewind directory", err)
	}
	ents, err := getdents(fd, 4096)
	if err != nil {
		return err
	}
	if err := compareDirents(ents, map[string]bool{}, d); err != nil {
		return errf("after removing all entries: %v", err)
	}
	t.Note("%d entries", n)
	return ok("rmdir", unix.Rmdir(d))
}

// compareDirents checks that ents is want plus "." and "..", each once,
// with the right d_type.
func compareDirents(ents []dirent, want map[string]bool, dir string) error {
	seen := make(map[string]int, len(ents))
	for _, e := range ents {
		seen[e.name]++
		if seen[e.name] > 1 {
			return fmt.Errorf("entry %q returned twice", e.name)
		}
		wantType := uint8(unix.DT_REG)
		if e.name == "." || e.name == ".." {
			wantType = unix.DT_DIR
		} else if !want[e.name] {
			return fmt.Errorf("unexpected entry %q", e.name)
		}
		if e.typ != wantType {
			return fmt.Errorf("entry %q: d_type %d, want %d", e.name, e.typ, wantType)
		}
	}
	for _, special := range []string{".", ".."} {
		if seen[special] != 1 {
			return fmt.Errorf("entry %q missing", special)
		}
	}
	if len(ents) != len(want)+2 {
		var missing []string
		for name := range want {
			if seen[name] == 0 {
				missing = append(missing, name)
			}
		}
		sort.Strings(missing)
		if len(missing) > 5 {
			missing = append(missing[:5], "...")
		}
		return fmt.Errorf("%d entries, want %d; missing %q", len(ents), len(want)+2, missing)
	}
	return nil
}
