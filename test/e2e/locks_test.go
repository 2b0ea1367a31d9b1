package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"
	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
	"golang.org/x/sys/unix"
)

// TestLocks takes locks turn about in a real guest (guest/locks) and in
// this host process, on the same two files of the share, with one boot on
// govirtiofsd and one on the reference virtiofsd 1.14.0.
//
// govirtiofsd takes the guest's locks on the host (POSIX locks as OFD
// locks, flock on the handle's host descriptor), so the two sides
// conflict. The reference keeps them in the guest (it offers neither
// POSIX_LOCKS nor FLOCK_LOCKS), so neither side sees the other's: every
// cross-boundary check below is expected to come out the other way on
// it, and the test fails if the reference forwards a lock, as it fails
// if ours does not. Each check, host or guest, names both outcomes
// (forwarded / kept in the guest):
//
//	guest holds F_WRLCK [0,100) (F_SETLK) and an OFD F_WRLCK [300,400):
//	  host-ofd-getlk             host F_OFD_GETLK sees F_WRLCK / F_UNLCK
//	  host-ofd-setlk             host F_OFD_SETLK fails EAGAIN / succeeds
//	  host-setlk                 host F_SETLK (a process lock) EAGAIN / succeeds
//	  host-ofd-setlk-guest-ofd   the guest's OFD lock: EAGAIN / succeeds
//	  host-ofd-setlk-beside      [100,200): succeeds / succeeds
//	guest unlocks; host takes F_WRLCK [0,100) (OFD) and F_RDLCK [200,300) (F_SETLK):
//	  host-ofd-setlk-after-guest-unlock  succeeds / succeeds
//	  guest-getlk                F_GETLK sees F_WRLCK [0,100) / F_UNLCK
//	  guest-getlk-traditional    F_GETLK sees F_RDLCK / F_UNLCK
//	  guest-setlk-conflict       F_SETLK EAGAIN or EACCES / succeeds
//	  guest-ofd-setlk-conflict   F_OFD_SETLK EAGAIN or EACCES / succeeds
//	  guest-setlk-shared         F_RDLCK beside the host's read lock: succeeds / succeeds
//	  guest-setlk-vs-traditional F_WRLCK over it: EAGAIN or EACCES / succeeds
//	  guest-setlkw-waited        F_SETLKW blocks until the host unlocks / returns at once
//	  host-setlkw                the same seen from the host (the guest's call
//	                             returned only after the unlock) / before it
//	  host-ofd-setlk-after-guest-wait  the guest now holds it: EAGAIN / succeeds
//	guest closes its descriptor:
//	  host-ofd-setlk-after-guest-close succeeds / succeeds
//	guest flock LOCK_EX:
//	  host-flock, host-flock-shared    EAGAIN / succeed
//	guest LOCK_UN; host flock LOCK_EX:
//	  host-flock-after-guest-unlock    succeeds / succeeds
//	  guest-flock-conflict, guest-flock-shared-conflict  EAGAIN / succeed
//	  guest-flock-waited, host-flock-wait  blocks until the host unlocks / returns at once
//	  host-flock-after-guest-wait      EAGAIN / succeeds
//	guest LOCK_UN:
//	  host-flock-after-guest-done      succeeds / succeeds
//
// The two sides take turns through the console (the guest's "GUEST STEP"
// lines) and files on the share (the host's go-N); a blocking lock is
// judged by the guest watching its own thread sit in the system call, and
// by the order of the host's unlock and the guest's return. Every wait is
// on the other side's progress.
func TestLocks(t *testing.T) {
	lab := needLab(t)
	guest := filepath.Join(t.TempDir(), "locks")
	if err := daemon.BuildStatic("./test/e2e/guest/locks", guest, false); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, c := range []struct {
		dm        daemon.Daemon
		forwarded bool
	}{{ours(t), true}, {daemon.Reference(lab.VirtiofsdRef), false}} {
		t.Run(c.dm.Name, func(t *testing.T) { lockRun(t, lab, c.dm, guest, c.forwarded) })
	}
	t.Logf("both daemons in %v", time.Since(start).Round(100*time.Millisecond))
}

