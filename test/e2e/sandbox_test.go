package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
	"golang.org/x/sys/unix"
)

// servingPid returns the pid of the sandboxed child of the daemon the
// caller started (the process that serves the guest), once that child has
// finished setting itself up. The parent creates the socket before the
// child exists, so the socket alone does not say the child is ready; the
// child prints daemon.ReadyLine after its sandbox, capabilities and seccomp
// filter are in place.
func servingPid(t *testing.T, d *daemon.Proc) int {
	t.Helper()
	parent := d.Pid()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if pid, ok := d.ChildPid(); ok && strings.Contains(d.Stderr(), daemon.ReadyLine) {
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
	d, err := ours(t).Start(daemon.Options{SharedDir: share, Socket: sock})
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
	d, err := ours(t).Start(daemon.Options{SharedDir: share, Socket: sock})
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
	d, restart := startDaemon(t, ours(t), daemon.Options{SharedDir: share, Socket: sock, Log: vm.NewLineLogger("daemon: ", t.Logf)})
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
	// A fresh daemon for a retried boot starts with the volume mounted:
	// what it sees then is still the host's view.
	run := boot(t, t.Context(), vm.Config{Lab: lab, Initrd: initrd, Socket: sock, Tag: "myfs"}, d, restart)
	res, err := run.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := res.Get("propagated"); !ok || r.Status != vm.Pass {
		t.Errorf("bind mount added after start not visible in the guest: %+v", r)
	}
}

// mountinfoLine returns the line of /proc/PID/mountinfo whose mount point
// is mountPoint (the last one, the mount on top) and its per-mount
// options.
func mountinfoLine(t *testing.T, pid int, mountPoint string) (line string, opts []string) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 5 && f[4] == mountPoint {
			line, opts = l, strings.Split(f[5], ",")
		}
	}
	return line, opts
}

