package frontend_test

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	"golang.org/x/sys/unix"
)

// The hostile cases of live migration: the device state a destination
// loads comes from the source host, which may be compromised. Each case
// pauses the rings as QEMU does, loads a forged state over
// SET_DEVICE_STATE_FD, checks that it is refused (CHECK_DEVICE_STATE
// fails) or that its entries are lost (--migration-on-error=guest-error:
// the node ids and handles it names answer EBADF), then loads the state
// the daemon saved in setup, so that the fixture's node ids and handles
// work again, and resumes. The forged states name inodes outside the
// share through file handles (the canary beside the share, the share's
// parent, the filesystem's root) and through paths with symlinks; a
// control entry inside the share shows that what is refused is the escape,
// not the whole state.

func init() { moreHostileCases = append(moreHostileCases, hostileMigrateCases) }

const refMigrate = "the reference's device state is its own format (virtiofsd's)"

// hMigInode is an inode entry of a forged filesystem state.
type hMigInode struct {
	id   uint64
	mode uint32
	ino  uint64
	kind uint8 // 0 path, 1 file handle, 2 lost
	path string
	fh   []byte
}

// hMigHandle is an open handle of a forged filesystem state.
type hMigHandle struct {
	fh, node uint64
	flags    uint32
	dir      bool
}

// hMigFSState encodes a filesystem state (passthrough/migrate.go).
func hMigFSState(mode uint8, inodes []hMigInode, handles []hMigHandle) []byte {
	b := hle(uint32(1), mode, uint8(0), uint64(1<<20), uint64(1<<20), uint32(len(inodes)))
	str := func(s []byte) { b = append(append(b, hle(uint16(len(s)))...), s...) }
	for _, s := range inodes {
		b = append(b, hle(s.id, uint64(1), s.mode, s.ino, s.kind)...)
		str([]byte(s.path))
		str(s.fh)
		str(nil)
	}
	b = append(b, hle(uint32(len(handles)))...)
	for _, h := range handles {
		dir := uint8(0)
		if h.dir {
			dir = 1
		}
		b = append(b, hle(h.fh, h.node, h.flags, dir)...)
	}
	return b
}

// hMigEnvelope wraps a filesystem state in the FUSE session's envelope
// (fuse/migrate.go), with the negotiated minor and flags of good, a state
// the daemon saved.
func hMigEnvelope(good, fsState []byte) ([]byte, error) {
	const header = 24
	if len(good) < header+17+4 || string(good[:8]) != "GVFS-MIG" || good[header] != 1 {
		return nil, fmt.Errorf("the saved state (%d bytes) is not an initialised session's", len(good))
	}
	payload := append(append([]byte(nil), good[header:header+13]...), hle(uint32(len(fsState)))...)
	payload = append(payload, fsState...)
	b := append([]byte("GVFS-MIG"), hle(uint32(1), uint32(0), uint64(len(payload)))...)
	b = append(b, payload...)
	return append(b, hle(crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))...), nil
}

// hMigHandleOf returns path's file handle as struct file_handle and its
// inode number.
func hMigHandleOf(path string) ([]byte, uint64, error) {
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, path, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("name_to_handle_at %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return nil, 0, err
	}
	b := hle(uint32(h.Size()), h.Type())
	return append(b, h.Bytes()...), st.Ino, nil
}

// hMig is one forged-state case.
type hMig struct {
	// guestError: the daemon runs with --migration-on-error=guest-error,
	// so the state loads and its escaping entries must be lost.
	guestError bool
	// forge builds the filesystem state and says which node ids and
	// handle ids must be lost, and which node id (0: none) is a control
	// that must come through, with its size.
	forge func(h *hctx) (fsState []byte, lost, lostFh []uint64, control uint64, controlSize uint64, err error)
	// logWants is what the daemon's log says of the refusal.
	logWants string

	good, forged      []byte
	lost, lostFh      []uint64
	control, ctrlSize uint64
}

