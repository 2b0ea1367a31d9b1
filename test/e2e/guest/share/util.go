package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"
	"golang.org/x/sys/unix"
)

// T is handed to a check: its fresh directory and a place for notes that
// end up in the detail of the result line.
type T struct {
	env *env
	dir string

	mu    sync.Mutex
	notes []string
}

// Note records something worth reporting even when the check passes.
func (t *T) Note(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.notes = append(t.notes, fmt.Sprintf(format, args...))
}

// takeNotes returns a copy of the notes (the check may still be running
// after a timeout).
func (t *T) takeNotes() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.notes...)
}

// P returns the path of name inside the check's directory.
func (t *T) P(name string) string {
	return filepath.Join(t.dir, name)
}

// skipError makes a check report SKIP.
type skipError struct{ reason string }

func (s *skipError) Error() string { return s.reason }

func skipf(format string, args ...any) error {
	return &skipError{fmt.Sprintf(format, args...)}
}

func errf(format string, args ...any) error {
	return fmt.Errorf(format, args...)
}

// errnoName renders an error as its errno name where it is one.
func errnoName(err error) string {
	if err == nil {
		return "success"
	}
	var en unix.Errno
	if errors.As(err, &en) {
		if name := unix.ErrnoName(en); name != "" {
			return name
		}
	}
	return err.Error()
}

// wantErr checks that err is the errno want.
func wantErr(op string, err error, want unix.Errno) error {
	if errors.Is(err, want) {
		return nil
	}
	return fmt.Errorf("%s: got %s, want %s", op, errnoName(err), unix.ErrnoName(want))
}

// ok wraps a non-nil err with op.
func ok(op string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %s", op, errnoName(err))
	}
	return nil
}

func lstat(p string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Lstat(p, &st)
	if err != nil {
		return st, fmt.Errorf("lstat %s: %s", filepath.Base(p), errnoName(err))
	}
	return st, nil
}

func stat(p string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Stat(p, &st)
	if err != nil {
		return st, fmt.Errorf("stat %s: %s", filepath.Base(p), errnoName(err))
	}
	return st, nil
}

func fstat(fd int) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstat(fd, &st)
	if err != nil {
		return st, fmt.Errorf("fstat: %s", errnoName(err))
	}
	return st, nil
}

// wantMode compares the whole st_mode (type and permission bits).
func wantMode(what string, st unix.Stat_t, want uint32) error {
	if st.Mode != want {
		return fmt.Errorf("%s: mode %07o, want %07o", what, st.Mode, want)
	}
	return nil
}

func wantSize(what string, st unix.Stat_t, want int64) error {
	if st.Size != want {
		return fmt.Errorf("%s: size %d, want %d", what, st.Size, want)
	}
	return nil
}

func wantNlink(what string, st unix.Stat_t, want uint64) error {
	if uint64(st.Nlink) != want {
		return fmt.Errorf("%s: nlink %d, want %d", what, st.Nlink, want)
	}
	return nil
}

func wantOwner(what string, st unix.Stat_t, uid, gid uint32) error {
	if st.Uid != uid || st.Gid != gid {
		return fmt.Errorf("%s: owner %d:%d, want %d:%d", what, st.Uid, st.Gid, uid, gid)
	}
	return nil
}

func wantTime(what string, got, want unix.Timespec) error {
	if got != want {
		return fmt.Errorf("%s %d.%09d, want %d.%09d", what, got.Sec, got.Nsec, want.Sec, want.Nsec)
	}
	return nil
}

func sameFile(a, b unix.Stat_t) bool {
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// first returns the first non-nil error.
func first(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// create makes a new file (O_EXCL) with content and returns nothing but
// an error; mode is subject to the umask.
func create(p string, content []byte, mode uint32) error {
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, mode)
	if err != nil {
		return fmt.Errorf("create %s: %s", filepath.Base(p), errnoName(err))
	}
	err = writeAll(fd, content)
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = fmt.Errorf("close: %s", errnoName(cerr))
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", filepath.Base(p), err)
	}
	return nil
}

func openFd(p string, flags int, mode uint32) (int, error) {
	fd, err := unix.Open(p, flags|unix.O_CLOEXEC, mode)
	if err != nil {
		return -1, fmt.Errorf("open %s (%s): %s", filepath.Base(p), flagNames(flags), errnoName(err))
	}
	return fd, nil
}

func flagNames(flags int) string {
	var s []string
	switch flags & unix.O_ACCMODE {
	case unix.O_RDONLY:
		s = append(s, "O_RDONLY")
	case unix.O_WRONLY:
		s = append(s, "O_WRONLY")
	case unix.O_RDWR:
		s = append(s, "O_RDWR")
	}
	for _, f := range []struct {
		bit  int
		name string
	}{{unix.O_CREAT, "O_CREAT"}, {unix.O_EXCL, "O_EXCL"}, {unix.O_TRUNC, "O_TRUNC"}, {unix.O_APPEND, "O_APPEND"},
		{unix.O_DIRECTORY, "O_DIRECTORY"}, {unix.O_NOFOLLOW, "O_NOFOLLOW"}, {unix.O_NONBLOCK, "O_NONBLOCK"}, {unix.O_SYNC, "O_SYNC"}} {
		if flags&f.bit == f.bit {
			s = append(s, f.name)
		}
	}
	return strings.Join(s, "|")
}

// writeAll writes p at the file offset, failing on short writes.
func writeAll(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := unix.Write(fd, p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write: %s", errnoName(err))
		}
		if n == 0 {
			return fmt.Errorf("write: returned 0")
		}
		p = p[n:]
	}
	return nil
}

