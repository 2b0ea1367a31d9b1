package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
)

// The DAX tests boot a guest on QEMU 11.1's generic vhost-user device,
// which gives it a DAX window our daemon maps files into with SHMEM_MAP,
// and run the guest program guest/dax in one mode per test. QEMU 11.1
// refuses to map past the end of a file, so what the guest can read
// through the window depends on file sizes; the README's DAX section says
// what to expect, and these tests hold the daemon to it.

const (
	kib = 1 << 10
	mib = 1 << 20
)

// daxPat is the guest program's pat: byte seed + 7p + p>>12 at offset p.
func daxPat(seed byte, off, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		p := off + i
		b[i] = seed + byte(p*7) + byte(p>>12)
	}
	return b
}

func shaHex(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// daxRun is one boot of the guest program in a mode.
type daxRun struct {
	t     *testing.T
	share string
	d     *daemon.Proc
	run   *vm.Run
	res   *vm.Results
}

// daxBoot starts the daemon on share with a 64 MiB window and boots the
// guest program with args; during the run, host (if set) may act on the
// guest's requests. It returns once the guest is done and the daemon has
// exited.
func daxBoot(t *testing.T, share string, args string, host func(ctx context.Context, r *vm.Run)) *daxRun {
	t.Helper()
	return daxBootLog(t, share, args, host, nil)
}

// daxBootLog is daxBoot with the daemon at debug level, its log lines
// going to daemonLog instead of the test log.
func daxBootLog(t *testing.T, share string, args string, host func(ctx context.Context, r *vm.Run), daemonLog func(string)) *daxRun {
	t.Helper()
	lab := needLab(t)
	guest := filepath.Join(t.TempDir(), "dax")
	if err := daemon.BuildStatic("./test/e2e/guest/dax", guest, false); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	dopts := daemon.Options{SharedDir: share, Socket: sock,
		Extra: []string{"--tag", "myfs", "--dax-window-size", "64M"}, Log: vm.NewLineLogger("daemon: ", t.Logf)}
	if daemonLog != nil {
		dopts.Extra = append(dopts.Extra, "--log-level", "debug")
		dopts.Log = vm.NewLineLogger("", func(format string, args ...any) { daemonLog(fmt.Sprintf(format, args...)) })
	}
	d, restart := startDaemon(t, ours(t), dopts)
	initrd := initramfs(t, vm.InitramfsConfig{
		Busybox: lab.Busybox,
		Files:   []vm.GuestFile{{Path: "/daxguest", HostPath: guest, Mode: 0o755}},
		Command: "/daxguest " + args,
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	run := boot(t, ctx, vm.Config{Lab: lab, Initrd: initrd, Socket: sock, DAXDevice: true,
		Console: vm.NewLineLogger("console: ", t.Logf)}, d, restart)
	d = run.Daemon()
	if host != nil {
		go host(ctx, run)
	}
	res, err := run.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest ran %v (QEMU %v)", time.Since(start).Round(100*time.Millisecond), run.Elapsed().Round(100*time.Millisecond))
	if e := run.Stderr(); e != "" {
		t.Logf("QEMU stderr:\n%s", e)
	}
	if !res.Done {
		t.Errorf("the guest did not finish")
	}
	if err := d.WaitTimeout(run.Scale(10 * time.Second)); err != nil || d.ExitCode() != 0 {
		t.Errorf("daemon exit: %v, code %d", err, d.ExitCode())
	}
	return &daxRun{t: t, share: share, d: d, run: run, res: res}
}

// get returns a guest result's detail fields (k=v), failing the test when
// the result is missing or failed.
func (r *daxRun) get(name string) map[string]string {
	r.t.Helper()
	x, ok := r.res.Get(name)
	if !ok {
		r.t.Errorf("guest %s: no result", name)
		return map[string]string{}
	}
	if x.Status != vm.Pass {
		r.t.Errorf("guest %s: %s", name, x)
	}
	m := map[string]string{}
	for _, f := range strings.Fields(x.Detail) {
		if k, v, ok := strings.Cut(f, "="); ok {
			m[k] = v
		}
	}
	return m
}

// wantRead checks a reportRead result: n bytes read, ending in errno
// (ok for EOF), with the sha256 of data[:n].
func (r *daxRun) wantRead(name string, data []byte, n int, errno string) {
	r.t.Helper()
	m := r.get(name)
	if m["n"] != strconv.Itoa(n) || m["err"] != errno || m["sha"] != shaHex(data[:n]) {
		r.t.Errorf("guest %s: read %s bytes ending in %s (sha %.12s), want %d bytes ending in %s (sha %.12s)",
			name, m["n"], m["err"], m["sha"], n, errno, shaHex(data[:n]))
	}
}

func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDAX mounts the share with dax=always and checks, with one boot:
// reads of files whose size is a multiple of 2 MiB, of the page, and of
// neither (the range holding a partial last page fails with EIO, never
// reads zeros); shared mappings read and written; write(2) in place;
// host writes in place and appends seen without dropping caches; guest
// appends into a clamped range; truncation of a mapped file and growth
// again; unmount and remount.
func TestDAX(t *testing.T) {
	share := t.TempDir()
	files := map[string][]byte{
		"big.bin":     daxPat(1, 0, 6*mib),
		"pages.bin":   daxPat(2, 0, 3*mib+8*kib),
		"odd.bin":     daxPat(3, 0, 3*mib+100),
		"small.txt":   []byte("hello dax\n"),
		"empty":       nil,
		"rw.bin":      daxPat(4, 0, 4*mib),
		"inplace.bin": daxPat(5, 0, 4*mib),
		"hostw.bin":   daxPat(6, 0, mib),
		"app.bin":     daxPat(7, 0, mib),
		"tr.bin":      daxPat(8, 0, 4*mib),
	}
	writeFiles(t, share, files)
	hostw := filepath.Join(share, "hostw.bin")
	host := func(ctx context.Context, run *vm.Run) {
		step := func(n int, act func() error) {
			if err := run.WaitConsole(ctx, fmt.Sprintf("GUEST WAIT %d ", n)); err != nil {
				return
			}
			if err := act(); err != nil {
				t.Errorf("host step %d: %v", n, err)
			}
		}
		appendTo := func(data []byte) error {
			f, err := os.OpenFile(hostw, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.Write(data)
			return err
		}
		step(1, func() error {
			f, err := os.OpenFile(hostw, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte("HOST WROTE THIS!"), 8192)
			return err
		})
		step(2, func() error { return appendTo(daxPat(6, mib, 64*kib)) })
		step(3, func() error { return appendTo(daxPat(6, mib+64*kib, 100)) })
	}
	r := daxBoot(t, share, "-mode always", host)

	r.get("mount")
	r.wantRead("read-big.bin", files["big.bin"], 6*mib, "ok")
	r.wantRead("read-pages.bin", files["pages.bin"], 3*mib+8*kib, "ok")
	// The last range of a file whose size is not a page multiple cannot
	// be mapped: reads stop there with EIO.
	r.wantRead("read-odd.bin", files["odd.bin"], 2*mib, "EIO")
	r.wantRead("read-small.txt", files["small.txt"], 0, "EIO")
	r.wantRead("read-empty", nil, 0, "ok")
	for name, want := range map[string][2]string{
		"mmap-read-pages.bin": {shaHex(files["pages.bin"]), "-1"},
		"mmap-read-odd.bin":   {shaHex(files["odd.bin"][:2*mib]), strconv.Itoa(2 * mib)},
	} {
		if m := r.get(name); m["sha"] != want[0] || m["fault"] != want[1] {
			t.Errorf("guest %s: sha %.12s fault at %s, want sha %.12s fault at %s", name, m["sha"], m["fault"], want[0], want[1])
		}
	}
	// Guest writes through a shared mapping and with write(2), as the
	// host sees them.
	for name, w := range map[string]struct {
		off  int
		data []byte
	}{
		"rw.bin":      {mib + 10, daxPat(40, mib+10, 64*kib)},
		"inplace.bin": {3*mib + 5, daxPat(50, 3*mib+5, 100*kib)},
	} {
		want := bytes.Clone(files[name])
		copy(want[w.off:], w.data)
		if got, err := os.ReadFile(filepath.Join(share, name)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("host's %s after the guest wrote it: %d bytes, %v, equal %v", name, len(got), err, bytes.Equal(got, want))
		}
	}
	r.get("mmap-write")
	r.get("write-inplace")
	// Host writes the guest sees through its mapping.
	r.wantRead("read-hostw.bin", files["hostw.bin"], mib, "ok")
	r.get("host-write")
	r.get("host-append")
	if x, ok := r.res.Get("host-append-odd"); ok {
		t.Logf("host growth into a partial page under a clamped range (known limitation): %s", x.Detail)
	} else {
		t.Errorf("guest host-append-odd: no result")
	}
	// Guest appends: whole pages grow the mapping, a partial page into
	// the clamped range is refused.
	r.wantRead("read-app.bin", files["app.bin"], mib, "ok")
	r.get("guest-append")
	if m := r.get("guest-append-odd"); m["err"] != "EIO" || m["size"] != strconv.Itoa(mib+8*kib) {
		t.Errorf("guest append of a partial page: %v, want EIO and the size unchanged", m)
	}
	wantApp := append(bytes.Clone(files["app.bin"]), daxPat(7, mib, 8*kib)...)
	if got, err := os.ReadFile(filepath.Join(share, "app.bin")); err != nil || !bytes.Equal(got, wantApp) {
		t.Errorf("host's app.bin: %d bytes, %v", len(got), err)
	}
	r.get("truncate-mapped")
	r.get("truncate-regrow")
	if st, err := os.Stat(filepath.Join(share, "tr.bin")); err != nil || st.Size() != 3*mib {
		t.Errorf("host's tr.bin after the guest's truncations: %v", err)
	}
	r.get("umount")
	r.get("remount")
	r.wantRead("reread-big.bin", files["big.bin"], 6*mib, "ok")
}

// setXflagDAX sets FS_XFLAG_DAX on path, as chattr +x does; the share's
// filesystem must hold it (ext4 and xfs do).
func setXflagDAX(t *testing.T, path string) {
	t.Helper()
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	var x [28]byte // struct fsxattr, fsx_xflags first
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), 0x801c581f, uintptr(unsafe.Pointer(&x[0]))); e != 0 {
		t.Fatalf("FS_IOC_FSGETXATTR on %s: %v", path, e)
	}
	x[1] |= 0x80 // FS_XFLAG_DAX (0x8000)
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), 0x401c5820, uintptr(unsafe.Pointer(&x[0]))); e != 0 {
		t.Fatalf("FS_IOC_FSSETXATTR on %s: %v (the share's filesystem must hold FS_XFLAG_DAX)", path, e)
	}
}

