// Command features is the guest side of test/e2e/features_test.go. It
// checks, on the virtio-fs mount, the effect of the daemon options the
// host started the daemon with (-opts, the daemon's extra arguments joined
// by commas, e.g. "--readonly,--xattr,--cache=always"), and reports in the
// GUEST RESULT protocol, ending with GUEST DONE. It exits 1 when a check
// failed.
//
// Details are kept free of numbers that differ from boot to boot (device
// and inode numbers, times), so that the host can compare a run on
// govirtiofsd with one on the reference virtiofsd line by line.
//
// The host prepares the share before the boot (see featurePrepare in
// features_test.go; the names, sizes and patterns here must stay in step
// with it). Once the other checks are done the guest prints GUEST READY
// cache and waits for /mnt/go-cache: the host changes two files in
// between, and the guest then reports what it sees of the change.
//
// Run as "-child killpriv", the program is the unprivileged writer of the
// killpriv check (uid and gid 1000, started by the root guest program).
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/test/e2e/guest/internal/slow"
	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"

	"golang.org/x/sys/unix"
)

var failed atomic.Bool

func result(name string, ok bool, format string, args ...any) {
	status := "PASS"
	if !ok {
		status = "FAIL"
		failed.Store(true)
	}
	detail := strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
	fmt.Printf("GUEST RESULT %s %s %s\n", name, status, detail)
}

func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

// options are the daemon options that change what the guest should see.
type options struct {
	readonly, xattr, acl, allowMmap, announce, killpriv, writeback bool
	cache                                                          string
}

func parseOptions(s string) options {
	o := options{announce: true, cache: "auto"}
	for _, a := range strings.Split(s, ",") {
		switch {
		case a == "--readonly":
			o.readonly = true
		case a == "--xattr":
			o.xattr = true
		case a == "--posix-acl":
			o.acl, o.xattr = true, true
		case a == "--allow-mmap":
			o.allowMmap = true
		case a == "--killpriv-v2":
			o.killpriv = true
		case a == "--writeback":
			o.writeback = true
		case a == "--no-announce-submounts":
			o.announce = false
		case strings.HasPrefix(a, "--cache="):
			o.cache = strings.TrimPrefix(a, "--cache=")
		}
	}
	return o
}

// directIO tells whether regular files are opened with FOPEN_DIRECT_IO.
func (o options) directIO() bool { return o.cache == "never" || o.cache == "metadata" }

// pattern returns n bytes of a fixed pattern; the host has the same.
func pattern(n int, salt byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i>>11) ^ salt
	}
	return b
}

// The directory "many": keep in step with featureMany in features_test.go.
const manyCount = 400

type manyEntry struct {
	name   string
	mode   os.FileMode // type bits only
	size   int         // files
	target string      // symlinks
}

func featureMany() []manyEntry {
	var out []manyEntry
	for i := 0; i < manyCount; i++ {
		switch {
		case i%13 == 0:
			out = append(out, manyEntry{name: fmt.Sprintf("d-%04d", i), mode: os.ModeDir})
		case i%7 == 0:
			out = append(out, manyEntry{name: fmt.Sprintf("l-%04d", i), mode: os.ModeSymlink, target: fmt.Sprintf("target-%d", i)})
		default:
			out = append(out, manyEntry{name: fmt.Sprintf("f-%04d-%s", i, strings.Repeat("n", i%60)), size: i})
		}
	}
	return out
}

// POSIX ACLs in their xattr form (struct posix_acl_xattr_header and
// _entry, little endian, version 2).
const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
)

type aclEntry struct {
	tag, perm uint16
	id        uint32
}

func encodeACL(es ...aclEntry) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range es {
		id := e.id
		if e.tag != aclUser && e.tag != aclGroup {
			id = 0xffffffff
		}
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, id)
	}
	return b
}