func (m *hMig) setup(h *hctx) error {
	if _, err := h.fe.Pause(); err != nil {
		return err
	}
	good, err := h.fe.SaveState()
	if err != nil {
		return fmt.Errorf("saving the session: %w", err)
	}
	if err := h.fe.Resume(); err != nil {
		return err
	}
	fsState, lost, lostFh, control, size, err := m.forge(h)
	if err != nil {
		return err
	}
	if m.forged, err = hMigEnvelope(good, fsState); err != nil {
		return err
	}
	m.good, m.lost, m.lostFh, m.control, m.ctrlSize = good, lost, lostFh, control, size
	return nil
}

func (m *hMig) run(h *hctx) error {
	if _, err := h.fe.Pause(); err != nil {
		return err
	}
	loadErr := h.fe.LoadState(m.forged)
	var outcome error
	if m.guestError {
		if loadErr != nil {
			return fmt.Errorf("--migration-on-error=guest-error refused the whole state: %v", loadErr)
		}
		if err := h.fe.Resume(); err != nil {
			return err
		}
		outcome = m.probe(h)
		if _, err := h.fe.Pause(); err != nil {
			return err
		}
	} else {
		var se *frontend.StateError
		if !errors.As(loadErr, &se) || se.Request != vhostuser.CheckDeviceState {
			outcome = fmt.Errorf("loading the forged state gave %v, want a failed CHECK_DEVICE_STATE", loadErr)
		} else {
			h.logf("CHECK_DEVICE_STATE answered %#x", se.Status)
		}
	}
	if outcome == nil && h.first && m.logWants != "" && !logSays(h.fe.Proc(), m.logWants) {
		outcome = fmt.Errorf("the daemon's log does not say %q", m.logWants)
	}
	if err := h.fe.LoadState(m.good); err != nil {
		return errors.Join(outcome, fmt.Errorf("loading the saved state after the forged one: %w", err))
	}
	if err := h.fe.Resume(); err != nil {
		return errors.Join(outcome, err)
	}
	return outcome
}

// probe checks, on a loaded forged state, that every lost node id and
// handle id answers EBADF, whatever the request (GETATTR only after the
// first run: the repetitions are there for the leak check), and that the
// control came through.
func (m *hMig) probe(h *hctx) error {
	ebadf := func(what string, err error) error {
		if !errors.Is(err, syscall.EBADF) {
			return fmt.Errorf("%s: %v, want EBADF (the entry must be lost)", what, err)
		}
		return nil
	}
	for _, id := range m.lost {
		_, err := h.c.GetAttr(id)
		if err := ebadf(fmt.Sprintf("GETATTR of node id %d", id), err); err != nil {
			return errors.Join(err, m.leak(h, id))
		}
		if !h.first {
			continue
		}
		_, err = h.c.Open(id, uint32(os.O_RDONLY))
		if err := ebadf(fmt.Sprintf("OPEN of node id %d", id), err); err != nil {
			return err
		}
		_, err = h.c.Opendir(id)
		if err := ebadf(fmt.Sprintf("OPENDIR of node id %d", id), err); err != nil {
			return err
		}
		_, err = h.c.Lookup(id, "secret")
		if err := ebadf(fmt.Sprintf("LOOKUP secret beneath node id %d", id), err); err != nil {
			return err
		}
	}
	buf := make([]byte, 64)
	for _, fh := range m.lostFh {
		if !h.first {
			break
		}
		_, err := h.c.Read(m.lost[0], fh, 0, buf)
		if err := ebadf(fmt.Sprintf("READ through handle %d", fh), err); err != nil {
			return err
		}
		_, err = h.c.Readdir(m.lost[0], fh, 0, 4096)
		if err := ebadf(fmt.Sprintf("READDIR through handle %d", fh), err); err != nil {
			return err
		}
	}
	if m.control != 0 {
		a, err := h.c.GetAttr(m.control)
		if err != nil || a.Size != m.ctrlSize {
			return fmt.Errorf("GETATTR of the control entry (node id %d, inside the share): size %d, %v", m.control, a.Size, err)
		}
	}
	if m.control != 0 {
		h.logf("%d node ids and %d handles lost, the control (node id %d) served", len(m.lost), len(m.lostFh), m.control)
	} else {
		h.logf("%d node ids and %d handles lost", len(m.lost), len(m.lostFh))
	}
	return nil
}

