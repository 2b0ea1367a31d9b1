package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/stretchr/testify/require"
)

// nsTestUID is the unprivileged user (and group) the daemon runs as.
const nsTestUID = 54321

// unprivDaemon runs the daemon at bin as nsTestUID with args and PATH
// path first, and waits until it serves or exits. It returns the daemon's
// output, its sandboxed child's pid (0 if it exited) and a stop function.
func unprivDaemon(t *testing.T, dir, bin, path string, args ...string) (out string, child int, stop func()) {
	t.Helper()
	share := filepath.Join(dir, "share")
	os.Mkdir(share, 0o777)
	sock := filepath.Join(dir, "s.sock")
	os.Remove(sock)
	os.Remove(sock + ".pid")
	cmd := exec.Command(bin, append([]string{"--shared-dir", share, "--socket-path", sock}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+path+":"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nsTestUID, Gid: nsTestUID}}
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	stop = func() { cmd.Process.Kill(); cmd.Wait() }
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var b strings.Builder
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				cmd.Wait()
				return b.String(), 0, func() {}
			}
			b.WriteString(l + "\n")
			if strings.Contains(l, "Waiting for vhost-user socket connection") {
				return b.String(), childOf(t, cmd.Process.Pid), stop
			}
		case <-timeout:
			stop()
			t.Fatalf("the daemon neither served nor exited within 10 s:\n%s", b.String())
		}
	}
}

// childOf is the one child process of pid.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	require.NoError(t, err)
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		if fields := strings.Fields(string(b)); len(fields) > 0 {
			c, err := strconv.Atoi(fields[0])
			require.NoError(t, err)
			return c
		}
	}
	t.Fatalf("process %d has no child", pid)
	return 0
}

func idMapOf(t *testing.T, pid int, kind string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s_map", pid, kind))
	require.NoError(t, err)
	return strings.Join(strings.Fields(string(b)), " ")
}

// TestUserNSMaps runs the daemon unprivileged with --uid-map and
// --gid-map: a range of its own id is written directly, anything more
// through newuidmap and newgidmap (stand-ins here that record their
// arguments and map the daemon's own id), whose failure ends the daemon.
func TestUserNSMaps(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run the daemon as an unprivileged user")
	}
	dir, err := os.MkdirTemp("", "userns-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o777))
	bin := filepath.Join(dir, "govirtiofsd")
	require.NoError(t, daemon.BuildOurs(bin))
	require.NoError(t, os.Chmod(bin, 0o755))

	out, child, stop := unprivDaemon(t, dir, bin, "")
	stop()
	if child == 0 && strings.Contains(out, "cannot start the sandboxed daemon") {
		t.Skipf("unprivileged user namespaces are not available here:\n%s", out)
	}
	require.NotZero(t, child, out)

	// A single range of the daemon's own id: no helper.
	out, child, stop = unprivDaemon(t, dir, bin, "", "--uid-map", ":0:54321:1:", "--gid-map", "/0/54321/1/")
	require.NotZero(t, child, out)
	require.Equal(t, "0 54321 1", idMapOf(t, child, "uid"))
	require.Equal(t, "0 54321 1", idMapOf(t, child, "gid"))
	stop()
	// Mapped to another id than 0, the daemon cannot become root there
	// and says so, but serves.
	out, child, stop = unprivDaemon(t, dir, bin, "", "--uid-map", ":7:54321:1:")
	require.NotZero(t, child, out)
	require.Contains(t, out, "Couldn't set the process uid as root")
	require.Equal(t, "7 54321 1", idMapOf(t, child, "uid"))
	require.Equal(t, "0 54321 1", idMapOf(t, child, "gid"), "the side not given maps the daemon's id to 0")
	stop()

	// More than that: the helpers.
	helpers := filepath.Join(dir, "helpers")
	require.NoError(t, os.Mkdir(helpers, 0o755))
	log := filepath.Join(dir, "helpers.log")
	require.NoError(t, os.WriteFile(log, nil, 0o666))
	require.NoError(t, os.Chmod(log, 0o666))
	for _, h := range []struct{ name, body string }{
		{"newuidmap", `echo "0 54321 1" > /proc/$1/uid_map`},
		{"newgidmap", `echo deny > /proc/$1/setgroups; echo "0 54321 1" > /proc/$1/gid_map`},
	} {
		script := fmt.Sprintf("#!/bin/sh\nset -e\necho \"$(basename $0) $*\" >> %s\n%s\n", log, h.body)
		require.NoError(t, os.WriteFile(filepath.Join(helpers, h.name), []byte(script), 0o755))
	}
	out, child, stop = unprivDaemon(t, dir, bin, helpers,
		"--uid-map", ":0:54321:1:", "--uid-map", ":1:200000:5:", "--gid-map", ":0:54321:1:", "--gid-map", ":1:300000:65536:")
	require.NotZero(t, child, out)
	stop()
	calls, err := os.ReadFile(log)
	require.NoError(t, err)
	require.Equal(t, fmt.Sprintf("newuidmap %d 0 54321 1 1 200000 5\nnewgidmap %d 0 54321 1 1 300000 65536\n", child, child), string(calls))

	// A helper that refuses.
	require.NoError(t, os.WriteFile(filepath.Join(helpers, "newuidmap"),
		[]byte("#!/bin/sh\necho 'newuidmap: uid range [1-6) -> [200000-200005) not allowed' >&2\nexit 1\n"), 0o755))
	out, child, stop = unprivDaemon(t, dir, bin, helpers, "--uid-map", ":0:54321:2:")
	stop()
	require.Zero(t, child, out)
	require.Contains(t, out, "ERROR virtiofsd] sandbox: couldn't setup id mappings: write to uid map failed: newuidmap: uid range [1-6) -> [200000-200005) not allowed\n")
}
