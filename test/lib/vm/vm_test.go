package vm

import (
	"context"
	"crypto/md5"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"
)

// needLab returns the lab or fails the test naming what is missing.
func needLab(t *testing.T) *Lab {
	t.Helper()
	lab, err := FindLab()
	if err != nil {
		t.Fatal(err)
	}
	return lab
}

var (
	helloOnce          sync.Once
	helloBin, helloTst string
	helloErr           error
	helloDir           string
)

// helloBinaries builds guest/hello as a program and as a test binary,
// once per test process.
func helloBinaries(t *testing.T) (bin, testBin string) {
	t.Helper()
	helloOnce.Do(func() {
		helloDir, helloErr = os.MkdirTemp("", "vm-hello-")
		if helloErr != nil {
			return
		}
		helloBin = filepath.Join(helloDir, "hello")
		helloTst = filepath.Join(helloDir, "hello.test")
		if helloErr = daemon.BuildStatic("./test/lib/vm/guest/hello", helloBin, false); helloErr != nil {
			return
		}
		helloErr = daemon.BuildStatic("./test/lib/vm/guest/hello", helloTst, true, "guest")
	})
	if helloErr != nil {
		t.Fatal(helloErr)
	}
	return helloBin, helloTst
}

func TestMain(m *testing.M) {
	fakeMain() // this binary may be a fake QEMU or back-end (watch_test.go)
	code := m.Run()
	if n := RetriedBoots() - fakeRetries.Load(); n > 0 {
		fmt.Fprintf(os.Stderr, "vm: %d real boot(s) stalled before the guest's init and were retried (the tests' \"!!! RETRYING\" lines say why)\n", n)
	}
	if helloDir != "" {
		os.RemoveAll(helloDir)
	}
	os.Exit(code)
}

var (
	oursOnce sync.Once
	oursBin  string
	oursErr  error
)

// daemons returns the back-ends every boot test runs against: govirtiofsd
// (built once per test process) and the reference virtiofsd.
func daemons(t *testing.T, lab *Lab) []daemon.Daemon {
	t.Helper()
	oursOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vm-ours-")
		if err != nil {
			oursErr = err
			return
		}
		oursBin = filepath.Join(dir, "govirtiofsd")
		oursErr = daemon.BuildOurs(oursBin)
	})
	if oursErr != nil {
		t.Fatal(oursErr)
	}
	return []daemon.Daemon{daemon.Ours(oursBin), daemon.Reference(lab.VirtiofsdRef)}
}

// startDaemon starts d on share and returns it with its socket path and a
// function that starts another alike (Config.Restart).
func startDaemon(t *testing.T, d daemon.Daemon, share string, extra ...string) (*daemon.Proc, string, func() (*daemon.Proc, error)) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	restart := func() (*daemon.Proc, error) {
		p, err := d.Start(daemon.Options{
			SharedDir: share,
			Socket:    sock,
			Extra:     extra,
			Log:       NewLineLogger(d.Name+": ", t.Logf),
		})
		if err == nil {
			t.Cleanup(p.Stop)
		}
		return p, err
	}
	p, err := restart()
	if err != nil {
		t.Fatal(err)
	}
	return p, sock, restart
}

// bootOn boots cfg on the back-end p (restart makes a fresh one for a
// retried boot) with the harness's notes in the test log, and kills QEMU
// at cleanup. run.Daemon() is the back-end in use.
func bootOn(t *testing.T, ctx context.Context, cfg Config, p *daemon.Proc, restart func() (*daemon.Proc, error)) *Run {
	t.Helper()
	cfg.Daemon, cfg.Restart, cfg.Logf = p, restart, t.Logf
	run, err := Boot(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = run.Kill(); <-run.Exited() })
	return run
}

func mustBuildInitramfs(t *testing.T, cfg InitramfsConfig) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "initrd.gz")
	if err := BuildInitramfs(out, cfg); err != nil {
		t.Fatal(err)
	}
	return out
}

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func checkResults(t *testing.T, res *Results, want ...string) {
	t.Helper()
	for _, r := range res.List {
		t.Logf("guest: %s", r)
	}
	for _, r := range res.Failed() {
		t.Errorf("guest FAIL: %s", r)
	}
	for _, name := range want {
		r, ok := res.Get(name)
		if !ok {
			t.Errorf("guest reported no result %q", name)
		} else if r.Status != Pass {
			t.Errorf("guest result %s", r)
		}
	}
	if len(res.Malformed) > 0 {
		t.Errorf("malformed result lines: %q", res.Malformed)
	}
}

