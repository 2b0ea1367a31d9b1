package main

import (
	"bytes"
	"strings"

	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"
	"golang.org/x/sys/unix"
)

// checkCreate: open(O_CREAT) semantics, the umask, O_EXCL, errnos of
// creation, name length limits and unlink.
func checkCreate(t *T) error {
	p := t.P("f")
	fd, err := openFd(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o666)
	if err != nil {
		return err
	}
	fst, err := fstat(fd)
	unix.Close(fd)
	if err != nil {
		return err
	}
	// 0666 &^ umask 022.
	if err := first(
		wantMode("new file (fstat)", fst, unix.S_IFREG|0o644),
		wantSize("new file", fst, 0),
		wantNlink("new file", fst, 1),
		wantOwner("new file", fst, uint32(unix.Geteuid()), uint32(unix.Getegid())),
	); err != nil {
		return err
	}
	st, err := stat(p)
	if err != nil {
		return err
	}
	if !sameFile(st, fst) || st.Mode != fst.Mode {
		return errf("stat after create: ino %d mode %o, fstat said ino %d mode %o", st.Ino, st.Mode, fst.Ino, fst.Mode)
	}

	_, err = unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o666)
	if err := wantErr("O_CREAT|O_EXCL on an existing file", err, unix.EEXIST); err != nil {
		return err
	}
	// O_CREAT without O_EXCL opens the existing file; its mode stays.
	if err := create(t.P("g"), []byte("keep"), 0o644); err != nil {
		return err
	}
	fd, err = openFd(t.P("g"), unix.O_RDWR|unix.O_CREAT, 0o600)
	if err != nil {
		return err
	}
	unix.Close(fd)
	if st, err := stat(t.P("g")); err != nil {
		return err
	} else if err := first(wantMode("O_CREAT on an existing file", st, unix.S_IFREG|0o644), wantSize("O_CREAT on an existing file", st, 4)); err != nil {
		return err
	}
	if err := wantContent(t.P("g"), []byte("keep")); err != nil {
		return err
	}

	_, err = unix.Open(t.P("missing"), unix.O_RDONLY, 0)
	if err := wantErr("open of a missing file", err, unix.ENOENT); err != nil {
		return err
	}
	_, err = unix.Open(t.P("nodir/f"), unix.O_WRONLY|unix.O_CREAT, 0o644)
	if err := wantErr("create in a missing directory", err, unix.ENOENT); err != nil {
		return err
	}
	_, err = unix.Open(p+"/f", unix.O_WRONLY|unix.O_CREAT, 0o644)
	if err := wantErr("create below a regular file", err, unix.ENOTDIR); err != nil {
		return err
	}

	// A name of 255 bytes is fine, 256 is too long.
	long := t.P(strings.Repeat("n", 255))
	if err := create(long, []byte("x"), 0o644); err != nil {
		return errf("255-byte name: %v", err)
	}
	if _, err := stat(long); err != nil {
		return err
	}
	if err := ok("unlink 255-byte name", unix.Unlink(long)); err != nil {
		return err
	}
	_, err = unix.Open(t.P(strings.Repeat("n", 256)), unix.O_WRONLY|unix.O_CREAT, 0o644)
	if err := wantErr("create with a 256-byte name", err, unix.ENAMETOOLONG); err != nil {
		return err
	}

	// The descriptor returned by a creating open is writable even if
	// the new file's mode does not allow writing.
	ro := t.P("readonly")
	fd, err = openFd(ro, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o400)
	if err != nil {
		return err
	}
	err = writeAll(fd, []byte("written"))
	unix.Close(fd)
	if err != nil {
		return errf("write to a file just created with mode 0400: %v", err)
	}
	if st, err := stat(ro); err != nil {
		return err
	} else if err := first(wantMode("file created with mode 0400", st, unix.S_IFREG|0o400), wantSize("file created with mode 0400", st, 7)); err != nil {
		return err
	}

	if err := ok("unlink", unix.Unlink(p)); err != nil {
		return err
	}
	var st2 unix.Stat_t
	if err := wantErr("stat after unlink", unix.Stat(p, &st2), unix.ENOENT); err != nil {
		return err
	}
	return wantErr("unlink of a missing file", unix.Unlink(p), unix.ENOENT)
}

