package e2e

import (
	"bytes"
	bin "encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
	"golang.org/x/sys/unix"
)

// TestFeatures checks, in a real guest, what the daemon options do, on
// govirtiofsd and on the reference virtiofsd side by side: each option set
// below boots one guest per daemon running guest/features on a share
// prepared alike (featurePrepare). Each run must meet the expectations
// (the guest's, and the host-side ones of featureHostChecks), and the two
// runs of a set must agree check by check, guest details and host
// observations alike, except where featureDeliberate explains a
// difference.
//
// What each set is for:
//   - readonly: --readonly; every modification fails with EROFS in the
//     guest (--xattr so that setxattr reaches the read-only check rather
//     than ENOSYS), reads and xattr reads work; cache=always.
//   - defaults: no xattrs (the guest gets EOPNOTSUPP for the daemon's
//     ENOSYS), announce-submounts (the default) gives the host's tmpfs at
//     sub its own st_dev; readdirplus; cache=auto.
//   - xattr-killpriv-writeback: user xattrs work and reach the host;
//     setuid/setgid bits go when an unprivileged owner writes, truncates
//     or opens with O_TRUNC, and on chown, with the host clearing them
//     (killpriv-v2); writeback caching with O_WRONLY and O_APPEND
//     descriptors.
//   - acl-metadata: --posix-acl: default ACLs (the host's, and one the
//     guest sets) are inherited and decide the new mode instead of the
//     umask (DONT_MASK); --no-readdirplus; --preserve-noatime (the host
//     file read with O_NOATIME keeps its atime); cache=metadata.
//   - never: cache=never shows host changes at once; MAP_SHARED fails
//     with ENODEV without --allow-mmap; --no-announce-submounts.
//   - never-mmap: cache=never with --allow-mmap: MAP_SHARED works.
//
// Every set also runs the checks that do not depend on its options
// (readdir, umask, killpriv, writeback, mmap where the cache allows it),
// so each option is also seen without it. The default ACL on acl-host is
// written by the host as system.posix_acl_default bytes (what setfacl -d
// does, without needing setfacl on the host).
//
// Two outcomes, the same on both daemons, are worth knowing (the guest
// kernel leaves the job to the daemon, which does it only with
// --killpriv-v2; see killprivWant in the guest): without --killpriv-v2 an
// unprivileged owner's open with O_TRUNC, and under cache=never or
// metadata its write, leave the setuid/setgid bits on the host file. And
// with --writeback the guest keeps its own file sizes, so it never sees
// a host-side append (see checkCache in the guest).
//
// Options are written --name=value: both daemons accept that form, and
// the guest gets them comma-joined to know what to expect.
var featureSets = []struct {
	name string
	args []string
}{
	{"readonly", []string{"--readonly", "--xattr", "--cache=always"}},
	{"defaults", nil},
	{"xattr-killpriv-writeback", []string{"--xattr", "--killpriv-v2", "--writeback"}},
	{"acl-metadata", []string{"--posix-acl", "--no-readdirplus", "--preserve-noatime", "--cache=metadata"}},
	{"never", []string{"--cache=never", "--no-announce-submounts"}},
	{"never-mmap", []string{"--cache=never", "--allow-mmap"}},
}

// featureDeliberate lists the checks ("set/guest NAME" for a guest result,
// "set/host NAME" for a host observation) where govirtiofsd and the
// reference virtiofsd (1.14.0) differ on purpose, with the reason. A
// difference listed here is logged; any other fails the test. None is
// known: on every check of every set the two daemons give the same errno,
// mode, ACL and content (as govirtiofsd and 1.13.2 did).
var featureDeliberate = map[string]string{}

// featureOutcome is what one daemon did with one option set: the guest's
// results and the host's observations after the run.
type featureOutcome struct {
	guest map[string]vm.Result
	host  map[string]string
}

