package vm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"
)

// TestDAXConfigArgs checks the command line for the generic
// vhost-user-test-device-pci (QEMU 11.1) and which QEMU Boot runs.
func TestDAXConfigArgs(t *testing.T) {
	lab := &Lab{QEMU: "/lab/qemu10", QEMUSid: "/lab/qemu11", Kernel: "/lab/vmlinuz"}
	for _, tc := range []struct {
		nrq, qs int
		want    string
	}{
		{0, 0, "vhost-user-test-device-pci,chardev=char0,virtio-id=26,num_vqs=2,config_size=40"},
		{1, 0, "vhost-user-test-device-pci,chardev=char0,virtio-id=26,num_vqs=2,config_size=40"},
		{2, 0, "vhost-user-test-device-pci,chardev=char0,virtio-id=26,num_vqs=3,config_size=40"},
		{4, 256, "vhost-user-test-device-pci,chardev=char0,virtio-id=26,num_vqs=5,config_size=40,vq_size=256"},
	} {
		if got := DAXDeviceArg(tc.nrq, tc.qs); got != tc.want {
			t.Errorf("DAXDeviceArg(%d, %d) = %q, want %q", tc.nrq, tc.qs, got, tc.want)
		}
		cfg := Config{Lab: lab, Initrd: "/i", Socket: "/s.sock", Tag: "ignored",
			NumRequestQueues: tc.nrq, QueueSize: tc.qs, DAXDevice: true}
		args, err := cfg.Args()
		if err != nil {
			t.Fatal(err)
		}
		if i := indexOf(args, "-device"); i < 0 || args[i+1] != tc.want {
			t.Errorf("nrq %d qs %d: -device in %q, want %q", tc.nrq, tc.qs, args, tc.want)
		}
		if c := strings.Count(strings.Join(args, " "), "-device "); c != 1 {
			t.Errorf("%d -device options in %q", c, args)
		}
		got := strings.Join(args, " ")
		for _, want := range []string{
			"-machine q35,accel=tcg -cpu max",
			"-m 1G -smp 2",
			// vhost-user needs the guest RAM in a shared memfd.
			"-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem",
			"-chardev socket,id=char0,path=/s.sock",
			"-kernel /lab/vmlinuz -initrd /i",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("args lack %q:\n%s", want, got)
			}
		}
		for _, bad := range []string{"vhost-user-fs-pci", "tag=", "queue-size="} {
			if strings.Contains(got, bad) {
				t.Errorf("args hold %q:\n%s", bad, got)
			}
		}
		if i := indexOf(args, "-append"); i < 0 || args[i+1] != "console=ttyS0 loglevel=7 no_timer_check panic=-1" {
			t.Errorf("bad -append in %q", args)
		}
		if p, err := cfg.Program(); err != nil || p != "/lab/qemu11" {
			t.Errorf("Program() = %q, %v; want the sid QEMU", p, err)
		}
	}

	// Hotplug memory keeps its memfd backend and kernel option.
	args, err := (&Config{Lab: lab, Initrd: "/i", Socket: "/s", DAXDevice: true, Slots: 2, MaxMem: "2G"}).Args()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(args, " "); !strings.Contains(got, "-m 1G,slots=2,maxmem=2G") ||
		!strings.Contains(got, "memory-backend-memfd,id=mem,size=1G,share=on") ||
		args[indexOf(args, "-append")+1] != "console=ttyS0 loglevel=7 no_timer_check panic=-1 memhp_default_state=online" {
		t.Errorf("DAX with hotplug: %q", args)
	}

	// Which QEMU runs.
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Lab: lab}, "/lab/qemu10"},
		{Config{Lab: lab, DAXDevice: true}, "/lab/qemu11"},
		{Config{Lab: lab, DAXDevice: true, QEMU: "/my/qemu"}, "/my/qemu"},
		{Config{Lab: lab, QEMU: "/my/qemu"}, "/my/qemu"},
		{Config{QEMU: "/my/qemu", DAXDevice: true}, "/my/qemu"},
	} {
		if p, err := tc.cfg.Program(); err != nil || p != tc.want {
			t.Errorf("Program(%+v) = %q, %v; want %q", tc.cfg, p, err, tc.want)
		}
	}
	if _, err := (&Config{Lab: &Lab{QEMU: "/q"}, DAXDevice: true}).Program(); err == nil ||
		!strings.Contains(err.Error(), "QEMUSid") || !strings.Contains(err.Error(), "fetch.sh") {
		t.Errorf("DAX without a sid QEMU: %v", err)
	}
	if _, err := (&Config{DAXDevice: true}).Program(); err == nil {
		t.Errorf("no Lab and no QEMU accepted")
	}

	// Misuse.
	if _, err := (&Config{Lab: lab, Initrd: "/i", Socket: "/s", DAXDevice: true, Device: "x"}).Args(); err == nil {
		t.Errorf("DAXDevice with Device accepted")
	}
	if _, err := (&Config{Lab: lab, Initrd: "/i", DAXDevice: true}).Args(); err == nil {
		t.Errorf("DAXDevice without a socket accepted")
	}
}

// TestFindLabNamesSidQEMU: the sid QEMU is a required piece of the lab.
func TestFindLabNamesSidQEMU(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(daemon.LabEnv, dir)
	l, err := FindLab()
	if err == nil || !strings.Contains(err.Error(), "qemu-sid-x86_64") || !strings.Contains(err.Error(), "11.1") {
		t.Errorf("FindLab on an empty folder: %v", err)
	}
	if l == nil || l.QEMUSid != filepath.Join(dir, "bin", "qemu-sid-x86_64") {
		t.Errorf("Lab.QEMUSid = %+v", l)
	}
}

