// Command guest runs inside a Linux VM and exercises a virtio-fs mount.
//
// It mounts the share itself (mount(TAG, MNT, "virtiofs", 0, OPTS)), runs
// each selected check in a fresh subdirectory of <MNT>/<WORKDIR> and prints
// one line per check on standard output, which is the serial console:
//
//	GUEST RESULT <name> <PASS|FAIL|SKIP> <detail>
//
// and finally "GUEST DONE". Besides the checks, the results "mount" and
// "unmount" report mounting the share at the start and unmounting it at the
// end. Each check has a timeout and a panic in a check is reported as
// FAIL, so the program always ends.
//
// With -no-mount the program runs against an existing directory (useful on
// the host to validate the checks against a local file system); checks that
// need to mount report SKIP then.
//
// The files the host checks afterwards (guestspec.VerifyHost) are left in
// <MNT>/<WORKDIR>/host-check; the files the host prepared before boot
// (guestspec.PrepareHost) are read from <MNT>/host-prepared.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"
	"golang.org/x/sys/unix"
)

// env is the state shared by all checks of a run.
type env struct {
	mnt       string
	tag       string
	mountOpts string
	work      string
	// mounted is true when the program mounted the share itself (and so
	// may unmount and remount it).
	mounted bool
	// mountLost is set when a check unmounted the share and could not
	// mount it again: the checks after it must not run on the bare
	// mount point.
	mountLost    atomic.Bool
	readdirCount int
}

// check is one named check. fn gets a fresh directory in t.dir; it
// returns nil (PASS), a skipError (SKIP) or another error (FAIL).
type check struct {
	name string
	fn   func(t *T) error
}

// checks is the suite in the order it runs.
var checks = []check{
	{name: "host_prepared", fn: checkHostPrepared},
	{name: "create", fn: checkCreate},
	{name: "read_write", fn: checkReadWrite},
	{name: "append", fn: checkAppend},
	{name: "truncate", fn: checkTruncate},
	{name: "o_trunc", fn: checkOTrunc},
	{name: "sparse_5g", fn: checkSparse5G},
	{name: "mkdir_rmdir", fn: checkMkdirRmdir},
	{name: "rename", fn: checkRename},
	{name: "rename_dir", fn: checkRenameDir},
	{name: "renameat2_exchange", fn: checkRenameExchange},
	{name: "renameat2_noreplace", fn: checkRenameNoreplace},
	{name: "hardlink", fn: checkHardlink},
	{name: "symlink", fn: checkSymlink},
	{name: "mkfifo", fn: checkMkfifo},
	{name: "chmod", fn: checkChmod},
	{name: "chown", fn: checkChown},
	{name: "utimensat", fn: checkUtimensat},
	{name: "statfs", fn: checkStatfs},
	{name: "readdir_large", fn: checkReaddirLarge},
	{name: "fallocate", fn: checkFallocate},
	{name: "lseek_data_hole", fn: checkLseekDataHole},
	{name: "copy_file_range", fn: checkCopyFileRange},
	{name: "fsync", fn: checkFsync},
	{name: "host_check", fn: checkHostCheck},
	// remount runs last but for the final unmount: it unmounts the share.
	{name: "remount", fn: checkRemount},
}

func main() {
	os.Exit(run())
}

