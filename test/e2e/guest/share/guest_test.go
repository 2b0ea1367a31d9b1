package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"
	"golang.org/x/sys/unix"
)

func TestCheckNames(t *testing.T) {
	seen := map[string]bool{"mount": true, "unmount": true, "setup": true, "guest": true}
	for _, c := range checks {
		if c.name == "" || strings.ContainsAny(c.name, " \t\n") {
			t.Errorf("bad check name %q", c.name)
		}
		if seen[c.name] {
			t.Errorf("check name %q used twice", c.name)
		}
		seen[c.name] = true
	}
}

func TestPanicAndTimeoutAreFailures(t *testing.T) {
	e := &env{work: t.TempDir()}
	r := runCheck(e, check{name: "boom", fn: func(*T) error { panic("kaboom") }}, time.Minute)
	if r.Status != guestspec.Fail || !strings.Contains(r.Detail, "panic: kaboom") {
		t.Errorf("panicking check: %+v", r)
	}
	block := make(chan struct{})
	defer close(block)
	r = runCheck(e, check{name: "hang", fn: func(*T) error { <-block; return nil }}, 50*time.Millisecond)
	if r.Status != guestspec.Fail || !strings.Contains(r.Detail, "timeout after 50ms") {
		t.Errorf("hanging check: %+v", r)
	}
	r = runCheck(e, check{name: "skip", fn: func(t *T) error { t.Note("n"); return skipf("why") }}, time.Minute)
	if r.Status != guestspec.Skip || !strings.HasPrefix(r.Detail, "why; n; took") {
		t.Errorf("skipping check: %+v", r)
	}
	r = runCheck(e, check{name: "fail", fn: func(*T) error { return errors.Join(errors.New("a"), errors.New("b")) }}, time.Minute)
	if r.Status != guestspec.Fail || !strings.HasPrefix(r.Detail, "a; b; took") {
		t.Errorf("failing check: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(e.work, "fail")); err != nil {
		t.Errorf("the directory of a failed check is kept: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.work, "skip")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the directory of a skipped check is removed: %v", err)
	}
}

// shareDir returns a fresh directory for a run: a tmpfs mounted for the
// test where possible, else a directory on the temp file system.
func shareDir(t *testing.T) string {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1g,mode=0755"); err != nil {
		t.Logf("mount tmpfs: %v; using %s as it is", err, dir)
		return dir
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("umount %s: %v", dir, err)
		}
	})
	return dir
}

// TestSuiteOnHost builds the guest program statically and runs it with
// -no-mount against a local directory: every check must pass there (but
// remount, which needs a virtio-fs mount), and the host side must accept
// the files it leaves.
func TestSuiteOnHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the checks run as root (chown, setgid, reading mode 0000 files)")
	}
	if testing.Short() {
		t.Skip("-short")
	}
	bin := filepath.Join(t.TempDir(), "guest")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	share := shareDir(t)
	if err := guestspec.PrepareHost(share); err != nil {
		t.Fatalf("PrepareHost: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, bin, "-no-mount", "-mnt", share, "-timeout", "2m")
	out, err := cmd.Output()
	t.Logf("guest program ran %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Errorf("guest program: %v", err)
	}
	results, done := guestspec.ParseOutput(string(out))
	if !done {
		t.Errorf("no %q line", guestspec.DoneLine)
	}
	got := map[string]guestspec.Result{}
	for _, r := range results {
		got[r.Name] = r
	}
	wantSkip := map[string]bool{"mount": true, "unmount": true, "remount": true}
	for name := range wantSkip {
		if r, ok := got[name]; !ok || r.Status != guestspec.Skip {
			t.Errorf("%s: got %+v, want SKIP", name, r)
		}
	}
	for _, c := range checks {
		r, ok := got[c.name]
		switch {
		case !ok:
			t.Errorf("%s: no result", c.name)
		case wantSkip[c.name]:
		case r.Status != guestspec.Pass:
			t.Errorf("%s: %s %s", c.name, r.Status, r.Detail)
		}
	}
	if len(results) != len(checks)+2 {
		t.Errorf("%d results, want %d", len(results), len(checks)+2)
	}
	if err := guestspec.VerifyHost(share, guestspec.DefaultWorkdir); err != nil {
		t.Errorf("VerifyHost: %v", err)
	}
	// Only the host's tree and the workdir with the host-check tree stay.
	if names, err := readdirNames(share); err != nil || strings.Join(names, " ") != "guest-suite host-prepared" {
		t.Errorf("share holds %q (%v), want guest-suite and host-prepared", names, err)
	}
	if names, err := readdirNames(filepath.Join(share, guestspec.DefaultWorkdir)); err != nil || strings.Join(names, " ") != guestspec.HostCheckDir {
		t.Errorf("workdir holds %q (%v), want only %s", names, err, guestspec.HostCheckDir)
	}

	// -run selects checks; -list names them.
	out, err = exec.CommandContext(ctx, bin, "-no-mount", "-mnt", share, "-workdir", "second", "-run", "^(create|statfs)$").Output()
	if err != nil {
		t.Errorf("guest -run: %v\n%s", err, out)
	}
	results, done = guestspec.ParseOutput(string(out))
	var names []string
	for _, r := range results {
		names = append(names, r.Name+"="+string(r.Status))
	}
	if want := "mount=SKIP create=PASS statfs=PASS unmount=SKIP"; !done || strings.Join(names, " ") != want {
		t.Errorf("guest -run: got %q (done %v), want %q", strings.Join(names, " "), done, want)
	}
	out, err = exec.CommandContext(ctx, bin, "-list").Output()
	if err != nil {
		t.Fatalf("guest -list: %v", err)
	}
	if lines := strings.Fields(string(out)); len(lines) != len(checks) || lines[0] != checks[0].name {
		t.Errorf("guest -list: %q", out)
	}
}
