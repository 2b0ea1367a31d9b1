// Package e2e holds cross-package tests that boot real guests on
// govirtiofsd and on the reference virtiofsd: the guest suite, go-fuse's
// posixtest, the differential comparison of the two, and fault tests.
package e2e

import (
	"context"
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
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
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
	d, err := dm.Start(daemon.Options{SharedDir: share, Socket: sock, Log: vm.NewLineLogger("daemon: ", t.Logf)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	initrd := initramfs(t, vm.InitramfsConfig{
		Busybox: lab.Busybox,
		Mount:   &vm.Mount{Tag: "myfs"},
		Command: `i=0; while true; do dd if=/dev/zero of=/mnt/big$((i%4)) bs=1M count=16 conv=fsync 2>/dev/null; i=$((i+1)); [ $i = 2 ] && echo WRITING; done`,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	run, err := vm.Boot(ctx, vm.Config{Lab: lab, Initrd: initrd, Socket: sock, Tag: "myfs", NumRequestQueues: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run.Kill(); <-run.Exited() })
	if err := run.WaitConsole(ctx, "WRITING"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := run.Kill(); err != nil {
		t.Fatal(err)
	}
	<-run.Exited()
	killed := time.Now()
	if err := d.WaitTimeout(time.Second); err != nil {
		t.Fatalf("daemon still running 1 s after QEMU was killed: %v", err)
	}
	t.Logf("daemon exited %v after QEMU died", time.Since(killed).Round(time.Millisecond))
	if c := d.ExitCode(); c != 0 {
		t.Errorf("daemon exit code %d, want 0", c)
	}
	if !strings.Contains(d.Stderr(), "Client disconnected, shutting down") {
		t.Errorf("daemon did not log the disconnect:\n%s", d.Stderr())
	}
}
