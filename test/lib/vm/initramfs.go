package vm

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// GuestFile is a file placed in the initramfs.
type GuestFile struct {
	// Path is the absolute path in the guest, e.g. "/guest".
	Path string
	// HostPath, when set, is the host file whose contents are copied.
	HostPath string
	// Data is the contents when HostPath is empty.
	Data []byte
	// Mode holds the permission bits. Zero means the host file's bits, or
	// 0644 for Data.
	Mode fs.FileMode
}

// Mount asks /init to mount a virtio-fs before it runs the command.
type Mount struct {
	// Tag is the virtio-fs tag (the device's tag= property).
	Tag string
	// Dir is the mount point; it defaults to /mnt.
	Dir string
	// Options is passed as "mount -o Options" when not empty (e.g.
	// "dax=always").
	Options string
}

// InitramfsConfig describes a guest initramfs: busybox for the userland, an
// /init script, and the files (typically static Go binaries) a test needs.
type InitramfsConfig struct {
	// Busybox is the host path of a static busybox binary; it becomes
	// /bin/busybox and /init installs its applets as symlinks in /bin.
	Busybox string
	// Files are added after busybox, in order.
	Files []GuestFile
	// Mount, when set, makes /init mount a virtio-fs before Command. If the
	// mount fails /init reports "GUEST RESULT init-mount FAIL ..." and
	// "GUEST DONE" and powers off. After Command, /init unmounts it.
	Mount *Mount
	// Command is the shell command line /init runs, in a subshell, once
	// proc, sys, devtmpfs (and Mount) are mounted, e.g.
	// "/guest -mnt /mnt -tag myfs". Its exit status is printed as
	// "GUEST EXIT <n>"; then /init powers off.
	Command string
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// InitScript returns the /init shell script for cfg.
func InitScript(cfg InitramfsConfig) string {
	var b strings.Builder
	b.WriteString(`#!/bin/sh
# /init of a govirtiofsd test guest (written by test/lib/vm).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=dumb
/bin/busybox mount -t proc proc /proc
# The kernel logged its boot (loglevel=7, see Config.Args); from here on
# the console shows what "quiet" would: errors and worse.
echo 4 > /proc/sys/kernel/printk
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo "GUEST BOOTED $(uname -r)"
`)
	if m := cfg.Mount; m != nil {
		dir := m.Dir
		if dir == "" {
			dir = "/mnt"
		}
		opts := ""
		if m.Options != "" {
			opts = " -o " + shellQuote(m.Options)
		}
		fmt.Fprintf(&b, `mkdir -p %[1]s
if mount -t virtiofs%[2]s %[3]s %[1]s; then
	echo "GUEST MOUNTED %[4]s %[5]s"
else
	echo "GUEST RESULT init-mount FAIL mount -t virtiofs%[6]s %[4]s %[5]s failed"
	echo "GUEST DONE"
	poweroff -f
fi
`, shellQuote(dir), opts, shellQuote(m.Tag), sanitizeWord(m.Tag), sanitizeWord(dir), sanitizeWord(opts))
	}
	// The command runs in a subshell so that an "exit" in it does not end
	// /init (which would panic the kernel).
	b.WriteString("cd /\n(\n")
	if cfg.Command != "" {
		b.WriteString(cfg.Command + "\n")
	} else {
		b.WriteString("true\n")
	}
	b.WriteString(")\n")
	b.WriteString("rc=$?\necho \"GUEST EXIT $rc\"\n")
	if m := cfg.Mount; m != nil {
		dir := m.Dir
		if dir == "" {
			dir = "/mnt"
		}
		fmt.Fprintf(&b, "cd /\numount %s || echo \"GUEST RESULT init-umount FAIL umount %s failed\"\n",
			shellQuote(dir), sanitizeWord(dir))
	}
	b.WriteString("sync\npoweroff -f\n")
	return b.String()
}

// sanitizeWord makes s safe inside a double-quoted shell string.
func sanitizeWord(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '"', '\\', '$', '`', '\n':
			return '_'
		}
		return r
	}, s)
}

// WriteInitramfs writes the gzip-compressed newc initramfs for cfg to w.
func WriteInitramfs(w io.Writer, cfg InitramfsConfig) error {
	if cfg.Busybox == "" {
		return errors.New("vm: initramfs needs a busybox binary")
	}
	if cfg.Mount != nil && cfg.Mount.Tag == "" {
		return errors.New("vm: initramfs Mount needs a tag")
	}
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(zw, 1<<20)
	c := NewCPIOWriter(bw)
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "mnt", "root"} {
		perm := uint32(0o755)
		if d == "tmp" {
			perm = 0o1777
		}
		if d == "root" {
			perm = 0o700
		}
		if err := c.Dir(d, perm); err != nil {
			return err
		}
	}
	if err := c.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	bb, err := os.ReadFile(cfg.Busybox)
	if err != nil {
		return fmt.Errorf("vm: initramfs busybox: %w", err)
	}
	steps := []func() error{
		func() error { return c.File("bin/busybox", 0o755, bb) },
		func() error { return c.Symlink("bin/sh", "busybox") },
		func() error {
			return c.File("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
		},
		func() error { return c.File("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n")) },
		func() error { return c.File("init", 0o755, []byte(InitScript(cfg))) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	for _, f := range cfg.Files {
		if !filepath.IsAbs(f.Path) {
			return fmt.Errorf("vm: initramfs file path %q is not absolute", f.Path)
		}
		data, mode := f.Data, f.Mode
		if f.HostPath != "" {
			data, err = os.ReadFile(f.HostPath)
			if err != nil {
				return fmt.Errorf("vm: initramfs file %s: %w", f.Path, err)
			}
			if mode == 0 {
				st, err := os.Stat(f.HostPath)
				if err != nil {
					return err
				}
				mode = st.Mode().Perm()
			}
		}
		if mode == 0 {
			mode = 0o644
		}
		if err := c.File(f.Path, uint32(mode.Perm()), data); err != nil {
			return err
		}
	}
	if err := c.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return zw.Close()
}

// BuildInitramfs writes the initramfs for cfg to the file out.
func BuildInitramfs(out string, cfg InitramfsConfig) (err error) {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(out)
		}
	}()
	return WriteInitramfs(f, cfg)
}
