// Command faults is the guest side of the fault tests in
// test/e2e/faults_test.go. It runs one scenario (-mode enospc, nofile,
// hostchange or soak) on the virtio-fs mount and reports in the GUEST
// RESULT protocol, ending with GUEST DONE. It exits 1 when a check failed.
//
// A watchdog reports a hang (a FAIL and GUEST DONE) when the scenario does
// not finish in time, so a stuck request shows up as such on the console.
package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/test/e2e/guest/internal/slow"
	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"

	"golang.org/x/sys/unix"
)

var failed atomic.Bool

var outMu sync.Mutex

func result(name string, ok bool, format string, args ...any) {
	status := "PASS"
	if !ok {
		status = "FAIL"
		failed.Store(true)
	}
	detail := strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
	outMu.Lock()
	fmt.Printf("GUEST RESULT %s %s %s\n", name, status, detail)
	outMu.Unlock()
}

func say(format string, args ...any) {
	outMu.Lock()
	fmt.Printf(format+"\n", args...)
	outMu.Unlock()
}

// errnoOf returns the errno inside err, or 0.
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// waitFile polls for path (the host's go-ahead) for up to limit.
func waitFile(path string, limit time.Duration) (int, bool) {
	deadline := time.Now().Add(limit)
	polls := 0
	for time.Now().Before(deadline) {
		polls++
		if _, err := os.Stat(path); err == nil {
			return polls, true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return polls, false
}

func main() {
	mode := flag.String("mode", "", "scenario: enospc, nofile, hostchange or soak")
	mnt := flag.String("mnt", "/mnt", "virtio-fs mount point")
	limit := flag.Duration("timeout", 100*time.Second, "watchdog, on an unloaded machine (scaled by the slowdown the guest measured)")
	flag.Parse()
	*limit = slow.Scale(*limit)
	say("GUEST SLOWDOWN %.1f (uptime %v at start; watchdog %v)", slow.Factor(), slow.Uptime().Round(time.Millisecond), *limit)
	go func() {
		time.Sleep(*limit)
		result("watchdog", false, "mode %s still running after %v: a request hangs", *mode, *limit)
		say("GUEST DONE")
		os.Exit(3)
	}()
	start := time.Now()
	switch *mode {
	case "enospc":
		enospc(*mnt)
	case "nofile":
		nofile(*mnt)
	case "hostchange":
		hostchange(*mnt)
	case "soak":
		soak(*mnt)
	default:
		result("mode", false, "unknown -mode %q", *mode)
	}
	say("GUEST ELAPSED %s %.3f", *mode, time.Since(start).Seconds())
	say("GUEST DONE")
	if failed.Load() {
		os.Exit(1)
	}
}

// writeSync writes data to a new file path and fsyncs it.
func writeSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// pattern returns n bytes of a fixed pattern (the host regenerates it).
func pattern(n int, salt byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i>>11) ^ salt
	}
	return b
}