// featureGuest builds guest/features for the guest.
func featureGuest(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "features")
	if err := daemon.BuildStatic("./test/e2e/guest/features", out, false); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestFeatures(t *testing.T) {
	lab := needLab(t)
	guest := featureGuest(t)
	daemons := []daemon.Daemon{ours(t), daemon.Reference(lab.VirtiofsdRef)}
	start := time.Now()
	for _, set := range featureSets {
		t.Run(set.name, func(t *testing.T) {
			initrd := initramfs(t, vm.InitramfsConfig{
				Busybox: lab.Busybox,
				Files:   []vm.GuestFile{{Path: "/features", HostPath: guest, Mode: 0o755}},
				Mount:   &vm.Mount{Tag: "myfs"},
				Command: "/features -mnt /mnt -opts '" + strings.Join(set.args, ",") + "'",
			})
			outs := make([]*featureOutcome, len(daemons))
			for i, dm := range daemons {
				t.Run(dm.Name, func(t *testing.T) {
					outs[i] = featureRun(t, lab, dm, initrd, set.args)
				})
			}
			featureCompare(t, set.name, daemons[0].Name, outs[0], daemons[1].Name, outs[1])
		})
	}
	t.Logf("%d option sets on %d daemons in %v", len(featureSets), len(daemons), time.Since(start).Round(time.Second))
}

// featureRun boots one guest on dm started with args over a freshly
// prepared share, and returns what the guest and the host saw.
func featureRun(t *testing.T, lab *vm.Lab, dm daemon.Daemon, initrd string, args []string) *featureOutcome {
	share := t.TempDir()
	featurePrepare(t, share)
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	d, restart := startDaemon(t, dm, daemon.Options{SharedDir: share, Socket: sock, Extra: args})
	ctx := t.Context()
	start := time.Now()
	run := boot(t, ctx, vm.Config{Lab: lab, Initrd: initrd, Socket: sock, Tag: "myfs",
		Console: vm.NewLineLogger("console: ", t.Logf)}, d, restart)
	d = run.Daemon()
	if err := run.WaitConsole(ctx, "GUEST READY cache"); err != nil {
		t.Error(err)
	} else if err := featureChangeCache(share); err != nil {
		t.Errorf("host change for the cache check: %v", err)
	}
	res, err := run.Wait()
	if err != nil {
		t.Errorf("guest run: %v", err)
	}
	out := &featureOutcome{guest: map[string]vm.Result{}}
	for _, r := range res.List {
		out.guest[r.Name] = r
		if r.Status != vm.Pass {
			t.Errorf("guest %s", r)
		}
	}
	if len(res.Malformed) > 0 {
		t.Errorf("malformed result lines: %q", res.Malformed)
	}
	if res.ExitCode != 0 {
		t.Errorf("guest program exit code %d", res.ExitCode)
	}
	if err := d.WaitTimeout(run.Scale(15 * time.Second)); err != nil {
		t.Errorf("%s after poweroff: %v", dm.Name, err)
	} else if c := d.ExitCode(); c != 0 {
		t.Errorf("%s exit code %d, want 0", dm.Name, c)
	}
	t.Logf("%s %v: guest ran %v", dm.Name, args, time.Since(start).Round(time.Millisecond))
	out.host = featureHostChecks(t, share, args)
	keys := make([]string, 0, len(out.host))
	for k := range out.host {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("host %s: %s", k, out.host[k])
	}
	return out
}