// aclText renders an xattr ACL as "u::rwx,u:1234:rwx,g::r-x,m::rwx,o::---".
func aclText(b []byte) string {
	if len(b) < 4 || (len(b)-4)%8 != 0 || binary.LittleEndian.Uint32(b) != 2 {
		return fmt.Sprintf("malformed(%x)", b)
	}
	var parts []string
	for p := b[4:]; len(p) > 0; p = p[8:] {
		tag, perm, id := binary.LittleEndian.Uint16(p), binary.LittleEndian.Uint16(p[2:]), binary.LittleEndian.Uint32(p[4:])
		rwx := []byte("---")
		for i, c := range "rwx" {
			if perm&(4>>i) != 0 {
				rwx[i] = byte(c)
			}
		}
		var s string
		switch tag {
		case aclUserObj:
			s = "u:"
		case aclUser:
			s = fmt.Sprintf("u:%d", id)
		case aclGroupObj:
			s = "g:"
		case aclGroup:
			s = fmt.Sprintf("g:%d", id)
		case aclMask:
			s = "m:"
		case aclOther:
			s = "o:"
		default:
			s = fmt.Sprintf("tag%#x:", tag)
		}
		parts = append(parts, s+":"+string(rwx))
	}
	return strings.Join(parts, ",")
}

// getxattr returns the value of name on path.
func getxattr(path, name string) ([]byte, error) {
	buf := make([]byte, 4096)
	n, err := unix.Getxattr(path, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

func modeOf(path string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return 0, err
	}
	return st.Mode & 0o7777, nil
}

func main() {
	mnt := flag.String("mnt", "/mnt", "virtio-fs mount point")
	optsFlag := flag.String("opts", "", "the daemon's extra options, comma-separated")
	child := flag.String("child", "", "internal: run as the unprivileged child of a check")
	limit := flag.Duration("timeout", 150*time.Second, "watchdog, on an unloaded machine (scaled by the slowdown the guest measured)")
	flag.Parse()
	if *child == "killpriv" {
		killprivChild(*mnt)
		return
	}
	*limit = slow.Scale(*limit)
	say("GUEST SLOWDOWN %.1f (uptime %v at start; watchdog %v)", slow.Factor(), slow.Uptime().Round(time.Millisecond), *limit)
	go func() {
		time.Sleep(*limit)
		result("watchdog", false, "still running after %v: a request hangs", *limit)
		say("GUEST DONE")
		os.Exit(3)
	}()
	o := parseOptions(*optsFlag)
	say("GUEST OPTIONS %+v", o)
	start := time.Now()
	checkRead(*mnt)
	checkReaddir(*mnt)
	checkSubmount(*mnt, o)
	checkXattr(*mnt, o)
	checkACLRead(*mnt, o)
	if o.readonly {
		checkReadonly(*mnt, o)
	} else {
		checkUmask(*mnt)
		checkACL(*mnt, o)
		checkKillpriv(*mnt, o)
		checkWriteback(*mnt)
		checkMmapShared(*mnt, o)
	}
	checkMmapRead(*mnt, o)
	checkNoatime(*mnt)
	checkCache(*mnt, o)
	say("GUEST ELAPSED %.3f", time.Since(start).Seconds())
	say("GUEST DONE")
	if failed.Load() {
		os.Exit(1)
	}
}

func checkRead(mnt string) {
	b, err := os.ReadFile(filepath.Join(mnt, "host.txt"))
	result("read", err == nil && string(b) == "from host\n", "%q %s", b, guestspec.ErrName(err))
}

// checkReaddir lists "many" (READDIR, or READDIRPLUS where offered) and
// checks every name, type, file size and link target.
func checkReaddir(mnt string) {
	dir := filepath.Join(mnt, "many")
	ents, err := os.ReadDir(dir)
	if err != nil {
		result("readdir", false, "readdir: %s", guestspec.ErrName(err))
		return
	}
	want := featureMany()
	slices.SortFunc(want, func(a, b manyEntry) int { return strings.Compare(a.name, b.name) })
	var bad []string
	if len(ents) != len(want) {
		bad = append(bad, fmt.Sprintf("%d entries, want %d", len(ents), len(want)))
	}
	for i := 0; i < min(len(ents), len(want)); i++ {
		e, w := ents[i], want[i]
		if e.Name() != w.name {
			bad = append(bad, fmt.Sprintf("#%d %q, want %q", i, e.Name(), w.name))
			continue
		}
		if e.Type() != w.mode {
			bad = append(bad, fmt.Sprintf("%s: type %v, want %v", w.name, e.Type(), w.mode))
		}
		p := filepath.Join(dir, w.name)
		switch {
		case w.mode == 0:
			if fi, err := os.Lstat(p); err != nil || fi.Size() != int64(w.size) {
				bad = append(bad, fmt.Sprintf("%s: lstat %s", w.name, guestspec.ErrName(err)))
			}
		case w.mode == os.ModeSymlink:
			if tgt, err := os.Readlink(p); err != nil || tgt != w.target {
				bad = append(bad, fmt.Sprintf("%s: readlink %q %s", w.name, tgt, guestspec.ErrName(err)))
			}
		}
		if len(bad) > 5 {
			break
		}
	}
	result("readdir", len(bad) == 0, "%d entries; problems: %v", len(ents), bad)
}

// checkSubmount looks at "sub", a tmpfs the host mounted in the share
// before the daemon started. Announced, it is an automount point in the
// guest: stat(2) of sub itself does not trigger it (stat acts as with
// AT_NO_AUTOMOUNT), so sub is stat'ed only after a name inside it.
func checkSubmount(mnt string, o options) {
	var root, sub, inner unix.Stat_t
	if err := unix.Stat(mnt, &root); err != nil {
		result("submount", false, "stat %s: %s", mnt, guestspec.ErrName(err))
		return
	}
	if err := unix.Stat(filepath.Join(mnt, "sub", "inner.txt"), &inner); err != nil {
		result("submount", false, "stat sub/inner.txt: %s", guestspec.ErrName(err))
		return
	}
	if err := unix.Stat(filepath.Join(mnt, "sub"), &sub); err != nil {
		result("submount", false, "stat sub: %s", guestspec.ErrName(err))
		return
	}
	b, err := os.ReadFile(filepath.Join(mnt, "sub", "inner.txt"))
	dev := "same st_dev as the share"
	if sub.Dev != root.Dev {
		dev = "own st_dev"
	}
	// The guest mounts an announced submount itself, at first access.
	mounts, merr := os.ReadFile("/proc/self/mountinfo")
	mounted := false
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == filepath.Join(mnt, "sub") {
			mounted = true
		}
	}
	ok := err == nil && merr == nil && string(b) == "inner\n" && inner.Dev == sub.Dev &&
		(sub.Dev != root.Dev) == o.announce && mounted == o.announce
	result("submount", ok, "sub has its %s, guest mount at sub %v (announce %v); inner.txt %q %s, same st_dev as sub %v",
		dev, mounted, o.announce, b, guestspec.ErrName(err), inner.Dev == sub.Dev)
}