// enospc: the share is a 64 MiB tmpfs on the host.
func enospc(mnt string) {
	first := filepath.Join(mnt, "first")
	data := make([]byte, 4<<20)
	if _, err := rand.Read(data); err != nil {
		result("first-write", false, "random: %v", err)
		return
	}
	sum := sha256.Sum256(data)
	if err := writeSync(first, data); err != nil {
		result("first-write", false, "write %s: %s", first, guestspec.ErrName(err))
		return
	}
	unix.Sync()
	result("first-write", true, "sha256=%x", sum)

	filler := filepath.Join(mnt, "filler")
	f, err := os.OpenFile(filler, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		result("fill-enospc", false, "create %s: %s", filler, guestspec.ErrName(err))
		return
	}
	chunk := pattern(1<<20, 0x5a)
	var total int64
	var werr error
	t0 := time.Now()
	for total < 256<<20 {
		n, err := f.Write(chunk)
		total += int64(n)
		if err != nil {
			werr = err
			break
		}
	}
	fillTime := time.Since(t0)
	switch {
	case werr == nil:
		result("fill-enospc", false, "wrote %d bytes to a 64 MiB share without an error", total)
	case errnoOf(werr) != syscall.ENOSPC:
		result("fill-enospc", false, "write failed with %s (want ENOSPC) after %d bytes: %v", guestspec.ErrName(werr), total, werr)
	case total < 50<<20 || total > 61<<20:
		result("fill-enospc", false, "ENOSPC after %d bytes; want between 50 and 61 MiB", total)
	default:
		result("fill-enospc", true, "write failed with ENOSPC after %d bytes (%.2f MiB) in %.1f s", total, float64(total)/(1<<20), fillTime.Seconds())
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Size != total {
		result("filler-size", false, "fstat: size %d (%s), want %d", st.Size, guestspec.ErrName(err), total)
	} else {
		result("filler-size", true, "size %d matches the bytes written", st.Size)
	}
	// Once more on the same file: still ENOSPC, not a short success.
	if n, err := f.Write(chunk[:4096]); errnoOf(err) != syscall.ENOSPC {
		result("refill-enospc", false, "second write: n=%d %s (want ENOSPC)", n, guestspec.ErrName(err))
	} else {
		result("refill-enospc", true, "second write: ENOSPC")
	}
	// A new file on the full share: create works (tmpfs has inodes), the
	// write fails with ENOSPC.
	more := filepath.Join(mnt, "more")
	if g, err := os.OpenFile(more, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644); err != nil {
		result("full-new-file", false, "create %s: %s", more, guestspec.ErrName(err))
	} else {
		n, err := g.Write(chunk[:64<<10])
		cerr := g.Close()
		if errnoOf(err) != syscall.ENOSPC || n != 0 || cerr != nil {
			result("full-new-file", false, "64 KiB write to a new file: n=%d %s, close %s (want n=0 ENOSPC, close ok)", n, guestspec.ErrName(err), guestspec.ErrName(cerr))
		} else {
			result("full-new-file", true, "create ok, write ENOSPC, close ok")
		}
		if err := os.Remove(more); err != nil {
			result("full-new-file-remove", false, "remove %s: %s", more, guestspec.ErrName(err))
		}
	}
	serr := f.Sync()
	cerr := f.Close()
	result("filler-fsync-close", serr == nil && cerr == nil, "fsync %s, close %s", guestspec.ErrName(serr), guestspec.ErrName(cerr))

	say("GUEST FULL %d", total)
	polls, ok := waitFile(filepath.Join(mnt, "go"), slow.Scale(60*time.Second))
	result("host-signal", ok, "/mnt/go after %d polls", polls)

	if err := guestspec.DropCaches(3); err != nil {
		result("reread-first", false, "drop caches: %v", err)
	} else if b, err := os.ReadFile(first); err != nil {
		result("reread-first", false, "read %s: %s", first, guestspec.ErrName(err))
	} else if got := sha256.Sum256(b); got != sum {
		result("reread-first", false, "sha256=%x len %d, want sha256=%x", got, len(b), sum)
	} else {
		result("reread-first", true, "sha256=%x after drop_caches", got)
	}

	if err := os.Remove(filler); err != nil {
		result("write-after-free", false, "remove %s: %s", filler, guestspec.ErrName(err))
		return
	}
	// The daemon holds an O_PATH descriptor of every inode the guest
	// knows, and the FORGET that releases the filler's comes after the
	// UNLINK reply, on the high-priority queue, while the next request may
	// already run: the space returns shortly after unlink(2), not at once.
	var sf unix.Statfs_t
	t1 := time.Now()
	for {
		if err := unix.Statfs(mnt, &sf); err != nil {
			result("space-freed", false, "statfs: %s", guestspec.ErrName(err))
			return
		}
		if int64(sf.Bavail)*sf.Bsize >= total || time.Since(t1) > slow.Scale(5*time.Second) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	freed := int64(sf.Bavail) * sf.Bsize
	result("space-freed", freed >= total, "%d bytes free %.3f s after unlink (want >= %d)", freed, time.Since(t1).Seconds(), total)
	after := filepath.Join(mnt, "after")
	want := pattern(256<<10, 0xa5)
	if err := writeSync(after, want); err != nil {
		result("write-after-free", false, "write %s: %s", after, guestspec.ErrName(err))
		return
	}
	if err := guestspec.DropCaches(3); err != nil {
		result("write-after-free", false, "drop caches: %v", err)
		return
	}
	if b, err := os.ReadFile(after); err != nil || !bytes.Equal(b, want) {
		result("write-after-free", false, "read back %s: %d bytes, %s, equal %v", after, len(b), guestspec.ErrName(err), bytes.Equal(b, want))
		return
	}
	result("write-after-free", true, "filler removed, 256 KiB written and read back")
}

// nofile: the daemon runs with --rlimit-nofile 100.
func nofile(mnt string) {
	dir := filepath.Join(mnt, "nofile")
	if err := os.Mkdir(dir, 0o755); err != nil {
		result("open-1000", false, "mkdir %s: %s", dir, guestspec.ErrName(err))
		return
	}
	// The host's go-ahead arrives as data in a file opened beforehand:
	// while the daemon is out of descriptors it cannot look up a new
	// name, so polling for /mnt/go would never see it.
	sig, err := os.OpenFile(filepath.Join(mnt, "go"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		result("open-1000", false, "create the signal file: %s", guestspec.ErrName(err))
		return
	}
	defer sig.Close()

	var files []*os.File
	counts := map[string]int{}
	firstFail := -1
	t0 := time.Now()
	for i := 0; i < 1000; i++ {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("f%04d", i)), os.O_RDWR|os.O_CREATE, 0o644)
		if err == nil {
			files = append(files, f)
			continue
		}
		if firstFail < 0 {
			firstFail = i
		}
		counts[guestspec.ErrName(err)]++
	}
	var other []string
	for k, v := range counts {
		if k != "EMFILE" && k != "ENFILE" {
			other = append(other, fmt.Sprintf("%s=%d", k, v))
		}
	}
	sort.Strings(other)
	limited := counts["EMFILE"] + counts["ENFILE"]
	result("open-1000", len(other) == 0 && limited > 0 && len(files) > 0,
		"%d open, %d EMFILE, %d ENFILE, other [%s], first failure at #%d, %.1f s",
		len(files), counts["EMFILE"], counts["ENFILE"], strings.Join(other, " "), firstFail, time.Since(t0).Seconds())
	say("GUEST NOFILE open=%d emfile=%d enfile=%d", len(files), counts["EMFILE"], counts["ENFILE"])

	// Files already open keep working: no new descriptor is needed.
	if len(files) > 0 {
		f := files[0]
		msg := []byte("still served while out of descriptors\n")
		_, werr := f.WriteAt(msg, 0)
		got := make([]byte, len(msg))
		_, rerr := f.ReadAt(got, 0)
		result("io-while-limited", werr == nil && rerr == nil && bytes.Equal(got, msg),
			"write %s, read %s, equal %v", guestspec.ErrName(werr), guestspec.ErrName(rerr), bytes.Equal(got, msg))
	}

	say("GUEST HOLDING %d", len(files))
	deadline := time.Now().Add(slow.Scale(60 * time.Second))
	polls := 0
	signalled := false
	var lastErr error
	for time.Now().Before(deadline) {
		polls++
		var st unix.Stat_t
		if lastErr = unix.Fstat(int(sig.Fd()), &st); lastErr == nil && st.Size > 0 {
			signalled = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	result("host-signal", signalled, "signal file grew after %d polls (last fstat %s)", polls, guestspec.ErrName(lastErr))

	var closeErrs int
	for _, f := range files {
		if f.Close() != nil {
			closeErrs++
		}
	}
	if err := guestspec.DropCaches(3); err != nil {
		result("io-after-release", false, "drop caches: %v", err)
		return
	}
	// RELEASE and FORGET reach the daemon asynchronously: retry while it
	// still reports the limit, but nothing else.
	want := pattern(64<<10, 0x3c)
	path := filepath.Join(mnt, "after-nofile")
	t1 := time.Now()
	attempts := 0
	for {
		attempts++
		err := writeSync(path, want)
		var b []byte
		if err == nil {
			b, err = os.ReadFile(path)
		}
		if err == nil && bytes.Equal(b, want) {
			result("io-after-release", closeErrs == 0, "write+read ok at attempt %d after %.1f s; %d close errors",
				attempts, time.Since(t1).Seconds(), closeErrs)
			break
		}
		if err == nil {
			result("io-after-release", false, "read back %d bytes that differ", len(b))
			break
		}
		if e := errnoOf(err); (e != syscall.EMFILE && e != syscall.ENFILE) || time.Since(t1) > slow.Scale(15*time.Second) {
			result("io-after-release", false, "attempt %d: %s (%v)", attempts, guestspec.ErrName(err), err)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	ents, err := os.ReadDir(dir)
	say("GUEST NOFILE entries=%d readdir=%s", len(ents), guestspec.ErrName(err))
}

// hostchange: the host renames, unlinks and replaces entries the guest
// knows about while it waits.
func hostchange(mnt string) {
	d := filepath.Join(mnt, "d")
	e := filepath.Join(mnt, "e")
	f := filepath.Join(mnt, "f")
	setup := func() error {
		for _, dir := range []string{d, e, f} {
			if err := os.Mkdir(dir, 0o755); err != nil {
				return err
			}
		}
		for name, data := range map[string]string{"d/a": "content of a\n", "d/b": "content of b\n", "e/old": "old e\n"} {
			if err := writeSync(filepath.Join(mnt, name), []byte(data)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := setup(); err != nil {
		result("setup", false, "%v", err)
		return
	}
	fa, err := os.Open(filepath.Join(d, "a"))
	if err != nil {
		result("setup", false, "open d/a: %v", err)
		return
	}
	defer fa.Close()
	var eBefore unix.Stat_t
	if err := unix.Stat(e, &eBefore); err != nil {
		result("setup", false, "stat e: %v", err)
		return
	}
	if names, err := list(e); err != nil || !slices.Equal(names, []string{"old"}) {
		result("setup", false, "list e: %v %s", names, guestspec.ErrName(err))
		return
	}
	var fst unix.Stat_t
	if err := unix.Stat(f, &fst); err != nil {
		result("setup", false, "stat f: %v", err)
		return
	}
	fdF, err := unix.Open(f, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		result("setup", false, "open f: %v", err)
		return
	}
	defer unix.Close(fdF)
	result("setup", true, "d/a open, e (ino %d) listed, f open", eBefore.Ino)

	say("GUEST READY")
	polls, ok := waitFile(filepath.Join(mnt, "go"), slow.Scale(60*time.Second))
	result("host-signal", ok, "/mnt/go after %d polls", polls)
	// Let cache=auto's 1 s entry and attribute timeouts run out.
	time.Sleep(1500 * time.Millisecond)

	var st unix.Stat_t
	err = unix.Stat(filepath.Join(d, "b"), &st)
	result("renamed-away", errnoOf(err) == syscall.ENOENT, "stat d/b: %s (want ENOENT)", guestspec.ErrName(err))
	b, err := os.ReadFile(filepath.Join(d, "c"))
	result("rename-target", err == nil && string(b) == "content of b\n", "read d/c: %q %s", b, guestspec.ErrName(err))
	err = unix.Stat(filepath.Join(d, "a"), &st)
	result("unlinked-name", errnoOf(err) == syscall.ENOENT, "stat d/a: %s (want ENOENT)", guestspec.ErrName(err))
	names, err := list(d)
	result("list-d", err == nil && slices.Equal(names, []string{"c"}), "d holds %v (%s), want [c]", names, guestspec.ErrName(err))

	buf := make([]byte, 64)
	n, err := fa.ReadAt(buf, 0)
	if err == io.EOF {
		err = nil
	}
	var ast unix.Stat_t
	serr := unix.Fstat(int(fa.Fd()), &ast)
	switch {
	case err == nil && string(buf[:n]) == "content of a\n":
		result("open-unlinked", true, "read via the open fd works: %q (fstat %s, nlink %d)", buf[:n], guestspec.ErrName(serr), ast.Nlink)
	case errnoOf(err) == syscall.ESTALE:
		result("open-unlinked", true, "read via the open fd gives ESTALE")
	default:
		result("open-unlinked", false, "read via the open fd: n=%d %q %s (want the old content or ESTALE)", n, buf[:n], guestspec.ErrName(err))
	}

	var eAfter unix.Stat_t
	err = unix.Stat(e, &eAfter)
	names, lerr := list(e)
	nb, rerr := os.ReadFile(filepath.Join(e, "new1"))
	result("dir-recreated", err == nil && lerr == nil && rerr == nil && slices.Equal(names, []string{"new1", "new2"}) && string(nb) == "new e 1\n",
		"e now holds %v (%s), new1 %q (%s); ino %d -> %d (stat %s)", names, guestspec.ErrName(lerr), nb, guestspec.ErrName(rerr), eBefore.Ino, eAfter.Ino, guestspec.ErrName(err))
	_, err = os.ReadFile(filepath.Join(e, "old"))
	result("old-entry-gone", errnoOf(err) == syscall.ENOENT, "read e/old: %s (want ENOENT)", guestspec.ErrName(err))

	_, err = os.OpenFile(filepath.Join(f, "x"), os.O_WRONLY|os.O_CREATE, 0o644)
	result("create-in-removed-by-path", errnoOf(err) == syscall.ENOENT, "create f/x: %s (want ENOENT)", guestspec.ErrName(err))
	fd, err := unix.Openat(fdF, "y", unix.O_WRONLY|unix.O_CREAT, 0o644)
	if err == nil {
		unix.Close(fd)
	}
	result("create-in-removed-by-fd", errnoOf(err) == syscall.ENOENT, "openat(f fd, y, O_CREAT): %s (want ENOENT)", guestspec.ErrName(err))
	err = unix.Mkdirat(fdF, "z", 0o755)
	result("mkdir-in-removed-by-fd", errnoOf(err) == syscall.ENOENT, "mkdirat(f fd, z): %s (want ENOENT)", guestspec.ErrName(err))
	err = unix.Stat(f, &st)
	result("removed-dir-gone", errnoOf(err) == syscall.ENOENT, "stat f: %s (want ENOENT)", guestspec.ErrName(err))

	// The share still works.
	err = writeSync(filepath.Join(mnt, "still-ok"), []byte("fine\n"))
	result("share-still-works", err == nil, "write still-ok: %s", guestspec.ErrName(err))
}

func list(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, err
}

func soak(mnt string) {
	base := filepath.Join(mnt, "soak")
	for _, d := range []string{"", "renamed"} {
		if err := os.Mkdir(filepath.Join(base, d), 0o755); err != nil {
			result("soak-setup", false, "%v", err)
			return
		}
	}
	for w := 0; w < guestspec.SoakWriters; w++ {
		if err := os.Mkdir(filepath.Join(base, fmt.Sprintf("w%d", w)), 0o755); err != nil {
			result("soak-setup", false, "%v", err)
			return
		}
	}
	var wg sync.WaitGroup
	var bytesWritten, fsyncs, syncs, renames atomic.Int64
	errs := make([][]string, guestspec.SoakWriters)
	t0 := time.Now()
	for w := 0; w < guestspec.SoakWriters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail := func(format string, args ...any) {
				if len(errs[w]) < 5 {
					errs[w] = append(errs[w], fmt.Sprintf(format, args...))
				}
			}
			cs := uint64(w) + 99
			for i := 0; i < guestspec.SoakFiles; i++ {
				data := guestspec.SoakContent(w, i)
				tmp := filepath.Join(base, fmt.Sprintf("w%d/f%03d", w, i))
				f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
				if err != nil {
					fail("create %s: %s", tmp, guestspec.ErrName(err))
					continue
				}
				// Varied write sizes: 1 B to 96 KiB per call.
				for off := 0; off < len(data); {
					n := 1 + int(guestspec.Splitmix(&cs)%(96<<10))
					n = min(n, len(data)-off)
					m, err := f.Write(data[off : off+n])
					if err != nil || m != n {
						fail("write %s at %d: %d of %d, %s", tmp, off, m, n, guestspec.ErrName(err))
						break
					}
					off += n
				}
				bytesWritten.Add(int64(len(data)))
				if i%10 == 9 {
					if err := f.Sync(); err != nil {
						fail("fsync %s: %s", tmp, guestspec.ErrName(err))
					}
					fsyncs.Add(1)
				}
				if err := f.Close(); err != nil {
					fail("close %s: %s", tmp, guestspec.ErrName(err))
				}
				if i%50 == 49 {
					unix.Sync()
					syncs.Add(1)
				}
				if i%3 == 0 {
					dst := filepath.Join(base, guestspec.SoakName(w, i))
					if err := os.Rename(tmp, dst); err != nil {
						fail("rename %s: %s", tmp, guestspec.ErrName(err))
					}
					renames.Add(1)
				}
			}
			// Verify this writer's files while the others still run.
			for i := 0; i < guestspec.SoakFiles; i++ {
				p := filepath.Join(base, guestspec.SoakName(w, i))
				b, err := os.ReadFile(p)
				if err != nil || !bytes.Equal(b, guestspec.SoakContent(w, i)) {
					fail("verify %s: %d bytes (want %d), %s", p, len(b), guestspec.SoakSize(w, i), guestspec.ErrName(err))
				}
			}
		}()
	}
	wg.Wait()
	writeTime := time.Since(t0)
	var all []string
	for _, e := range errs {
		all = append(all, e...)
	}
	result("soak-write", len(all) == 0, "%d writers x %d files, %d bytes, %d fsyncs, %d syncs, %d renames, %.1f s; errors: %s",
		guestspec.SoakWriters, guestspec.SoakFiles, bytesWritten.Load(), fsyncs.Load(), syncs.Load(), renames.Load(), writeTime.Seconds(), strings.Join(all, "; "))

	if err := guestspec.DropCaches(3); err != nil {
		result("soak-verify-cold", false, "drop caches: %v", err)
		return
	}
	// Cold read-back, concurrently, after the page cache is gone.
	var bad atomic.Int64
	var badNames sync.Map
	for w := 0; w < guestspec.SoakWriters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < guestspec.SoakFiles; i++ {
				p := filepath.Join(base, guestspec.SoakName(w, i))
				b, err := os.ReadFile(p)
				if err != nil || !bytes.Equal(b, guestspec.SoakContent(w, i)) {
					bad.Add(1)
					badNames.Store(p, guestspec.ErrName(err))
				}
			}
		}()
	}
	wg.Wait()
	var badList []string
	badNames.Range(func(k, v any) bool {
		if len(badList) < 5 {
			badList = append(badList, fmt.Sprintf("%s (%s)", k, v))
		}
		return true
	})
	result("soak-verify-cold", bad.Load() == 0, "%d of %d files differ after drop_caches %s", bad.Load(), guestspec.SoakWriters*guestspec.SoakFiles, strings.Join(badList, "; "))

	// The directories hold exactly the expected names.
	want := map[string][]string{}
	for w := 0; w < guestspec.SoakWriters; w++ {
		for i := 0; i < guestspec.SoakFiles; i++ {
			dir, name := filepath.Split(guestspec.SoakName(w, i))
			want[filepath.Clean(dir)] = append(want[filepath.Clean(dir)], name)
		}
	}
	var wrong []string
	for dir, names := range want {
		sort.Strings(names)
		got, err := list(filepath.Join(base, dir))
		if err != nil || !slices.Equal(got, names) {
			wrong = append(wrong, fmt.Sprintf("%s: %d entries (%s), want %d", dir, len(got), guestspec.ErrName(err), len(names)))
		}
	}
	sort.Strings(wrong)
	result("soak-listing", len(wrong) == 0, "%d directories checked %s", len(want), strings.Join(wrong, "; "))
}
