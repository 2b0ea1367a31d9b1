package passthrough

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestGuardOnly checks the guard's rule on the source: no file of the
// package but guard.go changes thread state (ids, groups, umask,
// capabilities, working directory, the fs struct) or pins a goroutine to
// a thread for it. splitread.go's helpers pin their own goroutines for
// good and change nothing.
func TestGuardOnly(t *testing.T) {
	forbidden := regexp.MustCompile(`SYS_SETRES[UG]ID|SYS_SETGROUPS|SYS_SETFS[UG]ID|SYS_SETRE?[UG]ID|SYS_UMASK|SYS_CAPSET|SYS_FCHDIR|SYS_CHDIR|SYS_UNSHARE|Setres[ug]id|Setgroups|Setfs[ug]id|unix\.Umask|unix\.Fchdir|unix\.Chdir|unix\.Unshare|syscall\.Umask|LockOSThread`)
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || f == "guard.go" {
			continue
		}
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for n, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "//") {
				continue
			}
			if m := forbidden.FindString(line); m != "" && !(f == "splitread.go" && m == "LockOSThread") {
				t.Errorf("%s:%d: %s outside the guard: %s", f, n+1, m, strings.TrimSpace(line))
			}
		}
	}
}

// threadState is what the guard must leave as it found it on a thread.
type threadState struct {
	uid, gid, groups, capEff, umask, cwd string
}

func (s threadState) String() string {
	return fmt.Sprintf("Uid %s Gid %s Groups %s CapEff %s Umask %s cwd %s", s.uid, s.gid, s.groups, s.capEff, s.umask, s.cwd)
}

// threads reads the state of every thread of the process.
func threads(t *testing.T) map[string]threadState {
	t.Helper()
	dirs, err := filepath.Glob("/proc/self/task/*")
	require.NoError(t, err)
	out := map[string]threadState{}
	for _, d := range dirs {
		b, err := os.ReadFile(d + "/status")
		if err != nil {
			continue // the thread is gone
		}
		var s threadState
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			v = strings.Join(strings.Fields(v), " ")
			switch k {
			case "Uid":
				s.uid = v
			case "Gid":
				s.gid = v
			case "Groups":
				s.groups = v
			case "CapEff":
				s.capEff = v
			case "Umask":
				s.umask = v
			}
		}
		s.cwd, _ = os.Readlink(d + "/cwd")
		out[filepath.Base(d)] = s
	}
	return out
}

// TestGuardThreads runs every request that changes thread state (as a
// guest caller of another uid, with a supplementary group, a umask,
// killpriv, and the xattr calls that move the working directory) from many
// goroutines that are not locked to their threads, as pool workers and
// assistants are not, and checks that no goroutine ever runs with a
// changed euid outside a guard and that afterwards every thread of the
// process is back to the daemon's state.
func TestGuardThreads(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the guard switches credentials only as root")
	}
	fs, root := newFS(t, Config{Xattr: true, KillprivV2: true, PosixACL: true, SecurityLabel: false})
	fs.Init(fuse.InitInfo{Flags: fs.Capabilities()})
	require.NoError(t, os.Chmod(root, 0o777))
	require.NoError(t, unix.Mkfifo(filepath.Join(root, "fifo"), 0o666))
	require.NoError(t, os.WriteFile(filepath.Join(root, "setid"), []byte("x"), 0o6777))
	before := threads(t)
	var want threadState
	for _, s := range before {
		want = s
		break
	}
	for id, s := range before {
		require.Equal(t, want, s, "thread %s differs before the test", id)
	}
	fifo, e := lookup(t, fs, 1, "fifo")
	require.Equal(t, syscall.Errno(0), e)
	setid, e := lookup(t, fs, 1, "setid")
	require.Equal(t, syscall.Errno(0), e)
	var sout gofuse.OpenOut
	oin := gofuse.OpenIn{InHeader: hdr(setid.NodeId), Flags: unix.O_RDWR}
	require.Equal(t, syscall.Errno(0), fs.Open(&oin, &sout))

	const uid, gid = 4242, 4243
	caller := func(node uint64) gofuse.InHeader {
		return gofuse.InHeader{NodeId: node, Caller: gofuse.Caller{Owner: gofuse.Owner{Uid: uid, Gid: gid}}}
	}
	ext := &fuse.Extensions{HasSuppGroup: true, SuppGroup: 4244}
	ops := []func(g, n int){
		func(g, n int) { fs.Access(&gofuse.AccessIn{InHeader: caller(1), Mask: unix.R_OK}) },
		func(g, n int) {
			in := gofuse.CreateIn{InHeader: caller(1), Flags: unix.O_RDWR, Mode: 0o644 | unix.S_IFREG, Umask: 0o027}
			var out gofuse.CreateOut
			if fs.CreateExt(&in, name(fmt.Sprintf("c%d.%d", g, n)), ext, &out) == 0 {
				fs.Release(&gofuse.ReleaseIn{InHeader: hdr(out.NodeId), Fh: out.Fh})
				fs.Forget(out.NodeId, 1)
			}
		},
		func(g, n int) {
			in := gofuse.MkdirIn{InHeader: caller(1), Mode: 0o755, Umask: 0o077}
			var out gofuse.EntryOut
			if fs.MkdirExt(&in, name(fmt.Sprintf("d%d.%d", g, n)), ext, &out) == 0 {
				fs.Forget(out.NodeId, 1)
			}
		},
		func(g, n int) {
			h := caller(1)
			var out gofuse.EntryOut
			if fs.SymlinkExt(&h, name(fmt.Sprintf("l%d.%d", g, n)), name("target"), ext, &out) == 0 {
				fs.Forget(out.NodeId, 1)
			}
		},
		func(g, n int) {
			in := gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{InHeader: caller(setid.NodeId), Valid: gofuse.FATTR_SIZE | gofuse.FATTR_KILL_SUIDGID, Size: 1}}
			var out gofuse.AttrOut
			fs.SetAttr(&in, &out)
		},
		func(g, n int) {
			in := gofuse.WriteIn{InHeader: caller(setid.NodeId), Fh: sout.Fh, WriteFlags: gofuse.WRITE_KILL_SUIDGID}
			fs.Write(&in, [][]byte{[]byte("y")})
		},
		func(g, n int) {
			h := caller(fifo.NodeId)
			var buf [64]byte
			fs.GetXAttr(&h, name("user.x"), buf[:])
			fs.ListXAttr(&h, buf[:])
		},
		func(g, n int) {
			in := gofuse.OpenIn{InHeader: caller(setid.NodeId), Flags: unix.O_RDWR | unix.O_TRUNC, Mode: gofuse.OPEN_KILL_SUIDGID}
			var out gofuse.OpenOut
			if fs.Open(&in, &out) == 0 {
				fs.Release(&gofuse.ReleaseIn{InHeader: in.InHeader, Fh: out.Fh})
			}
		},
	}
	// Outside a guard no goroutine may see another euid than the
	// daemon's: the observers run unpinned beside the workers.
	var stop atomic.Bool
	var leaks atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if u, _, _ := syscall.RawSyscall(unix.SYS_GETEUID, 0, 0, 0); u != 0 {
					leaks.Add(1)
				}
				// New cleared the process's umask.
				if m, _, _ := syscall.RawSyscall(unix.SYS_UMASK, 0, 0, 0); m != 0 {
					leaks.Add(1)
				}
				runtime.Gosched()
			}
		}()
	}
	// Each request runs alone for a while, then all of them together.
	phase := func(f func(g, n int), d time.Duration) {
		deadline := time.Now().Add(d)
		var work sync.WaitGroup
		for g := range 8 {
			work.Add(1)
			go func() {
				defer work.Done()
				for n := 0; time.Now().Before(deadline); n++ {
					f(g, n)
				}
			}()
		}
		work.Wait()
	}
	for _, op := range ops {
		phase(op, 300*time.Millisecond)
	}
	phase(func(g, n int) { ops[(g+n)%len(ops)](g, n) }, 500*time.Millisecond)
	stop.Store(true)
	wg.Wait()
	require.Zero(t, leaks.Load(), "unpinned goroutines saw a guest's euid or umask")
	for id, s := range threads(t) {
		require.Equal(t, want, s, "thread %s left changed", id)
	}
}

