package main

import (
	"bytes"

	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"
	"golang.org/x/sys/unix"
)

// checkFallocate: fallocate modes 0, KEEP_SIZE and PUNCH_HOLE|KEEP_SIZE:
// sizes, contents and block counts; errnos of invalid calls.
func checkFallocate(t *T) error {
	p := t.P("f")
	head := guestspec.NamedPattern("fallocate", 0, 100)
	if err := create(p, head, 0o644); err != nil {
		return err
	}
	fd, err := openFd(p, unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)

	// Mode 0 extends the file with zeros and allocates.
	err = unix.Fallocate(fd, 0, 0, 8192)
	if err == unix.EOPNOTSUPP {
		return errf("fallocate(0, 0, 8192): EOPNOTSUPP: not supported by the file system (FUSE_FALLOCATE)")
	}
	if err := ok("fallocate(0, 0, 8192)", err); err != nil {
		return err
	}
	st, err := fstat(fd)
	if err != nil {
		return err
	}
	if err := wantSize("after fallocate mode 0", st, 8192); err != nil {
		return err
	}
	if st.Blocks < 8192/512 {
		return errf("after fallocate mode 0 of 8192 bytes: st_blocks %d, want at least 16", st.Blocks)
	}
	if err := wantContent(p, append(append([]byte{}, head...), make([]byte, 8192-100)...)); err != nil {
		return errf("after fallocate mode 0: %v", err)
	}

	// KEEP_SIZE allocates past EOF without changing the size.
	if err := ok("fallocate(KEEP_SIZE, 8192, 65536)", unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, 8192, 65536)); err != nil {
		return err
	}
	st, err = fstat(fd)
	if err != nil {
		return err
	}
	if err := wantSize("after fallocate KEEP_SIZE", st, 8192); err != nil {
		return err
	}
	if st.Blocks < (8192+65536)/512 {
		return errf("after fallocate KEEP_SIZE up to 73728 bytes: st_blocks %d, want at least %d", st.Blocks, (8192+65536)/512)
	}
	if got, err := pread(fd, 10, 8192); err != nil {
		return err
	} else if len(got) != 0 {
		return errf("read at EOF after KEEP_SIZE allocation: %d bytes, want 0", len(got))
	}

	// Mode 0 beyond 4 GiB.
	big := t.P("big")
	bfd, err := openFd(big, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer unix.Close(bfd)
	if err := ok("fallocate(0, 4 GiB, 4096)", unix.Fallocate(bfd, 0, 4<<30, 4096)); err != nil {
		return err
	}
	if st, err := fstat(bfd); err != nil {
		return err
	} else if err := wantSize("after fallocate at 4 GiB", st, 4<<30+4096); err != nil {
		return err
	}
	if err := wantPread("allocated range at 4 GiB", bfd, 4<<30, make([]byte, 4096)); err != nil {
		return err
	}

	// PUNCH_HOLE|KEEP_SIZE frees blocks and reads back zeros.
	h := t.P("punch")
	data := guestspec.NamedPattern("punch", 0, 65536)
	if err := create(h, data, 0o644); err != nil {
		return err
	}
	hfd, err := openFd(h, unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer unix.Close(hfd)
	if err := ok("fsync", unix.Fsync(hfd)); err != nil {
		return err
	}
	before, err := fstat(hfd)
	if err != nil {
		return err
	}
	err = unix.Fallocate(hfd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4096, 8192)
	if err := ok("fallocate(PUNCH_HOLE|KEEP_SIZE, 4096, 8192)", err); err != nil {
		return err
	}
	after, err := fstat(hfd)
	if err != nil {
		return err
	}
	if err := wantSize("after punching a hole", after, 65536); err != nil {
		return err
	}
	if after.Blocks > before.Blocks-8192/512 {
		return errf("st_blocks %d after punching 8192 bytes, was %d: want at most %d", after.Blocks, before.Blocks, before.Blocks-16)
	}
	want := append([]byte{}, data...)
	clear(want[4096 : 4096+8192])
	if err := wantContent(h, want); err != nil {
		return errf("after punching a hole: %v", err)
	}
	// An unaligned punch zeroes exactly the range.
	if err := ok("fallocate(PUNCH_HOLE|KEEP_SIZE, 100, 50)", unix.Fallocate(hfd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 100, 50)); err != nil {
		return err
	}
	clear(want[100:150])
	if err := wantContent(h, want); err != nil {
		return errf("after punching an unaligned hole: %v", err)
	}

	if err := wantErr("fallocate(PUNCH_HOLE) without KEEP_SIZE", unix.Fallocate(hfd, unix.FALLOC_FL_PUNCH_HOLE, 0, 4096), unix.EOPNOTSUPP); err != nil {
		return err
	}
	if err := wantErr("fallocate with length 0", unix.Fallocate(hfd, 0, 0, 0), unix.EINVAL); err != nil {
		return err
	}
	if err := wantErr("fallocate with a negative offset", unix.Fallocate(hfd, 0, -1, 10), unix.EINVAL); err != nil {
		return err
	}
	rfd, err := openFd(h, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(rfd)
	return wantErr("fallocate on an O_RDONLY descriptor", unix.Fallocate(rfd, 0, 0, 4096), unix.EBADF)
}

// checkLseekDataHole: SEEK_DATA and SEEK_HOLE find the data and holes of
// sparse files (also beyond 4 GiB), and ENXIO at and past EOF.
func checkLseekDataHole(t *T) error {
	const mib = 1 << 20
	p := t.P("holes")
	fd, err := openFd(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	err = first(
		pwriteAll(fd, guestspec.NamedPattern("lseek", 0, 4096), 0),
		pwriteAll(fd, guestspec.NamedPattern("lseek", mib, 4096), mib),
		ok("ftruncate 2 MiB", unix.Ftruncate(fd, 2*mib)),
	)
	unix.Close(fd)
	if err != nil {
		return err
	}
	// Reopen: dirty data is written back on close.
	fd, err = openFd(p, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if _, err := lseek(fd, 0, unix.SEEK_HOLE); err == unix.EINVAL {
		return errf("lseek(SEEK_HOLE): EINVAL: not supported")
	}
	for _, c := range []struct {
		off    int64
		whence int
		want   int64
	}{
		{0, unix.SEEK_DATA, 0},
		{0, unix.SEEK_HOLE, 4096},
		{100, unix.SEEK_HOLE, 4096},
		{4096, unix.SEEK_DATA, mib},
		{5000, unix.SEEK_DATA, mib},
		{mib, unix.SEEK_HOLE, mib + 4096},
		{mib + 100, unix.SEEK_DATA, mib + 100},
		{mib + mib/2, unix.SEEK_HOLE, mib + mib/2},
		{2*mib - 1, unix.SEEK_HOLE, 2*mib - 1},
	} {
		if err := wantSeek(fd, c.off, c.whence, c.want); err != nil {
			return errf("data [0,4K) and [1M,1M+4K), size 2M: %v", err)
		}
		if err := wantSeek(fd, 0, unix.SEEK_CUR, c.want); err != nil {
			return errf("file offset after SEEK_DATA/SEEK_HOLE: %v", err)
		}
	}
	for _, c := range []struct {
		off    int64
		whence int
	}{
		{mib + 4096, unix.SEEK_DATA},
		{2 * mib, unix.SEEK_DATA},
		{2 * mib, unix.SEEK_HOLE},
		{3 * mib, unix.SEEK_DATA},
		{3 * mib, unix.SEEK_HOLE},
	} {
		if err := wantSeekErr(fd, c.off, c.whence, unix.ENXIO); err != nil {
			return errf("data [0,4K) and [1M,1M+4K), size 2M: %v", err)
		}
	}

	// Data beyond 4 GiB.
	big := t.P("big")
	fd2, err := openFd(big, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	err = pwriteAll(fd2, guestspec.NamedPattern("lseek-big", 5<<30, 4096), 5<<30)
	unix.Close(fd2)
	if err != nil {
		return err
	}
	fd2, err = openFd(big, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd2)
	if err := first(
		wantSeek(fd2, 0, unix.SEEK_DATA, 5<<30),
		wantSeek(fd2, 0, unix.SEEK_HOLE, 0),
		wantSeek(fd2, 5<<30, unix.SEEK_HOLE, 5<<30+4096),
		wantSeek(fd2, 4<<30+1, unix.SEEK_DATA, 5<<30),
	); err != nil {
		return errf("data only at [5G, 5G+4K): %v", err)
	}

	// A file without holes.
	dense := t.P("dense")
	if err := create(dense, guestspec.NamedPattern("dense", 0, 10000), 0o644); err != nil {
		return err
	}
	fd3, err := openFd(dense, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd3)
	if err := first(
		wantSeek(fd3, 0, unix.SEEK_HOLE, 10000),
		wantSeek(fd3, 9999, unix.SEEK_DATA, 9999),
		wantSeekErr(fd3, 10000, unix.SEEK_DATA, unix.ENXIO),
	); err != nil {
		return errf("10000 bytes without holes: %v", err)
	}

	// An empty file has neither.
	empty := t.P("empty")
	if err := create(empty, nil, 0o644); err != nil {
		return err
	}
	fd4, err := openFd(empty, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd4)
	if err := first(wantSeekErr(fd4, 0, unix.SEEK_DATA, unix.ENXIO), wantSeekErr(fd4, 0, unix.SEEK_HOLE, unix.ENXIO)); err != nil {
		return errf("empty file: %v", err)
	}
	return nil
}

// checkCopyFileRange: copy_file_range copies exactly, with explicit
// offsets or the file offsets, and rejects invalid calls.
func checkCopyFileRange(t *T) error {
	const size = 1<<20 + 13
	data := guestspec.NamedPattern("copy_file_range", 0, size)
	src, dst := t.P("src"), t.P("dst")
	if err := create(src, data, 0o644); err != nil {
		return err
	}
	sfd, err := openFd(src, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(sfd)
	dfd, err := openFd(dst, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)

	var offIn, offOut int64
	calls := 0
	for offIn < size {
		n, err := unix.CopyFileRange(sfd, &offIn, dfd, &offOut, int(size-offIn), 0)
		calls++
		if err != nil {
			return errf("copy_file_range at %d: %s", offIn, errnoName(err))
		}
		if n == 0 {
			return errf("copy_file_range returned 0 at %d of %d", offIn, size)
		}
	}
	if offIn != size || offOut != size {
		return errf("offsets after copying %d bytes: in %d out %d", size, offIn, offOut)
	}
	// Explicit offsets leave the file offsets alone.
	if err := first(wantSeek(sfd, 0, unix.SEEK_CUR, 0), wantSeek(dfd, 0, unix.SEEK_CUR, 0)); err != nil {
		return errf("file offsets after copy_file_range with explicit offsets: %v", err)
	}
	if err := wantContent(dst, data); err != nil {
		return errf("copy of %d bytes: %v", size, err)
	}
	t.Note("%d call(s) for %d bytes", calls, size)

	// A range to an offset past the end of an empty file.
	dst2 := t.P("dst2")
	d2, err := openFd(dst2, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer unix.Close(d2)
	in, out := int64(5000), int64(200000)
	if n, err := unix.CopyFileRange(sfd, &in, d2, &out, 1000, 0); err != nil || n != 1000 {
		return errf("copy_file_range(5000 -> 200000, 1000): %d, %s", n, errnoName(err))
	}
	if in != 6000 || out != 201000 {
		return errf("offsets after copying 1000 bytes: in %d out %d, want 6000 201000", in, out)
	}
	want2 := append(make([]byte, 200000), data[5000:6000]...)
	if err := wantContent(dst2, want2); err != nil {
		return err
	}

	// NULL offsets use and advance the file offsets.
	dst3 := t.P("dst3")
	d3, err := openFd(dst3, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer unix.Close(d3)
	if _, err := lseek(sfd, 100, unix.SEEK_SET); err != nil {
		return ok("lseek", err)
	}
	if n, err := unix.CopyFileRange(sfd, nil, d3, nil, 50, 0); err != nil || n != 50 {
		return errf("copy_file_range with NULL offsets: %d, %s", n, errnoName(err))
	}
	if err := first(wantSeek(sfd, 0, unix.SEEK_CUR, 150), wantSeek(d3, 0, unix.SEEK_CUR, 50)); err != nil {
		return errf("file offsets after copy_file_range with NULL offsets: %v", err)
	}
	if err := wantContent(dst3, data[100:150]); err != nil {
		return err
	}

	// At EOF nothing is copied.
	in = size + 10
	out = 0
	if n, err := unix.CopyFileRange(sfd, &in, d3, &out, 100, 0); err != nil || n != 0 {
		return errf("copy_file_range from past EOF: %d, %s; want 0", n, errnoName(err))
	}

	// Invalid calls.
	rw, err := openFd(dst, unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer unix.Close(rw)
	in, out = 0, 10
	_, err = unix.CopyFileRange(rw, &in, rw, &out, 100, 0)
	if err := wantErr("copy_file_range of overlapping ranges of one file", err, unix.EINVAL); err != nil {
		return err
	}
	in, out = 0, 0
	_, err = unix.CopyFileRange(dfd, &in, d3, &out, 10, 0)
	if err := wantErr("copy_file_range from an O_WRONLY descriptor", err, unix.EBADF); err != nil {
		return err
	}
	afd, err := openFd(dst3, unix.O_WRONLY|unix.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer unix.Close(afd)
	in = 0
	_, err = unix.CopyFileRange(sfd, &in, afd, nil, 10, 0)
	if err := wantErr("copy_file_range to an O_APPEND descriptor", err, unix.EBADF); err != nil {
		return err
	}
	in, out = 0, 0
	_, err = unix.CopyFileRange(sfd, &in, d3, &out, 10, 1)
	return wantErr("copy_file_range with flags 1", err, unix.EINVAL)
}

// checkFsync: fsync, fdatasync and syncfs succeed on files and
// directories, O_SYNC writes work, data survives.
func checkFsync(t *T) error {
	p := t.P("f")
	data := guestspec.NamedPattern("fsync", 0, 64<<10+7)
	fd, err := openFd(p, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := writeAll(fd, data); err != nil {
		return err
	}
	if err := first(
		ok("fsync", unix.Fsync(fd)),
		ok("fdatasync", unix.Fdatasync(fd)),
		ok("syncfs", unix.Syncfs(fd)),
	); err != nil {
		return err
	}
	rfd, err := openFd(p, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(rfd)
	if err := ok("fsync of an O_RDONLY descriptor", unix.Fsync(rfd)); err != nil {
		return err
	}
	dfd, err := openFd(t.dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := first(ok("fsync of a directory", unix.Fsync(dfd)), ok("fdatasync of a directory", unix.Fdatasync(dfd)), ok("syncfs through a directory", unix.Syncfs(dfd))); err != nil {
		return err
	}

	// O_SYNC and O_DSYNC writes.
	for _, flag := range []int{unix.O_SYNC, unix.O_DSYNC} {
		sfd, err := openFd(p, unix.O_WRONLY|flag, 0)
		if err != nil {
			return err
		}
		err = pwriteAll(sfd, []byte("synced"), 1000)
		unix.Close(sfd)
		if err != nil {
			return err
		}
	}
	copy(data[1000:], "synced")
	unix.Sync()
	if err := wantContent(p, data); err != nil {
		return err
	}
	if !bytes.Equal(data[1000:1006], []byte("synced")) {
		return errf("internal: test data")
	}
	return nil
}
