// Package e2e holds cross-package tests that boot real guests on
// govirtiofsd and on the reference virtiofsd: the guest suite, go-fuse's
// posixtest, the differential comparison of the two, and fault tests.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// binaries builds govirtiofsd once per test process.
func ours(t *testing.T) daemon.Daemon {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "e2e-bin-"); buildErr != nil {
			return
		}
		buildErr = daemon.BuildOurs(filepath.Join(buildDir, "govirtiofsd"))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return daemon.Ours(filepath.Join(buildDir, "govirtiofsd"))
}

func needLab(t *testing.T) *vm.Lab {
	t.Helper()
	lab, err := vm.FindLab()
	if err != nil {
		t.Fatal(err)
	}
	return lab
}

func TestMain(m *testing.M) {
	code := m.Run()
	if n := vm.RetriedBoots(); n > 0 {
		fmt.Fprintf(os.Stderr, "e2e: %d boot(s) stalled before the guest's init and were retried (the tests' \"!!! RETRYING\" lines say why)\n", n)
	}
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// startDaemon starts dm with opts (its output in the test log unless
// opts.Log is set) and stops it at cleanup. restart starts another one
// alike, for vm.Config.Restart.
func startDaemon(t *testing.T, dm daemon.Daemon, opts daemon.Options) (d *daemon.Proc, restart func() (*daemon.Proc, error)) {
	t.Helper()
	if opts.Log == nil {
		opts.Log = vm.NewLineLogger(dm.Name+": ", t.Logf)
	}
	restart = func() (*daemon.Proc, error) {
		p, err := dm.Start(opts)
		if err == nil {
			t.Cleanup(p.Stop)
		}
		return p, err
	}
	d, err := restart()
	if err != nil {
		t.Fatal(err)
	}
	return d, restart
}

// boot boots cfg on the back-end d and fails the test if the guest's init
// does not run; restart makes a fresh back-end should a boot that stalled
// before init need one (see vm.Boot). The harness's notes go to the test
// log; QEMU is killed at cleanup. run.Daemon() is the back-end in use.
func boot(t *testing.T, ctx context.Context, cfg vm.Config, d *daemon.Proc, restart func() (*daemon.Proc, error)) *vm.Run {
	t.Helper()
	cfg.Daemon, cfg.Restart, cfg.Logf = d, restart, t.Logf
	run, err := vm.Boot(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = run.Kill(); <-run.Exited() })
	return run
}

func initramfs(t *testing.T, cfg vm.InitramfsConfig) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "initrd.gz")
	if err := vm.BuildInitramfs(out, cfg); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestQEMUKilledMidWrite SIGKILLs QEMU while the guest writes to the share:
// the daemon must notice the disconnect, log it and exit 0 within a second.
func TestQEMUKilledMidWrite(t *testing.T) {
	lab := needLab(t)
	dm := ours(t)
	share := t.TempDir()
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	d, restart := startDaemon(t, dm, daemon.Options{SharedDir: share, Socket: sock})
	initrd := initramfs(t, vm.InitramfsConfig{
		Busybox: lab.Busybox,
		Mount:   &vm.Mount{Tag: "myfs"},
		Command: `i=0; while true; do dd if=/dev/zero of=/mnt/big$((i%4)) bs=1M count=16 conv=fsync 2>/dev/null; i=$((i+1)); [ $i = 2 ] && echo WRITING; done`,
	})
	ctx := t.Context()
	run := boot(t, ctx, vm.Config{Lab: lab, Initrd: initrd, Socket: sock, Tag: "myfs", NumRequestQueues: 2}, d, restart)
	d = run.Daemon()
	if err := run.WaitConsole(ctx, "WRITING"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := run.Kill(); err != nil {
		t.Fatal(err)
	}
	<-run.Exited()
	killed := time.Now()
	// One second on an unloaded machine.
	if err := d.WaitTimeout(run.Scale(time.Second)); err != nil {
		t.Fatalf("daemon still running %v after QEMU was killed: %v", run.Scale(time.Second), err)
	}
	t.Logf("daemon exited %v after QEMU died", time.Since(killed).Round(time.Millisecond))
	if c := d.ExitCode(); c != 0 {
		t.Errorf("daemon exit code %d, want 0", c)
	}
	if !strings.Contains(d.Stderr(), "Client disconnected, shutting down") {
		t.Errorf("daemon did not log the disconnect:\n%s", d.Stderr())
	}
}