// TestSmoke boots a guest on each daemon: /init mounts the share, a shell
// script cats a host file and writes a new one, and static Go binaries (a
// program and a test binary) built by BuildGuestBinary run in the guest.
// The host then checks the write and that the daemon exited 0 once QEMU
// powered off.
func TestSmoke(t *testing.T) {
	lab := needLab(t)
	for _, dm := range daemons(t, lab) {
		t.Run(dm.Name, func(t *testing.T) { smoke(t, lab, dm) })
	}
}

func smoke(t *testing.T, lab *Lab, dm daemon.Daemon) {
	hello, helloTest := helloBinaries(t)
	share := t.TempDir()
	if err := os.WriteFile(filepath.Join(share, "hello.txt"), []byte("hello from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, sock, restart := startDaemon(t, dm, share)

	initrd := mustBuildInitramfs(t, InitramfsConfig{
		Busybox: lab.Busybox,
		Files: []GuestFile{
			{Path: "/smoke.sh", Data: readTestdata(t, "smoke.sh"), Mode: 0o755},
			{Path: "/hello", HostPath: hello},
			{Path: "/hello.test", HostPath: helloTest},
		},
		Mount:   &Mount{Tag: "myfs"},
		Command: "sh /smoke.sh",
	})
	start := time.Now()
	run := bootOn(t, t.Context(), Config{
		Lab:     lab,
		Initrd:  initrd,
		Socket:  sock,
		Tag:     "myfs",
		Console: NewLineLogger("console: ", t.Logf),
	}, d, restart)
	d = run.Daemon()
	res, err := run.Wait()
	t.Logf("guest ran %v (QEMU %v)", time.Since(start).Round(time.Millisecond), run.Elapsed().Round(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	checkResults(t, res, "cat-host-file", "readdir", "write-file", "mount-type", "go-guest", "go-test-binary")
	if _, ok := res.Get("init-umount"); ok {
		t.Errorf("/init could not unmount the share")
	}
	if res.ExitCode != 0 {
		t.Errorf("guest command exit code %d", res.ExitCode)
	}
	if !strings.Contains(run.Console(), "GUEST MOUNTED myfs /mnt") {
		t.Errorf("console lacks the /init mount line")
	}

	b, err := os.ReadFile(filepath.Join(share, "from-guest.txt"))
	if err != nil {
		t.Errorf("the guest's write did not land: %v", err)
	} else if string(b) != "written by the guest\n" {
		t.Errorf("from-guest.txt = %q", b)
	}

	if err := d.WaitTimeout(run.Scale(15 * time.Second)); err != nil {
		t.Errorf("%s after poweroff: %v", dm.Name, err)
	}
	if c := d.ExitCode(); c != 0 {
		t.Errorf("%s exit code %d, want 0", dm.Name, c)
	}
	for _, line := range []string{"Client connected, servicing requests", "Client disconnected, shutting down"} {
		if !strings.Contains(d.Stderr(), line) {
			t.Errorf("%s never logged %q:\n%s", dm.Name, line, d.Stderr())
		}
	}
}

// TestMemoryHotplugQMP hot-adds a memfd-backed pc-dimm over QMP while the
// guest has the share mounted (the back-end sees ADD_MEM_REG), then checks
// that the guest saw the memory and the share kept working with the new
// memory table.
func TestMemoryHotplugQMP(t *testing.T) {
	lab := needLab(t)
	for _, dm := range daemons(t, lab) {
		t.Run(dm.Name, func(t *testing.T) { hotplug(t, lab, dm) })
	}
}

func hotplug(t *testing.T, lab *Lab, dm daemon.Daemon) {
	share := t.TempDir()
	d, sock, restart := startDaemon(t, dm, share, "--log-level", "debug")
	initrd := mustBuildInitramfs(t, InitramfsConfig{
		Busybox: lab.Busybox,
		Files:   []GuestFile{{Path: "/hotplug.sh", Data: readTestdata(t, "hotplug.sh"), Mode: 0o755}},
		Mount:   &Mount{Tag: "myfs"},
		Command: "sh /hotplug.sh",
	})
	qmpSock := filepath.Join(t.TempDir(), "qmp.sock")
	ctx := t.Context()
	run := bootOn(t, ctx, Config{
		Lab:       lab,
		Initrd:    initrd,
		Socket:    sock,
		Tag:       "myfs",
		Memory:    "1G",
		Slots:     2,
		MaxMem:    "2G",
		QMPSocket: qmpSock,
		Console:   NewLineLogger("console: ", t.Logf),
	}, d, restart)
	d = run.Daemon()

	qmp, err := run.DialQMP(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer qmp.Close()
	if _, err := qmp.Execute(ctx, "no-such-command", nil); err == nil {
		t.Errorf("QMP accepted an unknown command")
	} else if qe, ok := err.(*QMPError); !ok || qe.Class != "CommandNotFound" {
		t.Errorf("unknown command error = %v, want a CommandNotFound QMPError", err)
	}
	status, err := qmp.Execute(ctx, "query-status", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("query-status: %s", status)

	if err := run.WaitConsole(ctx, "GUEST READY"); err != nil {
		t.Fatal(err)
	}
	before := strings.Count(d.Stderr(), "ADD_MEM_REG")
	if err := qmp.HotplugMemory(ctx, "dimm1", 256<<20); err != nil {
		t.Fatal(err)
	}
	if dm.Name == "govirtiofsd" {
		// Our debug log names each vhost-user message: the new dimm
		// must have reached the back-end as ADD_MEM_REG.
		deadline := time.Now().Add(run.Scale(10 * time.Second))
		for strings.Count(d.Stderr(), "ADD_MEM_REG") == before && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if strings.Count(d.Stderr(), "ADD_MEM_REG") == before {
			t.Errorf("no ADD_MEM_REG reached govirtiofsd after the hotplug")
		}
	}
	if err := os.WriteFile(filepath.Join(share, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := run.Wait()
	if err != nil {
		t.Fatal(err)
	}
	checkResults(t, res, "host-signal", "memory-grew", "io-after-hotplug")
	if r, ok := res.Get("io-after-hotplug"); ok && r.Status == Pass {
		b, err := os.ReadFile(filepath.Join(share, "blob"))
		if err != nil {
			t.Fatal(err)
		}
		if sum := fmt.Sprintf("%x", md5.Sum(b)); !strings.HasSuffix(r.Detail, sum) {
			t.Errorf("host blob md5 %s, guest said %q", sum, r.Detail)
		}
	}
	if err := d.WaitTimeout(run.Scale(15 * time.Second)); err != nil {
		t.Errorf("%s after poweroff: %v", dm.Name, err)
	}
}

// TestMissingDoneIsError boots a guest (no virtio-fs device) whose command
// reports a result but never GUEST DONE: Wait must fail and quote the
// console.
func TestMissingDoneIsError(t *testing.T) {
	lab := needLab(t)
	initrd := mustBuildInitramfs(t, InitramfsConfig{
		Busybox: lab.Busybox,
		Command: `echo "GUEST RESULT lonely PASS but no done"; exit 3`,
	})
	run := bootOn(t, t.Context(), Config{Lab: lab, Initrd: initrd}, nil, nil)
	res, err := run.Wait()
	if err == nil {
		t.Fatal("Wait succeeded without GUEST DONE")
	}
	if !strings.Contains(err.Error(), "GUEST DONE") || !strings.Contains(err.Error(), "GUEST EXIT 3") {
		t.Errorf("error does not explain itself or quote the console: %v", err)
	}
	if r, ok := res.Get("lonely"); !ok || r.Status != Pass || r.Detail != "but no done" {
		t.Errorf("lonely result = %+v, %v", r, ok)
	}
	if res.ExitCode != 3 {
		t.Errorf("exit code %d, want 3", res.ExitCode)
	}
}

// TestGuestBinariesAreStatic checks that BuildGuestBinary produces static
// executables (no ELF interpreter), in both modes.
func TestGuestBinariesAreStatic(t *testing.T) {
	bin, testBin := helloBinaries(t)
	for _, p := range []string{bin, testBin} {
		f, err := elf.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				t.Errorf("%s has an ELF interpreter; want a static binary", p)
			}
		}
		f.Close()
	}
}