// checkReadWrite: write, read, pread, pwrite, offsets, EOF and access
// mode errors.
func checkReadWrite(t *T) error {
	p := t.P("rw")
	const size = 1<<20 + 13
	data := guestspec.NamedPattern("read_write", 0, size)
	fd, err := openFd(p, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() { unix.Close(fd) }()
	if err := writeAll(fd, data); err != nil {
		return err
	}
	if err := wantSeek(fd, 0, unix.SEEK_CUR, size); err != nil {
		return errf("file offset after writing: %v", err)
	}
	if st, err := fstat(fd); err != nil {
		return err
	} else if err := wantSize("after write", st, size); err != nil {
		return err
	}
	if err := wantPread("pread of the whole file", fd, 0, data); err != nil {
		return err
	}
	for _, r := range []struct{ off, n int }{{0, 1}, {4095, 2}, {4096, 4096}, {12345, 54321}, {size - 10, 10}} {
		if err := wantPread("pread", fd, int64(r.off), data[r.off:r.off+r.n]); err != nil {
			return err
		}
	}
	// Short read at EOF, empty reads at and past EOF.
	if got, err := pread(fd, 100, size-10); err != nil {
		return err
	} else if err := wantBytes("pread across EOF", got, data[size-10:]); err != nil {
		return err
	}
	buf := make([]byte, 10)
	for _, off := range []int64{size, size + 100} {
		if n, err := unix.Pread(fd, buf, off); err != nil || n != 0 {
			return errf("pread at %d (EOF %d): %d, %s; want 0 bytes", off, size, n, errnoName(err))
		}
	}

	// pwrite does not move the file offset.
	if err := pwriteAll(fd, []byte("HELLO"), 100); err != nil {
		return err
	}
	copy(data[100:], "HELLO")
	if err := wantSeek(fd, 0, unix.SEEK_CUR, size); err != nil {
		return errf("file offset after pwrite: %v", err)
	}
	// Sequential reads from the start.
	if err := wantSeek(fd, 0, unix.SEEK_SET, 0); err != nil {
		return err
	}
	var got []byte
	chunk := make([]byte, 7000)
	for {
		n, err := unix.Read(fd, chunk)
		if err != nil {
			return ok("read", err)
		}
		if n == 0 {
			break
		}
		got = append(got, chunk[:n]...)
	}
	if err := wantBytes("sequential read", got, data); err != nil {
		return err
	}
	if n, err := unix.Read(fd, chunk); n != 0 || err != nil {
		return errf("read at EOF: %d, %s; want 0", n, errnoName(err))
	}

	// A second descriptor sees writes through the first at once.
	fd2, err := openFd(p, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd2)
	if err := pwriteAll(fd, []byte("second"), 500000); err != nil {
		return err
	}
	copy(data[500000:], "second")
	if err := wantPread("read through a second descriptor", fd2, 499998, data[499998:500010]); err != nil {
		return err
	}
	unix.Close(fd)
	fd = -1

	if err := wantContent(p, data); err != nil {
		return errf("after close and reopen: %v", err)
	}

	// Access modes.
	_, err = unix.Write(fd2, []byte("x"))
	if err := wantErr("write to an O_RDONLY descriptor", err, unix.EBADF); err != nil {
		return err
	}
	wfd, err := openFd(p, unix.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = unix.Read(wfd, buf)
	unix.Close(wfd)
	if err := wantErr("read from an O_WRONLY descriptor", err, unix.EBADF); err != nil {
		return err
	}
	dfd, err := openFd(t.dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	_, err = unix.Read(dfd, buf)
	unix.Close(dfd)
	if err := wantErr("read from a directory", err, unix.EISDIR); err != nil {
		return err
	}
	_, err = unix.Open(t.dir, unix.O_WRONLY, 0)
	return wantErr("open a directory O_WRONLY", err, unix.EISDIR)
}

// checkAppend: O_APPEND writes go to the end of the file, whatever the
// offset, also after another descriptor extended the file.
func checkAppend(t *T) error {
	p := t.P("a")
	if err := create(p, []byte("hello"), 0o644); err != nil {
		return err
	}
	fd, err := openFd(p, unix.O_WRONLY|unix.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if _, err := lseek(fd, 0, unix.SEEK_SET); err != nil {
		return ok("lseek", err)
	}
	if err := writeAll(fd, []byte("world")); err != nil {
		return err
	}
	if err := wantSeek(fd, 0, unix.SEEK_CUR, 10); err != nil {
		return errf("offset after an O_APPEND write: %v", err)
	}
	if err := wantContent(p, []byte("helloworld")); err != nil {
		return err
	}
	// On Linux pwrite on an O_APPEND descriptor appends, ignoring the
	// offset.
	if n, err := unix.Pwrite(fd, []byte("!!"), 0); err != nil || n != 2 {
		return errf("pwrite on O_APPEND: %d, %s", n, errnoName(err))
	}
	if err := wantContent(p, []byte("helloworld!!")); err != nil {
		return errf("pwrite(offset 0) on an O_APPEND descriptor: %v", err)
	}
	// Another descriptor extends the file with a gap; the next append
	// lands after that.
	fd2, err := openFd(p, unix.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = pwriteAll(fd2, []byte("XYZ"), 20)
	unix.Close(fd2)
	if err != nil {
		return err
	}
	if err := writeAll(fd, []byte("end")); err != nil {
		return err
	}
	want := []byte("helloworld!!\x00\x00\x00\x00\x00\x00\x00\x00XYZend")
	if err := wantContent(p, want); err != nil {
		return errf("append after another descriptor extended the file: %v", err)
	}
	if err := wantSeek(fd, 0, unix.SEEK_CUR, int64(len(want))); err != nil {
		return err
	}
	// O_RDWR|O_APPEND reads from anywhere.
	rw, err := openFd(p, unix.O_RDWR|unix.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer unix.Close(rw)
	if err := wantPread("pread on O_RDWR|O_APPEND", rw, 5, []byte("world")); err != nil {
		return err
	}
	if err := writeAll(rw, []byte(".")); err != nil {
		return err
	}
	return wantContent(p, append(want, '.'))
}

// checkTruncate: ftruncate and truncate, shrinking and growing (also past
// 4 GiB), zero fill, mtime update and errnos.
func checkTruncate(t *T) error {
	p := t.P("t")
	data := guestspec.NamedPattern("truncate", 0, 10000)
	if err := create(p, data, 0o644); err != nil {
		return err
	}
	old := [2]unix.Timespec{{Sec: 1000000000}, {Sec: 1000000000}}
	if err := ok("utimensat", utimensat(p, &old, 0)); err != nil {
		return err
	}
	fd, err := openFd(p, unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	zeros := func(n int) []byte { return make([]byte, n) }

	if err := ok("ftruncate 100", unix.Ftruncate(fd, 100)); err != nil {
		return err
	}
	st, err := fstat(fd)
	if err != nil {
		return err
	}
	if err := wantSize("ftruncate 100", st, 100); err != nil {
		return err
	}
	// Changing the size updates mtime.
	if st.Mtim.Sec <= old[1].Sec {
		return errf("mtime after ftruncate: %d.%09d, want later than %d", st.Mtim.Sec, st.Mtim.Nsec, old[1].Sec)
	}
	if err := wantContent(p, data[:100]); err != nil {
		return errf("after shrinking: %v", err)
	}
	if err := ok("ftruncate 5000", unix.Ftruncate(fd, 5000)); err != nil {
		return err
	}
	if err := wantContent(p, append(append([]byte{}, data[:100]...), zeros(4900)...)); err != nil {
		return errf("after growing (the cut data must not come back): %v", err)
	}
	if err := ok("truncate 50", unix.Truncate(p, 50)); err != nil {
		return err
	}
	if st, err := stat(p); err != nil {
		return err
	} else if err := wantSize("truncate 50", st, 50); err != nil {
		return err
	}
	if st, err := fstat(fd); err != nil {
		return err
	} else if err := wantSize("fstat after truncate by path", st, 50); err != nil {
		return err
	}
	if err := ok("truncate 70000", unix.Truncate(p, 70000)); err != nil {
		return err
	}
	if err := wantContent(p, append(append([]byte{}, data[:50]...), zeros(70000-50)...)); err != nil {
		return errf("after growing by path: %v", err)
	}
	if err := ok("truncate 4 GiB + 1", unix.Truncate(p, 4<<30+1)); err != nil {
		return err
	}
	if st, err := stat(p); err != nil {
		return err
	} else if err := wantSize("truncate 4 GiB + 1", st, 4<<30+1); err != nil {
		return err
	}
	if err := wantPread("last byte after truncate to 4 GiB + 1", fd, 4<<30-1, []byte{0, 0}); err != nil {
		return err
	}
	if err := wantPread("start after truncate to 4 GiB + 1", fd, 0, data[:50]); err != nil {
		return err
	}
	if err := ok("ftruncate 0", unix.Ftruncate(fd, 0)); err != nil {
		return err
	}
	if err := wantContent(p, []byte{}); err != nil {
		return err
	}

	if err := wantErr("ftruncate -1", unix.Ftruncate(fd, -1), unix.EINVAL); err != nil {
		return err
	}
	if err := wantErr("truncate of a missing file", unix.Truncate(t.P("missing"), 0), unix.ENOENT); err != nil {
		return err
	}
	if err := wantErr("truncate of a directory", unix.Truncate(t.dir, 0), unix.EISDIR); err != nil {
		return err
	}
	rfd, err := openFd(p, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(rfd)
	return wantErr("ftruncate of an O_RDONLY descriptor", unix.Ftruncate(rfd, 0), unix.EINVAL)
}

// checkOTrunc: open(O_TRUNC) empties the file for every descriptor,
// keeps the mode and updates mtime.
func checkOTrunc(t *T) error {
	p := t.P("o")
	data := guestspec.NamedPattern("o_trunc", 0, 5000)
	if err := create(p, data, 0o644); err != nil {
		return err
	}
	if err := ok("chmod", unix.Chmod(p, 0o600)); err != nil {
		return err
	}
	old := [2]unix.Timespec{{Sec: 1000000000}, {Sec: 1000000000}}
	if err := ok("utimensat", utimensat(p, &old, 0)); err != nil {
		return err
	}
	// A reader with the old content cached.
	rfd, err := openFd(p, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(rfd)
	if err := wantPread("before O_TRUNC", rfd, 0, data); err != nil {
		return err
	}

	fd, err := openFd(p, unix.O_WRONLY|unix.O_TRUNC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	st, err := fstat(fd)
	if err != nil {
		return err
	}
	if err := first(wantSize("fstat after O_TRUNC", st, 0), wantMode("after O_TRUNC", st, unix.S_IFREG|0o600)); err != nil {
		return err
	}
	if st.Mtim.Sec <= old[1].Sec {
		return errf("mtime after O_TRUNC: %d.%09d, want later than %d", st.Mtim.Sec, st.Mtim.Nsec, old[1].Sec)
	}
	if st, err := stat(p); err != nil {
		return err
	} else if err := wantSize("stat after O_TRUNC", st, 0); err != nil {
		return err
	}
	if got, err := pread(rfd, 100, 0); err != nil {
		return err
	} else if len(got) != 0 {
		return errf("the other descriptor reads %d bytes after O_TRUNC, want 0", len(got))
	}
	if err := writeAll(fd, []byte("xy")); err != nil {
		return err
	}
	if got, err := pread(rfd, 100, 0); err != nil {
		return err
	} else if err := wantBytes("other descriptor after O_TRUNC and write", got, []byte("xy")); err != nil {
		return err
	}

	// O_CREAT|O_TRUNC on an existing file: truncated, mode unchanged.
	fd3, err := openFd(p, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC, 0o666)
	if err != nil {
		return err
	}
	st, err = fstat(fd3)
	unix.Close(fd3)
	if err != nil {
		return err
	}
	if err := first(wantSize("O_CREAT|O_TRUNC on an existing file", st, 0), wantMode("O_CREAT|O_TRUNC on an existing file", st, unix.S_IFREG|0o600)); err != nil {
		return err
	}
	return wantContent(p, []byte{})
}

// checkSparse5G: a write at 5 GiB makes a sparse file: the size is right,
// holes read as zeros, offsets do not wrap at 32 bits, few blocks are used.
func checkSparse5G(t *T) error {
	p := t.P("sparse")
	const off = 5 << 30
	marker := guestspec.NamedPattern("sparse_5g", off, 4096+17)
	size := int64(off + len(marker))
	fd, err := openFd(p, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() { unix.Close(fd) }()
	if err := pwriteAll(fd, marker, off); err != nil {
		return err
	}
	if st, err := fstat(fd); err != nil {
		return err
	} else if err := wantSize("after pwrite at 5 GiB", st, size); err != nil {
		return err
	}
	if err := wantSeek(fd, 0, unix.SEEK_END, size); err != nil {
		return err
	}
	zero := make([]byte, 64<<10)
	for _, o := range []int64{0, 1<<31 - 32<<10, 4<<30 - 32<<10, off - 64<<10} {
		if err := wantPread("hole", fd, o, zero); err != nil {
			return err
		}
	}
	if err := wantPread("across the start of the data", fd, off-5, append(make([]byte, 5), marker[:5]...)); err != nil {
		return err
	}
	if err := wantPread("data at 5 GiB", fd, off, marker); err != nil {
		return err
	}
	// Writes at the 2 GiB and 4 GiB boundaries stay there.
	for _, w := range []struct {
		off  int64
		data string
	}{{1<<31 - 1, "CD"}, {1<<32 - 1, "AB"}} {
		if err := pwriteAll(fd, []byte(w.data), w.off); err != nil {
			return err
		}
		if err := wantPread("write across a 32-bit boundary", fd, w.off-1, []byte("\x00"+w.data+"\x00")); err != nil {
			return err
		}
	}
	if err := wantPread("start of the file (no 32-bit wrap)", fd, 0, zero); err != nil {
		return err
	}
	unix.Close(fd)
	fd = -1

	st, err := stat(p)
	if err != nil {
		return err
	}
	if err := wantSize("after close", st, size); err != nil {
		return err
	}
	// Three small writes: a few blocks each, far below 1 MiB.
	if st.Blocks > 2048 {
		return errf("st_blocks %d (%d bytes) for 3 small writes in a %d-byte file: not sparse", st.Blocks, st.Blocks*512, size)
	}
	t.Note("st_blocks %d", st.Blocks)

	fd, err = openFd(p, unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := wantPread("data at 5 GiB after reopen", fd, off, marker); err != nil {
		return err
	}
	if err := ok("ftruncate 6 GiB", unix.Ftruncate(fd, 6<<30)); err != nil {
		return err
	}
	if st, err := fstat(fd); err != nil {
		return err
	} else if err := wantSize("ftruncate 6 GiB", st, 6<<30); err != nil {
		return err
	}
	if err := wantPread("after the data, below 6 GiB", fd, size, zero); err != nil {
		return err
	}
	if err := wantPread("data at 5 GiB after growing", fd, off, marker); err != nil {
		return err
	}
	if !bytes.Equal(marker[:2], guestspec.NamedPattern("sparse_5g", off, 2)) {
		return errf("pattern generator is not deterministic")
	}
	return nil
}