// featureCompare fails for every check on which the two runs differ,
// unless featureDeliberate explains it.
func featureCompare(t *testing.T, set, nameA string, a *featureOutcome, nameB string, b *featureOutcome) {
	t.Helper()
	if a == nil || b == nil {
		t.Errorf("cannot compare %s with %s: a run did not complete", nameA, nameB)
		return
	}
	var diffs []string
	note := func(key, va, vb string) {
		if va == vb {
			return
		}
		line := fmt.Sprintf("%s: %s %q, %s %q", key, nameA, va, nameB, vb)
		if why, ok := featureDeliberate[set+"/"+key]; ok {
			t.Logf("deliberate difference %s (%s)", line, why)
			return
		}
		diffs = append(diffs, line)
	}
	keys := map[string]bool{}
	for k := range a.guest {
		keys[k] = true
	}
	for k := range b.guest {
		keys[k] = true
	}
	for k := range keys {
		ra, oka := a.guest[k]
		rb, okb := b.guest[k]
		va, vb := "(none)", "(none)"
		if oka {
			va = string(ra.Status) + " " + ra.Detail
		}
		if okb {
			vb = string(rb.Status) + " " + rb.Detail
		}
		note("guest "+k, va, vb)
	}
	n := len(keys)
	keys = map[string]bool{}
	for k := range a.host {
		keys[k] = true
	}
	for k := range b.host {
		keys[k] = true
	}
	for k := range keys {
		va, oka := a.host[k]
		vb, okb := b.host[k]
		if !oka {
			va = "(none)"
		}
		if !okb {
			vb = "(none)"
		}
		note("host "+k, va, vb)
	}
	n += len(keys)
	sort.Strings(diffs)
	for _, d := range diffs {
		t.Errorf("%s differs: %s", set, d)
	}
	t.Logf("%s: %d checks compared between %s and %s, %d unexplained differences", set, n, nameA, nameB, len(diffs))
}

// featurePattern is the guest's pattern().
func featurePattern(n int, salt byte) []byte { return faultPattern(n, salt) }

// The directory "many"; keep in step with featureMany in the guest.
type featureEntry struct {
	name   string
	dir    bool
	size   int
	target string // a symlink's, or "" for a file or directory
}

func featureMany() []featureEntry {
	var out []featureEntry
	for i := 0; i < 400; i++ {
		switch {
		case i%13 == 0:
			out = append(out, featureEntry{name: fmt.Sprintf("d-%04d", i), dir: true})
		case i%7 == 0:
			out = append(out, featureEntry{name: fmt.Sprintf("l-%04d", i), target: fmt.Sprintf("target-%d", i)})
		default:
			out = append(out, featureEntry{name: fmt.Sprintf("f-%04d-%s", i, strings.Repeat("n", i%60)), size: i})
		}
	}
	return out
}

// ACL xattr encoding (see the guest's encodeACL).
const (
	featureACLUserObj  = 0x01
	featureACLUser     = 0x02
	featureACLGroupObj = 0x04
	featureACLMask     = 0x10
	featureACLOther    = 0x20
)

func featureACL(entries ...[3]uint32) []byte {
	b := bin.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		b = bin.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = bin.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = bin.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

// featureACLText renders an xattr ACL as the guest's aclText does.
func featureACLText(b []byte) string {
	if len(b) < 4 || (len(b)-4)%8 != 0 || bin.LittleEndian.Uint32(b) != 2 {
		return fmt.Sprintf("malformed(%x)", b)
	}
	var parts []string
	for p := b[4:]; len(p) > 0; p = p[8:] {
		tag, perm, id := bin.LittleEndian.Uint16(p), bin.LittleEndian.Uint16(p[2:]), bin.LittleEndian.Uint32(p[4:])
		rwx := []byte("---")
		for i, c := range "rwx" {
			if perm&(4>>i) != 0 {
				rwx[i] = byte(c)
			}
		}
		s := map[uint16]string{featureACLUserObj: "u:", featureACLUser: fmt.Sprintf("u:%d", id), featureACLGroupObj: "g:",
			0x08: fmt.Sprintf("g:%d", id), featureACLMask: "m:", featureACLOther: "o:"}[tag]
		if s == "" {
			s = fmt.Sprintf("tag%#x:", tag)
		}
		parts = append(parts, s+":"+string(rwx))
	}
	return strings.Join(parts, ",")
}

// featureXattr returns the value of name on path, or its error's name.
func featureXattr(path, name string, acl bool) string {
	buf := make([]byte, 4096)
	n, err := unix.Getxattr(path, name, buf)
	if err != nil {
		return featureErrName(err)
	}
	if acl {
		return featureACLText(buf[:n])
	}
	return string(buf[:n])
}

func featureErrName(err error) string {
	var e unix.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	return err.Error()
}

// featureOldAtime and featureOldMtime are the times of na-*: an atime
// before the mtime, so that relatime updates it on the next read.
var (
	featureOldAtime = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	featureOldMtime = time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)
)

