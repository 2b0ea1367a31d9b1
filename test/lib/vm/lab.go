package vm

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"
)

// QEMUSidVersion is the major.minor version fetch.sh gets from sid for
// Lab.QEMUSid: the first QEMU whose generic vhost-user device asks the
// back-end for shared memory regions (GET_SHMEM_CONFIG).
const QEMUSidVersion = "11.1"

// The versions of the reference virtiofsd that fetch.sh puts in the lab:
// VirtiofsdVersion (Debian sid) is the default reference, Lab.VirtiofsdRef;
// VirtiofsdVersion113 (trixie) is kept beside it, Lab.VirtiofsdRef113.
const (
	VirtiofsdVersion    = "1.14.0"
	VirtiofsdVersion113 = "1.13.2"
)

// Lab is the set of host files that real-guest tests need, as prepared by
// test/lib/lab/fetch.sh.
type Lab struct {
	// Dir is the lab folder.
	Dir string
	// QEMU is the QEMU 10.0 system emulator (a wrapper script).
	QEMU string
	// QEMUSid is QEMU 11.1 from Debian sid, unpacked privately with its
	// own libc and run through its loader (a wrapper script). Its
	// vhost-user-test-device-pci gives the back-end a shared memory window
	// (DAX); see Config.DAXDevice.
	QEMUSid string
	// Kernel is the guest kernel image (Linux 6.12 with virtio-fs built in).
	Kernel string
	// KernelVersion is the kernel's release as fetch.sh recorded it, or "".
	KernelVersion string
	// Busybox is a static busybox binary for the guest's userland.
	Busybox string
	// VirtiofsdRef runs the reference virtiofsd, VirtiofsdVersion (1.14.0
	// from sid, unpacked privately with its own libc; a wrapper script,
	// bin/virtiofsd-ref). Tests that compare with "the reference" use it.
	VirtiofsdRef string
	// VirtiofsdRef113 runs virtiofsd VirtiofsdVersion113 (1.13.2 from
	// trixie, likewise; bin/virtiofsd-ref-1.13), for tests of what
	// differs between the two versions.
	VirtiofsdRef113 string
}

// FindLab locates the lab. Its error names every missing piece and says to
// run test/lib/lab/fetch.sh; callers are expected to fail the test with it.
func FindLab() (*Lab, error) {
	dir, err := daemon.LabDir()
	if err != nil {
		return nil, fmt.Errorf("vm: cannot locate the lab folder: %w (set %s or run test/lib/lab/fetch.sh from the repository)", err, daemon.LabEnv)
	}
	l := &Lab{
		Dir:             dir,
		QEMU:            filepath.Join(dir, "bin", "qemu-system-x86_64"),
		QEMUSid:         filepath.Join(dir, "bin", "qemu-sid-x86_64"),
		Kernel:          filepath.Join(dir, "vmlinuz"),
		Busybox:         filepath.Join(dir, "busybox"),
		VirtiofsdRef:    filepath.Join(dir, "bin", "virtiofsd-ref"),
		VirtiofsdRef113: filepath.Join(dir, "bin", "virtiofsd-ref-1.13"),
	}
	if b, err := os.ReadFile(filepath.Join(dir, "kernel.version")); err == nil {
		l.KernelVersion = strings.TrimSpace(string(b))
	}
	var missing []string
	check := func(what, path string, exec bool) bool {
		st, err := os.Stat(path)
		switch {
		case err != nil:
			missing = append(missing, fmt.Sprintf("%s (%s)", what, path))
		case st.IsDir() || st.Size() == 0:
			missing = append(missing, fmt.Sprintf("%s (%s is not a usable file)", what, path))
		case exec && st.Mode()&0o111 == 0:
			missing = append(missing, fmt.Sprintf("%s (%s is not executable)", what, path))
		default:
			return true
		}
		return false
	}
	// The two programs are wrappers: check that what they run works too.
	if check("QEMU 10.0 qemu-system-x86_64", l.QEMU, true) {
		if err := versionSays(l.QEMU, "version 10.0."); err != nil {
			missing = append(missing, "QEMU 10.0: "+err.Error())
		}
	}
	if check("QEMU 11.1 qemu-sid-x86_64 (sid, for DAX)", l.QEMUSid, true) {
		if err := versionSays(l.QEMUSid, "version "+QEMUSidVersion+"."); err != nil {
			missing = append(missing, "QEMU "+QEMUSidVersion+" (sid): "+err.Error())
		}
	}
	check("guest kernel vmlinuz", l.Kernel, false)
	check("busybox-static", l.Busybox, true)
	if check("reference virtiofsd-ref "+VirtiofsdVersion+" (sid)", l.VirtiofsdRef, true) {
		if err := versionSays(l.VirtiofsdRef, "virtiofsd "+VirtiofsdVersion); err != nil {
			missing = append(missing, "reference virtiofsd "+VirtiofsdVersion+" (sid): "+err.Error())
		}
	}
	if check("virtiofsd-ref-1.13 "+VirtiofsdVersion113+" (trixie)", l.VirtiofsdRef113, true) {
		if err := versionSays(l.VirtiofsdRef113, "virtiofsd "+VirtiofsdVersion113); err != nil {
			missing = append(missing, "virtiofsd "+VirtiofsdVersion113+" (trixie): "+err.Error())
		}
	}
	if len(missing) > 0 {
		return l, fmt.Errorf("vm: the real-VM lab in %s is incomplete; missing: %s; run test/lib/lab/fetch.sh to fetch it",
			dir, strings.Join(missing, ", "))
	}
	return l, nil
}

// versionSays runs "prog --version" and checks that its output holds want.
func versionSays(prog, want string) error {
	out, err := exec.Command(prog, "--version").CombinedOutput()
	first, _, _ := bytes.Cut(bytes.TrimSpace(out), []byte("\n"))
	if err != nil {
		return fmt.Errorf("%s --version failed: %v: %s", prog, err, first)
	}
	if !bytes.Contains(out, []byte(want)) {
		return fmt.Errorf("%s --version says %q, want %q", prog, first, want)
	}
	return nil
}