// TestDAXInode mounts with dax=inode, then with no dax= option (which Linux
// treats alike): the file carrying FS_XFLAG_DAX on the host, and the one
// made in a directory carrying it, are DAX in the guest (statx
// STATX_ATTR_DAX); the other is not; all read right.
func TestDAXInode(t *testing.T) {
	share := t.TempDir()
	files := map[string][]byte{
		"on.bin":  daxPat(9, 0, mib),
		"off.bin": daxPat(10, 0, mib),
	}
	writeFiles(t, share, files)
	setXflagDAX(t, filepath.Join(share, "on.bin"))
	if err := os.Mkdir(filepath.Join(share, "daxdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	setXflagDAX(t, filepath.Join(share, "daxdir"))
	files["daxdir/inherited.bin"] = daxPat(11, 0, 2*mib)
	writeFiles(t, share, map[string][]byte{"daxdir/inherited.bin": files["daxdir/inherited.bin"]})
	r := daxBoot(t, share, "-mode inode", nil)
	r.get("mount")
	r.get("mount-default")
	for _, prefix := range []string{"inode-", "default-"} {
		for name, dax := range map[string]string{"on.bin": "true", "off.bin": "false", "daxdir/inherited.bin": "true"} {
			res := prefix + strings.ReplaceAll(name, "/", "-")
			r.wantRead(res, files[name], len(files[name]), "ok")
			if m := r.get(res); m["dax"] != dax {
				t.Errorf("guest %s: dax=%s, want %s", res, m["dax"], dax)
			}
		}
	}
}

// TestDAXReclaim reads 512 MiB of files through the 64 MiB window, so that
// the guest must reclaim ranges (REMOVEMAPPING) to map others, and checks
// every byte. QEMU tells the daemon of each mapping it adds to or removes
// from the window as a memory region (ADD_MEM_REG, REM_MEM_REG), which
// counts the maps and unmaps. Under TCG the guest reads about 20 MiB/s
// (sha256 included), so one pass takes some 25 s.
func TestDAXReclaim(t *testing.T) {
	const nFiles, fileSize = 16, 32 * mib // 512 MiB against a 64 MiB window
	share := t.TempDir()
	files := map[string][]byte{}
	for i := range nFiles {
		files[fmt.Sprintf("r%d", i)] = daxPat(byte(20+i), 0, fileSize)
	}
	writeFiles(t, share, files)
	var mu sync.Mutex
	var adds, rems, live int
	r := daxBootLog(t, share, fmt.Sprintf("-mode reclaim -files %d", nFiles), nil, func(line string) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case strings.Contains(line, "ADD_MEM_REG"):
			adds++
			live = max(live, adds-rems)
		case strings.Contains(line, "REM_MEM_REG"):
			rems++
		case strings.Contains(line, " DEBUG "):
		default:
			t.Logf("daemon: %s", line)
		}
	})
	r.get("mount")
	for i := range nFiles {
		name := fmt.Sprintf("r%d", i)
		r.wantRead(fmt.Sprintf("reclaim-1-%s", name), files[name], fileSize, "ok")
	}
	for _, l := range strings.Split(r.run.Console(), "\n") {
		if strings.Contains(l, "GUEST RATE") {
			t.Log(strings.TrimSpace(l))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// Guest RAM counts for a few regions, every 2 MiB range for one; the
	// window holds 32 ranges at a time.
	t.Logf("memory regions added %d, removed %d, at most %d at once", adds, rems, live)
	if ranges := nFiles * fileSize / (2 * mib); adds < ranges || rems < ranges-32 || live > 32+8 {
		t.Errorf("%d maps and %d unmaps for %d ranges through a 32-range window, %d regions at once: no reclaim?", adds, rems, ranges, live)
	}
}