// featurePrepare fills share with what the guest program expects (keep in
// step with guest/features) and mounts a tmpfs at share/sub.
func featurePrepare(t *testing.T, share string) {
	t.Helper()
	p := func(name string) string { return filepath.Join(share, name) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(name string, data []byte) { must(os.WriteFile(p(name), data, 0o644)) }
	must(os.Chmod(share, 0o755))
	write("host.txt", []byte("from host\n"))
	must(unix.Setxattr(p("host.txt"), "user.host", []byte("host-value"), 0))
	write("xattr.txt", nil)
	must(unix.Setxattr(p("xattr.txt"), "user.gone", []byte("bye"), 0))
	write("rofile", []byte("read only\n"))
	must(os.Mkdir(p("rodir"), 0o755))

	must(os.Mkdir(p("many"), 0o755))
	for _, e := range featureMany() {
		q := filepath.Join(share, "many", e.name)
		switch {
		case e.dir:
			must(os.Mkdir(q, 0o755))
		case e.target != "":
			must(os.Symlink(e.target, q))
		default:
			must(os.WriteFile(q, bytes.Repeat([]byte("m"), e.size), 0o644))
		}
	}

	must(os.Mkdir(p("acl-host"), 0o755))
	must(unix.Setxattr(p("acl-host"), "system.posix_acl_default", featureACL(
		[3]uint32{featureACLUserObj, 7, ^uint32(0)}, [3]uint32{featureACLUser, 7, 1234},
		[3]uint32{featureACLGroupObj, 5, ^uint32(0)}, [3]uint32{featureACLMask, 7, ^uint32(0)},
		[3]uint32{featureACLOther, 0, ^uint32(0)}), 0))

	for name, m := range map[string]struct {
		mode uint32
		id   int
	}{"kp-write": {0o4755, 1000}, "kp-trunc": {0o4755, 1000}, "kp-otrunc": {0o2775, 1000}, "kp-chown": {0o4755, 0}, "kp-root": {0o4755, 0}} {
		write(name, []byte("0123456789"))
		must(os.Chown(p(name), m.id, m.id)) // before the chmod: chown clears the bits
		must(unix.Chmod(p(name), m.mode))
	}

	write("wb-old", featurePattern(10000, 2))
	write("wb-app", featurePattern(1000, 4))
	write("mm", featurePattern(8192, 6))
	write("mm-ro", featurePattern(8192, 7))
	for _, name := range []string{"na-noatime", "na-plain"} {
		write(name, bytes.Repeat([]byte("a"), 4096))
		must(os.Chtimes(p(name), featureOldAtime, featureOldMtime))
	}
	write("cache-attr", bytes.Repeat([]byte("s"), 100))
	write("cache-data", bytes.Repeat([]byte("1"), 4096))
	write("cache-grow", bytes.Repeat([]byte("g"), 100))

	must(os.Mkdir(p("sub"), 0o755))
	must(unix.Mount("tmpfs", p("sub"), "tmpfs", 0, "size=1m,mode=0755"))
	t.Cleanup(func() {
		if err := unix.Unmount(p("sub"), 0); err != nil {
			unix.Unmount(p("sub"), unix.MNT_DETACH)
		}
	})
	write("sub/inner.txt", []byte("inner\n"))
}

// featureChangeCache changes cache-data in place (same size, new bytes)
// and appends to cache-attr and cache-grow, then gives the guest the
// go-ahead.
func featureChangeCache(share string) error {
	for _, name := range []string{"cache-attr", "cache-grow"} {
		f, err := os.OpenFile(filepath.Join(share, name), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		_, err = f.Write(bytes.Repeat([]byte("h"), 100))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	f, err := os.OpenFile(filepath.Join(share, "cache-data"), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(bytes.Repeat([]byte("2"), 4096), 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(share, "go-cache"), nil, 0o644)
}

// featureHostChecks looks at the share after the guest is done: it
// returns its observations (compared between the daemons) and fails for
// those that contradict the options in args.
func featureHostChecks(t *testing.T, share string, args []string) map[string]string {
	t.Helper()
	has := func(a string) bool { return slices.Contains(args, a) }
	readonly := has("--readonly")
	xattr := has("--xattr") || has("--posix-acl")
	acl := has("--posix-acl")
	p := func(name string) string { return filepath.Join(share, name) }
	obs := map[string]string{}
	expect := func(key, got, want string) {
		t.Helper()
		obs[key] = got
		if want != "" && got != want {
			t.Errorf("host %s: %s, want %s", key, got, want)
		}
	}
	mode := func(name string) string {
		var st unix.Stat_t
		if err := unix.Lstat(p(name), &st); err != nil {
			return featureErrName(err)
		}
		return fmt.Sprintf("%#o", st.Mode&0o7777)
	}
	content := func(name string, want []byte) string {
		b, err := os.ReadFile(p(name))
		switch {
		case err != nil:
			return featureErrName(err)
		case bytes.Equal(b, want):
			return "as written"
		}
		return fmt.Sprintf("%d bytes, want %d, first difference at %d", len(b), len(want), faultFirstDiff(b, want))
	}

	// The share's top level: a read-only run left it as it was.
	ents, err := os.ReadDir(share)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if err != nil {
		names = []string{featureErrName(err)}
	}
	obs["top-level"] = strings.Join(names, " ")
	if readonly {
		want := "acl-host cache-attr cache-data cache-grow go-cache host.txt kp-chown kp-otrunc kp-root kp-trunc kp-write many mm mm-ro na-noatime na-plain rodir rofile sub wb-app wb-old xattr.txt"
		expect("top-level", obs["top-level"], want)
		expect("readonly-rofile", content("rofile", []byte("read only\n"))+" "+mode("rofile"), "as written 0644")
		expect("readonly-host.txt", content("host.txt", []byte("from host\n"))+" "+featureXattr(p("host.txt"), "user.host", false), "as written host-value")
		return obs
	}

	// xattrs the guest set and removed.
	want := "user.guest=ENODATA user.gone=bye"
	if xattr {
		want = "user.guest=guest-value user.gone=ENODATA"
	}
	expect("xattr", "user.guest="+featureXattr(p("xattr.txt"), "user.guest", false)+" user.gone="+featureXattr(p("xattr.txt"), "user.gone", false), want)

	expect("umask", mode("umask-file")+" "+mode("umask-dir"), "0640 0750")

	// ACLs: what the guest created in acl-host inherited the host's default
	// ACL (the host's kernel applies it with or without --posix-acl; only
	// with it does the mode come from the ACL rather than the guest's
	// umask), and the default ACL the guest set on acl-guest.
	f := mode("acl-host/f") + " " + featureXattr(p("acl-host/f"), "system.posix_acl_access", true)
	d := mode("acl-host/d") + " " + featureXattr(p("acl-host/d"), "system.posix_acl_default", true)
	g := featureXattr(p("acl-guest"), "system.posix_acl_default", true) + " f " + mode("acl-guest/f")
	if acl {
		expect("acl-host-f", f, "0660 u::rw-,u:1234:rwx,g::r-x,m::rw-,o::---")
		expect("acl-host-d", d, "0770 u::rwx,u:1234:rwx,g::r-x,m::rwx,o::---")
		expect("acl-guest", g, "u::rwx,g::rwx,m::rwx,o::r-x f 0664")
	} else {
		expect("acl-host-f", f, "")
		expect("acl-host-d", d, "")
		expect("acl-guest", g, "ENODATA f 0600")
		if !strings.HasPrefix(f, "0600 ") || !strings.HasPrefix(d, "0700 ") {
			t.Errorf("host acl-host: file %s, dir %s; want modes 0600 and 0700 (the guest's umask applied)", f, d)
		}
	}

	// killpriv: the bits went on the host too (root's write keeps them).
	cacheMode := "auto"
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--cache="); ok {
			cacheMode = v
		}
	}
	directIO := cacheMode == "never" || cacheMode == "metadata"
	for name, m := range featureKillprivWant(has("--killpriv-v2"), directIO) {
		expect("killpriv-"+name, mode(name), m)
	}

	// Writeback: what the guest wrote through read-write, write-only and
	// append descriptors.
	wbNew := featurePattern(10000, 1)
	copy(wbNew[4097:], "HELLO")
	expect("writeback-rw", content("wb-new", wbNew), "as written")
	wbOld := append(featurePattern(10000, 2), featurePattern(3000, 3)...)
	copy(wbOld[5000:5100], bytes.Repeat([]byte("Z"), 100))
	expect("writeback-wronly", content("wb-old", wbOld), "as written")
	wbApp := append(append(featurePattern(1000, 4), featurePattern(777, 5)...), featurePattern(777, 5)...)
	expect("writeback-append", content("wb-app", wbApp), "as written")

	// mmap: the bytes written through the shared mapping reached the host,
	// unless the map was refused.
	mm := featurePattern(8192, 6)
	if directIO && !has("--allow-mmap") {
		expect("mmap", content("mm", mm), "as written")
	} else {
		copy(mm[4096:], "written via mmap")
		expect("mmap", content("mm", mm), "as written")
	}

	featureNoatime(t, share, has("--preserve-noatime"), obs)
	return obs
}

// featureKillprivWant is the guest's killprivWant (see there why two
// bits survive without --killpriv-v2), as the host's ls would print them.
func featureKillprivWant(killpriv, directIO bool) map[string]string {
	want := map[string]string{"kp-write": "0755", "kp-trunc": "0755", "kp-otrunc": "0775", "kp-chown": "0755", "kp-root": "04755"}
	if !killpriv {
		want["kp-otrunc"] = "02775"
		if directIO {
			want["kp-write"] = "04755"
		}
	}
	return want
}

// featureNoatime checks the atimes of na-plain (read without O_NOATIME:
// relatime updates it, as its atime is before its mtime) and na-noatime
// (read with O_NOATIME: kept only with --preserve-noatime).
func featureNoatime(t *testing.T, share string, preserve bool, obs map[string]string) {
	t.Helper()
	state := func(name string) string {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(share, name), &st); err != nil {
			return featureErrName(err)
		}
		if time.Unix(st.Atim.Unix()).Equal(featureOldAtime) {
			return "kept"
		}
		return "updated"
	}
	plain, noatime := state("na-plain"), state("na-noatime")
	obs["noatime"] = "plain=" + plain + " noatime=" + noatime
	if plain != "updated" {
		// Not observable here (a noatime mount, say): a read does not move
		// the host's atime, so O_NOATIME cannot make a difference.
		t.Logf("host na-plain atime %s after a read: the share's filesystem does not update atimes; --preserve-noatime cannot be observed", plain)
		return
	}
	want := "updated"
	if preserve {
		want = "kept"
	}
	if noatime != want {
		t.Errorf("host na-noatime (read with O_NOATIME, --preserve-noatime %v): atime %s, want %s", preserve, noatime, want)
	}
}