// leak reads what node id, which should have been lost, gives the guest,
// for the failure's message.
func (m *hMig) leak(h *hctx, id uint64) error {
	o, err := h.c.Open(id, uint32(os.O_RDONLY))
	if err != nil {
		return nil
	}
	defer h.c.Release(id, o.Fh, uint32(os.O_RDONLY))
	buf := make([]byte, 64)
	n, err := h.c.Read(id, o.Fh, 0, buf)
	if err != nil {
		return nil
	}
	return fmt.Errorf("node id %d reads %q", id, buf[:n])
}

func (m *hMig) hcase(name, want string, extra ...string) hcase {
	if m.guestError {
		extra = append(extra, "--migration-on-error=guest-error")
	}
	return hcase{cat: "migr", name: name, want: want, opts: migrationOpts, extra: extra, refSkip: refMigrate,
		setup: m.setup, run: m.run}
}

// hMigOutside forges file handle entries naming the canary's secret, the
// canary, the share's parent and, on ext4, the filesystem's root (inode 2,
// generation 0), with handles open on the first two; control, when set,
// adds the share's "stale" file by file handle.
func hMigOutside(control bool) func(h *hctx) ([]byte, []uint64, []uint64, uint64, uint64, error) {
	return func(h *hctx) ([]byte, []uint64, []uint64, uint64, uint64, error) {
		var inodes []hMigInode
		for k, p := range []string{filepath.Join(h.base, "canary", "secret"), filepath.Join(h.base, "canary"), h.base} {
			fh, ino, err := hMigHandleOf(p)
			if err != nil {
				return nil, nil, nil, 0, 0, err
			}
			mode := uint32(unix.S_IFDIR)
			if k == 0 {
				mode = unix.S_IFREG
			}
			inodes = append(inodes, hMigInode{id: 100 + uint64(k), mode: mode, ino: ino, kind: 1, fh: fh})
		}
		var sfs unix.Statfs_t
		if err := unix.Statfs(h.share, &sfs); err == nil && sfs.Type == unix.EXT4_SUPER_MAGIC {
			inodes = append(inodes, hMigInode{id: 103, mode: unix.S_IFDIR, ino: 2, kind: 1,
				fh: []byte{8, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0}})
		}
		lost := make([]uint64, 0, len(inodes))
		for _, s := range inodes {
			lost = append(lost, s.id)
		}
		handles := []hMigHandle{{fh: 10, node: 100, flags: unix.O_RDONLY}, {fh: 11, node: 101, dir: true}}
		var ctrl, size uint64
		if control {
			fh, ino, err := hMigHandleOf(filepath.Join(h.share, "stale"))
			if err != nil {
				return nil, nil, nil, 0, 0, err
			}
			inodes = append(inodes, hMigInode{id: 200, mode: unix.S_IFREG, ino: ino, kind: 1, fh: fh, path: "stale"})
			ctrl, size = 200, uint64(len("stale"))
		}
		return hMigFSState(1, inodes, handles), lost, []uint64{10, 11}, ctrl, size, nil
	}
}

// hMigSymlinks makes symlinks in the share that lead out of it (and, as
// the daemon would resolve them kept within the share, to decoys there),
// and forges path entries through them; the symlink itself and "probe"
// are the controls.
func hMigSymlinks(h *hctx) ([]byte, []uint64, []uint64, uint64, uint64, error) {
	for _, l := range [][2]string{{"../canary", "esc"}, {filepath.Join(h.base, "canary"), "abs"}} {
		if err := os.Symlink(l[0], filepath.Join(h.share, l[1])); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, nil, nil, 0, 0, err
		}
	}
	for _, d := range []string{filepath.Join(h.share, "canary"), filepath.Join(h.share, h.base, "canary")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, nil, nil, 0, 0, err
		}
		if err := os.WriteFile(filepath.Join(d, "secret"), []byte("decoy"), 0o644); err != nil {
			return nil, nil, nil, 0, 0, err
		}
	}
	inodes := []hMigInode{
		{id: 100, mode: unix.S_IFREG, kind: 0, path: "esc/secret"},
		{id: 101, mode: unix.S_IFREG, kind: 0, path: "abs/secret"},
		{id: 102, mode: unix.S_IFDIR, kind: 0, path: "esc"},
		{id: 103, mode: unix.S_IFDIR, kind: 0, path: "esc/sub"},
		{id: 104, mode: unix.S_IFLNK, kind: 0, path: "abs"},
		{id: 105, mode: unix.S_IFREG, kind: 0, path: "probe"},
	}
	handles := []hMigHandle{{fh: 10, node: 100, flags: unix.O_RDONLY}, {fh: 11, node: 102, dir: true}}
	return hMigFSState(0, inodes, handles), []uint64{100, 101, 102, 103}, []uint64{10, 11}, 105, hProbeSize, nil
}

