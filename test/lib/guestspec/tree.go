package guestspec

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// chunk is the size of the buffers used to write and compare content.
const chunk = 1 << 20

// wholeReadLimit is the largest file Verify reads whole; larger (sparse)
// files are checked at their data extents and at samples of their holes.
const wholeReadLimit = 64 << 20

// Materialize creates the entries below root, which is created if needed
// and must not already hold any of them. Permissions, owners and mtimes
// are applied explicitly, so the result does not depend on the umask.
func Materialize(root string, entries []Entry) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(root, filepath.FromSlash(e.Path))
		var err error
		switch e.Kind {
		case KindDir:
			// Permissions and owner are applied at the end, so that a
			// directory without write permission can still be filled.
			err = unix.Mkdir(p, 0o700)
		case KindFile:
			err = writeFile(p, e)
		case KindSymlink:
			err = unix.Symlink(e.Target, p)
		case KindHardlink:
			err = unix.Link(filepath.Join(root, filepath.FromSlash(e.Target)), p)
		default:
			err = fmt.Errorf("unknown kind %v", e.Kind)
		}
		if err != nil {
			return fmt.Errorf("%s: %s: %w", e.Path, e.Kind, err)
		}
	}
	for i := len(entries) - 1; i >= 0; i-- {
		e := entries[i]
		if e.Kind != KindDir {
			continue
		}
		p := filepath.Join(root, filepath.FromSlash(e.Path))
		if err := applyAttrs(p, e); err != nil {
			return fmt.Errorf("%s: %w", e.Path, err)
		}
	}
	return nil
}

func writeFile(p string, e Entry) error {
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	err = writeContent(fd, e)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return applyAttrs(p, e)
}

func writeContent(fd int, e Entry) error {
	seed := e.Seed()
	buf := make([]byte, chunk)
	for _, x := range e.DataExtents() {
		for done := int64(0); done < x.Len; {
			n := min(int64(len(buf)), x.Len-done)
			b := buf[:n]
			FillPattern(b, seed, x.Off+done)
			w, err := unix.Pwrite(fd, b, x.Off+done)
			if err != nil {
				return fmt.Errorf("pwrite at %d: %w", x.Off+done, err)
			}
			if w != len(b) {
				return fmt.Errorf("pwrite at %d: short write %d of %d", x.Off+done, w, len(b))
			}
			done += n
		}
	}
	if err := unix.Ftruncate(fd, e.Size); err != nil {
		return fmt.Errorf("ftruncate %d: %w", e.Size, err)
	}
	return nil
}

// applyAttrs sets owner, then permissions (chown may clear setuid and
// setgid), then mtime.
func applyAttrs(p string, e Entry) error {
	if e.Owner != nil {
		if err := unix.Lchown(p, e.Owner.UID, e.Owner.GID); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if err := unix.Chmod(p, e.Perm); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	if !e.Mtime.IsZero() {
		ts := []unix.Timespec{
			{Sec: 0, Nsec: unix.UTIME_OMIT},
			unix.NsecToTimespec(e.Mtime.UnixNano()),
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("utimensat: %w", err)
		}
	}
	return nil
}

// Verify checks that the tree below root is exactly entries: the same set
// of names, and for each its type, permissions, owner (where given), size,
// content, link count, symlink target, hardlink identity, mtime (where
// given) and block usage (where bounded). It returns all mismatches found.
func Verify(root string, entries []Entry) error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}

	byPath := make(map[string]Entry, len(entries))
	nlink := make(map[string]uint64)
	for _, e := range entries {
		byPath[e.Path] = e
		switch e.Kind {
		case KindFile:
			nlink[e.Path]++
		case KindHardlink:
			nlink[e.Target]++
		}
	}

	// The set of names.
	found := make(map[string]bool)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			bad(p, "walk: %v", err)
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if rel != "." {
			found[filepath.ToSlash(rel)] = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	var missing, extra []string
	for p := range byPath {
		if !found[p] {
			missing = append(missing, p)
		}
	}
	for p := range found {
		if _, ok := byPath[p]; !ok {
			extra = append(extra, p)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	for _, p := range missing {
		bad(p, "missing")
	}
	for _, p := range extra {
		bad(p, "unexpected entry")
	}

	for _, e := range entries {
		if !found[e.Path] {
			continue
		}
		p := filepath.Join(root, filepath.FromSlash(e.Path))
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			bad(e.Path, "lstat: %v", err)
			continue
		}
		fileSpec := e
		switch e.Kind {
		case KindDir:
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				bad(e.Path, "type %s, want directory", modeType(st.Mode))
				continue
			}
		case KindSymlink:
			if st.Mode&unix.S_IFMT != unix.S_IFLNK {
				bad(e.Path, "type %s, want symlink", modeType(st.Mode))
				continue
			}
			target, err := os.Readlink(p)
			if err != nil {
				bad(e.Path, "readlink: %v", err)
			} else if target != e.Target {
				bad(e.Path, "symlink target %q, want %q", target, e.Target)
			}
			if st.Size != int64(len(e.Target)) {
				bad(e.Path, "symlink size %d, want %d", st.Size, len(e.Target))
			}
			continue
		case KindHardlink:
			var tst unix.Stat_t
			if err := unix.Lstat(filepath.Join(root, filepath.FromSlash(e.Target)), &tst); err != nil {
				bad(e.Path, "lstat of link target %s: %v", e.Target, err)
			} else if tst.Dev != st.Dev || tst.Ino != st.Ino {
				bad(e.Path, "dev/ino %d/%d, want those of %s %d/%d", st.Dev, st.Ino, e.Target, tst.Dev, tst.Ino)
			}
			fileSpec = byPath[e.Target]
			fileSpec.Path = e.Target
		}
		if fileSpec.Kind == KindFile {
			if st.Mode&unix.S_IFMT != unix.S_IFREG {
				bad(e.Path, "type %s, want regular file", modeType(st.Mode))
				continue
			}
			if st.Size != fileSpec.Size {
				bad(e.Path, "size %d, want %d", st.Size, fileSpec.Size)
			}
			if want := nlink[fileSpec.Path]; uint64(st.Nlink) != want {
				bad(e.Path, "nlink %d, want %d", st.Nlink, want)
			}
			if fileSpec.MaxBlocks > 0 && st.Blocks > fileSpec.MaxBlocks {
				bad(e.Path, "st_blocks %d, want at most %d (is the file sparse?)", st.Blocks, fileSpec.MaxBlocks)
			}
			if !fileSpec.Mtime.IsZero() {
				want := unix.NsecToTimespec(fileSpec.Mtime.UnixNano())
				if st.Mtim != want {
					bad(e.Path, "mtime %d.%09d, want %d.%09d", st.Mtim.Sec, st.Mtim.Nsec, want.Sec, want.Nsec)
				}
			}
			if st.Size == fileSpec.Size {
				if err := VerifyContent(p, fileSpec); err != nil {
					bad(e.Path, "%v", err)
				}
			}
		}
		if got := uint32(st.Mode) & 0o7777; got != fileSpec.Perm {
			bad(e.Path, "permissions %04o, want %04o", got, fileSpec.Perm)
		}
		if fileSpec.Owner != nil && (int(st.Uid) != fileSpec.Owner.UID || int(st.Gid) != fileSpec.Owner.GID) {
			bad(e.Path, "owner %d:%d, want %d:%d", st.Uid, st.Gid, fileSpec.Owner.UID, fileSpec.Owner.GID)
		}
	}
	return errors.Join(errs...)
}

