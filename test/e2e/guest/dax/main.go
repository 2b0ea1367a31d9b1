// Command dax is the guest side of the DAX tests in test/e2e/dax_test.go.
// It mounts the share itself (the mount options are what it tests) and
// runs one scenario (-mode always, inode or reclaim), reporting in the
// GUEST RESULT protocol and ending with GUEST DONE. Most results carry
// what the guest saw (a sha256, a size, an errno) for the host to judge;
// where the guest knows the answer (data it wrote, a pattern the host
// appended) it judges itself. "GUEST WAIT <n> <what>" asks the host to
// change a file; the guest then polls for the change.
//
// Files are filled with pat(seed): byte seed + 7p + p>>12 at file offset p,
// as the host test writes them.
package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/govirtiofsd/govirtiofsd/test/e2e/guest/internal/slow"
	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"

	"golang.org/x/sys/unix"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

var (
	failed atomic.Bool
	mnt    string
	tag    string
)

func result(name string, ok bool, format string, args ...any) {
	status := "PASS"
	if !ok {
		status = "FAIL"
		failed.Store(true)
	}
	fmt.Printf("GUEST RESULT %s %s %s\n", name, status, strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " "))
}

// pat returns n bytes of pattern seed from file offset off.
func pat(seed byte, off, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		p := off + i
		b[i] = seed + byte(p*7) + byte(p>>12)
	}
	return b
}

func path(name string) string { return filepath.Join(mnt, name) }

func mount(opts string) error {
	os.MkdirAll(mnt, 0o755)
	return unix.Mount(tag, mnt, "virtiofs", 0, opts)
}

// readAll reads a file in 256 KiB reads until EOF or an error and returns
// the sha256 of what it read, how much, and the error.
func readAll(name string) (string, int, error) {
	f, err := os.Open(path(name))
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 256*kib)
	n := 0
	for {
		m, err := f.Read(buf)
		h.Write(buf[:m])
		n += m
		if err == io.EOF {
			return fmt.Sprintf("%x", h.Sum(nil)), n, nil
		}
		if err != nil {
			return fmt.Sprintf("%x", h.Sum(nil)), n, err
		}
	}
}

// reportRead reads name and reports "sha=... n=... err=...".
func reportRead(result_ string, name string) {
	sum, n, err := readAll(name)
	result(result_, true, "sha=%s n=%d err=%s", sum, n, guestspec.ErrName(err))
}

// touch reads b[off] and reports whether it faulted (SIGBUS).
func touch(b []byte, off int) (v byte, fault bool) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if recover() != nil {
			fault = true
		}
	}()
	return b[off], false
}

// copyIn copies src into b at off and reports whether it faulted.
func copyIn(b []byte, off int, src []byte) (fault bool) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if recover() != nil {
			fault = true
		}
	}()
	copy(b[off:], src)
	return false
}

func sumOf(b []byte) string {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() { recover() }()
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

func size(name string) int64 {
	st, err := os.Stat(path(name))
	if err != nil {
		return -1
	}
	return st.Size()
}

// waitSize polls name's size (the attribute cache times out after a
// second) until it is want.
func waitSize(name string, want int64) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) < slow.Scale(20*time.Second) {
		if size(name) == want {
			return time.Since(start), true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start), false
}

func pread(name string, off, n int) ([]byte, error) {
	f, err := os.Open(path(name))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	m, err := f.ReadAt(b, int64(off))
	if err == io.EOF && m == n {
		err = nil
	}
	return b[:m], err
}

// describe says how got differs from want: "ok", "zeros", or the first
// differing offset.
func describe(got, want []byte) string {
	if bytes.Equal(got, want) {
		return "ok"
	}
	if len(got) == len(want) && bytes.Count(got, []byte{0}) == len(got) {
		return "zeros"
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("differs-at-%d(got-%#x-want-%#x)", i, got[i], want[i])
		}
	}
	return fmt.Sprintf("length-%d-want-%d", len(got), len(want))
}

