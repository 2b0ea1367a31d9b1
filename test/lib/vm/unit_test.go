package vm

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"
)

func TestCPIORoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := NewCPIOWriter(&buf)
	steps := []error{
		c.File("/usr/lib/x/data.bin", 0o600, []byte("12345")), // parents created implicitly
		c.Dir("/usr", 0o755), // already there: no second entry
		c.Symlink("bin/sh", "busybox"),
		c.CharDev("dev/console", 0o600, 5, 1),
		c.File("empty", 0o644, nil),
		c.Close(),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not 4-aligned", buf.Len())
	}
	if !bytes.HasPrefix(buf.Bytes(), []byte("070701")) {
		t.Fatalf("no newc magic")
	}
	if !bytes.Contains(buf.Bytes(), []byte("TRAILER!!!\x00")) {
		t.Errorf("no trailer")
	}
	entries, err := ReadCPIO(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	type ent struct {
		name        string
		mode        uint32
		data        string
		major, mnor uint32
	}
	var got []ent
	for _, e := range entries {
		got = append(got, ent{e.Name, e.Mode, string(e.Data), e.Major, e.Minor})
	}
	want := []ent{
		{"usr", 0o040755, "", 0, 0},
		{"usr/lib", 0o040755, "", 0, 0},
		{"usr/lib/x", 0o040755, "", 0, 0},
		{"usr/lib/x/data.bin", 0o100600, "12345", 0, 0},
		{"bin", 0o040755, "", 0, 0},
		{"bin/sh", 0o120777, "busybox", 0, 0},
		{"dev", 0o040755, "", 0, 0},
		{"dev/console", 0o020600, "", 5, 1},
		{"empty", 0o100644, "", 0, 0},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("entries:\n got %v\nwant %v", got, want)
	}
	if err := c.File("late", 0o644, nil); err == nil {
		t.Errorf("write after Close succeeded")
	}
}

// TestCPIOHeaderLayout checks one header byte for byte against the newc
// layout: magic, 13 eight-digit hex fields, name, NUL, padding.
func TestCPIOHeaderLayout(t *testing.T) {
	var buf bytes.Buffer
	c := NewCPIOWriter(&buf)
	if err := c.File("a", 0o755, []byte("xy")); err != nil {
		t.Fatal(err)
	}
	want := "070701" +
		"00000001" + // ino
		"000081ed" + // mode 0100755
		"00000000" + "00000000" + // uid, gid
		"00000001" + // nlink
		"00000000" + // mtime
		"00000002" + // filesize
		"00000000" + "00000000" + "00000000" + "00000000" + // dev, rdev
		"00000002" + // namesize including NUL
		"00000000" + // check
		"a\x00" + // name: 110+2 = 112, already aligned
		"xy\x00\x00" // data padded to 4
	if got := buf.String(); got != want {
		t.Errorf("header:\n got %q\nwant %q", got, want)
	}
}

