package e2e

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"
)

func binary(t *testing.T) string { return ours(t).Argv("", "", nil)[0] }

// TestSocketFiles checks the socket and pid file as virtiofsd makes them:
// mode 0700 (0770 and the group with --socket-group), a stale socket
// replaced, a pid file that keeps a second daemon away.
func TestSocketFiles(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "vfs.sock")
	if err := os.WriteFile(sock, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := ours(t).Start(daemon.Options{SharedDir: t.TempDir(), Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	st, err := os.Stat(sock)
	if err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no socket at %s: %v", sock, err)
	}
	if perm := st.Mode().Perm(); perm != 0o700 {
		t.Errorf("socket mode %o, want 700", perm)
	}
	pid, err := os.ReadFile(sock + ".pid")
	if err != nil || strings.TrimSpace(string(pid)) != strconv.Itoa(d.Pid()) {
		t.Errorf("pid file %q (%v), daemon pid %d", pid, err, d.Pid())
	}
	// A second daemon on the same socket is refused, in virtiofsd's words.
	out, err := exec.Command(binary(t), "--shared-dir", t.TempDir(), "--socket-path", sock).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Error creating pid file '"+sock+".pid': Resource temporarily unavailable (os error 11)") {
		t.Errorf("second daemon: %v\n%s", err, out)
	}
	// SIGTERM ends it.
	d.Signal(syscall.SIGTERM)
	select {
	case <-d.Exited():
	case <-time.After(5 * time.Second):
		t.Errorf("daemon ignored SIGTERM")
	}

	// --socket-group takes a group's name (virtiofsd resolves it with
	// getgrnam), here gid 1's.
	grp, err := user.LookupGroupId("1")
	if err != nil {
		t.Fatalf("gid 1 has no name: %v", err)
	}
	gsock := filepath.Join(dir, "group.sock")
	g, err := ours(t).Start(daemon.Options{SharedDir: t.TempDir(), Socket: gsock, Extra: []string{"--socket-group", grp.Name}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Stop)
	st, err = os.Stat(gsock)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o770 {
		t.Errorf("socket mode with --socket-group %o, want 770", perm)
	}
	if gid := st.Sys().(*syscall.Stat_t).Gid; gid != 1 {
		t.Errorf("socket group %d, want 1 (%s)", gid, grp.Name)
	}
}

// TestCommandLineAnswers checks the answers callers parse.
func TestCommandLineAnswers(t *testing.T) {
	// virtiofsd 1.14.0's answer (test/compat compares the two).
	out, err := exec.Command(binary(t), "--print-capabilities").Output()
	if err != nil || !strings.Contains(string(out), `"posix-acl-negotiation-mode"`) || !strings.Contains(string(out), `"separate-options"`) {
		t.Errorf("--print-capabilities: %q %v", out, err)
	}
	out, err = exec.Command(binary(t), "-V").Output()
	if err != nil || !strings.HasPrefix(string(out), "govirtiofsd ") {
		t.Errorf("-V: %q %v", out, err)
	}
	for _, args := range [][]string{
		{"--shared-dir", "/tmp"},                        // no socket
		{"--socket-path", "/tmp/x.sock"},                // no shared dir
		{"--shared-dir", "/tmp", "--fd=3", "--cache=x"}, // bad cache
		{"--shared-dir", "/tmp", "--fd=3", "-o", "flock=yes"},
		{"--shared-dir", "/tmp", "--fd=3", "--translate-uid", "squash-host:0:x:1"}, // bad id
		{"--shared-dir", "/tmp", "--fd=3", "--migration-mode", "find-path"},        // bad mode
		{"--shared-dir", "/tmp", "--fd=3", "--migration-on-error", "ignore"},       // bad policy
		{"--shared-dir", "/tmp", "--fd=3", "--xattrmap", ":bogus:"},
	} {
		cmd := exec.Command(binary(t), args...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "error:") {
			t.Errorf("%v: want exit 2 with a message, got %v: %s", args, err, out)
		}
	}
}
