// Command guest is the guest side of test/bench/daxbench: it mounts the
// virtio-fs share itself (with -o dax=always, or without DAX), checks that
// the files are (or are not) DAX as asked (statx's STATX_ATTR_DAX), and
// times reads of files the host holds in its page cache:
//
//   - seq-read: the whole of -seq (1 MiB reads), pass after pass until
//     -min-seconds; reported in MiB/s;
//   - rand-4k: 4 KiB preads at random 4 KiB-aligned offsets of -rand, in
//     batches of -rand-ops (the file opened anew for each) until
//     -min-seconds; reported in ops/s;
//   - rand-4k-direct: the same with the file opened O_DIRECT.
//
// Before each pass or batch the guest drops its page cache (drop_caches
// 1), after an untimed warm-up read of the file; the -evict variants of
// seq-read and rand-4k drop the inodes too (drop_caches 3), which under
// DAX also removes the file's mappings from the window.
//
// Each line is "GUEST RESULT bench-NAME PASS <rate> k=v ...", then
// "GUEST DONE". Every read is checked against the host's pattern (two
// bytes of each page), so an unmapped window (which reads as zeros) fails
// the run instead of looking fast. It runs inside a TCG guest built by
// test/lib/vm.
package main

import (
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"

	"golang.org/x/sys/unix"
)

const (
	kib  = 1 << 10
	mib  = 1 << 20
	page = 4 * kib
)

var (
	mnt    string
	failed bool
)

func result(name string, ok bool, format string, args ...any) {
	status := "PASS"
	if !ok {
		status = "FAIL"
		failed = true
	}
	fmt.Printf("GUEST RESULT %s %s %s\n", name, status, strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " "))
}

// patByte is the host's pattern: byte seed + 7p + p>>12 at file offset p.
func patByte(seed byte, p int64) byte { return seed + byte(p*7) + byte(p>>12) }

// check verifies the first and last byte of every page of b, which was
// read at file offset off (a multiple of the page size).
func check(seed byte, b []byte, off int64) error {
	for i := 0; i < len(b); i += page {
		end := min(i+page, len(b)) - 1
		for _, j := range []int{i, end} {
			if want := patByte(seed, off+int64(j)); b[j] != want {
				return fmt.Errorf("byte at offset %d is %#x, want %#x", off+int64(j), b[j], want)
			}
		}
	}
	return nil
}

func mountLine() string {
	m, _ := os.ReadFile("/proc/mounts")
	for _, l := range strings.Split(string(m), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == mnt {
			return l
		}
	}
	return "(not in /proc/mounts)"
}

// isDAX reports statx's STATX_ATTR_DAX for name.
func isDAX(name string) (bool, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, name, 0, unix.STATX_BASIC_STATS, &st); err != nil {
		return false, err
	}
	return st.Attributes_mask&unix.STATX_ATTR_DAX != 0 && st.Attributes&unix.STATX_ATTR_DAX != 0, nil
}

// seqRead reads the file from start to end in 1 MiB reads, checking it.
func seqRead(name string, seed byte, size int64, buf []byte) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	var off int64
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			if cerr := check(seed, buf[:n], off); cerr != nil {
				return cerr
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read at %d: %w", off, err)
		}
	}
	if off != size {
		return fmt.Errorf("read %d bytes, want %d", off, size)
	}
	return nil
}

// benchSeq reads the file whole, pass after pass, drop_caches(drop)
// before each, until minSecs of reading. With warm, an untimed pass comes
// first (for DAX: the file's ranges are mapped before the timing).
func benchSeq(res, name string, seed byte, size int64, drop int, warm bool, minSecs float64) {
	buf := make([]byte, mib)
	if warm {
		if err := seqRead(name, seed, size, buf); err != nil {
			result(res, false, "warm-up pass: %v", err)
			return
		}
	}
	var total time.Duration
	passes := 0
	for passes == 0 || total.Seconds() < minSecs {
		if err := guestspec.DropCaches(drop); err != nil {
			result(res, false, "drop_caches: %v", err)
			return
		}
		start := time.Now()
		if err := seqRead(name, seed, size, buf); err != nil {
			result(res, false, "pass %d: %v", passes+1, err)
			return
		}
		total += time.Since(start)
		passes++
	}
	secs := total.Seconds()
	result(res, true, "%.3f MiB/s passes=%d bytes=%d secs=%.3f drop_caches=%d",
		float64(size)*float64(passes)/mib/secs, passes, size*int64(passes), secs, drop)
}