func TestInitramfsContents(t *testing.T) {
	dir := t.TempDir()
	bb := filepath.Join(dir, "busybox")
	if err := os.WriteFile(bb, []byte("fake busybox"), 0o755); err != nil {
		t.Fatal(err)
	}
	guest := filepath.Join(dir, "guest")
	if err := os.WriteFile(guest, []byte("fake guest"), 0o750); err != nil {
		t.Fatal(err)
	}
	cfg := InitramfsConfig{
		Busybox: bb,
		Files: []GuestFile{
			{Path: "/guest", HostPath: guest},
			{Path: "/opt/data/x.txt", Data: []byte("x")},
		},
		Mount:   &Mount{Tag: "my'fs", Options: "dax=always"},
		Command: "/guest -mnt /mnt -tag myfs",
	}
	var buf bytes.Buffer
	if err := WriteInitramfs(&buf, cfg); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := ReadCPIO(zr)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]CPIOEntry{}
	for _, e := range entries {
		if _, dup := byName[e.Name]; dup {
			t.Errorf("duplicate entry %s", e.Name)
		}
		byName[e.Name] = e
	}
	check := func(name string, mode uint32, data string) {
		t.Helper()
		e, ok := byName[name]
		if !ok {
			t.Errorf("no %s in the initramfs", name)
			return
		}
		if e.Mode != mode {
			t.Errorf("%s mode %o, want %o", name, e.Mode, mode)
		}
		if data != "" && string(e.Data) != data {
			t.Errorf("%s data %q, want %q", name, e.Data, data)
		}
	}
	check("bin/busybox", 0o100755, "fake busybox")
	check("bin/sh", 0o120777, "busybox")
	check("guest", 0o100750, "fake guest")
	check("opt/data/x.txt", 0o100644, "x")
	check("opt", 0o040755, "")
	check("dev/console", 0o020600, "")
	check("tmp", 0o041777, "")
	for _, d := range []string{"proc", "sys", "dev", "mnt", "etc"} {
		check(d, 0o040755, "")
	}
	check("etc/passwd", 0o100644, "")
	check("init", 0o100755, InitScript(cfg))

	script := InitScript(cfg)
	for _, want := range []string{
		"#!/bin/sh\n",
		"mount -t proc proc /proc",
		"mount -t sysfs sysfs /sys",
		"mount -t devtmpfs devtmpfs /dev",
		"/bin/busybox --install -s /bin",
		`mount -t virtiofs -o 'dax=always' 'my'\''fs' '/mnt'`,
		"(\n/guest -mnt /mnt -tag myfs\n)\n",
		`echo "GUEST EXIT $rc"`,
		"umount '/mnt'",
		"poweroff -f\n",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("init script lacks %q:\n%s", want, script)
		}
	}
	// The command runs after every mount.
	if strings.Index(script, "/guest -mnt") < strings.Index(script, "mount -t virtiofs") {
		t.Errorf("command runs before the virtiofs mount:\n%s", script)
	}

	noMount := InitScript(InitramfsConfig{Busybox: bb, Command: "/guest"})
	if strings.Contains(noMount, "-t virtiofs") || strings.Contains(noMount, "umount") {
		t.Errorf("init script mounts without a Mount:\n%s", noMount)
	}

	if err := WriteInitramfs(&bytes.Buffer{}, InitramfsConfig{}); err == nil {
		t.Errorf("initramfs without busybox accepted")
	}
	if err := WriteInitramfs(&bytes.Buffer{}, InitramfsConfig{Busybox: bb, Files: []GuestFile{{Path: "rel", Data: nil}}}); err == nil {
		t.Errorf("relative guest path accepted")
	}
}

func TestParseResults(t *testing.T) {
	console := "\x1b[?7lSeaBIOS noise\r\n" +
		"GUEST BOOTED 6.12.95+deb12-amd64\r\n" +
		"GUEST RESULT open PASS \r\n" +
		"GUEST RESULT rename FAIL renameat2: EXDEV (want 0)\r\n" +
		"[    1.234567] virtio-fs: some kernel line GUEST RESULT mmap SKIP no DAX window\r\n" +
		"GUEST RESULT broken\r\n" +
		"GUEST RESULT weird MAYBE x\r\n" +
		"GUEST RESULT rename PASS second try\n" +
		"GUEST DONE\r\n" +
		"GUEST EXIT 0\r\n"
	res := ParseResults(console)
	want := []Result{
		{Name: "open", Status: Pass, Detail: ""},
		{Name: "rename", Status: Fail, Detail: "renameat2: EXDEV (want 0)"},
		{Name: "mmap", Status: Skip, Detail: "no DAX window"},
		{Name: "rename", Status: Pass, Detail: "second try"},
	}
	if !reflect.DeepEqual(res.List, want) {
		t.Errorf("results:\n got %+v\nwant %+v", res.List, want)
	}
	if !res.Done {
		t.Errorf("Done not seen")
	}
	if res.ExitCode != 0 {
		t.Errorf("ExitCode %d", res.ExitCode)
	}
	if len(res.Malformed) != 2 {
		t.Errorf("malformed %q", res.Malformed)
	}
	if p, f, s := res.Count(); p != 2 || f != 1 || s != 1 {
		t.Errorf("counts %d/%d/%d", p, f, s)
	}
	if r, _ := res.Get("rename"); r.Status != Pass {
		t.Errorf("Get returns %v, want the last rename", r)
	}
	if m := res.Map(); len(m) != 3 || m["rename"].Detail != "second try" {
		t.Errorf("Map %v", m)
	}
	if f := res.Failed(); len(f) != 1 || f[0].Name != "rename" {
		t.Errorf("Failed %v", f)
	}

	none := ParseResults("GUEST RESULT a PASS\nGUEST DONE later\n")
	if none.Done || none.ExitCode != -1 {
		t.Errorf("Done %v ExitCode %d for a console without a bare GUEST DONE", none.Done, none.ExitCode)
	}
}

