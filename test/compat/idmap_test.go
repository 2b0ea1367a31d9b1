// Package compat holds tests that compare govirtiofsd with the reference
// virtiofsd 1.13.2 of the lab as programs: the same command line to both
// binaries, the same verdict wanted from each.
package compat

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"
	"github.com/stretchr/testify/require"
)

// referenceBinary is the lab's virtiofsd 1.13.2; the test fails, naming
// it, when it is not there.
func referenceBinary(t *testing.T) string {
	t.Helper()
	dir, err := daemon.LabDir()
	require.NoError(t, err)
	ref := filepath.Join(dir, "bin", "virtiofsd-ref")
	if st, err := os.Stat(ref); err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("the reference virtiofsd is missing: %s (%v); run test/lib/lab/fetch.sh (or set %s)", ref, err, daemon.LabEnv)
	}
	return ref
}

// oursBinary builds govirtiofsd into a folder of the test's.
func oursBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "govirtiofsd")
	if err := daemon.BuildOurs(bin); err != nil {
		t.Fatalf("building govirtiofsd: %v", err)
	}
	return bin
}

// runArgs come before a case's id options on both command lines: both
// binaries get the same ones, so that only their handling of the options
// differs.
//
// The harness runs them differently (daemon.Reference with --sandbox none
// --seccomp none, daemon.Ours with its defaults, the namespace sandbox),
// and that is not fair here: --uid-map/--gid-map are refused with "can
// only be used by unprivileged user where sandbox mod is namespace" by a
// daemon run as root or with another sandbox, so ours with its defaults
// and the reference with none differ on them (seen as an unprivileged
// user). With the same sandbox both agree on every case, run as root or
// as an unprivileged user; the sandbox and seccomp are off rather than on
// because an unprivileged daemon's namespace sandbox runs newuidmap, and
// its verdict on --uid-map would then be about whether newuidmap is
// installed (and the two word a failed exec differently), not about the
// options. Both run as this test's user, as the in-package test judged
// ours with os.Geteuid().
var runArgs = []string{"--sandbox", "none", "--seccomp", "none"}

// verdict starts the back-end program bin with the id options args (after
// runArgs, on a fresh shared folder and socket) and says what it made of
// them: "accepted" once it waits for a connection, else "exit N: " and
// its error message: clap's "error: ..." paragraph of a refused command
// line (exit 2), or the message of every ERROR line it logged (exit 1).
// It reads nothing but the program's output and exit status, so it judges
// the reference and govirtiofsd alike.
func verdict(bin string, args []string) (string, error) {
	dir, err := os.MkdirTemp("", "idmap-verdict-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	share := filepath.Join(dir, "share")
	if err := os.Mkdir(share, 0o755); err != nil {
		return "", err
	}
	argv := append([]string{"--shared-dir", share, "--socket-path", filepath.Join(dir, "s.sock")}, runArgs...)
	cmd := exec.Command(bin, append(argv, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var msg []string
	inClap := false
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				err := cmd.Wait()
				code := cmd.ProcessState.ExitCode()
				if code == 0 {
					return "", fmt.Errorf("exited 0 (%v): %q", err, msg)
				}
				return fmt.Sprintf("exit %d: %s", code, strings.Join(msg, "\n")), nil
			}
			switch {
			case strings.Contains(l, daemon.ReadyLine):
				cmd.Process.Kill()
				cmd.Wait()
				return "accepted", nil
			case strings.HasPrefix(l, "error: "):
				// clap's message runs to the first blank line.
				inClap = true
				msg = append(msg, l)
			case inClap && l == "":
				inClap = false
			case inClap:
				msg = append(msg, l)
			case strings.Contains(l, " ERROR "):
				_, m, _ := strings.Cut(l, "] ")
				msg = append(msg, m)
			}
		case <-timeout:
			cmd.Process.Kill()
			cmd.Wait()
			return "", fmt.Errorf("neither waited for a connection nor exited within 10 s: %q", msg)
		}
	}
}

