package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"
	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
)

var (
	guestOnce sync.Once
	guestDir  string
	guestErr  error
)

// guestInitramfs builds, once, an initramfs holding the guest suite and
// go-fuse's posixtest compiled into a test binary.
func guestInitramfs(t *testing.T, lab *vm.Lab) string {
	t.Helper()
	guestOnce.Do(func() {
		if guestDir, guestErr = os.MkdirTemp("", "e2e-guest-"); guestErr != nil {
			return
		}
		g, p := filepath.Join(guestDir, "guest"), filepath.Join(guestDir, "posix.test")
		if guestErr = daemon.BuildStatic("./test/e2e/guest/share", g, false); guestErr != nil {
			return
		}
		if guestErr = daemon.BuildStatic("./test/e2e/guest/posix", p, true, "guest"); guestErr != nil {
			return
		}
		guestErr = vm.BuildInitramfs(filepath.Join(guestDir, "initrd.gz"), vm.InitramfsConfig{
			Busybox: lab.Busybox,
			Files:   []vm.GuestFile{{Path: "/guest", HostPath: g}, {Path: "/posix.test", HostPath: p}},
			// posixtest's timeout is 5 minutes times the slowdown the
			// guest measures at its start (its uptime over 4 s, from 1
			// to 5), as guest/internal/slow scales the guest programs'
			// watchdogs.
			Command: `limit=$(awk '{ s = $1 / 4; if (s < 1) s = 1; if (s > 5) s = 5; printf "%d", 300 * s }' /proc/uptime); ` +
				"/guest -mnt /mnt -tag myfs; " +
				"POSIXTEST_MNT=/mnt POSIXTEST_TAG=myfs /posix.test -test.v -test.timeout ${limit}s; echo POSIX EXIT $?",
		})
	})
	if guestErr != nil {
		t.Fatal(guestErr)
	}
	return filepath.Join(guestDir, "initrd.gz")
}

var posixLine = regexp.MustCompile(`--- (PASS|FAIL|SKIP): TestPosix/(\S+)`)

// suiteOutcome is what one daemon configuration did with the guest suite
// and posixtest: check name -> PASS, FAIL or SKIP.
type suiteOutcome map[string]vm.Status

func runSuite(t *testing.T, lab *vm.Lab, d daemon.Daemon, queues int, extra []string) suiteOutcome {
	share := t.TempDir()
	if err := guestspec.PrepareHost(share); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	p, restart := startDaemon(t, d, daemon.Options{SharedDir: share, Socket: sock, Extra: extra})
	run := boot(t, t.Context(), vm.Config{Lab: lab, Initrd: guestInitramfs(t, lab), Socket: sock, Tag: "myfs",
		NumRequestQueues: queues, QueueSize: 1024, Timeout: 10 * time.Minute}, p, restart)
	p = run.Daemon()
	res, err := run.Wait()
	if err != nil {
		t.Fatal(err)
	}
	out := suiteOutcome{}
	for _, r := range res.List {
		out["guest/"+r.Name] = r.Status
		if r.Status == vm.Fail {
			t.Errorf("guest check %s failed: %s", r.Name, r.Detail)
		}
	}
	console := run.Console()
	for _, m := range posixLine.FindAllStringSubmatch(console, -1) {
		out["posix/"+m[2]] = vm.Status(m[1])
		if m[1] == "FAIL" {
			detail := posixOutput(console, m[2])
			if why, ok := referenceFails["posix/"+m[2]]; ok && d.Name == "virtiofsd-ref" {
				t.Logf("posixtest %s failed on the reference, as known (%s):\n%s", m[2], why, detail)
				continue
			}
			t.Errorf("posixtest %s failed; its output:\n%s", m[2], detail)
		}
	}
	if !strings.Contains(console, "POSIX EXIT ") {
		t.Errorf("posixtest did not finish")
	}
	if n := len(out); n < 50 {
		t.Errorf("only %d results: the suites did not run", n)
	}
	if err := guestspec.VerifyHost(share, "guest-suite"); err != nil {
		t.Errorf("host check of what the guest wrote: %v", err)
	}
	if err := p.WaitTimeout(run.Scale(15 * time.Second)); err != nil || p.ExitCode() != 0 {
		t.Errorf("%s exit: %v (code %d)", d.Name, err, p.ExitCode())
	}
	return out
}

