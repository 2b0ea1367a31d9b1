// Command locks is the guest side of test/e2e/locks_test.go: POSIX record
// locks (fcntl F_SETLK, F_SETLKW, F_GETLK, and an OFD lock) and flock on
// the virtio-fs mount, taken turn about with a host process that locks
// the same files. It reports in the GUEST RESULT protocol, ending with
// GUEST DONE, and exits 1 when a check failed.
//
// -forwarded tells what the daemon does with the guest's locks: true when
// it takes them on the host (govirtiofsd: a host process's lock and the
// guest's conflict), false when the guest keeps them to itself (virtiofsd,
// which does not offer POSIX_LOCKS or FLOCK_LOCKS). Each check states what
// it wants in either case (want).
//
// The host and the guest take turns: the guest prints "GUEST STEP name"
// when the host's turn comes, and waits for the file go-N on the share,
// which the host creates once it has done its part. A blocking lock
// (F_SETLKW, flock without LOCK_NB) runs on a thread of its own; the main
// thread watches it in /proc/self/task/TID/syscall and prints "GUEST STEP
// X blocked" once the thread has sat in the call for blockedFor, or
// "GUEST STEP X granted" when the call returned first. The host holds its
// lock until it has seen "blocked". Keep the steps in step with
// locks_test.go.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/govirtiofsd/govirtiofsd/test/e2e/guest/internal/slow"
	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"

	"golang.org/x/sys/unix"
)

var (
	failed    atomic.Bool
	mnt       string
	forwarded bool
)

// blockedFor is how long a blocking lock's thread must sit in its system
// call before the guest says it is blocked.
const blockedFor = 500 * time.Millisecond

func result(name string, ok bool, format string, args ...any) {
	status := "PASS"
	if !ok {
		status = "FAIL"
		failed.Store(true)
	}
	detail := strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
	fmt.Printf("GUEST RESULT %s %s %s\n", name, status, detail)
}

func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

// want returns what a check wants: fwd when the locks are forwarded to
// the host, local when the guest keeps them. A want may list
// alternatives separated by '|'.
func want(fwd, local string) string {
	if forwarded {
		return fwd
	}
	return local
}

// check reports name: got (an outcome such as "ok", "EAGAIN", "F_WRLCK")
// must be one of want's alternatives.
func check(name, got, want, format string, args ...any) bool {
	ok := false
	for _, w := range strings.Split(want, "|") {
		ok = ok || got == w
	}
	detail := fmt.Sprintf(format, args...)
	if detail != "" {
		detail = " " + detail
	}
	result(name, ok, "got=%s want=%s%s", got, want, detail)
	return ok
}

// waitGo waits for the host's go-ahead, the file go-n.
func waitGo(n int) bool {
	path := filepath.Join(mnt, fmt.Sprintf("go-%d", n))
	limit := slow.Scale(120 * time.Second)
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	result(fmt.Sprintf("host-go-%d", n), false, "no %s after %v: the host did not take its turn", path, limit)
	return false
}

func lockType(t int16) string {
	switch t {
	case unix.F_RDLCK:
		return "F_RDLCK"
	case unix.F_WRLCK:
		return "F_WRLCK"
	case unix.F_UNLCK:
		return "F_UNLCK"
	}
	return "type-" + strconv.Itoa(int(t))
}

// setlk runs fcntl(cmd) with a lock of typ on [start, start+n).
func setlk(fd, cmd int, typ int16, start, n int64) error {
	fl := unix.Flock_t{Type: typ, Whence: unix.SEEK_SET, Start: start, Len: n}
	return unix.FcntlFlock(uintptr(fd), cmd, &fl)
}

func outcome(err error) string { return guestspec.ErrName(err) }

// blocking runs call on a thread of its own (a lock that may wait) and
// returns once it is over. While it runs it prints "GUEST STEP step
// blocked" when the thread has been in system call sysno for blockedFor
// (the host then lets go of its lock), or, if the call returns first,
// "GUEST STEP step granted" right away. It returns the call's error,
// whether it was seen blocked, and how long the call took.
func blocking(step string, sysno int, call func() error) (error, bool, time.Duration) {
	type ret struct {
		err  error
		took time.Duration
	}
	tidc := make(chan int, 1)
	done := make(chan ret, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tidc <- unix.Gettid()
		start := time.Now()
		err := call()
		done <- ret{err, time.Since(start)}
	}()
	tid := <-tidc
	sysFile := fmt.Sprintf("/proc/self/task/%d/syscall", tid)
	var since time.Time
	blocked := false
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			if !blocked {
				say("GUEST STEP %s granted", step)
			}
			say("GUEST STEP %s over %s after %v", step, outcome(r.err), r.took.Round(time.Millisecond))
			return r.err, blocked, r.took
		case <-tick.C:
		}
		if blocked {
			continue
		}
		b, err := os.ReadFile(sysFile)
		in := err == nil && strings.HasPrefix(string(b), strconv.Itoa(sysno)+" ")
		switch {
		case !in:
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
		case time.Since(since) >= blockedFor:
			blocked = true
			say("GUEST STEP %s blocked", step)
		}
	}
}