// checkXattr reads the host's user.host on host.txt and, unless read
// only, sets user.guest and removes user.gone on xattr.txt.
func checkXattr(mnt string, o options) {
	host := filepath.Join(mnt, "host.txt")
	want := func(ok bool, err error) bool {
		if o.xattr {
			return ok
		}
		return errors.Is(err, unix.EOPNOTSUPP)
	}
	v, err := getxattr(host, "user.host")
	result("xattr-get", want(err == nil && string(v) == "host-value", err), "user.host %q %s", v, guestspec.ErrName(err))
	buf := make([]byte, 4096)
	n, err := unix.Listxattr(host, buf)
	var names []string
	if err == nil {
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if strings.HasPrefix(s, "user.") {
				names = append(names, s)
			}
		}
	}
	result("xattr-list", want(err == nil && slices.Equal(names, []string{"user.host"}), err), "user names %v %s", names, guestspec.ErrName(err))
	if o.readonly {
		return
	}
	x := filepath.Join(mnt, "xattr.txt")
	err = unix.Setxattr(x, "user.guest", []byte("guest-value"), 0)
	v, gerr := getxattr(x, "user.guest")
	result("xattr-set", want(err == nil && gerr == nil && string(v) == "guest-value", err),
		"set user.guest %s, read back %q %s", guestspec.ErrName(err), v, guestspec.ErrName(gerr))
	err = unix.Removexattr(x, "user.gone")
	_, gerr = getxattr(x, "user.gone")
	result("xattr-remove", want(err == nil && errors.Is(gerr, unix.ENODATA), err),
		"remove user.gone %s, then get %s", guestspec.ErrName(err), guestspec.ErrName(gerr))
}

