package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
	"golang.org/x/sys/unix"
)

// The fault tests run the guest program guest/faults (one -mode per
// test) on govirtiofsd with its defaults (namespace sandbox, seccomp kill).
// Each checks that the daemon stays alive through the fault and exits 0
// once the guest powers off.

// faultGuest builds guest/faults for the guest.
func faultGuest(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "faults")
	if err := daemon.BuildStatic("./test/e2e/guest/faults", out, false); err != nil {
		t.Fatal(err)
	}
	return out
}

// faultDaemon starts dm on share and returns it with its socket and a
// restart function for vm.Config.Restart.
func faultDaemon(t *testing.T, dm daemon.Daemon, share string, extra ...string) (*daemon.Proc, string, func() (*daemon.Proc, error)) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	d, restart := startDaemon(t, dm, daemon.Options{SharedDir: share, Socket: sock, Extra: extra})
	return d, sock, restart
}

// faultBoot boots a guest that runs "/faults -mode mode" on the share
// served by d; run.Daemon() is the back-end in use (a fresh one from
// restart after a boot that stalled before init).
func faultBoot(t *testing.T, lab *vm.Lab, sock, mode string, cfg vm.Config, d *daemon.Proc, restart func() (*daemon.Proc, error)) (*vm.Run, context.Context) {
	t.Helper()
	initrd := initramfs(t, vm.InitramfsConfig{
		Busybox: lab.Busybox,
		Files:   []vm.GuestFile{{Path: "/faults", HostPath: faultGuest(t), Mode: 0o755}},
		Mount:   &vm.Mount{Tag: "myfs"},
		Command: "/faults -mode " + mode + " -mnt /mnt",
	})
	ctx := t.Context()
	cfg.Lab, cfg.Initrd, cfg.Socket, cfg.Tag = lab, initrd, sock, "myfs"
	cfg.Console = vm.NewLineLogger("console: ", t.Logf)
	return boot(t, ctx, cfg, d, restart), ctx
}

// faultServing returns the pid of the process serving the guest: the
// sandboxed child of govirtiofsd, or the daemon itself without a sandbox.
func faultServing(d *daemon.Proc) (int, error) {
	if d.Name != "govirtiofsd" {
		return d.Pid(), nil
	}
	if pid, ok := d.ChildPid(); ok {
		return pid, nil
	}
	return 0, fmt.Errorf("daemon %d has no sandboxed child", d.Pid())
}

// faultAlive reports (through report, t.Errorf or t.Logf) whether the
// daemon and its serving process still run; it returns the serving pid.
func faultAlive(d *daemon.Proc, when string, report func(string, ...any)) (int, bool) {
	select {
	case <-d.Exited():
		report("%s: %s exited (%d); output:\n%s", when, d.Name, d.ExitCode(), d.Stderr())
		return 0, false
	default:
	}
	pid, err := faultServing(d)
	if err != nil {
		report("%s: %v", when, err)
		return 0, false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		report("%s: serving process %d gone: %v", when, pid, err)
		return 0, false
	}
	// The state follows the parenthesised command name.
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		report("%s: serving process %d is dead: %s", when, pid, stat)
		return 0, false
	}
	return pid, true
}