func main() {
	flag.StringVar(&mnt, "mnt", "/mnt", "virtio-fs mount point")
	flag.BoolVar(&forwarded, "forwarded", true, "the daemon takes the guest's locks on the host")
	limit := flag.Duration("timeout", 240*time.Second, "watchdog, on an unloaded machine (scaled by the slowdown the guest measured)")
	flag.Parse()
	*limit = slow.Scale(*limit)
	say("GUEST SLOWDOWN %.1f (uptime %v at start; watchdog %v; locks forwarded: %v)", slow.Factor(), slow.Uptime().Round(time.Millisecond), *limit, forwarded)
	go func() {
		time.Sleep(*limit)
		result("watchdog", false, "still running after %v: a lock or a request hangs", *limit)
		say("GUEST DONE")
		os.Exit(3)
	}()
	start := time.Now()
	if posix() {
		flocks()
	}
	say("GUEST ELAPSED %.3f", time.Since(start).Seconds())
	say("GUEST DONE")
	if failed.Load() {
		os.Exit(1)
	}
}

// posix: record locks on the file "posix" (made by the host).
func posix() bool {
	path := filepath.Join(mnt, "posix")
	fd, err := unix.Open(path, unix.O_RDWR, 0)
	if err != nil {
		result("posix-open", false, "open %s: %s", path, outcome(err))
		return false
	}
	closed := false
	defer func() {
		if !closed {
			unix.Close(fd)
		}
	}()

	// 1. The guest holds a write lock on [0,100) and an OFD write lock
	// on [300,400); the host tries them.
	if !check("guest-setlk", outcome(setlk(fd, unix.F_SETLK, unix.F_WRLCK, 0, 100)), "ok", "F_SETLK F_WRLCK [0,100)") {
		return false
	}
	if !check("guest-ofd-setlk", outcome(setlk(fd, unix.F_OFD_SETLK, unix.F_WRLCK, 300, 100)), "ok", "F_OFD_SETLK F_WRLCK [300,400)") {
		return false
	}
	say("GUEST STEP posix-held")
	if !waitGo(1) {
		return false
	}
	// 2. The guest lets go; the host takes [0,100) (write, OFD) and
	// [200,300) (read, a traditional process lock).
	check("guest-unlock", outcome(setlk(fd, unix.F_SETLK, unix.F_UNLCK, 0, 100)), "ok", "F_SETLK F_UNLCK [0,100)")
	check("guest-ofd-unlock", outcome(setlk(fd, unix.F_OFD_SETLK, unix.F_UNLCK, 300, 100)), "ok", "F_OFD_SETLK F_UNLCK [300,400)")
	say("GUEST STEP posix-released")
	if !waitGo(2) {
		return false
	}

	// 3. The host holds them: GETLK, SETLK, then SETLKW.
	fl := unix.Flock_t{Type: unix.F_WRLCK, Whence: unix.SEEK_SET, Start: 0, Len: 100}
	err = unix.FcntlFlock(uintptr(fd), unix.F_GETLK, &fl)
	got := outcome(err)
	if err == nil {
		got = lockType(fl.Type)
	}
	check("guest-getlk", got, want("F_WRLCK", "F_UNLCK"), "F_GETLK F_WRLCK [0,100): start %d len %d pid %d", fl.Start, fl.Len, fl.Pid)
	if got == "F_WRLCK" && (fl.Start != 0 || fl.Len != 100) {
		result("guest-getlk-range", false, "the host's lock reported as [%d,+%d), want [0,+100)", fl.Start, fl.Len)
	}
	fl = unix.Flock_t{Type: unix.F_WRLCK, Whence: unix.SEEK_SET, Start: 200, Len: 100}
	err = unix.FcntlFlock(uintptr(fd), unix.F_GETLK, &fl)
	got = outcome(err)
	if err == nil {
		got = lockType(fl.Type)
	}
	check("guest-getlk-traditional", got, want("F_RDLCK", "F_UNLCK"), "F_GETLK F_WRLCK [200,300) (the host's process lock): start %d len %d pid %d", fl.Start, fl.Len, fl.Pid)

	err = setlk(fd, unix.F_SETLK, unix.F_WRLCK, 0, 100)
	check("guest-setlk-conflict", outcome(err), want("EAGAIN|EACCES", "ok"), "F_SETLK F_WRLCK [0,100) while the host holds it")
	if err == nil {
		setlk(fd, unix.F_SETLK, unix.F_UNLCK, 0, 100)
	}
	err = setlk(fd, unix.F_OFD_SETLK, unix.F_WRLCK, 50, 10)
	check("guest-ofd-setlk-conflict", outcome(err), want("EAGAIN|EACCES", "ok"), "F_OFD_SETLK F_WRLCK [50,60) while the host holds [0,100)")
	if err == nil {
		setlk(fd, unix.F_OFD_SETLK, unix.F_UNLCK, 50, 10)
	}
	err = setlk(fd, unix.F_SETLK, unix.F_RDLCK, 200, 100)
	check("guest-setlk-shared", outcome(err), "ok", "F_SETLK F_RDLCK [200,300) beside the host's read lock")
	if err == nil {
		setlk(fd, unix.F_SETLK, unix.F_UNLCK, 200, 100)
	}
	err = setlk(fd, unix.F_SETLK, unix.F_WRLCK, 250, 10)
	check("guest-setlk-vs-traditional", outcome(err), want("EAGAIN|EACCES", "ok"), "F_SETLK F_WRLCK [250,260) over the host's read lock")
	if err == nil {
		setlk(fd, unix.F_SETLK, unix.F_UNLCK, 250, 10)
	}
	check("guest-setlk-beside", outcome(setlk(fd, unix.F_SETLK, unix.F_WRLCK, 100, 100)), "ok", "F_SETLK F_WRLCK [100,200), beside the host's locks")
	setlk(fd, unix.F_SETLK, unix.F_UNLCK, 100, 100)

	err, blocked, took := blocking("posix-setlkw", unix.SYS_FCNTL, func() error {
		return setlk(fd, unix.F_SETLKW, unix.F_WRLCK, 0, 100)
	})
	if check("guest-setlkw", outcome(err), "ok", "F_SETLKW F_WRLCK [0,100)") {
		check("guest-setlkw-waited", strconv.FormatBool(blocked), want("true", "false"),
			"blocked in fcntl until the host let go: the call took %v", took.Round(time.Millisecond))
	}
	say("GUEST STEP posix-setlkw-held")
	if !waitGo(3) {
		return false
	}
	// 4. Closing the descriptor drops the guest's locks.
	err = unix.Close(fd)
	closed = true
	check("guest-close", outcome(err), "ok", "close drops the guest's lock")
	say("GUEST STEP posix-closed")
	return waitGo(4)
}