func run() (code int) {
	mnt := flag.String("mnt", "/mnt", "mount point of the virtio-fs share")
	tag := flag.String("tag", "myfs", "virtio-fs tag to mount")
	mountOpts := flag.String("mount-opts", "", "extra mount options (the data argument of mount(2))")
	runRE := flag.String("run", "", "run only the checks whose name matches this regular expression")
	workdir := flag.String("workdir", guestspec.DefaultWorkdir, "subdirectory of the mount used for this run (removed and recreated)")
	noMount := flag.Bool("no-mount", false, "do not mount: run against the existing directory -mnt (remount is skipped)")
	keepMounted := flag.Bool("keep-mounted", false, "leave the share mounted at the end")
	timeout := flag.Duration("timeout", 10*time.Minute, "timeout of each check (and of mounting and the final unmount)")
	total := flag.Duration("total-timeout", 45*time.Minute, "time after which the checks not yet started are reported as FAIL without running")
	readdirCount := flag.Int("readdir-count", 10000, "number of directory entries for readdir_large")
	list := flag.Bool("list", false, "print the names of the checks and exit")
	flag.CommandLine.Init(os.Args[0], flag.ContinueOnError)
	if err := flag.CommandLine.Parse(os.Args[1:]); err == flag.ErrHelp {
		return 0
	} else if err != nil {
		os.Stdout.WriteString(guestspec.Result{Name: "guest", Status: guestspec.Fail, Detail: "bad command line: " + err.Error()}.String() + "\n" + guestspec.DoneLine + "\n")
		return 2
	}

	if *list {
		for _, c := range checks {
			fmt.Println(c.name)
		}
		return 0
	}

	out := &printer{}
	defer func() {
		// Whatever happens, the harness gets its last line.
		if r := recover(); r != nil {
			out.report(guestspec.Result{Name: "guest", Status: guestspec.Fail, Detail: fmt.Sprintf("panic: %v", r)})
			code = 2
		}
		fmt.Fprintln(os.Stdout, guestspec.DoneLine)
	}()

	var re *regexp.Regexp
	if *runRE != "" {
		var err error
		if re, err = regexp.Compile(*runRE); err != nil {
			out.report(guestspec.Result{Name: "guest", Status: guestspec.Fail, Detail: fmt.Sprintf("bad -run: %v", err)})
			return 2
		}
	}
	var selected []check
	for _, c := range checks {
		if re == nil || re.MatchString(c.name) {
			selected = append(selected, c)
		}
	}
	notRun := func(why string) {
		for _, c := range selected {
			out.report(guestspec.Result{Name: c.name, Status: guestspec.Fail, Detail: "not run: " + why})
		}
	}

	// Modes in the checks are exact: fix the umask.
	unix.Umask(0o022)

	e := &env{
		mnt:          filepath.Clean(*mnt),
		tag:          *tag,
		mountOpts:    *mountOpts,
		readdirCount: *readdirCount,
	}
	e.work = filepath.Join(e.mnt, *workdir)

	if *noMount {
		out.report(guestspec.Result{Name: "mount", Status: guestspec.Skip, Detail: "-no-mount: using the directory " + e.mnt})
	} else {
		start := time.Now()
		err := runWithTimeout(*timeout, e.mount)
		if err != nil {
			out.report(guestspec.Result{Name: "mount", Status: guestspec.Fail, Detail: err.Error()})
			notRun("mount failed")
			out.report(guestspec.Result{Name: "unmount", Status: guestspec.Skip, Detail: "not mounted"})
			return 1
		}
		e.mounted = true
		out.report(guestspec.Result{Name: "mount", Status: guestspec.Pass, Detail: fmt.Sprintf("tag %s at %s opts %q (%s)", e.tag, e.mnt, e.mountOpts, took(start))})
	}

	if err := runWithTimeout(*timeout, func() error { return setupWorkdir(e.work) }); err != nil {
		out.report(guestspec.Result{Name: "setup", Status: guestspec.Fail, Detail: err.Error()})
		notRun("setup failed")
	} else {
		deadline := time.Now().Add(*total)
		for _, c := range selected {
			var r guestspec.Result
			switch {
			case e.mountLost.Load():
				r = guestspec.Result{Name: c.name, Status: guestspec.Fail, Detail: "not run: the share is no longer mounted"}
			case time.Now().After(deadline):
				r = guestspec.Result{Name: c.name, Status: guestspec.Fail, Detail: fmt.Sprintf("not run: -total-timeout %s exceeded", *total)}
			default:
				// The host sees which check runs: a hang's last
				// console line names it.
				os.Stdout.WriteString("GUEST CHECK " + c.name + "\n")
				r = runCheck(e, c, min(*timeout, time.Until(deadline)))
			}
			out.report(r)
		}
	}

	switch {
	case !e.mounted:
		out.report(guestspec.Result{Name: "unmount", Status: guestspec.Skip, Detail: "not mounted by the guest"})
	case e.mountLost.Load():
		out.report(guestspec.Result{Name: "unmount", Status: guestspec.Skip, Detail: "the share is no longer mounted"})
	case *keepMounted:
		out.report(guestspec.Result{Name: "unmount", Status: guestspec.Skip, Detail: "-keep-mounted"})
	default:
		start := time.Now()
		err := runWithTimeout(*timeout, func() error {
			unix.Sync()
			return ok("umount "+e.mnt, unix.Unmount(e.mnt, 0))
		})
		if err != nil {
			out.report(guestspec.Result{Name: "unmount", Status: guestspec.Fail, Detail: err.Error()})
		} else {
			out.report(guestspec.Result{Name: "unmount", Status: guestspec.Pass, Detail: took(start)})
		}
	}
	if out.failed > 0 {
		return 1
	}
	return 0
}