// faultFdCount returns how many descriptors pid has open (descriptors the
// test process inherited and passed on count too).
func faultFdCount(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// faultFinish collects the guest's results, requires every name in want
// to PASS and nothing to FAIL, and the daemon to exit 0 after poweroff.
func faultFinish(t *testing.T, run *vm.Run, d *daemon.Proc, want ...string) *vm.Results {
	t.Helper()
	res, err := run.Wait()
	for _, r := range res.List {
		t.Logf("guest: %s", r)
	}
	if err != nil {
		t.Errorf("guest run: %v", err)
	}
	for _, r := range res.Failed() {
		t.Errorf("guest FAIL: %s", r)
	}
	for _, name := range want {
		if r, ok := res.Get(name); !ok {
			t.Errorf("guest reported no result %q", name)
		} else if r.Status != vm.Pass {
			t.Errorf("guest result %s", r)
		}
	}
	if len(res.Malformed) > 0 {
		t.Errorf("malformed result lines: %q", res.Malformed)
	}
	if res.ExitCode != 0 {
		t.Errorf("guest program exit code %d", res.ExitCode)
	}
	if _, ok := res.Get("init-umount"); ok {
		t.Errorf("/init could not unmount the share")
	}
	if err := d.WaitTimeout(run.Scale(15 * time.Second)); err != nil {
		t.Errorf("%s after poweroff: %v", d.Name, err)
	} else if c := d.ExitCode(); c != 0 {
		t.Errorf("%s exit code %d, want 0", d.Name, c)
	}
	out := d.Stderr()
	for _, bad := range []string{"panic", "goroutine ", "SIGSYS", "bad system call"} {
		if strings.Contains(out, bad) {
			t.Errorf("daemon output mentions %q:\n%s", bad, out)
		}
	}
	if !strings.Contains(out, "Client disconnected, shutting down") {
		t.Errorf("daemon did not log the disconnect:\n%s", out)
	}
	return res
}

func faultSignal(t *testing.T, share string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(share, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestENOSPC fills a 64 MiB tmpfs share from the guest: the write that
// does not fit fails with ENOSPC (not EIO, no hang), a file written
// before keeps its content, and space freed by a delete is usable again.
func TestENOSPC(t *testing.T) {
	lab := needLab(t)
	share := t.TempDir()
	if err := unix.Mount("tmpfs", share, "tmpfs", 0, "size=64m,mode=0755"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(share, 0); err != nil {
			unix.Unmount(share, unix.MNT_DETACH)
		}
	})
	d, sock, restart := faultDaemon(t, ours(t), share)
	start := time.Now()
	run, ctx := faultBoot(t, lab, sock, "enospc", vm.Config{}, d, restart)
	d = run.Daemon()
	if err := run.WaitConsole(ctx, "GUEST FULL"); err != nil {
		t.Fatal(err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(share, &sfs); err != nil {
		t.Fatal(err)
	}
	free := sfs.Bavail * uint64(sfs.Bsize)
	t.Logf("share full: %d bytes free of %d", free, sfs.Blocks*uint64(sfs.Bsize))
	if free >= 1<<20 {
		t.Errorf("the guest saw ENOSPC with %d bytes still free on the share", free)
	}
	if pid, ok := faultAlive(d, "share full", t.Errorf); ok {
		t.Logf("daemon alive while the share is full (serving pid %d)", pid)
	}
	faultSignal(t, share)
	res := faultFinish(t, run, d, "first-write", "fill-enospc", "filler-size", "refill-enospc", "full-new-file",
		"filler-fsync-close", "host-signal", "reread-first", "space-freed", "write-after-free")
	t.Logf("guest ran %v", time.Since(start).Round(time.Millisecond))

	r, _ := res.Get("first-write")
	guestSum, ok := strings.CutPrefix(r.Detail, "sha256=")
	if !ok || len(guestSum) != 64 {
		t.Fatalf("no sha256 in the guest's first-write result %q", r.Detail)
	}
	b, err := os.ReadFile(filepath.Join(share, "first"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	if len(b) != 4<<20 || hex.EncodeToString(sum[:]) != guestSum {
		t.Errorf("host first: %d bytes sha256=%x, guest wrote 4 MiB sha256=%s", len(b), sum, guestSum)
	} else {
		t.Logf("host first: 4 MiB sha256=%x matches the guest", sum)
	}
	if b, err := os.ReadFile(filepath.Join(share, "after")); err != nil || !bytes.Equal(b, faultPattern(256<<10, 0xa5)) {
		t.Errorf("host after: %d bytes, %v, want the 256 KiB pattern", len(b), err)
	}
	for _, gone := range []string{"filler", "more"} {
		if _, err := os.Lstat(filepath.Join(share, gone)); !os.IsNotExist(err) {
			t.Errorf("host %s: %v, want it removed", gone, err)
		}
	}
}

// faultPattern is the guest's pattern().
func faultPattern(n int, salt byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i>>11) ^ salt
	}
	return b
}

// TestRlimitNofile runs the daemon with a small --rlimit-nofile and has
// the guest hold 1000 newly created files open: the opens past the limit
// fail with EMFILE or ENFILE (never EIO, no hang), the daemon keeps
// serving, and once the guest closes them and drops its caches new files
// work. Both daemons refuse a limit below what they reserve for themselves
// (610, as virtiofsd computes it); the test asks for 100, and on that
// refusal runs with the least named plus 100 for the guest, which the
// guest's 1000 files exceed.
func TestRlimitNofile(t *testing.T) {
	lab := needLab(t)
	rlimitNofile(t, lab, ours(t), 100, true)
	// The reference virtiofsd is said to die here; run it too, for the
	// record, without judging it.
	t.Run("reference", func(t *testing.T) {
		rlimitNofile(t, lab, daemon.Reference(lab.VirtiofsdRef), 100, false)
	})
}

var refLeastNofile = regexp.MustCompile(`must be at least (\d+)`)

func rlimitNofile(t *testing.T, lab *vm.Lab, dm daemon.Daemon, limit int, strict bool) {
	report := t.Errorf
	if !strict {
		report = t.Logf
	}
	share := t.TempDir()
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	opts := daemon.Options{SharedDir: share, Socket: sock, Extra: []string{"--rlimit-nofile", strconv.Itoa(limit)},
		Log: vm.NewLineLogger(dm.Name+": ", t.Logf)}
	d, err := dm.Start(opts)
	if err != nil {
		t.Logf("%s does not start with --rlimit-nofile %d: %v", dm.Name, limit, err)
		if m := refLeastNofile.FindStringSubmatch(err.Error()); m != nil {
			if least, _ := strconv.Atoi(m[1]); least > limit && least+limit < 1000 {
				t.Logf("%s: retrying with --rlimit-nofile %d (its least plus %d for the guest)", dm.Name, least+limit, limit)
				rlimitNofile(t, lab, dm, least+limit, strict)
				return
			}
		}
		report("%s: does not start with --rlimit-nofile %d and names no least limit below the guest's 1000 files: %v", dm.Name, limit, err)
		return
	}
	t.Cleanup(d.Stop)
	restart := func() (*daemon.Proc, error) {
		p, err := dm.Start(opts)
		if err == nil {
			t.Cleanup(p.Stop)
		}
		return p, err
	}
	start := time.Now()
	run, ctx := faultBoot(t, lab, sock, "nofile", vm.Config{}, d, restart)
	d = run.Daemon()
	if err := run.WaitConsole(ctx, "GUEST HOLDING"); err != nil {
		report("%s: %v", dm.Name, err)
		faultAlive(d, "no GUEST HOLDING", report)
		if !strict {
			_ = run.Kill()
			<-run.Exited()
			t.Logf("%s: exited=%v code %d; output tail:\n%s", dm.Name, faultExited(d), d.ExitCode(), faultTail(d.Stderr(), 15))
		}
		return
	}
	if pid, ok := faultAlive(d, "guest holding files", report); ok {
		var lim unix.Rlimit
		limErr := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &lim)
		t.Logf("%s: serving pid %d alive with %d fds open (RLIMIT_NOFILE %d/%d %v)", dm.Name, pid, faultFdCount(pid), lim.Cur, lim.Max, limErr)
		if strict && lim.Cur != uint64(limit) {
			t.Errorf("serving process RLIMIT_NOFILE %d, want %d", lim.Cur, limit)
		}
	}
	// The guest holds /mnt/go open and waits for data in it (the daemon
	// cannot look up a new name while out of descriptors).
	if err := os.WriteFile(filepath.Join(share, "go"), []byte("go\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !strict {
		res, err := run.Wait()
		for _, r := range res.List {
			t.Logf("%s guest: %s", dm.Name, r)
		}
		t.Logf("%s: guest run err %v; daemon exited=%v code %d", dm.Name, err, faultExited(d), d.ExitCode())
		if err := d.WaitTimeout(run.Scale(15 * time.Second)); err != nil {
			t.Logf("%s after poweroff: %v", dm.Name, err)
		}
		return
	}
	res := faultFinish(t, run, d, "open-1000", "io-while-limited", "host-signal", "io-after-release")
	t.Logf("guest ran %v", time.Since(start).Round(time.Millisecond))
	opened := -1
	if r, ok := res.Get("open-1000"); ok {
		t.Logf("%s: %s", dm.Name, r.Detail)
		fmt.Sscanf(r.Detail, "%d open", &opened)
	}
	// A refused create leaves no file behind, even when the file was
	// made and only the lookup after it ran out of descriptors.
	ents, err := os.ReadDir(filepath.Join(share, "nofile"))
	t.Logf("host: %d files in nofile/ (%v), guest opened %d", len(ents), err, opened)
	if err != nil || len(ents) != opened {
		t.Errorf("host: %d files in nofile/ (%v) for %d opened by the guest; refused creates left files behind", len(ents), err, opened)
	}
	if !strings.Contains(d.Stderr(), "No more file descriptors available") {
		t.Errorf("%s did not tell the operator it ran out of descriptors", dm.Name)
	}
	if b, err := os.ReadFile(filepath.Join(share, "after-nofile")); err != nil || !bytes.Equal(b, faultPattern(64<<10, 0x3c)) {
		t.Errorf("host after-nofile: %d bytes, %v", len(b), err)
	}
}

func faultExited(d *daemon.Proc) bool {
	select {
	case <-d.Exited():
		return true
	default:
		return false
	}
}

func faultTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestHostChangesUnderGuest changes the share behind the guest's back:
// a rename, an unlink of an open file, a directory replaced by a new one
// and a directory removed. Once the guest's 1 s entry timeouts ran out
// it must see the host's view, and the daemon must not mind.
func TestHostChangesUnderGuest(t *testing.T) {
	lab := needLab(t)
	share := t.TempDir()
	d, sock, restart := faultDaemon(t, ours(t), share)
	start := time.Now()
	run, ctx := faultBoot(t, lab, sock, "hostchange", vm.Config{}, d, restart)
	d = run.Daemon()
	if err := run.WaitConsole(ctx, "GUEST READY"); err != nil {
		t.Fatal(err)
	}
	p := func(name string) string { return filepath.Join(share, name) }
	steps := []func() error{
		func() error { return os.Rename(p("d/b"), p("d/c")) },
		func() error { return os.Remove(p("d/a")) },
		func() error { return os.RemoveAll(p("e")) },
		func() error { return os.Mkdir(p("e"), 0o755) },
		func() error { return os.WriteFile(p("e/new1"), []byte("new e 1\n"), 0o644) },
		func() error { return os.WriteFile(p("e/new2"), []byte("new e 2\n"), 0o644) },
		func() error { return os.Remove(p("f")) },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("host change %d: %v", i, err)
		}
	}
	faultAlive(d, "after the host changes", t.Errorf)
	faultSignal(t, share)
	if err := run.WaitConsole(ctx, "GUEST RESULT share-still-works"); err == nil {
		faultAlive(d, "after the guest's checks", t.Errorf)
	}
	res := faultFinish(t, run, d, "setup", "host-signal", "renamed-away", "rename-target", "unlinked-name", "list-d",
		"open-unlinked", "dir-recreated", "old-entry-gone", "create-in-removed-by-path", "create-in-removed-by-fd",
		"mkdir-in-removed-by-fd", "removed-dir-gone", "share-still-works")
	t.Logf("guest ran %v", time.Since(start).Round(time.Millisecond))
	if r, ok := res.Get("open-unlinked"); ok {
		t.Logf("unlinked-but-open read: %s", r.Detail)
	}
	if _, err := os.Lstat(p("f")); !os.IsNotExist(err) {
		t.Errorf("host f: %v, want it still gone", err)
	}
	for dir, want := range map[string][]string{"d": {"c"}, "e": {"new1", "new2"}} {
		ents, err := os.ReadDir(p(dir))
		var got []string
		for _, e := range ents {
			got = append(got, e.Name())
		}
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("host %s holds %v (%v), want %v", dir, got, err, want)
		}
	}
}

// TestSoak runs 8 concurrent guest writers over 4 request queues and 2
// vCPUs: 1600 files of 1 B to 256 KiB with deterministic content, every
// third renamed into a shared directory, fsyncs and syncs along the way.
// The guest verifies them warm and cold; the host then regenerates every
// file and compares: no corruption is tolerated.
func TestSoak(t *testing.T) {
	lab := needLab(t)
	share := t.TempDir()
	d, sock, restart := faultDaemon(t, ours(t), share)
	start := time.Now()
	run, ctx := faultBoot(t, lab, sock, "soak", vm.Config{NumRequestQueues: 4, SMP: 2}, d, restart)
	d = run.Daemon()
	// Watch the daemon while the writers run.
	done := make(chan struct{})
	watched := make(chan int)
	go func() {
		checks := 0
		defer func() { watched <- checks }()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
				if strings.Contains(run.Console(), "GUEST RESULT soak-listing") {
					return
				}
				if _, ok := faultAlive(d, "during the soak", t.Errorf); !ok {
					return
				}
				checks++
			}
		}
	}()
	err := run.WaitConsole(ctx, "GUEST RESULT soak-listing")
	close(done)
	checks := <-watched
	if err != nil {
		t.Errorf("%v", err)
	}
	res := faultFinish(t, run, d, "soak-write", "soak-verify-cold", "soak-listing")
	guestTime := time.Since(start)
	t.Logf("daemon alive at %d checks during the soak", checks)
	if r, ok := res.Get("soak-write"); ok {
		t.Logf("guest: %s", r.Detail)
	}

	// Host side: every file under its final name, exact content, nothing
	// else.
	base := filepath.Join(share, "soak")
	var files, corrupt int
	var total int64
	want := map[string]bool{}
	for w := 0; w < guestspec.SoakWriters; w++ {
		for i := 0; i < guestspec.SoakFiles; i++ {
			name := guestspec.SoakName(w, i)
			want[name] = true
			b, err := os.ReadFile(filepath.Join(base, name))
			files++
			total += int64(len(b))
			if exp := guestspec.SoakContent(w, i); err != nil || !bytes.Equal(b, exp) {
				corrupt++
				if corrupt <= 10 {
					t.Errorf("host %s: %d bytes (want %d), %v, first difference at %d", name, len(b), len(exp), err, faultFirstDiff(b, exp))
				}
			}
		}
	}
	var extra []string
	filepath.WalkDir(base, func(path string, e os.DirEntry, err error) error {
		if err != nil {
			extra = append(extra, fmt.Sprintf("%s: %v", path, err))
			return nil
		}
		rel, _ := filepath.Rel(base, path)
		if !e.IsDir() && !want[rel] {
			extra = append(extra, rel)
		}
		return nil
	})
	sort.Strings(extra)
	if len(extra) > 0 {
		t.Errorf("host: unexpected entries under soak/: %v", extra)
	}
	if corrupt > 0 {
		t.Errorf("host: %d of %d files corrupt or missing", corrupt, files)
	}
	t.Logf("soak: %d files, %.1f MiB, %d corrupt, %.1f s", files, float64(total)/(1<<20), corrupt, guestTime.Seconds())
}

func faultFirstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}