// lockSide is the host's side of one run.
type lockSide struct {
	t         *testing.T
	run       *vm.Run
	share     string
	forwarded bool
	rows      []string
	ofd, proc int // "posix": for OFD locks, for process (F_SETLK) locks
	fl        int // "flock"
}

// check records a host check: got must be fwd when the daemon forwards
// locks, local when it keeps them in the guest.
func (s *lockSide) check(name, got, fwd, local string) {
	want, how := local, "kept in the guest"
	if s.forwarded {
		want, how = fwd, "forwarded"
	}
	verdict := "ok"
	if got != want {
		verdict = "FAIL"
		s.t.Errorf("%s: got %s, want %s (locks %s)", name, got, want, how)
	}
	s.rows = append(s.rows, fmt.Sprintf("%-36s %-4s got %-14s want %s (forwarded %s, local %s)", name, verdict, got, want, fwd, local))
}

// lk runs fcntl(cmd) on fd with a lock of typ on [start, start+n): "ok"
// or the errno's name.
func lk(fd, cmd int, typ int16, start, n int64) string {
	fl := unix.Flock_t{Type: typ, Whence: unix.SEEK_SET, Start: start, Len: n}
	return guestspec.ErrName(unix.FcntlFlock(uintptr(fd), cmd, &fl))
}

// getlk returns the lock F_OFD_GETLK finds for a write lock on [start,
// start+n), with its range and pid.
func getlk(fd int, start, n int64) (string, unix.Flock_t) {
	fl := unix.Flock_t{Type: unix.F_WRLCK, Whence: unix.SEEK_SET, Start: start, Len: n}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &fl); err != nil {
		return guestspec.ErrName(err), fl
	}
	switch fl.Type {
	case unix.F_RDLCK:
		return "F_RDLCK", fl
	case unix.F_WRLCK:
		return "F_WRLCK", fl
	case unix.F_UNLCK:
		return "F_UNLCK", fl
	}
	return fmt.Sprintf("type-%d", fl.Type), fl
}

// tryLock takes a lock that should conflict with the guest's (when
// forwarded) and lets go of it at once if it was granted.
func (s *lockSide) tryLock(name string, fd, cmd int, typ int16, start, n int64, fwd, local string) {
	got := lk(fd, cmd, typ, start, n)
	if got == "ok" {
		if u := lk(fd, cmd, unix.F_UNLCK, start, n); u != "ok" {
			s.t.Errorf("%s: unlock: %s", name, u)
		}
	}
	s.check(name, got, fwd, local)
}

// tryFlock is tryLock for flock.
func (s *lockSide) tryFlock(name string, how int, fwd, local string) {
	got := guestspec.ErrName(unix.Flock(s.fl, how|unix.LOCK_NB))
	if got == "ok" {
		if err := unix.Flock(s.fl, unix.LOCK_UN); err != nil {
			s.t.Errorf("%s: LOCK_UN: %v", name, err)
		}
	}
	s.check(name, got, fwd, local)
}

func (s *lockSide) wait(step string) {
	s.t.Helper()
	if err := s.run.WaitConsole(s.t.Context(), "GUEST STEP "+step); err != nil {
		s.t.Fatalf("waiting for the guest's step %s: %v", step, err)
	}
}