// deliberate lists the checks where govirtiofsd and the reference
// virtiofsd (1.14.0) are known to differ, with the reason.
var deliberate = map[string]string{
	"posix/OpenSymlinkRace": referenceFails["posix/OpenSymlinkRace"],
}

// referenceFails lists the checks the reference virtiofsd fails, with the
// reason: on the reference they are logged, not failed.
var referenceFails = map[string]string{
	// With --inode-file-handles=never (1.13.2's default) 1.14.0 passes
	// it; govirtiofsd passes it with prefer too.
	"posix/OpenSymlinkRace": "virtiofsd 1.14.0 defaults to --inode-file-handles=prefer and answers ESTALE when the file behind a handle is replaced between LOOKUP and OPEN",
}

// TestGuestSuite runs the guest suite and posixtest in a real guest on
// govirtiofsd with 1 and 4 request queues and on the reference virtiofsd,
// with default options and with --xattr, then compares each govirtiofsd
// run with the reference run of the same options: every difference must be
// listed in deliberate.
func TestGuestSuite(t *testing.T) {
	lab := needLab(t)
	xattr := []string{"--xattr"}
	configs := []struct {
		name   string
		d      daemon.Daemon
		queues int
		extra  []string
		ref    string // the reference run to compare with
	}{
		{"govirtiofsd-1q", ours(t), 1, nil, "virtiofsd-ref"},
		{"govirtiofsd-4q", ours(t), 4, nil, "virtiofsd-ref"},
		{"virtiofsd-ref", daemon.Reference(lab.VirtiofsdRef), 1, nil, ""},
		{"govirtiofsd-xattr", ours(t), 2, xattr, "virtiofsd-ref-xattr"},
		{"virtiofsd-ref-xattr", daemon.Reference(lab.VirtiofsdRef), 1, xattr, ""},
	}
	outcomes := map[string]suiteOutcome{}
	for _, c := range configs {
		t.Run(c.name, func(t *testing.T) {
			outcomes[c.name] = runSuite(t, lab, c.d, c.queues, c.extra)
		})
	}
	for _, c := range configs {
		if c.ref == "" {
			continue
		}
		o, ref := outcomes[c.name], outcomes[c.ref]
		if o == nil || ref == nil {
			t.Errorf("cannot compare %s with %s: a run did not complete", c.name, c.ref)
			continue
		}
		names := map[string]bool{}
		for n := range o {
			names[n] = true
		}
		for n := range ref {
			names[n] = true
		}
		var diffs []string
		for n := range names {
			if o[n] != ref[n] {
				line := fmt.Sprintf("%s: ours %q, reference %q", n, o[n], ref[n])
				if why, ok := deliberate[n]; ok {
					t.Logf("deliberate difference %s (%s)", line, why)
					continue
				}
				diffs = append(diffs, line)
			}
		}
		sort.Strings(diffs)
		for _, d := range diffs {
			t.Errorf("%s differs from %s: %s", c.name, c.ref, d)
		}
		t.Logf("%s vs %s: %d results compared, %d unexplained differences", c.name, c.ref, len(names), len(diffs))
	}
}

// posixOutput returns the console lines that mention test name, for a
// failure's detail.
func posixOutput(console, name string) string {
	var b strings.Builder
	for _, l := range strings.Split(console, "\n") {
		if strings.Contains(l, name) || strings.Contains(l, "opener:") || strings.Contains(l, "shuffler:") {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}