func TestLineLogger(t *testing.T) {
	var lines []string
	l := NewLineLogger("c: ", func(format string, args ...any) {
		lines = append(lines, strings.TrimSpace(strings.ReplaceAll(format, "%s", "")+args[0].(string)+args[1].(string)))
	})
	l.Write([]byte("one\r\ntw"))
	l.Write([]byte("o\nthree"))
	l.Flush()
	if want := []string{"c: one", "c: two", "c: three"}; !reflect.DeepEqual(lines, want) {
		t.Errorf("lines %q, want %q", lines, want)
	}
}

func TestConfigArgs(t *testing.T) {
	cfg := Config{
		Kernel: "/k", Initrd: "/i", Socket: "/s.sock", Tag: "kataShared",
		NumRequestQueues: 2, Slots: 4, MaxMem: "4G", QMPSocket: "/q.sock",
		Append: "debug", ExtraArgs: []string{"-S"}, Timeout: time.Second,
	}
	args, err := cfg.Args()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(args, " ")
	for _, want := range []string{
		"-machine q35,accel=tcg -cpu max",
		"-m 1G,slots=4,maxmem=4G -smp 2",
		"-nographic -no-reboot",
		"-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem",
		"-chardev socket,id=char0,path=/s.sock",
		"-device vhost-user-fs-pci,chardev=char0,tag=kataShared,num-request-queues=2,queue-size=1024",
		"-qmp unix:/q.sock,server=on,wait=off",
		"-kernel /k -initrd /i",
		"-S",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("args lack %q:\n%s", want, got)
		}
	}
	if i := indexOf(args, "-append"); i < 0 || args[i+1] != "console=ttyS0 loglevel=7 no_timer_check panic=-1 memhp_default_state=online debug" {
		t.Errorf("bad -append in %q", args)
	}

	plain, err := (&Config{Kernel: "/k", Initrd: "/i"}).Args()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.Join(plain, " "), "vhost-user") || indexOf(plain, "-qmp") >= 0 {
		t.Errorf("device or QMP without a socket: %q", plain)
	}
	if _, err := (&Config{Kernel: "/k"}).Args(); err == nil {
		t.Errorf("no initrd accepted")
	}
	if _, err := (&Config{Kernel: "/k", Initrd: "/i", Slots: 2}).Args(); err == nil {
		t.Errorf("slots without maxmem accepted")
	}
}

func indexOf(s []string, x string) int {
	for i, v := range s {
		if v == x {
			return i
		}
	}
	return -1
}

// TestFindLabNamesMissingPieces points the lab at an empty folder: the
// error names every piece and the fetch script.
func TestFindLabNamesMissingPieces(t *testing.T) {
	t.Setenv(daemon.LabEnv, t.TempDir())
	_, err := FindLab()
	if err == nil {
		t.Fatal("FindLab succeeded on an empty folder")
	}
	for _, want := range []string{"qemu-system-x86_64", "vmlinuz", "busybox", "virtiofsd-ref ", "virtiofsd-ref-1.13", "test/lib/lab/fetch.sh"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}