func (s *lockSide) goAhead(n int) {
	s.t.Helper()
	if err := os.WriteFile(filepath.Join(s.share, fmt.Sprintf("go-%d", n)), nil, 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// blocking follows the guest's blocking lock at step: it waits until the
// guest says its call is blocked or was granted, and if blocked holds on
// for a second, then calls unlock and waits for the call to return. It
// reports "waited" when the guest's call returned only after unlock,
// "not-blocked" when it returned while the host held the lock.
func (s *lockSide) blocking(step string, unlock func() string) string {
	s.t.Helper()
	if err := s.run.WaitConsoleAny(s.t.Context(), "GUEST STEP "+step+" blocked", "GUEST STEP "+step+" granted"); err != nil {
		s.t.Fatalf("waiting for the guest's %s: %v", step, err)
	}
	blocked := strings.Contains(s.run.Console(), "GUEST STEP "+step+" blocked")
	if blocked {
		// Still blocked a second later: it waits for the host.
		time.Sleep(time.Second)
	}
	over := strings.Contains(s.run.Console(), "GUEST STEP "+step+" over")
	unlocked := time.Now()
	if u := unlock(); u != "ok" {
		s.t.Errorf("%s: the host's unlock: %s", step, u)
	}
	s.wait(step + "-held")
	switch {
	case blocked && !over:
		line := s.consoleLine("GUEST STEP " + step + " over")
		s.t.Logf("%s: the guest was blocked; its call returned %v after the host's unlock (%s)", step,
			time.Since(unlocked).Round(time.Millisecond), line)
		return "waited"
	case blocked:
		return "returned-while-held"
	default:
		return "not-blocked"
	}
}

func (s *lockSide) consoleLine(prefix string) string {
	c := s.run.Console()
	i := strings.Index(c, prefix)
	if i < 0 {
		return ""
	}
	line, _, _ := strings.Cut(c[i:], "\n")
	return strings.TrimSpace(line)
}

func lockRun(t *testing.T, lab *vm.Lab, dm daemon.Daemon, guest string, forwarded bool) {
	share := t.TempDir()
	for _, name := range []string{"posix", "flock"} {
		if err := os.WriteFile(filepath.Join(share, name), make([]byte, 1000), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := &lockSide{t: t, share: share, forwarded: forwarded}
	var err error
	for _, p := range []*int{&s.ofd, &s.proc} {
		if *p, err = unix.Open(filepath.Join(share, "posix"), unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(*p) })
	}
	if s.fl, err = unix.Open(filepath.Join(share, "flock"), unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s.fl) })

	sock := filepath.Join(t.TempDir(), "vhost.sock")
	d, restart := startDaemon(t, dm, daemon.Options{SharedDir: share, Socket: sock})
	initrd := initramfs(t, vm.InitramfsConfig{
		Busybox: lab.Busybox,
		Files:   []vm.GuestFile{{Path: "/locks", HostPath: guest, Mode: 0o755}},
		Mount:   &vm.Mount{Tag: "myfs"},
		Command: fmt.Sprintf("/locks -mnt /mnt -forwarded=%v", forwarded),
	})
	start := time.Now()
	s.run = boot(t, t.Context(), vm.Config{Lab: lab, Initrd: initrd, Socket: sock, Tag: "myfs",
		Console: vm.NewLineLogger("console: ", t.Logf)}, d, restart)
	d = s.run.Daemon()

	// 1. The guest holds [0,100) and, as an OFD lock, [300,400).
	s.wait("posix-held")
	got, fl := getlk(s.ofd, 0, 100)
	s.check("host-ofd-getlk", got, "F_WRLCK", "F_UNLCK")
	if got == "F_WRLCK" {
		t.Logf("host F_OFD_GETLK: the guest's lock is F_WRLCK start %d len %d pid %d", fl.Start, fl.Len, fl.Pid)
	}
	s.tryLock("host-ofd-setlk", s.ofd, unix.F_OFD_SETLK, unix.F_WRLCK, 0, 100, "EAGAIN", "ok")
	s.tryLock("host-setlk", s.proc, unix.F_SETLK, unix.F_WRLCK, 50, 10, "EAGAIN", "ok")
	s.tryLock("host-ofd-setlk-guest-ofd", s.ofd, unix.F_OFD_SETLK, unix.F_WRLCK, 300, 100, "EAGAIN", "ok")
	s.tryLock("host-ofd-setlk-beside", s.ofd, unix.F_OFD_SETLK, unix.F_WRLCK, 100, 100, "ok", "ok")
	s.goAhead(1)

	// 2. The guest let go: the host takes [0,100) and a process read
	// lock on [200,300).
	s.wait("posix-released")
	s.check("host-ofd-setlk-after-guest-unlock", lk(s.ofd, unix.F_OFD_SETLK, unix.F_WRLCK, 0, 100), "ok", "ok")
	s.check("host-setlk-read", lk(s.proc, unix.F_SETLK, unix.F_RDLCK, 200, 100), "ok", "ok")
	s.goAhead(2)

	// 3. The guest's F_SETLKW waits for the host's unlock.
	how := s.blocking("posix-setlkw", func() string { return lk(s.ofd, unix.F_OFD_SETLK, unix.F_UNLCK, 0, 100) })
	s.check("host-setlkw", how, "waited", "not-blocked")
	s.tryLock("host-ofd-setlk-after-guest-wait", s.ofd, unix.F_OFD_SETLK, unix.F_WRLCK, 0, 100, "EAGAIN", "ok")
	s.goAhead(3)

	// 4. The guest closed its descriptor.
	s.wait("posix-closed")
	if u := lk(s.proc, unix.F_SETLK, unix.F_UNLCK, 200, 100); u != "ok" {
		t.Errorf("host F_SETLK F_UNLCK [200,300): %s", u)
	}
	s.tryLock("host-ofd-setlk-after-guest-close", s.ofd, unix.F_OFD_SETLK, unix.F_WRLCK, 0, 400, "ok", "ok")
	s.goAhead(4)

	// 5. flock: the guest holds LOCK_EX.
	s.wait("flock-held")
	s.tryFlock("host-flock", unix.LOCK_EX, "EAGAIN", "ok")
	s.tryFlock("host-flock-shared", unix.LOCK_SH, "EAGAIN", "ok")
	s.goAhead(5)
	s.wait("flock-released")
	s.check("host-flock-after-guest-unlock", guestspec.ErrName(unix.Flock(s.fl, unix.LOCK_EX|unix.LOCK_NB)), "ok", "ok")
	s.goAhead(6)
	how = s.blocking("flock-wait", func() string { return guestspec.ErrName(unix.Flock(s.fl, unix.LOCK_UN)) })
	s.check("host-flock-wait", how, "waited", "not-blocked")
	s.tryFlock("host-flock-after-guest-wait", unix.LOCK_EX, "EAGAIN", "ok")
	s.goAhead(7)
	s.wait("flock-done")
	s.tryFlock("host-flock-after-guest-done", unix.LOCK_EX, "ok", "ok")

	res, err := s.run.Wait()
	if err != nil {
		t.Errorf("guest run: %v", err)
	}
	var guestRows []string
	for _, r := range res.List {
		guestRows = append(guestRows, r.String())
		if r.Status != vm.Pass {
			t.Errorf("guest %s", r)
		}
	}
	for _, name := range []string{"guest-setlk", "guest-ofd-setlk", "guest-unlock", "guest-ofd-unlock", "guest-getlk",
		"guest-getlk-traditional", "guest-setlk-conflict", "guest-ofd-setlk-conflict", "guest-setlk-shared",
		"guest-setlk-vs-traditional", "guest-setlk-beside", "guest-setlkw", "guest-setlkw-waited", "guest-close",
		"guest-flock", "guest-funlock", "guest-flock-conflict", "guest-flock-shared-conflict", "guest-flock-wait",
		"guest-flock-waited", "guest-flock-unlock-after-wait"} {
		if _, ok := res.Get(name); !ok {
			t.Errorf("guest reported no result %q", name)
		}
	}
	if !res.Done || res.ExitCode != 0 {
		t.Errorf("guest done %v, exit code %d", res.Done, res.ExitCode)
	}
	if err := d.WaitTimeout(s.run.Scale(15 * time.Second)); err != nil {
		t.Errorf("%s after poweroff: %v", dm.Name, err)
	} else if c := d.ExitCode(); c != 0 {
		t.Errorf("%s exit code %d, want 0", dm.Name, c)
	}
	t.Logf("%s (locks forwarded: %v), %v from boot to exit:\nhost:\n  %s\nguest:\n  %s", dm.Name, forwarded,
		time.Since(start).Round(100*time.Millisecond), strings.Join(s.rows, "\n  "), strings.Join(guestRows, "\n  "))
}