// Expected returns the content a file of spec e holds at [off, off+n).
func Expected(e Entry, off int64, n int) []byte {
	want := make([]byte, n)
	seed := e.Seed()
	end := off + int64(n)
	for _, x := range e.DataExtents() {
		lo := max(off, x.Off)
		hi := min(end, x.Off+x.Len)
		if lo < hi {
			FillPattern(want[lo-off:hi-off], seed, lo)
		}
	}
	return want
}

// checkRanges returns the ranges of a file that Verify compares: the whole
// file if it is small, otherwise every data extent with a page around it,
// the first and last 64 KiB and 64 KiB around every 4 GiB boundary.
func checkRanges(e Entry) []Extent {
	if e.Size <= wholeReadLimit {
		return []Extent{{0, e.Size}}
	}
	var rs []Extent
	add := func(lo, hi int64) {
		lo = max(lo, 0)
		hi = min(hi, e.Size)
		if lo < hi {
			rs = append(rs, Extent{lo, hi - lo})
		}
	}
	for _, x := range e.DataExtents() {
		add(x.Off-4096, x.Off+x.Len+4096)
	}
	add(0, 64<<10)
	add(e.Size-64<<10, e.Size)
	for b := int64(4 << 30); b < e.Size; b += 4 << 30 {
		add(b-32<<10, b+32<<10)
	}
	return rs
}

// VerifyContent compares the content of the file at p with spec e (see
// checkRanges for what is read of very large files).
func VerifyContent(p string, e Entry) error {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer unix.Close(fd)
	buf := make([]byte, chunk)
	for _, r := range checkRanges(e) {
		for done := int64(0); done < r.Len; {
			n := int(min(int64(len(buf)), r.Len-done))
			off := r.Off + done
			got, err := preadFull(fd, buf[:n], off)
			if err != nil {
				return fmt.Errorf("pread %d bytes at %d: %w", n, off, err)
			}
			if got != n {
				return fmt.Errorf("pread %d bytes at %d: got %d", n, off, got)
			}
			want := Expected(e, off, n)
			if i := FirstDiff(buf[:n], want); i >= 0 {
				return fmt.Errorf("content differs at offset %d: got %#02x, want %#02x", off+int64(i), buf[i], want[i])
			}
			done += int64(n)
		}
	}
	// Reading at the end of the file returns nothing.
	if n, err := unix.Pread(fd, buf[:1], e.Size); err != nil || n != 0 {
		return fmt.Errorf("pread at EOF %d: got %d, %v; want 0, nil", e.Size, n, err)
	}
	return nil
}

// preadFull reads len(p) bytes at off unless EOF comes first.
func preadFull(fd int, p []byte, off int64) (int, error) {
	total := 0
	for total < len(p) {
		n, err := unix.Pread(fd, p[total:], off+int64(total))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			break
		}
		total += n
	}
	return total, nil
}

func modeType(m uint32) string {
	switch m & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "char device"
	case unix.S_IFBLK:
		return "block device"
	}
	return fmt.Sprintf("type %#o", m&unix.S_IFMT)
}

// OneLine joins the messages of err (which may be an errors.Join) into a
// single line separated by "; ", cut to at most max bytes.
func OneLine(err error, max int) string {
	s := sanitize(strings.ReplaceAll(err.Error(), "\n", "; "))
	if max > 3 && len(s) > max {
		s = s[:max-3] + "..."
	}
	return s
}
