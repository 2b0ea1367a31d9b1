package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
	"golang.org/x/sys/unix"
)

const escapeScript = `
r() { echo "GUEST RESULT $1 $2 $3"; }
leak() { grep -rqs CANARY-SECRET "$@"; }
# Symlinks the host planted: the guest resolves them in its own namespace.
if leak /mnt/abs /mnt/rel /mnt/proc-root/etc 2>/dev/null; then r symlinks FAIL "read the canary"; else r symlinks PASS "no canary through symlinks"; fi
# A host device node and fifo in the share are the guest's own devices.
if head -c 16 /mnt/hostnull >/dev/null 2>&1; then r devnode PASS "read the guest's own null device"; else r devnode PASS "refused"; fi
# Race: swap a name between a file and a symlink to the canary's host path
# while reading it.
mkdir -p /mnt/race; i=0
( while [ $i -lt 300 ]; do ln -sfn ` + "`cat /mnt/canary-path`" + ` /mnt/race/x; echo plain > /mnt/race/x.tmp; mv -f /mnt/race/x.tmp /mnt/race/x; i=$((i+1)); done ) &
n=0; bad=0
while [ $n -lt 300 ]; do c=$(cat /mnt/race/x 2>/dev/null); case "$c" in *CANARY*) bad=$((bad+1));; esac; n=$((n+1)); done
wait
[ $bad = 0 ] && r race PASS "300 reads, no canary" || r race FAIL "$bad reads saw the canary"
# Hard links and renames can only name things inside the mount.
ln /mnt/plain /mnt/../escaped-link 2>/dev/null
mv /mnt/plain2 /mnt/../escaped-rename 2>/dev/null
mkdir -p /mnt/sub && ln -s ../../../../../../../../ /mnt/sub/up 2>/dev/null
echo written > /mnt/sub/up/tmp/escape-write 2>/dev/null
r links PASS "attempted"
echo GUEST DONE
`

// TestEscapeAttempts lets a guest try to reach a canary directory beside
// the share: symlinks planted by the host (absolute, relative, to a magic
// link), device nodes and fifos, a symlink swap racing with reads, hard
// links and renames out of the mount. The canary must be untouched and
// nothing may appear outside the share.
func TestEscapeAttempts(t *testing.T) {
	lab := needLab(t)
	top := t.TempDir()
	share, canary := filepath.Join(top, "share"), filepath.Join(top, "canary")
	for _, d := range []string{share, canary} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secret := filepath.Join(canary, "secret")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(secret, []byte("CANARY-SECRET\n"), 0o644))
	before, _ := os.Stat(secret)
	must(os.Symlink(secret, filepath.Join(share, "abs")))
	must(os.Symlink("../canary/secret", filepath.Join(share, "rel")))
	must(os.Symlink("/proc/self/root", filepath.Join(share, "proc-root")))
	must(os.WriteFile(filepath.Join(share, "canary-path"), []byte(secret), 0o644))
	must(os.WriteFile(filepath.Join(share, "plain"), []byte("x"), 0o644))
	must(os.WriteFile(filepath.Join(share, "plain2"), []byte("x"), 0o644))
	must(unix.Mknod(filepath.Join(share, "hostnull"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mkfifo(filepath.Join(share, "fifo"), 0o644))

	sock := filepath.Join(t.TempDir(), "vhost.sock")
	d, restart := startDaemon(t, ours(t), daemon.Options{SharedDir: share, Socket: sock, Log: vm.NewLineLogger("daemon: ", t.Logf)})
	initrd := initramfs(t, vm.InitramfsConfig{
		Busybox: lab.Busybox,
		Files:   []vm.GuestFile{{Path: "/t.sh", Data: []byte(escapeScript), Mode: 0o755}},
		Mount:   &vm.Mount{Tag: "myfs"},
		Command: "sh /t.sh",
	})
	run := boot(t, t.Context(), vm.Config{Lab: lab, Initrd: initrd, Socket: sock, Tag: "myfs"}, d, restart)
	d = run.Daemon()
	res, err := run.Wait()
	must(err)
	for _, name := range []string{"symlinks", "devnode", "race", "links"} {
		if r, ok := res.Get(name); !ok || r.Status != vm.Pass {
			t.Errorf("guest %s: %+v", name, r)
		}
	}
	if b, err := os.ReadFile(secret); err != nil || string(b) != "CANARY-SECRET\n" {
		t.Errorf("canary changed: %q %v", b, err)
	}
	if after, err := os.Stat(secret); err != nil || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("canary touched")
	}
	entries, _ := os.ReadDir(top)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "canary,share" {
		t.Errorf("something appeared beside the share: %v", names)
	}
	if ents, _ := os.ReadDir(canary); len(ents) != 1 {
		t.Errorf("canary directory holds %d entries", len(ents))
	}
	if _, err := os.Stat("/tmp/escape-write"); err == nil {
		os.Remove("/tmp/escape-write")
		t.Errorf("the guest wrote to the host's /tmp")
	}
	if err := d.WaitTimeout(run.Scale(10 * time.Second)); err != nil || d.ExitCode() != 0 {
		t.Errorf("daemon exit: %v, code %d", err, d.ExitCode())
	}
}