// idCases are the id-mapping command lines compared.
var idCases = [][]string{
	{"--translate-uid", "guest:0:1000:1"},
	{"--translate-uid", "host:0:1000:10", "--translate-gid", "map:0:1000:10"},
	{"--translate-uid", "squash-guest:0:1000:10", "--translate-uid", "squash-host:0:1000:10"},
	{"--translate-gid", "forbid-guest:5:2"},
	{"--translate-uid", "GUEST:0:1000:1"},
	{"--translate-uid", "Squash-Host/1/0/1"},
	{"--translate-uid", "guest→1→0→1"},
	{"--translate-uid", "guest:+1:00012:1"},
	{"--translate-uid", "foo:0:1:2"},
	{"--translate-uid", "guest_x:1:0:1"},
	{"--translate-uid", "guestä:1:0:1"},
	{"--translate-uid", "guest:0:1000"},
	{"--translate-uid", "guest:0:1000:1:2"},
	{"--translate-gid", "forbid-guest:5"},
	{"--translate-gid", "forbid-guest:5:2:3"},
	{"--translate-uid", "guest:a:1:1"},
	{"--translate-uid", "guest:-1:1:1"},
	{"--translate-uid", "guest:+:0:1"},
	{"--translate-uid", ""},
	{"--translate-uid", "guest"},
	{"--translate-uid", "guest:"},
	{"--translate-uid", "guest:1:0:1:"},
	{"--translate-uid", ":guest:1:0:1"},
	{"--translate-uid", "gu est:1:0:1"},
	{"--translate-uid", "guest:4294967296:0:1"},
	{"--translate-uid", "guest:4294967295:0:1"},
	{"--translate-uid", "guest:4294967294:0:1"},
	{"--translate-uid", "guest:1:0:4294967295"},
	{"--translate-uid", "guest:0:0:4294967295"},
	{"--translate-gid", "map:0:4294967295:2"},
	{"--translate-gid", "guest:0:4294967295:2"},
	{"--translate-uid", "forbid-guest:4294967295:2"},
	{"--translate-uid", "forbid-guest:4294967290:6", "--translate-uid", "guest:4294967291:5:3"},
	{"--translate-uid", "guest:0:1000:10", "--translate-uid", "guest:5:2000:10"},
	{"--translate-uid", "guest:0:1000:10", "--translate-uid", "host:5:2000:10"},
	{"--translate-uid", "map:0:1000:10", "--translate-uid", "host:1005:2000:10"},
	{"--translate-uid", "map:0:1000:10", "--translate-uid", "forbid-guest:9:1"},
	{"--translate-uid", "map:0:1000:10", "--translate-uid", "forbid-guest:10:1"},
	{"--translate-uid", "map:0:1000:10", "--translate-uid", "guest:0:0:0"},
	{"--translate-gid", "guest:0:1000:10", "--translate-gid", "squash-guest:5:2000:10"},
	{"--translate-gid", "guest:0:1000:10", "--translate-uid", "squash-guest:5:2000:10"},
	{"--translate-uid", "guest:0:1000:10", "--translate-uid", "guest:5:2000:10", "--translate-gid", "foo:1:1:1"},
	{"--translate-uid", "guest:0:1:1", "--posix-acl"},
	{"--posix-acl", "--translate-gid", "guest:0:1:1"},
	{"--posix-acl", "--translate-gid", "guest:0:1:1", "--translate-uid", "guest:0:1:1"},
	{"--translate-gid", "guest:0:1:1", "--posix-acl", "--translate-uid", "guest:0:1:1"},
	{"--translate-gid", "guest:0:1:1", "-o", "posix_acl"},
	{"--uid-map", ":0:1000:1:"},
	{"--gid-map", "/0/1000/1/"},
	{"--uid-map", ":0:1000:1"},
	{"--uid-map", "0:1000:1:"},
	{"--uid-map", ":0:1000:"},
	{"--gid-map", ":0:1000:1:2:"},
	{"--gid-map", ":a:1:1:"},
	{"--gid-map", "x0x1x1x"},
	{"--uid-map", ""},
	{"--uid-map", ":"},
}

// TestIDOptionsMatchReference runs the reference virtiofsd and govirtiofsd
// with each command line of idCases and checks that they accept and
// refuse the same ones, with the same exit status and message.
func TestIDOptionsMatchReference(t *testing.T) {
	ref := referenceBinary(t)
	ours := oursBinary(t)
	type result struct {
		theirs, ours     string
		theirErr, ourErr error
	}
	results := make([]result, len(idCases))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, args := range idCases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			r := &results[i]
			r.theirs, r.theirErr = verdict(ref, args)
			r.ours, r.ourErr = verdict(ours, args)
		}()
	}
	wg.Wait()
	accepted := 0
	for i, args := range idCases {
		r := results[i]
		require.NoError(t, r.theirErr, "reference with %q", args)
		require.NoError(t, r.ourErr, "govirtiofsd with %q", args)
		require.Equal(t, r.theirs, r.ours, "%q (expected: the reference's verdict, actual: govirtiofsd's)", args)
		if r.theirs == "accepted" {
			accepted++
		}
	}
	// Both kinds of verdict are compared: a case list all accepted or all
	// refused would say little.
	require.NotZero(t, accepted, "no command line accepted")
	require.Less(t, accepted, len(idCases), "no command line refused")
}
