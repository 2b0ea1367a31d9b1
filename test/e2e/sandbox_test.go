package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/test/vm"
	"golang.org/x/sys/unix"
)

// servingPid returns the pid of the sandboxed child of the daemon the
// caller started (the process that serves the guest), once that child has
// finished setting itself up. The parent creates the socket before the
// child exists, so the socket alone does not say the child is ready; the
// child prints vm.ReadyLine after its sandbox, capabilities and seccomp
// filter are in place.
func servingPid(t *testing.T, d *vm.DaemonProc) int {
	t.Helper()
	parent := d.Pid()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(parent) + "/task/" + strconv.Itoa(parent) + "/children")
		if f := strings.Fields(string(b)); len(f) > 0 && strings.Contains(d.Stderr(), vm.ReadyLine) {
			pid, _ := strconv.Atoi(f[0])
			return pid
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("daemon %d has no ready sandboxed child; output:\n%s", parent, d.Stderr())
	return 0
}

func statusField(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
}

// TestSandboxDefaults checks the serving process under the defaults: it is
// in its own mount, pid and network namespaces, under seccomp filter mode,
// with the reduced capability set; killing the process the caller holds
// ends it too.
func TestSandboxDefaults(t *testing.T) {
	share := t.TempDir()
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	d, err := ours(t).Start(vm.DaemonOptions{SharedDir: share, Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	child := servingPid(t, d)
	seccomp := statusField(t, child, "Seccomp")
	if seccomp != "2" {
		t.Errorf("Seccomp: %s, want 2 (filter)", seccomp)
	}
	// CHOWN DAC_OVERRIDE FOWNER FSETID SETGID SETUID MKNOD SETFCAP, and
	// DAC_READ_SEARCH for the file handles --inode-file-handles=prefer
	// (the default) uses.
	const want = "00000000880000df"
	for _, f := range []string{"CapEff", "CapPrm", "CapBnd"} {
		if got := statusField(t, child, f); got != want {
			t.Errorf("%s: %s, want %s", f, got, want)
		}
	}
	if got := statusField(t, child, "NoNewPrivs"); got != "1" {
		t.Errorf("NoNewPrivs: %s", got)
	}
	for _, ns := range []string{"mnt", "pid", "net"} {
		self, _ := os.Readlink("/proc/self/ns/" + ns)
		theirs, err := os.Readlink("/proc/" + strconv.Itoa(child) + "/ns/" + ns)
		if err != nil || theirs == self {
			t.Errorf("%s namespace not separate: %s vs %s (%v)", ns, theirs, self, err)
		}
	}
	t.Logf("serving process %d: Seccomp %s, CapEff %s", child, seccomp, statusField(t, child, "CapEff"))
	if err := d.Kill(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(child, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if syscall.Kill(child, 0) == nil {
		t.Errorf("sandboxed child %d outlived the SIGKILLed parent", child)
	}
}

// TestSandboxChildKilledEndsParent SIGKILLs the serving child: the process
// the caller holds must end too, so that the caller notices.
func TestSandboxChildKilledEndsParent(t *testing.T) {
	share := t.TempDir()
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	d, err := ours(t).Start(vm.DaemonOptions{SharedDir: share, Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	child := servingPid(t, d)
	syscall.Kill(child, syscall.SIGKILL)
	if err := d.WaitTimeout(5 * time.Second); err == nil && d.ExitCode() == 0 {
		t.Errorf("parent exited 0 after its child was killed")
	}
	select {
	case <-d.Exited():
	default:
		t.Errorf("parent still running after its child was killed")
	}
}

// TestMountPropagation bind-mounts a directory under the share after the
// daemon has started: the guest must see it, because the sandbox keeps
// mount propagation flowing in (Kata mounts container volumes this way).
func TestMountPropagation(t *testing.T) {
	lab := needLab(t)
	share := t.TempDir()
	// Make the share a shared mount point, as Kata's bind mounts are.
	if err := unix.Mount(share, share, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(share, unix.MNT_DETACH) })
	if err := unix.Mount("", share, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	d, err := ours(t).Start(vm.DaemonOptions{SharedDir: share, Socket: sock, Log: vm.NewLineLogger("daemon: ", t.Logf)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	servingPid(t, d)
	time.Sleep(200 * time.Millisecond)
	vol := t.TempDir()
	if err := os.WriteFile(filepath.Join(vol, "volume.txt"), []byte("late volume\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(share, "volume")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(vol, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	initrd := initramfs(t, vm.InitramfsConfig{
		Busybox: lab.Busybox,
		Mount:   &vm.Mount{Tag: "myfs"},
		Command: `if [ "$(cat /mnt/volume/volume.txt)" = "late volume" ]; then echo "GUEST RESULT propagated PASS ok"; else echo "GUEST RESULT propagated FAIL $(ls -la /mnt/volume 2>&1 | tr '\n' ' ')"; fi; echo GUEST DONE`,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	run, err := vm.Boot(ctx, vm.Config{Lab: lab, Initrd: initrd, Socket: sock, Tag: "myfs"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := run.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := res.Get("propagated"); !ok || r.Status != vm.Pass {
		t.Errorf("bind mount added after start not visible in the guest: %+v", r)
	}
}