// printer writes result lines, each with a single write.
type printer struct {
	failed int
}

func (p *printer) report(r guestspec.Result) {
	if r.Status == guestspec.Fail {
		p.failed++
	}
	os.Stdout.WriteString(r.String() + "\n")
}

func took(start time.Time) string {
	return "took " + time.Since(start).Round(time.Millisecond).String()
}

// mount mounts the share and checks that a virtio-fs (FUSE) file system
// is now at the mount point.
func (e *env) mount() error {
	if err := os.MkdirAll(e.mnt, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", e.mnt, err)
	}
	if err := unix.Mount(e.tag, e.mnt, "virtiofs", 0, e.mountOpts); err != nil {
		return fmt.Errorf("mount(%q, %q, virtiofs, 0, %q): %s", e.tag, e.mnt, e.mountOpts, errnoName(err))
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(e.mnt, &sfs); err != nil {
		return fmt.Errorf("statfs %s after mount: %s", e.mnt, errnoName(err))
	}
	if sfs.Type != unix.FUSE_SUPER_MAGIC {
		return fmt.Errorf("statfs %s after mount: f_type %#x, want FUSE_SUPER_MAGIC %#x", e.mnt, sfs.Type, unix.FUSE_SUPER_MAGIC)
	}
	return nil
}

func setupWorkdir(work string) error {
	if err := os.RemoveAll(work); err != nil {
		return fmt.Errorf("remove old workdir %s: %v", work, err)
	}
	if err := os.Mkdir(work, 0o755); err != nil {
		return fmt.Errorf("mkdir workdir %s: %v", work, err)
	}
	return nil
}

// runWithTimeout runs fn in a goroutine and gives up waiting after d;
// a panic in fn is returned as an error.
func runWithTimeout(d time.Duration, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("panic: %v: %s", r, stackLine())
			}
		}()
		done <- fn()
	}()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		return &timeoutError{d}
	}
}

type timeoutError struct{ d time.Duration }

func (t *timeoutError) Error() string {
	return fmt.Sprintf("timeout after %s (the check is still running)", t.d)
}

// stackLine condenses the stack of a panic into one line.
func stackLine() string {
	lines := strings.Split(strings.TrimSpace(string(debug.Stack())), "\n")
	var frames []string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "/") && strings.Contains(l, "/test/e2e/guest/share/") {
			frames = append(frames, filepath.Base(strings.Fields(l)[0]))
		}
	}
	return strings.Join(frames, " < ")
}

// runCheck runs one check in a fresh directory <work>/<name>, which is
// removed unless the check fails.
func runCheck(e *env, c check, timeout time.Duration) guestspec.Result {
	start := time.Now()
	t := &T{env: e, dir: filepath.Join(e.work, c.name)}
	err := runWithTimeout(timeout, func() error {
		if err := os.Mkdir(t.dir, 0o755); err != nil {
			return fmt.Errorf("setup: mkdir %s: %v", t.dir, err)
		}
		err := c.fn(t)
		if _, isSkip := err.(*skipError); err != nil && !isSkip {
			return err // the directory stays for a post-mortem
		}
		if !e.mountLost.Load() {
			if rerr := os.RemoveAll(t.dir); rerr != nil {
				return fmt.Errorf("cleanup: %v", rerr)
			}
		}
		return err
	})
	detail := strings.Join(append(t.takeNotes(), took(start)), "; ")
	if err != nil {
		if s, isSkip := err.(*skipError); isSkip {
			return guestspec.Result{Name: c.name, Status: guestspec.Skip, Detail: s.reason + "; " + detail}
		}
		return guestspec.Result{Name: c.name, Status: guestspec.Fail, Detail: oneLine(err) + "; " + detail}
	}
	return guestspec.Result{Name: c.name, Status: guestspec.Pass, Detail: detail}
}

// oneLine makes a (possibly joined, multi-line) error fit one line.
func oneLine(err error) string {
	return guestspec.OneLine(err, 1500)
}