// TestGateOnly checks the gate's rule on the source: outside gate.go every
// open the package makes is of an O_PATH descriptor, or of a directory
// with O_DIRECTORY (refused by the kernel on anything else without
// opening it).
func TestGateOnly(t *testing.T) {
	call := regexp.MustCompile(`\b(sysOpenat2?|sysOpenByHandleAt|unix\.Open(at2?)?|os\.Open(File)?|syscall\.Open|SYS_OPENAT2?|SYS_OPEN_BY_HANDLE_AT|SYS_OPEN)\(`)
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || f == "gate.go" {
			continue
		}
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for n, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "//") || strings.HasPrefix(strings.TrimSpace(line), "func ") {
				continue
			}
			if call.MatchString(line) && !strings.Contains(line, "O_PATH") && !strings.Contains(line, "O_DIRECTORY") {
				t.Errorf("%s:%d: an open outside the gate: %s", f, n+1, strings.TrimSpace(line))
			}
		}
	}
}

// TestGuardGroups: a request run as a guest caller does not keep the
// daemon's own supplementary groups (it gets none, or the one its
// CREATE_SUPP_GROUP names): a directory open to a group of the daemon's
// only stays closed to the caller.
func TestGuardGroups(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the guard switches credentials only as root")
	}
	old, err := unix.Getgroups()
	require.NoError(t, err)
	require.NoError(t, syscall.Setgroups([]int{4242}))
	defer syscall.Setgroups(old)
	fs, root := newFS(t, Config{})
	require.NoError(t, os.Mkdir(filepath.Join(root, "grp"), 0o770))
	require.NoError(t, os.Chown(filepath.Join(root, "grp"), 0, 4242))
	d, e := lookup(t, fs, 1, "grp")
	require.Equal(t, syscall.Errno(0), e)
	caller := gofuse.InHeader{NodeId: d.NodeId, Caller: gofuse.Caller{Owner: gofuse.Owner{Uid: 1000, Gid: 1000}}}
	in := gofuse.CreateIn{InHeader: caller, Flags: unix.O_RDWR, Mode: 0o644}
	var out gofuse.CreateOut
	require.Equal(t, syscall.EACCES, fs.Create(&in, name("f"), &out))
	var eo gofuse.EntryOut
	require.Equal(t, syscall.EACCES, fs.Mkdir(&gofuse.MkdirIn{InHeader: caller, Mode: 0o755}, name("d"), &eo))
	require.Equal(t, syscall.EACCES, fs.Access(&gofuse.AccessIn{InHeader: caller, Mask: unix.W_OK}))
	// The group named by the request still works.
	require.Equal(t, syscall.Errno(0), fs.MkdirExt(&gofuse.MkdirIn{InHeader: caller, Mode: 0o755}, name("d"), &fuse.Extensions{HasSuppGroup: true, SuppGroup: 4242}, &eo))
	gs, err := unix.Getgroups()
	require.NoError(t, err)
	require.Equal(t, []int{4242}, gs, "the daemon's groups after the requests")
}
