package frontend_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
)

// findInGuest returns the guest address where pattern sits in guest RAM.
func findInGuest(t *testing.T, fe *frontend.Frontend, pattern []byte) uint64 {
	t.Helper()
	for _, r := range fe.Mem.Regions() {
		b, err := fe.Mem.Bytes(r.GuestAddr, r.Size)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(b, pattern); i >= 0 {
			return r.GuestAddr + uint64(i)
		}
	}
	t.Fatalf("the data read is nowhere in guest RAM")
	return 0
}

// TestDirtyLog checks that with LOG_ALL on, a READ marks every page its
// data went to and the used ring's pages, and that with it off nothing is
// marked: both daemons.
func TestDirtyLog(t *testing.T) {
	for _, dc := range daemons {
		t.Run(dc.name, func(t *testing.T) {
			fe, share := start(t, dc.get(t), frontend.Options{ProtocolFeatures: frontend.MigrationProtocolFeatures})
			n := fe.Negotiated()
			if n.OfferedFeatures&vhostuser.FeatureLogAll == 0 || n.Protocol&vhostuser.ProtocolLogShmfd == 0 || n.Protocol&vhostuser.ProtocolDeviceState == 0 {
				t.Fatalf("features %#x, protocol %#x: want LOG_ALL, LOG_SHMFD and DEVICE_STATE", n.OfferedFeatures, n.Protocol)
			}
			data := make([]byte, 40<<10)
			rand.Read(data)
			if err := os.WriteFile(filepath.Join(share, "f"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			c := fuseclient.New(fe, fuseclient.Options{SplitPages: true})
			defer c.Close()
			mustInit(t, c)
			e, err := c.Lookup(1, "f")
			if err != nil {
				t.Fatal(err)
			}
			o, err := c.Open(e.NodeId, uint32(os.O_RDONLY))
			if err != nil {
				t.Fatal(err)
			}
			log, err := fe.SetLogBase()
			if err != nil {
				t.Fatalf("SET_LOG_BASE: %v", err)
			}
			defer log.Close()
			if err := fe.SetLogAll(true); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < fe.NumQueues(); i++ {
				if err := fe.LogUsedRing(i, true); err != nil {
					t.Fatal(err)
				}
			}
			log.Pages()
			buf := make([]byte, len(data))
			if got, err := c.Read(e.NodeId, o.Fh, 0, buf); err != nil || got != len(data) || !bytes.Equal(buf, data) {
				t.Fatalf("READ: %d bytes, %v", got, err)
			}
			gpa := findInGuest(t, fe, data[:64])
			pages := map[uint64]bool{}
			for _, p := range log.Pages() {
				pages[p] = true
			}
			missing := 0
			for p := gpa / 4096; p <= (gpa+uint64(len(data))-1)/4096; p++ {
				if !pages[p] {
					missing++
				}
			}
			used, size := fe.UsedRing(1)
			for p := used / 4096; p <= (used+size-1)/4096; p++ {
				if !pages[p] {
					t.Errorf("used ring page %d (ring at %#x) not marked", p, used)
				}
			}
			t.Logf("%s: %d pages marked for a %d KiB READ into %#x", dc.name, len(pages), len(data)>>10, gpa)
			if missing > 0 {
				t.Errorf("%d pages of the READ's data not marked", missing)
			}
			if len(pages) > len(data)/4096+8 {
				t.Errorf("%d pages marked, far more than the READ wrote", len(pages))
			}

			if err := fe.SetLogAll(false); err != nil {
				t.Fatal(err)
			}
			log.Pages()
			if _, err := c.Read(e.NodeId, o.Fh, 0, buf); err != nil {
				t.Fatal(err)
			}
			if p := log.Pages(); len(p) != 0 {
				if dc.name == "reference" {
					// virtiofsd 1.13 keeps logging while a log is
					// set, whatever SET_FEATURES says: more pages
					// than needed, never fewer.
					t.Logf("reference: with LOG_ALL off, %d pages were still marked", len(p))
				} else {
					t.Errorf("with LOG_ALL off, %d pages were marked", len(p))
				}
			}
		})
	}
}

// migrationOpts negotiates as QEMU does for a migratable vhost-user-fs.
var migrationOpts = frontend.Options{ProtocolFeatures: frontend.MigrationProtocolFeatures}

// destination starts another daemon on share and brings it to where QEMU's
// destination loads the state: negotiated, memory shared, rings not
// started.
func destination(t *testing.T, d daemon.Daemon, share string, extra ...string) (*frontend.Frontend, *daemon.Proc) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "dst.sock")
	proc, err := d.Start(daemon.Options{SharedDir: share, Socket: sock, Extra: extra})
	if err != nil {
		t.Fatal(err)
	}
	fe, err := frontend.Connect(sock, migrationOpts)
	if err == nil {
		if err = fe.Negotiate(); err == nil {
			err = fe.RegisterMemory()
		}
	}
	if err != nil {
		proc.Stop()
		t.Fatalf("destination: %v\n%s", err, proc.Stderr())
	}
	t.Cleanup(func() {
		fe.Close()
		if err := proc.WaitTimeout(10 * time.Second); err != nil {
			t.Errorf("destination after disconnect: %v", err)
		}
		if t.Failed() {
			t.Logf("destination output:\n%s", proc.Stderr())
		}
	})
	return fe, proc
}