// The default ACL the host put on acl-host; keep in step with the host.
const aclHostDefault = "u::rwx,u:1234:rwx,g::r-x,m::rwx,o::---"

// checkACLRead reads the default ACL the host set on acl-host.
func checkACLRead(mnt string, o options) {
	v, err := getxattr(filepath.Join(mnt, "acl-host"), "system.posix_acl_default")
	got := guestspec.ErrName(err)
	if err == nil {
		got = aclText(v)
	}
	// Only with --posix-acl is the outcome prescribed; otherwise the two
	// daemons are compared by the host.
	ok := !o.acl || got == aclHostDefault
	result("acl-read-default", ok, "acl-host default ACL: %s", got)
}

// checkReadonly: every modification fails with EROFS; reads work (the
// read checks run in every option set).
func checkReadonly(mnt string, o options) {
	p := func(name string) string { return filepath.Join(mnt, name) }
	ops := []struct {
		name string
		do   func() error
	}{
		{"create", func() error {
			f, err := os.OpenFile(p("ro-new"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err == nil {
				f.Close()
			}
			return err
		}},
		{"open-write", func() error {
			f, err := os.OpenFile(p("host.txt"), os.O_WRONLY, 0)
			if err == nil {
				f.Close()
			}
			return err
		}},
		{"truncate", func() error { return unix.Truncate(p("host.txt"), 0) }},
		{"unlink", func() error { return unix.Unlink(p("rofile")) }},
		{"rmdir", func() error { return unix.Rmdir(p("rodir")) }},
		{"mkdir", func() error { return unix.Mkdir(p("ro-newdir"), 0o755) }},
		{"rename", func() error { return unix.Rename(p("rofile"), p("ro-renamed")) }},
		{"symlink", func() error { return unix.Symlink("rofile", p("ro-symlink")) }},
		{"link", func() error { return unix.Link(p("rofile"), p("ro-link")) }},
		{"mknod", func() error { return unix.Mkfifo(p("ro-fifo"), 0o644) }},
		{"chmod", func() error { return unix.Chmod(p("rofile"), 0o600) }},
		{"chown", func() error { return unix.Chown(p("rofile"), 1000, 1000) }},
		{"utimes", func() error {
			return unix.UtimesNano(p("rofile"), []unix.Timespec{{Sec: 1}, {Sec: 1}})
		}},
		{"setxattr", func() error { return unix.Setxattr(p("rofile"), "user.x", []byte("x"), 0) }},
		{"removexattr", func() error { return unix.Removexattr(p("host.txt"), "user.host") }},
	}
	for _, op := range ops {
		err := op.do()
		result("ro-"+op.name, errors.Is(err, unix.EROFS), "%s", guestspec.ErrName(err))
	}
	b, err := os.ReadFile(p("rofile"))
	result("ro-read", err == nil && string(b) == "read only\n", "rofile %q %s", b, guestspec.ErrName(err))
}

// checkUmask creates a file and a directory with umask 027.
func checkUmask(mnt string) {
	old := unix.Umask(0o027)
	defer unix.Umask(old)
	f, err := os.OpenFile(filepath.Join(mnt, "umask-file"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	if err == nil {
		f.Close()
	}
	fm, ferr := modeOf(filepath.Join(mnt, "umask-file"))
	derr := unix.Mkdir(filepath.Join(mnt, "umask-dir"), 0o777)
	dm, dserr := modeOf(filepath.Join(mnt, "umask-dir"))
	result("umask", err == nil && ferr == nil && fm == 0o640 && derr == nil && dserr == nil && dm == 0o750,
		"file %#o (%s), dir %#o (%s), want 0640 and 0750", fm, guestspec.ErrName(err), dm, guestspec.ErrName(derr))
}

// checkACL: new entries in a directory with a default ACL inherit it,
// and their mode follows the ACL (the umask does not apply), as a local
// filesystem does; the guest also sets a default ACL itself.
func checkACL(mnt string, o options) {
	old := unix.Umask(0o077)
	defer unix.Umask(old)
	// In acl-host (default ACL from the host).
	fp := filepath.Join(mnt, "acl-host", "f")
	f, err := os.OpenFile(fp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o664)
	if err == nil {
		f.Close()
	}
	fm, _ := modeOf(fp)
	dp := filepath.Join(mnt, "acl-host", "d")
	derr := unix.Mkdir(dp, 0o777)
	dm, _ := modeOf(dp)
	// With --posix-acl the host applies the default ACL and no umask:
	// the file gets group bits from the mask (rw- & rwx) and no others.
	// Without it the guest applied umask 077 first (the host's default
	// ACL then only narrows further).
	wantF, wantD := uint32(0o600), uint32(0o700)
	if o.acl {
		wantF, wantD = 0o660, 0o770
	}
	result("acl-inherit-mode", err == nil && derr == nil && fm == wantF && dm == wantD,
		"create 0664 under umask 077: file %#o (%s), mkdir 0777: dir %#o (%s); want %#o and %#o",
		fm, guestspec.ErrName(err), dm, guestspec.ErrName(derr), wantF, wantD)
	v, gerr := getxattr(fp, "system.posix_acl_access")
	got := guestspec.ErrName(gerr)
	if gerr == nil {
		got = aclText(v)
	}
	const wantAccess = "u::rw-,u:1234:rwx,g::r-x,m::rw-,o::---"
	result("acl-inherit-access", !o.acl || got == wantAccess, "access ACL of acl-host/f: %s", got)
	v, gerr = getxattr(dp, "system.posix_acl_default")
	got = guestspec.ErrName(gerr)
	if gerr == nil {
		got = aclText(v)
	}
	result("acl-inherit-default", !o.acl || got == aclHostDefault, "default ACL of acl-host/d: %s", got)

	// A default ACL the guest sets.
	gd := filepath.Join(mnt, "acl-guest")
	if err := unix.Mkdir(gd, 0o755); err != nil {
		result("acl-set-default", false, "mkdir acl-guest: %s", guestspec.ErrName(err))
		return
	}
	acl := encodeACL(aclEntry{tag: aclUserObj, perm: 7}, aclEntry{tag: aclGroupObj, perm: 7},
		aclEntry{tag: aclMask, perm: 7}, aclEntry{tag: aclOther, perm: 5})
	err = unix.Setxattr(gd, "system.posix_acl_default", acl, 0)
	ok := errors.Is(err, unix.EOPNOTSUPP)
	if o.acl {
		ok = err == nil
	}
	result("acl-set-default", ok, "set system.posix_acl_default on acl-guest: %s", guestspec.ErrName(err))
	gf := filepath.Join(mnt, "acl-guest", "f")
	f, err = os.OpenFile(gf, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	if err == nil {
		f.Close()
	}
	gm, _ := modeOf(gf)
	want := uint32(0o600)
	if o.acl {
		want = 0o664 // the ACL's other::r-x & the mode's r--, no umask
	}
	result("acl-guest-inherit-mode", err == nil && gm == want, "create 0666 under umask 077 in acl-guest: %#o (%s), want %#o",
		gm, guestspec.ErrName(err), want)
}

// Killpriv files: keep in step with the host.
var killprivFiles = []string{"kp-write", "kp-trunc", "kp-otrunc", "kp-chown", "kp-root"}

// killprivChild runs as uid 1000: it writes, truncates and opens with
// O_TRUNC files it owns that have setuid or setgid bits.
func killprivChild(mnt string) {
	p := func(name string) string { return filepath.Join(mnt, name) }
	report := func(name string, err error) {
		result(name, err == nil, "as uid %d: %s", os.Getuid(), guestspec.ErrName(err))
	}
	f, err := os.OpenFile(p("kp-write"), os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteAt([]byte("abc"), 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	report("killpriv-child-write", err)
	f, err = os.OpenFile(p("kp-trunc"), os.O_WRONLY, 0)
	if err == nil {
		err = f.Truncate(3)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	report("killpriv-child-ftruncate", err)
	f, err = os.OpenFile(p("kp-otrunc"), os.O_WRONLY|os.O_TRUNC, 0)
	if err == nil {
		err = f.Close()
	}
	report("killpriv-child-otrunc", err)
}

// killprivWant returns the mode each killpriv file must have once the
// unprivileged child and root are done with it; keep in step with the
// host's featureKillprivWant.
func killprivWant(o options) map[string]uint32 {
	want := map[string]uint32{"kp-write": 0o755, "kp-trunc": 0o755, "kp-otrunc": 0o775, "kp-chown": 0o755, "kp-root": 0o4755}
	if !o.killpriv {
		// Without HANDLE_KILLPRIV_V2 the guest kernel clears the bits
		// itself (a SETATTR of the mode) on a buffered write, a
		// truncate and a chown, but not in two cases, where it leaves
		// the job to the daemon, which does it only with
		// --killpriv-v2 (virtiofsd alike):
		// - an open with O_TRUNC: with ATOMIC_O_TRUNC the OPEN did the
		//   truncation, and fuse_do_setattr skips the SETATTR that
		//   would have carried the mode;
		// - a write with DIRECT_IO (cache never or metadata): the
		//   direct write path never calls file_remove_privs, it only
		//   flags the WRITE with WRITE_KILL_SUIDGID.
		want["kp-otrunc"] = 0o2775
		if o.directIO() {
			want["kp-write"] = 0o4755
		}
	}
	return want
}

// checkKillpriv: a file's setuid (and group-executable setgid) bit goes
// when an unprivileged owner writes or truncates it, and on chown; a
// root writer keeps it.
func checkKillpriv(mnt string, o options) {
	self, err := os.Executable()
	if err != nil {
		self = "/proc/self/exe"
	}
	cmd := exec.Command(self, "-child", "killpriv", "-mnt", mnt)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000, Groups: []uint32{}}}
	if err := cmd.Run(); err != nil {
		result("killpriv-child", false, "%v", err)
	}
	p := func(name string) string { return filepath.Join(mnt, name) }
	cerr := unix.Chown(p("kp-chown"), 1000, 1000)
	f, werr := os.OpenFile(p("kp-root"), os.O_WRONLY, 0)
	if werr == nil {
		_, werr = f.WriteAt([]byte("root"), 0)
		if e := f.Close(); werr == nil {
			werr = e
		}
	}
	result("killpriv-root-ops", cerr == nil && werr == nil, "chown kp-chown %s, write kp-root %s", guestspec.ErrName(cerr), guestspec.ErrName(werr))
	want := killprivWant(o)
	for _, name := range killprivFiles {
		m, err := modeOf(p(name))
		result("killpriv-mode-"+name, err == nil && m == want[name], "%#o %s, want %#o", m, guestspec.ErrName(err), want[name])
	}
}

// checkWriteback writes and reads back through the same descriptor, then
// rewrites part of a page and appends through write-only descriptors: with
// --writeback the guest reads the rest of those pages through them.
func checkWriteback(mnt string) {
	p := func(name string) string { return filepath.Join(mnt, name) }
	// Write, then read back through the same descriptor.
	want := pattern(10000, 1)
	copy(want[4097:], "HELLO")
	err := func() error {
		f, err := os.OpenFile(p("wb-new"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.Write(pattern(10000, 1)); err != nil {
			return err
		}
		if _, err := f.WriteAt([]byte("HELLO"), 4097); err != nil {
			return err
		}
		got := make([]byte, 10000)
		if _, err := f.ReadAt(got, 0); err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("read back through the descriptor differs at %d", firstDiff(got, want))
		}
		return f.Sync()
	}()
	result("writeback-rw", err == nil, "%s", guestspec.ErrName(err))
	verify := func(name string, want []byte) error {
		if err := guestspec.DropCaches(3); err != nil {
			return err
		}
		got, err := os.ReadFile(p(name))
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("%d bytes, want %d, first difference at %d", len(got), len(want), firstDiff(got, want))
		}
		return nil
	}
	result("writeback-rw-reread", verify("wb-new", want) == nil, "%s", guestspec.ErrName(verify("wb-new", want)))

	// wb-old holds pattern(10000, 2): overwrite 100 bytes mid-page through
	// an O_WRONLY descriptor, then append 3000 bytes through O_APPEND.
	wantOld := append(pattern(10000, 2), pattern(3000, 3)...)
	copy(wantOld[5000:5100], bytes.Repeat([]byte("Z"), 100))
	err = func() error {
		f, err := os.OpenFile(p("wb-old"), os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		if _, err := f.WriteAt(bytes.Repeat([]byte("Z"), 100), 5000); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		f, err = os.OpenFile(p("wb-old"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		if _, err := f.Write(pattern(3000, 3)); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}()
	if err == nil {
		err = verify("wb-old", wantOld)
	}
	result("writeback-wronly", err == nil, "%s", guestspec.ErrName(err))

	// wb-app holds pattern(1000, 4): two appends through one O_WRONLY|
	// O_APPEND descriptor, each ending mid-page.
	wantApp := append(append(pattern(1000, 4), pattern(777, 5)...), pattern(777, 5)...)
	err = func() error {
		f, err := os.OpenFile(p("wb-app"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		for range 2 {
			if _, err := f.Write(pattern(777, 5)); err != nil {
				f.Close()
				return err
			}
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}()
	if err == nil {
		err = verify("wb-app", wantApp)
	}
	result("writeback-append", err == nil, "%s", guestspec.ErrName(err))
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// checkMmapShared maps mm read-write and shared, reads the host's
// pattern(8192, 6) through the mapping and writes 16 bytes at 4096.
func checkMmapShared(mnt string, o options) {
	wantErr := o.directIO() && !o.allowMmap
	err := func() error {
		f, err := os.OpenFile(filepath.Join(mnt, "mm"), os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		m, err := unix.Mmap(int(f.Fd()), 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return err
		}
		if !bytes.Equal(m, pattern(8192, 6)) {
			unix.Munmap(m)
			return fmt.Errorf("mapping differs from the file at %d", firstDiff(m, pattern(8192, 6)))
		}
		copy(m[4096:], "written via mmap")
		if err := unix.Msync(m, unix.MS_SYNC); err != nil {
			unix.Munmap(m)
			return err
		}
		return unix.Munmap(m)
	}()
	if wantErr {
		result("mmap-shared", errors.Is(err, unix.ENODEV), "MAP_SHARED read-write: %s (want ENODEV: DIRECT_IO without --allow-mmap)", guestspec.ErrName(err))
		return
	}
	if err == nil {
		want := pattern(8192, 6)
		copy(want[4096:], "written via mmap")
		if derr := guestspec.DropCaches(3); derr != nil {
			err = derr
		} else if got, rerr := os.ReadFile(filepath.Join(mnt, "mm")); rerr != nil {
			err = rerr
		} else if !bytes.Equal(got, want) {
			err = fmt.Errorf("read after munmap differs at %d", firstDiff(got, want))
		}
	}
	result("mmap-shared", err == nil, "MAP_SHARED read-write: %s", guestspec.ErrName(err))
}

// checkMmapRead maps mm-ro (pattern(8192, 7)) read-only and shared.
func checkMmapRead(mnt string, o options) {
	err := func() error {
		f, err := os.Open(filepath.Join(mnt, "mm-ro"))
		if err != nil {
			return err
		}
		defer f.Close()
		m, err := unix.Mmap(int(f.Fd()), 0, 8192, unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return err
		}
		defer unix.Munmap(m)
		if !bytes.Equal(m, pattern(8192, 7)) {
			return fmt.Errorf("mapping differs from the file at %d", firstDiff(m, pattern(8192, 7)))
		}
		return nil
	}()
	if o.directIO() && !o.allowMmap {
		result("mmap-read-shared", errors.Is(err, unix.ENODEV), "MAP_SHARED read-only: %s (want ENODEV: DIRECT_IO without --allow-mmap)", guestspec.ErrName(err))
		return
	}
	result("mmap-read-shared", err == nil, "MAP_SHARED read-only: %s", guestspec.ErrName(err))
}

// checkNoatime reads na-noatime with O_NOATIME and na-plain without; the
// host looks at their atimes afterwards.
func checkNoatime(mnt string) {
	read := func(name string, flags int) error {
		f, err := os.OpenFile(filepath.Join(mnt, name), os.O_RDONLY|flags, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		b := make([]byte, 8192)
		n, err := f.Read(b)
		if err == nil && n != 4096 {
			err = fmt.Errorf("read %d bytes, want 4096", n)
		}
		return err
	}
	e1, e2 := read("na-noatime", unix.O_NOATIME), read("na-plain", 0)
	result("noatime-read", e1 == nil && e2 == nil, "O_NOATIME read %s, plain read %s", guestspec.ErrName(e1), guestspec.ErrName(e2))
}

// cacheView is what the guest sees of the files the host changes:
// cache-attr (100 bytes, 200 after the change; only ever stat'ed),
// cache-data (4096 bytes, all '1' before the change, all '2' after) and
// cache-grow (100 bytes, 200 after; stat'ed and read).
type cacheView struct {
	attr, data, size, read string
}

func (v cacheView) String() string {
	return fmt.Sprintf("attr=%s data=%s size=%s read=%s", v.attr, v.data, v.size, v.read)
}

// matches tells whether v has every field that want sets.
func (v cacheView) matches(want cacheView) bool {
	return (want.attr == "" || v.attr == want.attr) && (want.data == "" || v.data == want.data) &&
		(want.size == "" || v.size == want.size) && (want.read == "" || v.read == want.read)
}

func cacheState(mnt string) cacheView {
	var v cacheView
	size := func(name string) string {
		fi, err := os.Stat(filepath.Join(mnt, name))
		if err != nil {
			return guestspec.ErrName(err)
		}
		return fmt.Sprint(fi.Size())
	}
	v.attr = size("cache-attr")
	data, err := os.ReadFile(filepath.Join(mnt, "cache-data"))
	switch {
	case err != nil:
		v.data = guestspec.ErrName(err)
	case bytes.Equal(data, bytes.Repeat([]byte("1"), 4096)):
		v.data = "v1"
	case bytes.Equal(data, bytes.Repeat([]byte("2"), 4096)):
		v.data = "v2"
	default:
		v.data = fmt.Sprintf("mixed(%d bytes)", len(data))
	}
	v.size = size("cache-grow")
	grow, err := os.ReadFile(filepath.Join(mnt, "cache-grow"))
	v.read = guestspec.ErrName(err)
	if err == nil {
		v.read = fmt.Sprint(len(grow))
	}
	return v
}

// checkCache: the guest looks at three files, the host changes them, and
// the guest looks again at once and 1.5 s later (past cache=auto's 1 s
// timeouts).
func checkCache(mnt string, o options) {
	before := cacheState(mnt)
	result("cache-before", before.matches(cacheView{"100", "v1", "100", "100"}), "%s", before)
	say("GUEST READY cache")
	deadline := time.Now().Add(slow.Scale(60 * time.Second))
	for {
		if _, err := os.Stat(filepath.Join(mnt, "go-cache")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			result("cache-signal", false, "no /mnt/go-cache after %v", slow.Scale(60*time.Second))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	now := cacheState(mnt)
	time.Sleep(1500 * time.Millisecond)
	later := cacheState(mnt)
	// What each policy must show; an empty field is left to the
	// comparison of the two daemons. Two kernel behaviours shape this:
	// a read marks the file's atime stale, so the next stat of a file
	// the guest has read asks the daemon whatever the timeout (and,
	// with AUTO_INVAL_DATA, drops its pages when the mtime moved): only
	// cache-attr, never read, shows the attribute timeout plainly. And
	// with writeback caching the guest owns the size of regular files:
	// it keeps its own, so the host's append never shows.
	var wantNow, wantLater cacheView
	switch o.cache {
	case "never":
		// Nothing is cached: the change shows at once.
		wantNow = cacheView{"200", "v2", "200", "200"}
		wantLater = wantNow
	case "auto":
		// Close-to-open: an open drops the cached pages (no
		// KEEP_CACHE); attributes are kept for 1 s.
		wantNow = cacheView{data: "v2"}
		wantLater = cacheView{"200", "v2", "200", "200"}
		if o.writeback {
			wantLater = cacheView{"100", "v2", "100", "100"}
		}
	case "metadata":
		// Attributes for a day, data never cached (DIRECT_IO).
		wantNow = cacheView{attr: "100", data: "v2"}
		wantLater = wantNow
	case "always":
		// Attributes for a day.
		wantNow = cacheView{attr: "100"}
		wantLater = wantNow
	}
	result("cache-now", now.matches(wantNow), "%s", now)
	result("cache-later", later.matches(wantLater), "%s", later)
}