func always() {
	if err := mount("dax=always"); err != nil {
		result("mount", false, "mount -o dax=always: %v", err)
		return
	}
	m, _ := os.ReadFile("/proc/mounts")
	result("mount", bytes.Contains(m, []byte(" "+mnt+" virtiofs ")) && bytes.Contains(m, []byte("dax=always")), "%s", firstLine(m, mnt))

	// Reads of files of various sizes.
	for _, f := range []string{"big.bin", "pages.bin", "odd.bin", "small.txt", "empty"} {
		reportRead("read-"+f, f)
	}

	mmapRead()
	mmapWrite()
	writeInPlace()
	hostWrites()
	guestAppend()
	truncateMapped()

	if err := unix.Unmount(mnt, 0); err != nil {
		result("umount", false, "%v", err)
		return
	}
	result("umount", true, "ok")
	if err := mount("dax=always"); err != nil {
		result("remount", false, "%v", err)
		return
	}
	result("remount", true, "ok")
	reportRead("reread-big.bin", "big.bin")
	if err := unix.Unmount(mnt, 0); err != nil {
		result("umount-2", false, "%v", err)
	}
}

func firstLine(b []byte, sub string) string {
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, " "+sub+" ") {
			return l
		}
	}
	return "(not mounted)"
}

// mmapRead maps pages.bin and odd.bin shared and read-only and reports
// what reads through the mappings see.
func mmapRead() {
	for _, name := range []string{"pages.bin", "odd.bin"} {
		f, err := os.Open(path(name))
		if err != nil {
			result("mmap-read-"+name, false, "%v", err)
			continue
		}
		st, _ := f.Stat()
		n := int(st.Size())
		b, err := unix.Mmap(int(f.Fd()), 0, (n+4095)&^4095, unix.PROT_READ, unix.MAP_SHARED)
		f.Close()
		if err != nil {
			result("mmap-read-"+name, false, "mmap: %v", err)
			continue
		}
		// Find the first page that faults.
		faultAt := -1
		for off := 0; off < n; off += 4096 {
			if _, fault := touch(b, off); fault {
				faultAt = off
				break
			}
		}
		sum := "-"
		if faultAt < 0 {
			sum = sumOf(b[:n])
		} else {
			sum = sumOf(b[:faultAt])
		}
		result("mmap-read-"+name, true, "sha=%s fault=%d", sum, faultAt)
		unix.Munmap(b)
	}
}

// mmapWrite writes through a shared writable mapping of rw.bin, msyncs,
// and reads the file back with read(2).
func mmapWrite() {
	f, err := os.OpenFile(path("rw.bin"), os.O_RDWR, 0)
	if err != nil {
		result("mmap-write", false, "%v", err)
		return
	}
	defer f.Close()
	b, err := unix.Mmap(int(f.Fd()), 0, 4*mib, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		result("mmap-write", false, "mmap: %v", err)
		return
	}
	data := pat(40, mib+10, 64*kib)
	if copyIn(b, mib+10, data) {
		result("mmap-write", false, "SIGBUS writing through the mapping")
		unix.Munmap(b)
		return
	}
	err = unix.Msync(b, unix.MS_SYNC)
	unix.Munmap(b)
	got, rerr := pread("rw.bin", mib+10, 64*kib)
	result("mmap-write", err == nil && rerr == nil && bytes.Equal(got, data), "msync %s, read back %s: %s", guestspec.ErrName(err), guestspec.ErrName(rerr), describe(got, data))
}

// writeInPlace overwrites part of inplace.bin with write(2), which under
// DAX goes through the window (the file does not grow).
func writeInPlace() {
	f, err := os.OpenFile(path("inplace.bin"), os.O_RDWR, 0)
	if err != nil {
		result("write-inplace", false, "%v", err)
		return
	}
	data := pat(50, 3*mib+5, 100*kib)
	_, err = f.WriteAt(data, 3*mib+5)
	serr := f.Sync()
	f.Close()
	got, rerr := pread("inplace.bin", 3*mib+5, 100*kib)
	result("write-inplace", err == nil && serr == nil && bytes.Equal(got, data), "write %s, fsync %s, read back %s: %s",
		guestspec.ErrName(err), guestspec.ErrName(serr), guestspec.ErrName(rerr), describe(got, data))
}