// benchRand does 4 KiB preads at random page-aligned offsets, ops per
// batch, drop_caches(drop) before each batch (the file is opened anew
// after it), until minSecs of reading. With warm, an untimed whole read
// of the file comes first.
func benchRand(res, name string, seed byte, size int64, ops int, direct bool, drop int, warm bool, minSecs float64) {
	if warm {
		if err := seqRead(name, seed, size, make([]byte, mib)); err != nil {
			result(res, false, "warm-up pass: %v", err)
			return
		}
	}
	flags := unix.O_RDONLY
	if direct {
		flags |= unix.O_DIRECT
	}
	// A page-aligned buffer, as O_DIRECT wants.
	buf, err := unix.Mmap(-1, 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		result(res, false, "mmap: %v", err)
		return
	}
	defer unix.Munmap(buf)
	r := rand.New(rand.NewPCG(7, 7))
	pages := size / page
	var total time.Duration
	batches, done := 0, 0
	note := ""
	for batches == 0 || total.Seconds() < minSecs {
		if err := guestspec.DropCaches(drop); err != nil {
			result(res, false, "drop_caches: %v", err)
			return
		}
		start := time.Now()
		fd, err := unix.Open(name, flags, 0)
		if err != nil {
			// Reported as SKIP: the host prints what the kernel said.
			fmt.Printf("GUEST RESULT %s SKIP open O_DIRECT=%v: %s\n", res, direct, guestspec.ErrName(err))
			return
		}
		if direct && batches == 0 {
			// What the kernel kept of the flag on the open file.
			fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
			note = fmt.Sprintf(" o_direct_kept=%v", fl&unix.O_DIRECT != 0)
		}
		for i := 0; i < ops; i++ {
			off := r.Int64N(pages) * page
			n, err := unix.Pread(fd, buf, off)
			if err == nil && n != page {
				err = fmt.Errorf("short read of %d bytes at %d", n, off)
			}
			if err == nil {
				err = check(seed, buf, off)
			}
			if err != nil {
				unix.Close(fd)
				result(res, false, "batch %d op %d at %d: %v", batches+1, i, off, err)
				return
			}
		}
		unix.Close(fd)
		total += time.Since(start)
		batches++
		done += ops
	}
	secs := total.Seconds()
	result(res, true, "%.1f ops/s ops=%d batches=%d secs=%.3f drop_caches=%d%s", float64(done)/secs, done, batches, secs, drop, note)
}

func main() {
	tag := flag.String("tag", "myfs", "virtio-fs tag")
	flag.StringVar(&mnt, "mnt", "/mnt", "mount point")
	dax := flag.Bool("dax", false, "mount with -o dax=always (else dax=never, or no option if the kernel refuses it)")
	seqName := flag.String("seq", "seq.bin", "file for the sequential reads (pattern seed 1)")
	randName := flag.String("rand", "rand.bin", "file for the random reads (pattern seed 2)")
	minSecs := flag.Float64("min-seconds", 2, "each workload repeats until it has read for this long")
	randOps := flag.Int("rand-ops", 4000, "random reads per batch")
	limit := flag.Duration("timeout", 8*time.Minute, "watchdog")
	flag.Parse()
	go func() {
		time.Sleep(*limit)
		fmt.Printf("GUEST RESULT watchdog FAIL no end after %v\n", *limit)
		fmt.Println("GUEST DONE")
		os.Exit(1)
	}()
	defer fmt.Println("GUEST DONE")

	os.MkdirAll(mnt, 0o755)
	var opts []string
	if *dax {
		opts = []string{"dax=always"}
	} else {
		opts = []string{"dax=never", ""}
	}
	var merr error
	var used string
	var tried []string
	for _, o := range opts {
		if merr = unix.Mount(*tag, mnt, "virtiofs", 0, o); merr == nil {
			used = o
			break
		}
		tried = append(tried, fmt.Sprintf("%q:%s", o, guestspec.ErrName(merr)))
	}
	if merr != nil {
		result("mount", false, "mount -t virtiofs %s: %s", *tag, strings.Join(tried, " "))
		return
	}
	if used == "" {
		used = "(none)"
	}
	refused := ""
	if len(tried) > 0 {
		refused = " refused=" + strings.Join(tried, ",")
	}
	result("mount", true, "opts=%s%s mounts=%s", used, refused, strings.ReplaceAll(mountLine(), " ", "|"))
	defer func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			result("umount", false, "%v", err)
		}
	}()

	files := []struct {
		name string
		seed byte
		size int64
	}{{filepath.Join(mnt, *seqName), 1, 0}, {filepath.Join(mnt, *randName), 2, 0}}
	for i, f := range files {
		st, err := os.Stat(f.name)
		if err != nil {
			result("files", false, "%v", err)
			return
		}
		files[i].size = st.Size()
		d, err := isDAX(f.name)
		if err != nil || d != *dax {
			result("dax-attr", false, "%s: STATX_ATTR_DAX %v (%v), want %v", filepath.Base(f.name), d, err, *dax)
			return
		}
		if st.Size()%page != 0 || st.Size() < page {
			result("files", false, "%s: size %d is not a positive multiple of 4 KiB", f.name, st.Size())
			return
		}
	}
	result("dax-attr", true, "dax=%v for %s and %s", *dax, *seqName, *randName)

	seq, rnd := files[0], files[1]
	steps := []func(){
		func() { benchSeq("bench-seq-read", seq.name, seq.seed, seq.size, 1, true, *minSecs) },
		func() { benchSeq("bench-seq-read-evict", seq.name, seq.seed, seq.size, 3, false, *minSecs) },
		func() { benchRand("bench-rand-4k", rnd.name, rnd.seed, rnd.size, *randOps, false, 1, true, *minSecs) },
		func() {
			benchRand("bench-rand-4k-direct", rnd.name, rnd.seed, rnd.size, *randOps, true, 1, true, *minSecs)
		},
		func() {
			benchRand("bench-rand-4k-evict", rnd.name, rnd.seed, rnd.size, *randOps, false, 3, false, *minSecs)
		},
	}
	for _, step := range steps {
		if failed {
			return
		}
		step()
	}
}