// flocks: flock on the file "flock" (made by the host).
func flocks() {
	path := filepath.Join(mnt, "flock")
	fd, err := unix.Open(path, unix.O_RDWR, 0)
	if err != nil {
		result("flock-open", false, "open %s: %s", path, outcome(err))
		return
	}
	defer unix.Close(fd)
	// 5. The guest holds LOCK_EX.
	if !check("guest-flock", outcome(unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)), "ok", "flock LOCK_EX|LOCK_NB") {
		return
	}
	say("GUEST STEP flock-held")
	if !waitGo(5) {
		return
	}
	check("guest-funlock", outcome(unix.Flock(fd, unix.LOCK_UN)), "ok", "flock LOCK_UN")
	say("GUEST STEP flock-released")
	if !waitGo(6) {
		return
	}
	// 6. The host holds LOCK_EX.
	err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	check("guest-flock-conflict", outcome(err), want("EAGAIN", "ok"), "flock LOCK_EX|LOCK_NB while the host holds LOCK_EX")
	if err == nil {
		unix.Flock(fd, unix.LOCK_UN)
	}
	err = unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB)
	check("guest-flock-shared-conflict", outcome(err), want("EAGAIN", "ok"), "flock LOCK_SH|LOCK_NB while the host holds LOCK_EX")
	if err == nil {
		unix.Flock(fd, unix.LOCK_UN)
	}
	err, blocked, took := blocking("flock-wait", unix.SYS_FLOCK, func() error { return unix.Flock(fd, unix.LOCK_EX) })
	if check("guest-flock-wait", outcome(err), "ok", "flock LOCK_EX") {
		check("guest-flock-waited", strconv.FormatBool(blocked), want("true", "false"),
			"blocked in flock until the host let go: the call took %v", took.Round(time.Millisecond))
	}
	say("GUEST STEP flock-wait-held")
	if !waitGo(7) {
		return
	}
	check("guest-flock-unlock-after-wait", outcome(unix.Flock(fd, unix.LOCK_UN)), "ok", "flock LOCK_UN")
	say("GUEST STEP flock-done")
}