// hostWrites reads hostw.bin (1 MiB: its range is clamped), then asks the
// host to write in place, to append whole pages and to append a partial
// page, and reads what the guest sees each time without dropping caches.
func hostWrites() {
	sum, n, err := readAll("hostw.bin")
	result("read-hostw.bin", err == nil, "sha=%s n=%d err=%s", sum, n, guestspec.ErrName(err))

	fmt.Println("GUEST WAIT 1 host-write")
	want := []byte("HOST WROTE THIS!")
	start := time.Now()
	var got []byte
	for time.Since(start) < slow.Scale(20*time.Second) {
		if got, err = pread("hostw.bin", 8192, len(want)); err == nil && bytes.Equal(got, want) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	result("host-write", bytes.Equal(got, want), "seen after %v: %q %s", time.Since(start).Round(time.Millisecond), got, guestspec.ErrName(err))

	fmt.Println("GUEST WAIT 2 host-append")
	took, ok := waitSize("hostw.bin", mib+64*kib)
	tail, err := pread("hostw.bin", mib, 64*kib)
	result("host-append", ok && err == nil && bytes.Equal(tail, pat(6, mib, 64*kib)), "size seen after %v, read %s: %s",
		took.Round(time.Millisecond), guestspec.ErrName(err), describe(tail, pat(6, mib, 64*kib)))

	fmt.Println("GUEST WAIT 3 host-append-odd")
	took, ok = waitSize("hostw.bin", mib+64*kib+100)
	tail, err = pread("hostw.bin", mib+64*kib, 100)
	// Reported, not judged: this growth cannot be mapped (see README).
	result("host-append-odd", ok, "size seen after %v, the 100 new bytes: read %s, %s",
		took.Round(time.Millisecond), guestspec.ErrName(err), describe(tail, pat(6, mib+64*kib, 100)))
}

// guestAppend appends to app.bin (1 MiB, read first so that its range is
// mapped, clamped) in whole pages, reads the new part back, and then
// tries to append a partial page, which the daemon refuses.
func guestAppend() {
	sum, n, err := readAll("app.bin")
	result("read-app.bin", err == nil, "sha=%s n=%d err=%s", sum, n, guestspec.ErrName(err))
	f, err := os.OpenFile(path("app.bin"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		result("guest-append", false, "%v", err)
		return
	}
	data := pat(7, mib, 8*kib)
	_, werr := f.Write(data)
	got, rerr := pread("app.bin", mib, 8*kib)
	result("guest-append", werr == nil && rerr == nil && bytes.Equal(got, data), "write %s, read back %s: %s", guestspec.ErrName(werr), guestspec.ErrName(rerr), describe(got, data))
	_, werr = f.Write(pat(7, mib+8*kib, 100))
	f.Close()
	result("guest-append-odd", true, "err=%s size=%d", guestspec.ErrName(werr), size("app.bin"))
}

// truncateMapped truncates tr.bin (4 MiB) while it is mapped, touches the
// mapping past the new end, and grows the file again.
func truncateMapped() {
	f, err := os.OpenFile(path("tr.bin"), os.O_RDWR, 0)
	if err != nil {
		result("truncate-mapped", false, "%v", err)
		return
	}
	defer f.Close()
	b, err := unix.Mmap(int(f.Fd()), 0, 4*mib, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		result("truncate-mapped", false, "mmap: %v", err)
		return
	}
	defer unix.Munmap(b)
	orig := pat(8, 0, 4*mib)
	before := sumOf(b) == fmt.Sprintf("%x", sha256.Sum256(orig))
	const short = mib + 100
	terr := f.Truncate(short)
	_, fault := touch(b, 3*mib)
	got, rerr := pread("tr.bin", 0, 4*mib)
	ok := terr == nil && before && fault && errors.Is(rerr, io.EOF) && bytes.Equal(got, orig[:short])
	result("truncate-mapped", ok, "mapping right before %v, truncate %s, touch past the end: fault %v, read %d bytes (%s): %s",
		before, guestspec.ErrName(terr), fault, len(got), guestspec.ErrName(rerr), describe(got, orig[:short]))
	// Grow it again in whole pages: the tail reads as zeros, the head
	// as before, through read(2) and through the old mapping.
	terr = f.Truncate(3 * mib)
	want := append(bytes.Clone(orig[:short]), make([]byte, 3*mib-short)...)
	got, rerr = pread("tr.bin", 0, 3*mib)
	_, fault = touch(b, 3*mib-1)
	mapped := sumOf(b[:3*mib])
	ok = terr == nil && rerr == nil && bytes.Equal(got, want) && !fault && mapped == fmt.Sprintf("%x", sha256.Sum256(want))
	result("truncate-regrow", ok, "truncate %s, read %s: %s, mapping fault %v, same %v", guestspec.ErrName(terr), guestspec.ErrName(rerr), describe(got, want), fault,
		mapped == fmt.Sprintf("%x", sha256.Sum256(want)))
}

// inode mounts with dax=inode and reports which files the guest maps
// (statx's STATX_ATTR_DAX) and what it reads.
func inode() {
	if err := mount("dax=inode"); err != nil {
		result("mount", false, "mount -o dax=inode: %v", err)
		return
	}
	m, _ := os.ReadFile("/proc/mounts")
	result("mount", bytes.Contains(m, []byte("dax=inode")), "%s", firstLine(m, mnt))
	inodeReport("inode-")
	if err := unix.Unmount(mnt, 0); err != nil {
		result("umount", false, "%v", err)
		return
	}
	// Without a dax= option Linux behaves as with dax=inode.
	if err := mount(""); err != nil {
		result("mount-default", false, "mount: %v", err)
		return
	}
	m, _ = os.ReadFile("/proc/mounts")
	result("mount-default", true, "%s", firstLine(m, mnt))
	inodeReport("default-")
	if err := unix.Unmount(mnt, 0); err != nil {
		result("umount", false, "%v", err)
	}
}

func inodeReport(prefix string) {
	for _, name := range []string{"on.bin", "off.bin", "daxdir/inherited.bin"} {
		var st unix.Statx_t
		err := unix.Statx(unix.AT_FDCWD, path(name), 0, unix.STATX_BASIC_STATS, &st)
		dax := st.Attributes_mask&unix.STATX_ATTR_DAX != 0 && st.Attributes&unix.STATX_ATTR_DAX != 0
		sum, n, rerr := readAll(name)
		result(prefix+strings.ReplaceAll(name, "/", "-"), err == nil, "dax=%v sha=%s n=%d err=%s", dax, sum, n, guestspec.ErrName(rerr))
	}
}

// reclaim reads files r0, r1, ... (totalling more than the window)
// through the window, rounds times, and reports each sha256 and the rate.
func reclaim(n, rounds int) {
	if err := mount("dax=always"); err != nil {
		result("mount", false, "mount -o dax=always: %v", err)
		return
	}
	result("mount", true, "ok")
	for round := 1; round <= rounds; round++ {
		start := time.Now()
		total := 0
		for i := range n {
			name := fmt.Sprintf("r%d", i)
			sum, m, err := readAll(name)
			total += m
			result(fmt.Sprintf("reclaim-%d-%s", round, name), err == nil, "sha=%s n=%d err=%s", sum, m, guestspec.ErrName(err))
		}
		el := time.Since(start).Seconds()
		fmt.Printf("GUEST RATE round %d: %d MiB in %.1f s, %.1f MiB/s\n", round, total/mib, el, float64(total)/mib/el)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		result("umount", false, "%v", err)
	}
}

func main() {
	mode := flag.String("mode", "", "scenario: always, inode or reclaim")
	flag.StringVar(&mnt, "mnt", "/dax", "mount point")
	flag.StringVar(&tag, "tag", "myfs", "virtio-fs tag")
	files := flag.Int("files", 16, "reclaim: number of files r0, r1, ...")
	rounds := flag.Int("rounds", 1, "reclaim: how many times to read them all")
	limit := flag.Duration("timeout", 150*time.Second, "watchdog, on an unloaded machine (scaled by the slowdown the guest measured)")
	flag.Parse()
	*limit = slow.Scale(*limit)
	fmt.Printf("GUEST SLOWDOWN %.1f (uptime %v at start; watchdog %v)\n", slow.Factor(), slow.Uptime().Round(time.Millisecond), *limit)
	go func() {
		time.Sleep(*limit)
		result("watchdog", false, "mode %s still running after %v: a request hangs", *mode, *limit)
		fmt.Println("GUEST DONE")
		os.Exit(3)
	}()
	start := time.Now()
	switch *mode {
	case "always":
		always()
	case "inode":
		inode()
	case "reclaim":
		reclaim(*files, *rounds)
	default:
		result("mode", false, "unknown -mode %q", *mode)
	}
	fmt.Printf("GUEST ELAPSED %s %.3f\n", *mode, time.Since(start).Seconds())
	fmt.Println("GUEST DONE")
	if failed.Load() {
		os.Exit(1)
	}
}