// pwriteAll writes p at off, failing on short writes.
func pwriteAll(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pwrite(fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("pwrite at %d: %s", off, errnoName(err))
		}
		if n == 0 {
			return fmt.Errorf("pwrite at %d: returned 0", off)
		}
		p = p[n:]
		off += int64(n)
	}
	return nil
}

// pread reads up to n bytes at off, looping over short reads until EOF.
func pread(fd int, n int, off int64) ([]byte, error) {
	buf := make([]byte, n)
	total := 0
	for total < n {
		m, err := unix.Pread(fd, buf[total:], off+int64(total))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return buf[:total], fmt.Errorf("pread %d at %d: %s", n, off, errnoName(err))
		}
		if m == 0 {
			break
		}
		total += m
	}
	return buf[:total], nil
}

// wantPread reads len(want) bytes at off (plus one more, to see EOF
// where exact is set) and compares.
func wantPread(what string, fd int, off int64, want []byte) error {
	got, err := pread(fd, len(want), off)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return wantBytes(fmt.Sprintf("%s (at %d)", what, off), got, want)
}

// wantBytes compares contents and reports the first difference.
func wantBytes(what string, got, want []byte) error {
	if bytes.Equal(got, want) {
		return nil
	}
	i := guestspec.FirstDiff(got, want)
	if len(got) != len(want) && i == min(len(got), len(want)) {
		return fmt.Errorf("%s: got %d bytes, want %d", what, len(got), len(want))
	}
	return fmt.Errorf("%s: differs at byte %d (got %#02x, want %#02x; lengths %d/%d)", what, i, got[i], want[i], len(got), len(want))
}

// readFile reads a whole file.
func readFile(p string) ([]byte, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read %s: %s", filepath.Base(p), errnoName(err))
	}
	return b, nil
}

func wantContent(p string, want []byte) error {
	got, err := readFile(p)
	if err != nil {
		return err
	}
	return wantBytes("content of "+filepath.Base(p), got, want)
}

// lseek wraps unix.Seek.
func lseek(fd int, off int64, whence int) (int64, error) {
	return unix.Seek(fd, off, whence)
}

// wantSeek checks lseek(fd, off, whence) returns want.
func wantSeek(fd int, off int64, whence int, want int64) error {
	got, err := lseek(fd, off, whence)
	if err != nil {
		return fmt.Errorf("lseek(%d, %s): %s, want %d", off, whenceName(whence), errnoName(err), want)
	}
	if got != want {
		return fmt.Errorf("lseek(%d, %s) = %d, want %d", off, whenceName(whence), got, want)
	}
	return nil
}

// wantSeekErr checks lseek(fd, off, whence) fails with want.
func wantSeekErr(fd int, off int64, whence int, want unix.Errno) error {
	got, err := lseek(fd, off, whence)
	if err == nil {
		return fmt.Errorf("lseek(%d, %s) = %d, want %s", off, whenceName(whence), got, unix.ErrnoName(want))
	}
	return wantErr(fmt.Sprintf("lseek(%d, %s)", off, whenceName(whence)), err, want)
}

func whenceName(w int) string {
	switch w {
	case unix.SEEK_SET:
		return "SEEK_SET"
	case unix.SEEK_CUR:
		return "SEEK_CUR"
	case unix.SEEK_END:
		return "SEEK_END"
	case unix.SEEK_DATA:
		return "SEEK_DATA"
	case unix.SEEK_HOLE:
		return "SEEK_HOLE"
	}
	return fmt.Sprint(w)
}

// dirent is one entry returned by getdents64.
type dirent struct {
	ino  uint64
	typ  uint8
	name string
}

// getdents reads all entries of the open directory fd from its current
// position with getdents64 and a buffer of bufSize bytes.
func getdents(fd int, bufSize int) ([]dirent, error) {
	buf := make([]byte, bufSize)
	var out []dirent
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("getdents64: %s", errnoName(err))
		}
		if n == 0 {
			return out, nil
		}
		for off := 0; off < n; {
			// struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, name.
			if off+19 > n {
				return out, fmt.Errorf("getdents64: truncated record at %d of %d", off, n)
			}
			ino := *(*uint64)(unsafe.Pointer(&buf[off]))
			reclen := int(*(*uint16)(unsafe.Pointer(&buf[off+16])))
			typ := buf[off+18]
			if reclen < 20 || off+reclen > n {
				return out, fmt.Errorf("getdents64: bad reclen %d at %d of %d", reclen, off, n)
			}
			name := buf[off+19 : off+reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			out = append(out, dirent{ino: ino, typ: typ, name: string(name)})
			off += reclen
		}
	}
}

// readdirNames lists a directory without "." and "..", sorted.
func readdirNames(p string) ([]string, error) {
	ents, err := os.ReadDir(p)
	if err != nil {
		return nil, fmt.Errorf("readdir %s: %s", filepath.Base(p), errnoName(err))
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names, nil
}

func wantNames(what string, got []string, want ...string) error {
	if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
		return fmt.Errorf("%s: entries %q, want %q", what, got, want)
	}
	return nil
}

// renameat2 calls renameat2(2) with AT_FDCWD paths.
func renameat2(from, to string, flags uint) error {
	return unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, flags)
}

// futimens sets the times of an open file (utimensat with a NULL path).
func futimens(fd int, ts *[2]unix.Timespec) error {
	var p unsafe.Pointer
	if ts != nil {
		p = unsafe.Pointer(ts)
	}
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(p), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// utimensat sets the times of a path; ts nil means both now.
func utimensat(p string, ts *[2]unix.Timespec, flags int) error {
	if ts == nil {
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, nil, flags)
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts[:], flags)
}