// daxRefScript is the guest side of TestDAXLabReference.
const daxRefScript = `#!/bin/sh
result() { echo "GUEST RESULT $1 $2 $3"; }
oneline() { tr '\n' ' '; }

ids=$(cat /sys/bus/virtio/devices/*/device 2>/dev/null | oneline)
case " $ids " in
*" 0x001a "*) result virtio-fs-device PASS "virtio device ids: $ids" ;;
*) result virtio-fs-device FAIL "no virtio-fs (0x001a) device; ids: $ids" ;;
esac

mkdir -p /mnt
if out=$(mount -t virtiofs myfs /mnt 2>&1); then
	result mount-plain PASS "mount -t virtiofs myfs /mnt"
	got=$(cat /mnt/hello.txt 2>&1)
	if [ "$got" = "hello from the host" ]; then
		result cat-host-file PASS "read $(wc -c </mnt/hello.txt) bytes"
	else
		result cat-host-file FAIL "got: $got"
	fi
	line=$(grep ' /mnt ' /proc/mounts)
	case "$line" in
	*dax*) result no-dax FAIL "mounted with dax: $line" ;;
	*" virtiofs "*) result no-dax PASS "$line" ;;
	*) result no-dax FAIL "/proc/mounts: $line" ;;
	esac
	umount /mnt || result umount-plain FAIL "umount /mnt failed"
else
	result mount-plain FAIL "$(echo "$out" | oneline)"
fi

# A new superblock (the plain mount is gone), so the dax option is checked.
if out=$(mount -t virtiofs -o dax=always myfs /mnt 2>&1); then
	result dax-always-einval FAIL "mount -o dax=always succeeded: $(grep ' /mnt ' /proc/mounts)"
	umount /mnt
else
	case "$out" in
	*"Invalid argument"*) result dax-always-einval PASS "$(echo "$out" | oneline)" ;;
	*) result dax-always-einval FAIL "$(echo "$out" | oneline)" ;;
	esac
fi
msg=$(dmesg | grep "dax can't be enabled")
if [ -n "$msg" ]; then
	result dax-always-dmesg PASS "$(echo "$msg" | oneline)"
else
	result dax-always-dmesg FAIL "$(dmesg | grep -iE 'virtio|fuse|dax' | tail -n 5 | oneline)"
fi
# The device has no shared memory capability: no window at all.
msg=$(dmesg | grep "virtio_fs_setup_dax: No cache capability")
if [ -n "$msg" ]; then
	result no-window PASS "$(echo "$msg" | oneline)"
else
	result no-window FAIL "$(dmesg | grep -iE 'virtio|dax' | tail -n 5 | oneline)"
fi
dmesg | grep -iE 'virtio.?fs|fuse|dax' | sed 's/^/GUEST DMESG /'
echo "GUEST DONE"
`

// TestDAXLabReference proves the DAX lab: the sid QEMU 11.1 boots with
// vhost-user-test-device-pci as a virtio-fs device against the reference
// virtiofsd given --tag (which offers CONFIG, so the generic device can
// read the tag from it). The guest mounts the share without DAX and reads
// a host file. Then mount -o dax=always fails with EINVAL: the reference
// does not offer SHMEM, so QEMU asks for no window and the device has
// none. This is the documented behaviour without a window (lab.md).
func TestDAXLabReference(t *testing.T) {
	lab := needLab(t)
	share := t.TempDir()
	if err := os.WriteFile(filepath.Join(share, "hello.txt"), []byte("hello from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ref := daemon.Reference(lab.VirtiofsdRef)
	d, sock, restart := startDaemon(t, ref, share, "--tag", "myfs")
	initrd := mustBuildInitramfs(t, InitramfsConfig{
		Busybox: lab.Busybox,
		Files:   []GuestFile{{Path: "/dax-ref.sh", Data: []byte(daxRefScript), Mode: 0o755}},
		Command: "sh /dax-ref.sh",
	})
	start := time.Now()
	run := bootOn(t, t.Context(), Config{
		Lab:       lab,
		Initrd:    initrd,
		Socket:    sock,
		DAXDevice: true,
		Console:   NewLineLogger("console: ", t.Logf),
	}, d, restart)
	d = run.Daemon()
	if run.Args[0] != lab.QEMUSid {
		t.Errorf("booted %s, want the sid QEMU %s", run.Args[0], lab.QEMUSid)
	}
	res, err := run.Wait()
	t.Logf("guest ran %v (QEMU %v)", time.Since(start).Round(time.Millisecond), run.Elapsed().Round(time.Millisecond))
	if s := strings.TrimSpace(run.Stderr()); s != "" {
		t.Logf("QEMU stderr:\n%s", s)
	}
	if err != nil {
		t.Fatal(err)
	}
	checkResults(t, res, "virtio-fs-device", "mount-plain", "cat-host-file", "no-dax",
		"dax-always-einval", "dax-always-dmesg", "no-window")
	if res.ExitCode != 0 {
		t.Errorf("guest command exit code %d", res.ExitCode)
	}
	if err := d.WaitTimeout(run.Scale(15 * time.Second)); err != nil {
		t.Errorf("%s after poweroff: %v", ref.Name, err)
	}
	if c := d.ExitCode(); c != 0 {
		t.Errorf("%s exit code %d, want 0", ref.Name, c)
	}
}