// procFds returns the descriptors of process pid that are on a proc file
// system, each opened here through its /proc/PID/fd magic link: the
// same file in the same mount as the process has it.
func procFds(t *testing.T, pid int) map[string]int {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	fds := map[string]int{}
	for _, e := range ents {
		fd, err := unix.Open(filepath.Join(dir, e.Name()), unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		var st unix.Statfs_t
		if unix.Fstatfs(fd, &st) == nil && st.Type == unix.PROC_SUPER_MAGIC {
			link, _ := os.Readlink(filepath.Join(dir, e.Name()))
			fds[e.Name()+" -> "+link] = fd
			t.Cleanup(func() { unix.Close(fd) })
			continue
		}
		unix.Close(fd)
	}
	return fds
}

// maskedProc are /proc entries the serving process must not reach:
// what container runtimes mask, and the host's init's root.
var maskedProc = []string{"sysrq-trigger", "sys/kernel/core_pattern", "sys", "kcore", "keys", "timer_list",
	"sched_debug", "acpi", "scsi", "kmsg", "1/root", "self/root"}

// checkProcReach fails the test if, from one of the proc descriptors of
// pid (the /proc/self/fd it serves magic links through), a path up out of
// that directory leads to one of maskedProc.
func checkProcReach(t *testing.T, pid int) {
	t.Helper()
	fds := procFds(t, pid)
	if len(fds) == 0 {
		t.Fatalf("process %d holds no /proc descriptor", pid)
	}
	for name, fd := range fds {
		reached := 0
		for _, up := range []string{"..", "../..", "../../.."} {
			for _, m := range maskedProc {
				p := up + "/" + m
				if nfd, err := unix.Openat(fd, p, unix.O_PATH|unix.O_CLOEXEC, 0); err == nil {
					unix.Close(nfd)
					t.Errorf("process %d: fd %s reaches %s", pid, name, p)
					reached++
				}
			}
		}
		if reached == 0 {
			t.Logf("process %d: proc descriptor %s: none of %v reachable above it", pid, name, maskedProc)
		}
	}
}

// TestSandboxWalls starts the daemon as a Kata operator would, with the
// defaults, and checks the serving process from outside: the share is its
// root, mounted nodev and nosuid, and so is a mount under it present at
// start (a device node on either does not open through them); it has no
// new privileges, a seccomp filter and the reduced capabilities; and its
// /proc/self/fd leads to nothing else of /proc. A mount added under the
// share after start propagates in with the host's flags (logged).
func TestSandboxWalls(t *testing.T) {
	share := t.TempDir()
	// A shared mount, as Kata's are, so that a later mount propagates.
	if err := unix.Mount(share, share, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(share, unix.MNT_DETACH) })
	if err := unix.Mount("", share, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	mknodNull := func(path string) {
		t.Helper()
		if err := unix.Mknod(path, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			t.Fatal(err)
		}
	}
	mknodNull(filepath.Join(share, "null"))
	// A submount without nodev or nosuid of its own.
	sub := filepath.Join(share, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
	mknodNull(filepath.Join(sub, "null"))

	sock := filepath.Join(t.TempDir(), "vhost.sock")
	d, err := ours(t).Start(daemon.Options{SharedDir: share, Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	child := servingPid(t, d)
	root := "/proc/" + strconv.Itoa(child) + "/root"

	for _, f := range []string{"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters"} {
		t.Logf("serving process %d status %s:\t%s", child, f, statusField(t, child, f))
	}
	for f, want := range map[string]string{"NoNewPrivs": "1", "Seccomp": "2", "Seccomp_filters": "1",
		"CapInh": "0000000000000000", "CapAmb": "0000000000000000",
		"CapPrm": "00000000880000df", "CapEff": "00000000880000df", "CapBnd": "00000000880000df"} {
		if got := statusField(t, child, f); got != want {
			t.Errorf("%s: %s, want %s", f, got, want)
		}
	}

	for _, m := range []struct{ point, node string }{{"/", "null"}, {"/sub", "sub/null"}} {
		line, opts := mountinfoLine(t, child, m.point)
		t.Logf("serving process %d mountinfo %s: %s", child, m.point, line)
		if line == "" {
			t.Errorf("no mount at %s in the sandbox", m.point)
			continue
		}
		if !slices.Contains(opts, "nodev") || !slices.Contains(opts, "nosuid") {
			t.Errorf("mount %s in the sandbox is %v, want nodev and nosuid", m.point, opts)
		}
		// The daemon's path to the node: through its root and mounts.
		if fd, err := unix.Open(filepath.Join(root, m.node), unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
			unix.Close(fd)
			t.Errorf("device node %s opens through the sandbox's mounts", m.node)
		} else if !errors.Is(err, unix.EACCES) {
			t.Errorf("device node %s through the sandbox: %v, want EACCES", m.node, err)
		}
	}

	checkProcReach(t, child)
	if _, err := os.Lstat(filepath.Join(root, "proc")); err == nil {
		t.Errorf("the sandbox's root has a proc")
	}

	// A volume mounted under the share after start.
	late := filepath.Join(share, "late")
	if err := os.Mkdir(late, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", late, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(late, unix.MNT_DETACH) })
	mknodNull(filepath.Join(late, "null"))
	line, _ := mountinfoLine(t, child, "/late")
	if line == "" {
		t.Errorf("a mount added after start did not propagate into the sandbox")
	}
	fd, err := unix.Open(filepath.Join(root, "late/null"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
	}
	t.Logf("mount added after start, in the sandbox: %s; its device node opens: %v (err %v)", line, err == nil, err)
}

// TestSandboxChrootProcFd checks --sandbox=chroot, where the daemon's
// /proc/self/fd is the host's /proc's: nothing else of /proc, the host
// init's root among it, is reachable from it.
func TestSandboxChrootProcFd(t *testing.T) {
	share := t.TempDir()
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	d, err := ours(t).Start(daemon.Options{SharedDir: share, Socket: sock, Extra: []string{"--sandbox=chroot"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.Stderr(), daemon.ReadyLine) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(d.Stderr(), daemon.ReadyLine) {
		t.Fatalf("daemon not ready:\n%s", d.Stderr())
	}
	if got := statusField(t, d.Pid(), "Seccomp"); got != "2" {
		t.Errorf("Seccomp: %s, want 2", got)
	}
	checkProcReach(t, d.Pid())
}