// sourceSession is what the source's guest did before migrating: a
// directory, files (one open for writing, one opened and renamed on the
// host since), the shared directory open for listing.
type sourceSession struct {
	dir, file, moved, root  uint64 // node ids
	fileFh, movedFh, rootFh uint64
	data                    []byte
}

// startSource starts d on a fresh share with extra options, negotiated as
// QEMU does for migration, and lets a session do prepareSource's work. The
// cleanup closes the session and the source, which must go quietly.
func startSource(t *testing.T, d daemon.Daemon, extra ...string) (*frontend.Frontend, *fuseclient.Client, string, sourceSession) {
	t.Helper()
	share := t.TempDir()
	src, err := frontend.Start(d, daemon.Options{SharedDir: share, Extra: extra}, migrationOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := src.Close(); err != nil {
			t.Errorf("source: %v", err)
		}
		if t.Failed() {
			t.Logf("source output:\n%s", src.Proc().Stderr())
		}
	})
	c := fuseclient.New(src, fuseclient.Options{})
	t.Cleanup(func() { c.Close() })
	mustInit(t, c)
	return src, c, share, prepareSource(t, c, share)
}

func prepareSource(t *testing.T, c *fuseclient.Client, share string) sourceSession {
	t.Helper()
	var s sourceSession
	d, err := c.Mkdir(1, "d", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	s.dir = d.NodeId
	e, o, err := c.Create(s.dir, "f", uint32(os.O_RDWR), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	s.file, s.fileFh = e.NodeId, o.Fh
	s.data = []byte("written before the migration\n")
	if n, err := c.Write(s.file, s.fileFh, 0, s.data); err != nil || int(n) != len(s.data) {
		t.Fatalf("WRITE: %d, %v", n, err)
	}
	if err := os.WriteFile(filepath.Join(share, "old"), []byte("moved on the host"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := c.Lookup(1, "old")
	if err != nil {
		t.Fatal(err)
	}
	s.moved = m.NodeId
	mo, err := c.Open(s.moved, uint32(os.O_RDONLY))
	if err != nil {
		t.Fatal(err)
	}
	s.movedFh = mo.Fh
	if err := os.Rename(filepath.Join(share, "old"), filepath.Join(share, "d", "new")); err != nil {
		t.Fatal(err)
	}
	ro, err := c.Opendir(1)
	if err != nil {
		t.Fatal(err)
	}
	s.root, s.rootFh = 1, ro.Fh
	return s
}

// checkDestination serves the migrated session on the destination
// without an INIT.
func checkDestination(t *testing.T, c *fuseclient.Client, share string, s sourceSession) {
	t.Helper()
	if a, err := c.GetAttr(s.file); err != nil || a.Size != uint64(len(s.data)) {
		t.Errorf("GETATTR of the open file: size %d, %v", a.Size, err)
	}
	buf := make([]byte, 100)
	if n, err := c.Read(s.file, s.fileFh, 0, buf); err != nil || !bytes.Equal(buf[:n], s.data) {
		t.Errorf("READ through the migrated handle: %q, %v", buf[:n], err)
	}
	more := []byte("written after\n")
	if n, err := c.Write(s.file, s.fileFh, uint64(len(s.data)), more); err != nil || int(n) != len(more) {
		t.Errorf("WRITE through the migrated handle: %d, %v", n, err)
	}
	if err := c.Fsync(s.file, s.fileFh, false); err != nil {
		t.Errorf("FSYNC: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(share, "d", "f")); string(got) != string(s.data)+string(more) {
		t.Errorf("host sees %q", got)
	}
	if n, err := c.Read(s.moved, s.movedFh, 0, buf); err != nil || string(buf[:n]) != "moved on the host" {
		t.Errorf("READ of the file renamed on the host: %q, %v", buf[:n], err)
	}
	ents, err := c.Readdir(s.root, s.rootFh, 0, 4096)
	names := map[string]bool{}
	for _, e := range ents {
		names[e.Name] = true
	}
	if err != nil || !names["d"] {
		t.Errorf("READDIR of the migrated directory handle: %v, %v", names, err)
	}
	e, err := c.Lookup(s.dir, "new")
	if err != nil || e.NodeId != s.moved {
		t.Errorf("LOOKUP d/new: node %d (want the migrated %d), %v", e.NodeId, s.moved, err)
	}
	n, err := c.Lookup(s.dir, "f")
	if err != nil || n.NodeId != s.file {
		t.Errorf("LOOKUP d/f: node %d (want %d), %v", n.NodeId, s.file, err)
	}
	x, _, err := c.Create(s.dir, "after", uint32(os.O_RDWR), 0o644)
	if err != nil {
		t.Errorf("CREATE after migration: %v", err)
	} else if x.NodeId == s.dir || x.NodeId == s.file || x.NodeId == s.moved {
		t.Errorf("new node id %d collides with a migrated one", x.NodeId)
	}
	for _, id := range []uint64{s.file, s.file, s.moved, s.dir} {
		if err := c.Forget(id, 1); err != nil {
			t.Error(err)
		}
	}
	if err := c.Release(s.file, s.fileFh, uint32(os.O_RDWR)); err != nil {
		t.Errorf("RELEASE: %v", err)
	}
}

// TestStateMigration moves a session from one daemon to another on the
// same share, in each migration mode, the way QEMU does: the source's
// rings stop, its state goes through a pipe, the destination loads it
// before its rings start, and the guest carries on without INIT with the
// same node ids and handles. The source then resumes (a failed migration
// leaves it serving).
func TestStateMigration(t *testing.T) {
	modes := []struct {
		name string
		args []string
	}{
		{"find-paths", nil},
		{"find-paths-verify-confirm", []string{"--migration-verify-handles", "--migration-confirm-paths"}},
		{"file-handles", []string{"--migration-mode", "file-handles"}},
		{"find-paths-no-handles", []string{"--inode-file-handles=never"}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			d := ours(t)
			src, c, share, s := startSource(t, d, m.args...)
			if _, err := src.Pause(); err != nil {
				t.Fatal(err)
			}
			begin := time.Now()
			state, err := src.SaveState()
			if err != nil {
				t.Fatalf("saving: %v", err)
			}
			dst, _ := destination(t, d, share, m.args...)
			if err := dst.LoadState(state); err != nil {
				t.Fatalf("loading: %v", err)
			}
			t.Logf("%s: state of %d bytes moved in %v", m.name, len(state), time.Since(begin).Round(time.Millisecond))
			if err := dst.StartQueues(); err != nil {
				t.Fatal(err)
			}
			dc := fuseclient.New(dst, fuseclient.Options{})
			defer dc.Close()
			checkDestination(t, dc, share, s)

			// The source resumes as after a failed migration.
			if err := src.Resume(); err != nil {
				t.Fatal(err)
			}
			if _, err := c.GetAttr(s.dir); err != nil {
				t.Errorf("source after resuming: %v", err)
			}
		})
	}
}

// logSays waits a little for the daemon's log to contain s.
func logSays(p *daemon.Proc, s string) bool {
	for i := 0; i < 100; i++ {
		if strings.Contains(strings.ToLower(p.Stderr()), strings.ToLower(s)) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// TestStateRefused feeds the destination broken and hostile states: each
// load fails (CHECK_DEVICE_STATE non-zero, an error in the log), the
// daemon lives on, and a good state still loads afterwards.
func TestStateRefused(t *testing.T) {
	d := ours(t)
	src, _, share, s := startSource(t, d)
	if _, err := src.Stop(); err != nil {
		t.Fatal(err)
	}
	good, err := src.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	// reseal fixes the checksum of an edited state.
	reseal := func(b []byte) []byte {
		b = append([]byte(nil), b...)
		binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b[:len(b)-4], crc32.MakeTable(crc32.Castagnoli)))
		return b
	}
	edit := func(fn func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		fn(b)
		return reseal(b)
	}
	const fsAt = 24 + 17 // envelope header, then the session fields
	cases := []struct {
		name  string
		state []byte
		want  string
	}{
		{"empty", nil, "too short"},
		{"garbage", bytes.Repeat([]byte{0xa5}, 300), "bad magic"},
		{"truncated", good[:len(good)-10], "payload length"},
		{"padded", append(append([]byte(nil), good...), 0), "payload length"},
		{"bit-flip", edit(func(b []byte) {}), ""},
		{"version", edit(func(b []byte) { b[8] = 9 }), "version 9"},
		{"inode-count", edit(func(b []byte) { binary.LittleEndian.PutUint32(b[fsAt+22:], 0xffffffff) }), "cannot hold"},
		{"dotdot-path", edit(func(b []byte) {
			i := bytes.Index(b, []byte("d/new"))
			copy(b[i:], "../..")
		}), "component"},
		{"capabilities", edit(func(b []byte) { binary.LittleEndian.PutUint64(b[24+5:], ^uint64(0)) }), "capabilities"},
		{"minor", edit(func(b []byte) { binary.LittleEndian.PutUint32(b[24+1:], 99) }), "minor 99"},
		{"missing-file", edit(func(b []byte) {
			i := bytes.Index(b, []byte("d/new"))
			copy(b[i:], "d/xyz")
		}), "no such file"},
	}
	cases[4].state = append([]byte(nil), good...)
	cases[4].state[len(good)/2] ^= 0x10
	cases[4].want = "checksum"

	dst, proc := destination(t, d, share)
	for _, tc := range cases {
		err := dst.LoadState(tc.state)
		var se *frontend.StateError
		if !errors.As(err, &se) || se.Request != vhostuser.CheckDeviceState {
			t.Errorf("%s: load gave %v, want a failed CHECK_DEVICE_STATE", tc.name, err)
		}
		if !logSays(proc, tc.want) {
			t.Errorf("%s: the log does not say %q", tc.name, tc.want)
		}
		select {
		case <-proc.Exited():
			t.Fatalf("%s: the destination died", tc.name)
		default:
		}
	}
	if err := dst.LoadState(good); err != nil {
		t.Fatalf("the good state after the bad ones: %v", err)
	}
	if err := dst.StartQueues(); err != nil {
		t.Fatal(err)
	}
	dc := fuseclient.New(dst, fuseclient.Options{})
	defer dc.Close()
	checkDestination(t, dc, share, s)
	if !logSays(proc, "Migration: loading the device state failed") {
		t.Errorf("no clear error in the log:\n%s", proc.Stderr())
	}
	// With the rings running, a transfer is refused.
	var se *frontend.StateError
	if _, err := dst.SaveState(); !errors.As(err, &se) || se.Request != vhostuser.SetDeviceStateFd {
		t.Errorf("SET_DEVICE_STATE_FD with rings running: %v, want a refusal", err)
	}
}

// TestStateGuestError migrates a session holding an inode the host deleted
// (no path leads to it any more): a destination with the default
// --migration-on-error=abort refuses the state, one with guest-error takes
// it and answers requests on that node id with EBADF while the rest works.
func TestStateGuestError(t *testing.T) {
	d := ours(t)
	src, c, share, s := startSource(t, d)
	if err := os.WriteFile(filepath.Join(share, "gone"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := c.Lookup(1, "gone")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(share, "gone")); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Stop(); err != nil {
		t.Fatal(err)
	}
	state, err := src.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if !logSays(src.Proc(), "1 not describable") {
		t.Errorf("the source does not report the inode it could not describe:\n%s", src.Proc().Stderr())
	}

	abort, aproc := destination(t, d, share)
	if err := abort.LoadState(state); err == nil {
		t.Errorf("--migration-on-error=abort took a state with a lost inode")
	} else if !logSays(aproc, "could not be restored") {
		t.Errorf("abort: no clear error in the log:\n%s", aproc.Stderr())
	}

	dst, proc := destination(t, d, share, "--migration-on-error=guest-error")
	if err := dst.LoadState(state); err != nil {
		t.Fatalf("guest-error: %v", err)
	}
	if !logSays(proc, "the guest gets errors for it") {
		t.Errorf("guest-error: the lost inode is not in the log:\n%s", proc.Stderr())
	}
	if err := dst.StartQueues(); err != nil {
		t.Fatal(err)
	}
	dc := fuseclient.New(dst, fuseclient.Options{})
	defer dc.Close()
	if _, err := dc.GetAttr(g.NodeId); !errors.Is(err, syscall.EBADF) {
		t.Errorf("GETATTR of the lost node: %v, want EBADF", err)
	}
	checkDestination(t, dc, share, s)
}
