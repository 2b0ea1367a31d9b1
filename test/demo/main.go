// Command demo boots a TCG guest on a host directory shared through
// govirtiofsd and shows the guest's writes appearing on the host. It is what
// `make demo` runs; it needs the lab (test/lib/lab/fetch.sh) and bin/govirtiofsd.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
)

const guestScript = `
echo "guest: the share as the guest sees it:"
ls -l /mnt
echo "guest: hello.txt says: $(cat /mnt/hello.txt)"
mkdir -p /mnt/from-guest
uname -a > /mnt/from-guest/uname.txt
date > /mnt/from-guest/date.txt
dd if=/dev/urandom of=/mnt/from-guest/random.bin bs=64k count=16 2>/dev/null
md5sum /mnt/from-guest/random.bin > /mnt/from-guest/random.md5
sync
echo "guest: wrote /mnt/from-guest, powering off"
`

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() error {
	lab, err := vm.FindLab()
	if err != nil {
		return err
	}
	repo, err := daemon.RepoRoot()
	if err != nil {
		return err
	}
	bin := filepath.Join(repo, "bin", "govirtiofsd")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%s is missing: run make build", bin)
	}
	share := filepath.Join(repo, ".cache", "demo-share")
	os.RemoveAll(share)
	if err := os.MkdirAll(share, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(share, "hello.txt"), []byte("hello from the host\n"), 0o644); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "govirtiofsd-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	sock := filepath.Join(work, "vhost.sock")
	fmt.Printf("host: sharing %s through %s\n", share, bin)
	d, err := daemon.Ours(bin).Start(daemon.Options{SharedDir: share, Socket: sock, Log: os.Stderr})
	if err != nil {
		return err
	}
	defer d.Stop()
	initrd := filepath.Join(work, "initrd.gz")
	if err := vm.BuildInitramfs(initrd, vm.InitramfsConfig{
		Busybox: lab.Busybox,
		Files:   []vm.GuestFile{{Path: "/demo.sh", Data: []byte(guestScript), Mode: 0o755}},
		Mount:   &vm.Mount{Tag: "myfs"},
		Command: "sh /demo.sh; echo GUEST DONE",
	}); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	fmt.Println("host: booting a Linux guest under QEMU (TCG, about 5 s)")
	r, err := vm.Boot(ctx, vm.Config{Lab: lab, Initrd: initrd, Socket: sock, Tag: "myfs", NumRequestQueues: 2, Console: os.Stdout})
	if err != nil {
		return err
	}
	if _, err := r.Wait(); err != nil {
		return err
	}
	if err := d.WaitTimeout(10 * time.Second); err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	fmt.Printf("host: govirtiofsd exited with status %d\n", d.ExitCode())
	fmt.Printf("host: what the guest left in %s/from-guest:\n", share)
	entries, err := os.ReadDir(filepath.Join(share, "from-guest"))
	if err != nil {
		return fmt.Errorf("the guest's writes did not reach the host: %w", err)
	}
	for _, e := range entries {
		info, _ := e.Info()
		fmt.Printf("  %-12s %8d bytes\n", e.Name(), info.Size())
	}
	b, _ := os.ReadFile(filepath.Join(share, "from-guest", "uname.txt"))
	fmt.Printf("host: uname.txt says: %s\n", strings.TrimSpace(string(b)))
	return nil
}
