package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/test/vm"
)

const daxScript = `
r() { echo "GUEST RESULT $1 $2 $3"; }
mkdir -p /dax
if mount -t virtiofs -o dax=always myfs /dax; then r mount PASS "$(grep ' /dax ' /proc/mounts)"; else r mount FAIL "$(dmesg | tail -3 | tr '\n' ' ')"; echo GUEST DONE; exit 0; fi
grep -q dax=always /proc/mounts && r mount-dax PASS ok || r mount-dax FAIL "$(grep ' /dax ' /proc/mounts)"
s=$(sha256sum /dax/big.bin 2>&1); r read-sum PASS "$s"
echo "written in the guest through dax" > /dax/out.txt && sync && r write PASS ok || r write FAIL write
umount /dax && r umount PASS ok || r umount FAIL "$(dmesg | tail -3 | tr '\n' ' ')"
echo GUEST DONE
`

// TestDAX mounts the share with dax=always through QEMU 11.1's generic
// vhost-user device, which gives the guest a window our daemon maps files
// into with SHMEM_MAP, and checks that the guest reads what the host has
// and writes what the host then sees. The file read through the window is
// a whole number of 2 MiB ranges: QEMU 11.1 refuses to map a range that
// reaches past the end of its file, and the tail of other files is not
// handled yet.
func TestDAX(t *testing.T) {
	lab := needLab(t)
	share := t.TempDir()
	big := make([]byte, 6<<20)
	for i := range big {
		big[i] = byte(i*7 + i>>12)
	}
	if err := os.WriteFile(filepath.Join(share, "big.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(share, "hello.txt"), []byte("hello dax\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	d, err := ours(t).Start(vm.DaemonOptions{SharedDir: share, Socket: sock,
		Extra: []string{"--tag", "myfs", "--dax-window-size", "64M", "--log-level", "debug"}, Log: vm.NewLineLogger("daemon: ", t.Logf)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	initrd := initramfs(t, vm.InitramfsConfig{
		Busybox: lab.Busybox,
		Files:   []vm.GuestFile{{Path: "/t.sh", Data: []byte(daxScript), Mode: 0o755}},
		Command: "sh /t.sh",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	run, err := vm.Boot(ctx, vm.Config{Lab: lab, Initrd: initrd, Socket: sock, DAXDevice: true,
		Console: vm.NewLineLogger("console: ", t.Logf)})
	if err != nil {
		t.Fatal(err)
	}
	res, err := run.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if e := run.Stderr(); e != "" {
		t.Logf("QEMU stderr:\n%s", e)
	}
	for _, name := range []string{"mount", "mount-dax", "read-sum", "write", "umount"} {
		if r, ok := res.Get(name); !ok || r.Status != vm.Pass {
			t.Errorf("guest %s: %+v", name, r)
		}
	}
	if r, _ := res.Get("read-sum"); r.Status == vm.Pass {
		if want := fmt.Sprintf("%x", sha256.Sum256(big)); strings.Fields(r.Detail)[0] != want {
			t.Errorf("guest read %s through the window, host has %s", r.Detail, want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(share, "out.txt")); err != nil || string(b) != "written in the guest through dax\n" {
		t.Errorf("guest write on the host: %q %v", b, err)
	}
	if err := d.WaitTimeout(10 * time.Second); err != nil || d.ExitCode() != 0 {
		t.Errorf("daemon exit: %v, code %d", err, d.ExitCode())
	}
}
