package e2e

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
)

const launchScript = `
r() { echo "GUEST RESULT $1 $2 $3"; }
if [ "$(cat /mnt/host.txt)" = "from host" ]; then r read PASS ok; else r read FAIL "$(cat /mnt/host.txt 2>&1)"; fi
if echo from-guest > /mnt/guest.txt && sync; then r write PASS ok; else r write FAIL write; fi
echo GUEST DONE
`

// TestLaunchForms starts govirtiofsd with the exact argv of each caller
// (Kata's Go and Rust runtimes, libvirt's two forms, the old C virtiofsd's
// spelling that older Kata used) and mounts the share in a guest through
// it; one more form serves 16 request queues.
func TestLaunchForms(t *testing.T) {
	lab := needLab(t)
	bin := ours(t).Argv("", "", nil)[0]
	forms := []struct {
		name   string
		fd     bool // the test creates the listening socket and passes it as fd 3
		args   func(share, sock string) []string
		stderr bool // the socket appears only after the readiness line
		queues int
		// silent: the daemon logs nowhere (--syslog, and no syslog
		// socket here), so the test does not wait for its readiness
		// line; nor does Kata's Go runtime, which hands it the socket.
		silent bool
	}{
		{"kata-go", true, func(share, _ string) []string {
			return []string{"--syslog", "--cache=auto", "--shared-dir=" + share, "--fd=3", "--thread-pool-size=1", "--announce-submounts"}
		}, false, 0, true},
		{"kata-rs", false, func(share, sock string) []string {
			return []string{"--socket-path", sock, "--shared-dir", share, "--cache", "never", "--thread-pool-size=1", "-o", "announce_submounts"}
		}, true, 0, false},
		{"libvirt-separate-options", true, func(share, _ string) []string {
			return []string{"--fd=3", "--shared-dir", share, "--cache=always", "--sandbox=none"}
		}, false, 0, false},
		{"libvirt-compat-options", true, func(share, _ string) []string {
			return []string{"--fd=3", "-o", "source=" + share + ",cache=none,no_posix_lock"}
		}, false, 0, false},
		{"c-virtiofsd-legacy", true, func(share, _ string) []string {
			return []string{"--fd=3", "-o", "source=" + share, "-o", "cache=none", "-o", "no_posix_lock", "-o", "sandbox=chroot", "-f"}
		}, false, 0, false},
		{"sixteen-request-queues", false, func(share, sock string) []string {
			return []string{"--socket-path=" + sock, "--shared-dir=" + share}
		}, false, 16, false},
	}
	for _, f := range forms {
		t.Run(f.name, func(t *testing.T) {
			share := t.TempDir()
			if err := os.WriteFile(filepath.Join(share, "host.txt"), []byte("from host\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			sock := filepath.Join(t.TempDir(), "vhost.sock")
			opts := daemon.Options{Log: vm.NewLineLogger("daemon: ", t.Logf), NoReadyWait: f.silent}
			if f.fd {
				l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
				if err != nil {
					t.Fatal(err)
				}
				l.SetUnlinkOnClose(false)
				lf, err := l.File()
				l.Close()
				if err != nil {
					t.Fatal(err)
				}
				defer lf.Close()
				opts.ExtraFiles = []*os.File{lf}
			} else if !f.stderr {
				opts.Socket = sock
			}
			// With stderr set, Start waits for the readiness line alone,
			// as Kata's Rust runtime does.
			// A fresh daemon for a retried boot gets the same listening
			// socket (fd 3) or path.
			argv := append([]string{bin}, f.args(share, sock)...)
			d, restart := startDaemon(t, daemon.Daemon{Name: f.name, Argv: func(string, string, []string) []string { return argv }}, opts)
			if f.stderr && !strings.Contains(d.Stderr(), daemon.ReadyLine) {
				t.Errorf("no readiness line on stderr: %q", d.Stderr())
			}
			initrd := initramfs(t, vm.InitramfsConfig{
				Busybox: lab.Busybox,
				Files:   []vm.GuestFile{{Path: "/t.sh", Data: []byte(launchScript), Mode: 0o755}},
				Mount:   &vm.Mount{Tag: "myfs"},
				Command: "sh /t.sh",
			})
			run := boot(t, t.Context(), vm.Config{Lab: lab, Initrd: initrd, Socket: sock, Tag: "myfs", NumRequestQueues: f.queues,
				Console: vm.NewLineLogger("console: ", t.Logf)}, d, restart)
			d = run.Daemon()
			res, err := run.Wait()
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"read", "write"} {
				if r, ok := res.Get(name); !ok || r.Status != vm.Pass {
					t.Errorf("guest %s: %+v", name, r)
				}
			}
			if b, err := os.ReadFile(filepath.Join(share, "guest.txt")); err != nil || string(b) != "from-guest\n" {
				t.Errorf("guest write on the host: %q, %v", b, err)
			}
			if err := d.WaitTimeout(run.Scale(10 * time.Second)); err != nil || d.ExitCode() != 0 {
				t.Errorf("daemon exit: %v, code %d", err, d.ExitCode())
			}
		})
	}
}