func hostileMigrateCases() []hcase {
	return []hcase{
		(&hMig{forge: hMigOutside(false), logWants: "opens file handles only with --migration-mode=file-handles"}).hcase(
			"forged state: file handles outside the share, find-paths destination",
			"CHECK_DEVICE_STATE fails: a find-paths destination opens no file handle"),
		(&hMig{forge: hMigOutside(false), guestError: true}).hcase(
			"forged state: file handles outside the share, find-paths destination, guest-error",
			"the state loads; every node id and handle it names answers EBADF"),
		(&hMig{forge: hMigOutside(true), guestError: true}).hcase(
			"forged state: file handles outside the share, file-handles destination, guest-error",
			"the state loads; the outside entries answer EBADF, the share's file by handle is served",
			"--migration-mode=file-handles"),
		(&hMig{forge: hMigSymlinks, guestError: true}).hcase(
			"forged state: paths through symlinks out of the share, guest-error",
			"the state loads; the paths through symlinks answer EBADF, the symlink and probe are served"),
	}
}

// hVmHWM returns the peak resident size of pid in KiB.
func hVmHWM(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, errors.New("no VmHWM")
}

// TestHostileMigrateMemory loads a forged 64 MiB state of minimal entries
// (inodes the source could not describe, handles on them) into a
// guest-error destination, which takes it, and measures the serving
// process's peak resident size: it may grow by at most twice the state
// (the state read whole, once, and what checking it needs). Before, it
// grew by 12.5 times the state, and the load took 13 s, most of them
// logging two million lines.
func TestHostileMigrateMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("sends a 64 MiB state")
	}
	d := ours(t)
	src, _, share, _ := startSource(t, d)
	if _, err := src.Stop(); err != nil {
		t.Fatal(err)
	}
	good, err := src.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	const inodeEntry, handleEntry = 35, 21
	nHandles := 200000 // below the default MaxHandles
	nInodes := (size - nHandles*handleEntry - 64) / inodeEntry
	fs := bytes.NewBuffer(make([]byte, 0, size))
	fs.Write(hle(uint32(1), uint8(0), uint8(0), uint64(nInodes+2), uint64(nHandles+1), uint32(nInodes)))
	for k := range nInodes {
		fs.Write(hle(uint64(k+2), uint64(1), uint32(unix.S_IFREG), uint64(0), uint8(2), uint16(0), uint16(0), uint16(0)))
	}
	fs.Write(hle(uint32(nHandles)))
	for k := range nHandles {
		fs.Write(hle(uint64(k+1), uint64(k%nInodes+2), uint32(0), uint8(0)))
	}
	state, err := hMigEnvelope(good, fs.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	dst, proc := destination(t, d, share, "--migration-on-error=guest-error")
	pid := hServingPid(proc.Pid())
	before, err := hVmHWM(pid)
	if err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	err = dst.LoadState(state)
	took := time.Since(begin)
	after, herr := hVmHWM(pid)
	if herr != nil {
		t.Fatal(herr)
	}
	grew := int64(after-before) << 10
	t.Logf("state of %d bytes (%d inodes, %d handles) loaded in %v: %v; peak RSS of the serving process %d -> %d KiB (+%.2fx the state)",
		len(state), nInodes, nHandles, took.Round(time.Millisecond), err, before, after, float64(grew)/float64(len(state)))
	if err != nil {
		t.Fatalf("guest-error refused the state: %v", err)
	}
	if !logSays(proc, "more inodes and handles left out") {
		t.Errorf("the log does not sum up the entries left out:\n%s", hLastLines(proc.Stderr(), 20))
	}
	if grew > 2*int64(len(state)) {
		t.Errorf("the serving process's peak RSS grew by %d bytes for a state of %d", grew, len(state))
	}
	select {
	case <-proc.Exited():
		t.Fatal("the destination died")
	default:
	}
}
