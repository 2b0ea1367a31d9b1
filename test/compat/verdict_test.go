// Package compat holds tests that compare govirtiofsd with the reference
// virtiofsd of the lab as programs: the same command line to both
// binaries, the same verdict wanted from each. The reference is virtiofsd
// 1.14.0 (the lab's bin/virtiofsd-ref); where 1.13.2
// (bin/virtiofsd-ref-1.13) answers otherwise, the test lists the
// difference.
package compat

import (
	"bufio"
	"bytes"
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
	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
	"github.com/stretchr/testify/require"
)

// referenceBinary is the lab's virtiofsd 1.14.0, the reference.
func referenceBinary(t *testing.T) string {
	t.Helper()
	return labVirtiofsd(t, "virtiofsd-ref", vm.VirtiofsdVersion)
}

// reference113Binary is the lab's virtiofsd 1.13.2.
func reference113Binary(t *testing.T) string {
	t.Helper()
	return labVirtiofsd(t, "virtiofsd-ref-1.13", vm.VirtiofsdVersion113)
}

// labVirtiofsd is the lab's bin/NAME, which must say it is virtiofsd
// version; the test fails, naming it, when it is not there or another
// version.
func labVirtiofsd(t *testing.T, name, version string) string {
	t.Helper()
	dir, err := daemon.LabDir()
	require.NoError(t, err)
	ref := filepath.Join(dir, "bin", name)
	if st, err := os.Stat(ref); err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("the reference virtiofsd %s is missing: %s (%v); run test/lib/lab/fetch.sh (or set %s)", version, ref, err, daemon.LabEnv)
	}
	out, err := exec.Command(ref, "--version").Output()
	if got := string(bytes.TrimSpace(out)); err != nil || got != "virtiofsd "+version {
		t.Fatalf("%s --version says %q (%v), want virtiofsd %s; run test/lib/lab/fetch.sh", ref, got, err, version)
	}
	return ref
}

var (
	oursOnce sync.Once
	oursDir  string
	oursErr  error
)

// oursBinary builds govirtiofsd once for the package's tests.
func oursBinary(t *testing.T) string {
	t.Helper()
	oursOnce.Do(func() {
		if oursDir, oursErr = os.MkdirTemp("", "compat-ours-"); oursErr == nil {
			oursErr = daemon.BuildOurs(filepath.Join(oursDir, "govirtiofsd"))
		}
	})
	if oursErr != nil {
		t.Fatalf("building govirtiofsd: %v", oursErr)
	}
	return filepath.Join(oursDir, "govirtiofsd")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if oursDir != "" {
		os.RemoveAll(oursDir)
	}
	os.Exit(code)
}

// runArgs come before a case's options on both command lines: both
// binaries get the same ones, so that only their handling of the options
// differs. A case that gives --sandbox or --seccomp itself replaces that
// one.
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

// caseArgv is the command line verdict gives bin for a case's args: the
// shared folder and socket, runArgs less those args overrides, then args.
func caseArgv(share, socket string, args []string) []string {
	argv := []string{"--shared-dir", share, "--socket-path", socket}
	for i := 0; i < len(runArgs); i += 2 {
		given := false
		for _, a := range args {
			if a == runArgs[i] || strings.HasPrefix(a, runArgs[i]+"=") {
				given = true
			}
		}
		if !given {
			argv = append(argv, runArgs[i], runArgs[i+1])
		}
	}
	return append(argv, args...)
}

// verdict starts the back-end program bin with the options args (after
// caseArgv's, on a fresh shared folder and socket) and says what it made
// of them: "accepted" once it waits for a connection (it says so, or it
// has made its socket and still runs quietWait later), else "exit N: " and
// its error message: clap's "error: ..." paragraph of a refused command
// line (exit 2), or the message of every ERROR line it logged (exit 1).
// Each WARN line it logged before follows, as "\nwarn: message". It reads
// nothing but the program's output and exit status, so it judges the
// reference and govirtiofsd alike.
func verdict(bin string, args []string) (string, error) {
	dir, err := os.MkdirTemp("", "compat-verdict-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	share := filepath.Join(dir, "share")
	if err := os.Mkdir(share, 0o755); err != nil {
		return "", err
	}
	socket := filepath.Join(dir, "s.sock")
	cmd := exec.Command(bin, caseArgv(share, socket, args)...)
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
	var msg, warns []string
	inClap := false
	withWarnings := func(v string) string {
		for _, w := range warns {
			v += "\nwarn: " + w
		}
		return v
	}
	timeout := time.After(10 * time.Second)
	// A daemon that logs nothing at info (--log-level error, --syslog)
	// never prints the ready line: it is taken as waiting once its socket
	// has been there for quietWait and it still runs.
	const quietWait = 1500 * time.Millisecond
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	var socketSince time.Time
	for {
		select {
		case <-poll.C:
			if socketSince.IsZero() {
				if _, err := os.Stat(socket); err == nil {
					socketSince = time.Now()
				}
			} else if time.Since(socketSince) > quietWait {
				cmd.Process.Kill()
				cmd.Wait()
				return withWarnings("accepted"), nil
			}
		case l, ok := <-lines:
			if !ok {
				cmd.Wait()
				code := cmd.ProcessState.ExitCode()
				return withWarnings(fmt.Sprintf("exit %d: %s", code, strings.Join(msg, "\n"))), nil
			}
			switch {
			case strings.Contains(l, daemon.ReadyLine):
				cmd.Process.Kill()
				cmd.Wait()
				return withWarnings("accepted"), nil
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
			case strings.Contains(l, " WARN "):
				_, m, _ := strings.Cut(l, "] ")
				warns = append(warns, m)
			}
		case <-timeout:
			cmd.Process.Kill()
			cmd.Wait()
			return "", fmt.Errorf("neither waited for a connection nor exited within 10 s: %q", msg)
		}
	}
}

// verdicts runs verdict for every command line of cases on each of bins,
// 8 at a time: out[i][j] is bins[j]'s verdict on cases[i]. A verdict that
// could not be had fails the test.
func verdicts(t *testing.T, bins []string, cases [][]string) [][]string {
	t.Helper()
	out := make([][]string, len(cases))
	errs := make([][]error, len(cases))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, args := range cases {
		out[i] = make([]string, len(bins))
		errs[i] = make([]error, len(bins))
		for j, bin := range bins {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				out[i][j], errs[i][j] = verdict(bin, args)
			}()
		}
	}
	wg.Wait()
	for i, args := range cases {
		for j, bin := range bins {
			require.NoError(t, errs[i][j], "%s with %q", bin, args)
		}
	}
	return out
}
