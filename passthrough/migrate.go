package passthrough

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	"golang.org/x/sys/unix"
)

// Live migration of the inode and handle tables (virtiofsd's
// --migration-mode and friends).
//
// The source describes every inode the guest knows (node id, lookup count,
// file type) and how the destination can find it:
//   - find-paths: its path relative to the shared directory, read from
//     /proc/self/fd (the link of the inode's descriptor, less the link of
//     the shared directory's). An inode whose link does not lead back to
//     it (deleted, or outside the share) is searched for by walking the
//     shared directory and comparing inode keys. With ConfirmPaths every
//     path is checked that way, not only the doubtful ones; with
//     VerifyHandles the inode's file handle goes along, and the
//     destination checks that the path it opened is that very inode.
//   - file-handles: its file handle, which the destination opens on the
//     shared directory's filesystem (same filesystem on both sides; needs
//     CAP_DAC_READ_SEARCH), checking the inode number. Its path goes along
//     when the source has one, for the check below.
//
// The destination trusts nothing in the state (the source host may be
// compromised): see decodeMigration and RestoreState. It opens file
// handles only when it is itself in file-handles mode (a handle can name
// any inode of the filesystem, not only those of the share), and keeps an
// inode only if it lies beneath the shared directory, whichever way it was
// found.
//
// Open files and directories are described by handle id, node id and host
// open flags, and re-opened from the restored inode (never truncating or
// creating again). An inode the source cannot describe, or the destination
// cannot find, fails the migration (MigrationAbort) or is left out
// (MigrationGuestError): requests on its node id then fail with EBADF.
//
// State format (inside the fuse session envelope, which carries a
// checksum), little endian:
//
//	u32 version | u8 mode | u8 verify | u64 next node id | u64 next handle id
//	u32 n, then n inodes: u64 id | u64 lookups | u32 file type | u64 st_ino |
//	    u8 kind (0 path, 1 file handle, 2 lost) | u16+path | u16+handle | u16+why lost
//	    (a file handle entry's path is the source's path for it, or empty)
//	u32 m, then m handles: u64 fh | u64 node id | u32 open flags | u8 directory

// MigrationMode is virtiofsd's --migration-mode.
type MigrationMode int

// Migration modes.
const (
	MigrateFindPaths MigrationMode = iota
	MigrateFileHandles
)

// ParseMigrationMode accepts virtiofsd's names.
func ParseMigrationMode(s string) (MigrationMode, error) {
	switch s {
	case "find-paths":
		return MigrateFindPaths, nil
	case "file-handles":
		return MigrateFileHandles, nil
	}
	return 0, fmt.Errorf("invalid migration mode %q (want find-paths or file-handles)", s)
}

// String returns the mode's virtiofsd name.
func (m MigrationMode) String() string {
	if m == MigrateFileHandles {
		return "file-handles"
	}
	return "find-paths"
}

// MigrationOnError is virtiofsd's --migration-on-error.
type MigrationOnError int

// What the destination does with an inode it cannot restore.
const (
	MigrationAbort MigrationOnError = iota
	MigrationGuestError
)

// ParseMigrationOnError accepts virtiofsd's names.
func ParseMigrationOnError(s string) (MigrationOnError, error) {
	switch s {
	case "abort":
		return MigrationAbort, nil
	case "guest-error":
		return MigrationGuestError, nil
	}
	return 0, fmt.Errorf("invalid migration error policy %q (want abort or guest-error)", s)
}

// MigrationConfig is how a daemon migrates. The source describes inodes
// as Mode, VerifyHandles and ConfirmPaths say; the destination uses
// OnError, and Mode too: it opens the file handles of a state only in
// MigrateFileHandles mode, and refuses file handle entries otherwise.
type MigrationConfig struct {
	Mode          MigrationMode
	OnError       MigrationOnError
	VerifyHandles bool
	ConfirmPaths  bool
	// Logf receives warnings (inodes left out, searches); nil discards.
	Logf func(format string, args ...any)
}

// Migration moves fs's tables; it is a fuse.MigratableFileSystem.
type Migration struct {
	fs   *FS
	cfg  MigrationConfig
	last MigrationCounts
}

// Migration returns fs's migrator.
func (fs *FS) Migration(cfg MigrationConfig) *Migration {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	return &Migration{fs: fs, cfg: cfg}
}

var _ fuse.MigratableFileSystem = (*Migration)(nil)

const (
	migStateVersion  = 1
	kindPath         = 0
	kindFileHandle   = 1
	kindLost         = 2
	maxPathLen       = unix.PathMax - 1 // a path and its NUL fit in PATH_MAX
	maxFileHandle    = fileHandleHead + maxFileHandleSize
	maxLostMsg       = 1024
	minInodeEntry    = 8 + 8 + 4 + 8 + 1 + 2 + 2 + 2
	minOpenFileEntry = 8 + 8 + 4 + 1
	// maxNodeID keeps restored ids far from wrapping.
	maxNodeID = 1 << 62
	// maxStateInodes bounds the inodes of a state: 16 million, several
	// GiB of tables on the source (open handles are bounded by
	// MaxHandles, which the source had too).
	maxStateInodes = 1 << 24
)

// inodeState is an inode entry of a state.
type inodeState struct {
	id, lookups      uint64
	mode             uint32
	ino              uint64
	kind             uint8
	path, fileHandle []byte
	lost             string
}

// openFileState is an open-file entry of a state: its FUSE file handle,
// its inode's node id, its host open flags and whether it is a directory.
type openFileState struct {
	fh, node uint64
	flags    uint32
	dir      bool
}

// MigrationCounts reports what the last SaveState or RestoreState moved.
type MigrationCounts struct {
	Inodes, Handles int // described / restored
	Lost            int // inodes and handles left out
	Searched        int // inodes found by walking the share
}

// Counts returns the figures of the last transfer.
func (m *Migration) Counts() MigrationCounts { return m.last }

// SaveState implements fuse.MigratableFileSystem.
func (m *Migration) SaveState() ([]byte, error) {
	fs := m.fs
	m.last = MigrationCounts{}
	if err := fs.locks.migrationRefusal(); err != nil {
		return nil, err
	}
	root := fs.inodes.get(RootID)
	if root == nil {
		return nil, errors.New("no root inode")
	}
	defer root.put()
	// In file-handles mode the paths are only hints: without the
	// shared directory's link, the handles go alone.
	rootLink, e := fs.fdLink(root.fd)
	if e != 0 && m.cfg.Mode == MigrateFindPaths {
		return nil, fmt.Errorf("reading the shared directory's path in /proc/self/fd: %w", e)
	}

	// Snapshot the tables; the rings are stopped, so nothing changes.
	fs.inodes.mu.Lock()
	inodes := make([]*inode, 0, len(fs.inodes.byID))
	lookups := make(map[*inode]uint64, len(fs.inodes.byID))
	for id, i := range fs.inodes.byID {
		if id == RootID {
			continue
		}
		i.refs.Add(1)
		inodes = append(inodes, i)
		lookups[i] = i.lookups
	}
	inodeNext := fs.inodes.next
	fs.inodes.mu.Unlock()
	fs.openFiles.mu.Lock()
	type fhFile struct {
		fh uint64
		f  *openFile
	}
	files := make([]fhFile, 0, len(fs.openFiles.m))
	for fh, f := range fs.openFiles.m {
		f.refs.Add(1)
		files = append(files, fhFile{fh, f})
	}
	fhNext := fs.openFiles.next
	fs.openFiles.mu.Unlock()
	defer func() {
		for _, i := range inodes {
			i.put()
		}
		for _, ff := range files {
			ff.f.put()
		}
	}()

	states := make([]inodeState, len(inodes))
	var unresolved []int
	for k, i := range inodes {
		s := &states[k]
		s.id, s.lookups, s.mode, s.ino = i.id, lookups[i], i.mode, i.key.ino
		m.describe(i, s, rootLink, root.fd)
		if s.kind == kindLost && m.cfg.Mode == MigrateFindPaths && s.lost == "" {
			unresolved = append(unresolved, k)
		}
	}
	if len(unresolved) > 0 {
		m.search(root.fd, inodes, states, unresolved)
	}

	var w fuse.StateWriter
	w.U32(migStateVersion)
	w.U8(uint8(m.cfg.Mode))
	w.U8(boolByte(m.cfg.VerifyHandles))
	w.U64(inodeNext)
	w.U64(fhNext)
	w.U32(uint32(len(states)))
	for k := range states {
		s := &states[k]
		if s.kind == kindLost {
			if s.lost == "" {
				s.lost = "no path in the shared directory leads to it"
			}
			m.last.Lost++
			m.cfg.Logf("Migration: cannot describe inode %d (node id %d): %s", s.ino, s.id, s.lost)
		} else {
			m.last.Inodes++
		}
		w.U64(s.id)
		w.U64(s.lookups)
		w.U32(s.mode)
		w.U64(s.ino)
		w.U8(s.kind)
		w.Bytes16(s.path)
		w.Bytes16(s.fileHandle)
		w.Bytes16([]byte(s.lost))
	}
	// A handle whose inode the guest forgot (OPEN, then FORGET) is left
	// out: the destination refuses a handle of a node the state does not
	// hold, and the guest would otherwise stop its own migration.
	kept := files[:0:0]
	for _, ff := range files {
		if _, ok := lookups[ff.f.ino]; ok || ff.f.ino.id == RootID {
			kept = append(kept, ff)
		} else {
			m.cfg.Logf("Migration: leaving out handle %d: the guest forgot its node id %d", ff.fh, ff.f.ino.id)
		}
	}
	w.U32(uint32(len(kept)))
	for _, ff := range kept {
		f := ff.f
		w.U64(ff.fh)
		w.U64(f.ino.id)
		w.U32(f.flags)
		w.U8(boolByte(f.dir != nil))
		m.last.Handles++
	}
	return w.Bytes(), nil
}

// describe fills s with how the destination finds i. A find-paths inode
// whose path could not be read or confirmed is left kindLost with an empty
// reason, for the search.
func (m *Migration) describe(i *inode, s *inodeState, rootLink string, rootFd int) {
	fs := m.fs
	pf, e := fs.pathFd(i)
	if e != 0 {
		s.kind, s.lost = kindLost, fmt.Sprintf("cannot open it: %v", e)
		return
	}
	defer pf.put()
	if m.cfg.Mode == MigrateFileHandles || m.cfg.VerifyHandles {
		fileHandle, e := fs.inodeFileHandle(i, pf.fd)
		if e != 0 {
			s.kind, s.lost = kindLost, fmt.Sprintf("no file handle: %v", e)
			return
		}
		s.fileHandle = fileHandle
	}
	if m.cfg.Mode == MigrateFileHandles {
		// The path, if any, is a hint for the destination's check that
		// the handle's inode lies beneath its shared directory.
		s.kind = kindFileHandle
		if rootLink != "" {
			if link, e := fs.fdLink(pf.fd); e == 0 {
				if rel, ok := relativeTo(link, rootLink); ok && len(rel) <= maxPathLen && checkRelPath([]byte(rel)) == nil {
					s.path = []byte(rel)
				}
			}
		}
		return
	}
	s.kind = kindLost
	link, e := fs.fdLink(pf.fd)
	if e != 0 {
		return
	}
	rel, ok := relativeTo(link, rootLink)
	if !ok || len(rel) > maxPathLen {
		return
	}
	if m.cfg.ConfirmPaths && !pathIs(rootFd, []byte(rel), i.key) {
		return
	}
	s.kind, s.path = kindPath, []byte(rel)
}

// relativeTo returns link relative to the directory rootLink, if it lies
// beneath it.
func relativeTo(link, rootLink string) (string, bool) {
	if strings.HasSuffix(link, " (deleted)") || !strings.HasPrefix(link, "/") {
		return "", false
	}
	prefix := rootLink
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	if !strings.HasPrefix(link, prefix) || len(link) == len(prefix) {
		return "", false
	}
	return link[len(prefix):], true
}

// fdLink reads /proc/self/fd/fd.
func (fs *FS) fdLink(fd int) (string, syscall.Errno) {
	return fs.fdLinkBuf(fd, make([]byte, maxPathLen+16))
}

// fdLinkBuf reads /proc/self/fd/fd into buf.
func (fs *FS) fdLinkBuf(fd int, buf []byte) (string, syscall.Errno) {
	var pn [24]byte
	n, e := sysReadlinkat(fs.procFd, procName(&pn, fd), buf)
	if e != 0 {
		return "", e
	}
	if n >= len(buf) {
		return "", syscall.ENAMETOOLONG
	}
	return string(buf[:n]), 0
}

// inodeFileHandle returns the file handle (a struct file_handle) of i,
// whose O_PATH descriptor fd is.
func (fs *FS) inodeFileHandle(i *inode, fd int) ([]byte, syscall.Errno) {
	if i.fileHandle != nil {
		return i.fileHandle, 0
	}
	var b fileHandleBuf
	var mnt int32
	if e := sysNameToHandleAt(fd, &b, &mnt); e != 0 {
		return nil, e
	}
	return append([]byte(nil), b.raw()...), 0
}

// pathIs reports whether rel, beneath the shared directory, is the inode
// with key k.
func pathIs(rootFd int, rel []byte, k inodeKey) bool {
	var st unix.Statx_t
	fd, e := openBeneath(rootFd, rel)
	if e != 0 {
		return false
	}
	defer unix.Close(fd)
	return fstatx(fd, &st) == 0 && keyOf(&st) == k
}

// openBeneath opens an O_PATH descriptor of rel beneath the directory
// rootFd, following no symlink (the last component, if one, is opened
// itself) and never leaving the directory: the paths of a state are
// kernel-made (links in /proc/self/fd, names read from directories),
// which hold none.
func openBeneath(rootFd int, rel []byte) (int, syscall.Errno) {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
	fd, err := unix.Openat2(rootFd, string(rel), &how) // O_PATH only (how.Flags)
	if err != nil {
		return -1, errnoOf(err)
	}
	return fd, 0
}

// search walks the shared directory for the inodes states[idx] describe
// (by key) and records the paths it finds.
func (m *Migration) search(rootFd int, inodes []*inode, states []inodeState, idx []int) {
	want := make(map[inodeKey]int, len(idx))
	for _, k := range idx {
		want[inodes[k].key] = k
	}
	m.cfg.Logf("Migration: searching the shared directory for %d inodes whose paths are unknown", len(want))
	// The queue holds paths, not descriptors: a wide tree would otherwise
	// hold a descriptor per directory waiting its turn.
	queue := []string{"."}
	buf := make([]byte, 32<<10)
	for len(queue) > 0 && len(want) > 0 {
		rel := queue[0]
		queue = queue[1:]
		p, err := unix.BytePtrFromString(rel)
		if err != nil {
			continue
		}
		dfd, e := sysOpenat2(rootFd, p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if e != 0 {
			continue
		}
		for len(want) > 0 {
			n, err := unix.ReadDirent(dfd, buf)
			if err != nil || n <= 0 {
				break
			}
			var names []string
			_, _, names = unix.ParseDirent(buf[:n], -1, names)
			for _, name := range names {
				var st unix.Statx_t
				np, err := unix.BytePtrFromString(name)
				if err != nil || sysStatx(dfd, np, unix.AT_SYMLINK_NOFOLLOW, &st) != 0 {
					continue
				}
				child := name
				if rel != "." {
					child = rel + "/" + name
				}
				if len(child) > maxPathLen {
					continue // the destination could not read it: left lost
				}
				if k, ok := want[keyOf(&st)]; ok {
					states[k].kind, states[k].path = kindPath, []byte(child)
					delete(want, keyOf(&st))
					m.last.Searched++
				}
				if uint32(st.Mode)&unix.S_IFMT == unix.S_IFDIR {
					queue = append(queue, child)
				}
			}
		}
		unix.Close(dfd)
	}
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// stateHeader is the start of a filesystem state.
type stateHeader struct {
	mode, verify      uint8
	inodeNext, fhNext uint64
}

// nodeMode is a node id of a state and the file type the source gave it.
type nodeMode struct {
	id   uint64
	mode uint32
}

// The reads below are shared by decodeMigration, which checks a whole
// state, and RestoreState, which then reads it again entry by entry: the
// entries are never held decoded, only in the state's own bytes.

func readHeader(r *fuse.StateReader) stateHeader {
	if v := r.U32(); r.Err() == nil && v != migStateVersion {
		r.Fail(fmt.Errorf("filesystem state version %d, this daemon reads %d", v, migStateVersion))
	}
	h := stateHeader{mode: r.U8(), verify: r.U8(), inodeNext: r.U64(), fhNext: r.U64()}
	if r.Err() == nil {
		switch {
		case h.mode > uint8(MigrateFileHandles):
			r.Fail(fmt.Errorf("unknown migration mode %d", h.mode))
		case h.verify > 1:
			r.Fail(fmt.Errorf("verify flag is %d", h.verify))
		case h.inodeNext <= RootID || h.inodeNext > maxNodeID:
			r.Fail(fmt.Errorf("next node id %d out of range", h.inodeNext))
		case h.fhNext == 0 || h.fhNext > maxNodeID:
			r.Fail(fmt.Errorf("next handle id %d out of range", h.fhNext))
		}
	}
	return h
}

// readInode reads an inode entry; path, file handle and the reason it is
// lost alias the state.
func readInode(r *fuse.StateReader) (s inodeState, lost []byte) {
	s = inodeState{id: r.U64(), lookups: r.U64(), mode: r.U32(), ino: r.U64(), kind: r.U8()}
	s.path = r.Bytes16(maxPathLen)
	s.fileHandle = r.Bytes16(maxFileHandle)
	lost = r.Bytes16(maxLostMsg)
	return s, lost
}

// readOpenFile reads an open-file entry and its directory flag.
func readOpenFile(r *fuse.StateReader) (openFileState, uint8) {
	h := openFileState{fh: r.U64(), node: r.U64(), flags: r.U32()}
	dir := r.U8()
	h.dir = dir == 1
	return h, dir
}

// decodeMigration checks a whole state without touching the tables: every
// field, counts against the bytes present and against what a source could
// have held (at most maxStateInodes inodes and maxOpenFiles open files),
// duplicate node ids and handle ids, and handles against the inodes. What
// it allocates is 16 bytes per inode entry (of at least 35 in the state)
// and 8 per handle entry (of 21).
func decodeMigration(b []byte, maxOpenFiles int) (stateHeader, error) {
	r := fuse.NewStateReader(b)
	hd := readHeader(r)
	n := r.Count(minInodeEntry)
	if r.Err() == nil && n > maxStateInodes {
		r.Fail(fmt.Errorf("%d inodes, more than the %d a state may hold", n, maxStateInodes))
	}
	var ids []nodeMode
	if r.Err() == nil {
		ids = make([]nodeMode, 0, n)
	}
	for k := 0; k < n && r.Err() == nil; k++ {
		s, _ := readInode(r)
		if r.Err() != nil {
			break
		}
		if err := s.check(hd.inodeNext); err != nil {
			r.Fail(fmt.Errorf("inode entry %d (node id %d): %w", k, s.id, err))
			break
		}
		ids = append(ids, nodeMode{s.id, s.mode})
	}
	slices.SortFunc(ids, func(a, b nodeMode) int { return cmp.Compare(a.id, b.id) })
	for k := 1; k < len(ids) && r.Err() == nil; k++ {
		if ids[k].id == ids[k-1].id {
			r.Fail(fmt.Errorf("node id %d appears twice", ids[k].id))
		}
	}
	m := r.Count(minOpenFileEntry)
	if r.Err() == nil && m > maxOpenFiles {
		r.Fail(fmt.Errorf("%d open handles, more than the %d this daemon allows (MaxHandles): a source with the same options cannot have held them", m, maxOpenFiles))
	}
	var fhs []uint64
	if r.Err() == nil {
		fhs = make([]uint64, 0, m)
	}
	for k := 0; k < m && r.Err() == nil; k++ {
		h, dir := readOpenFile(r)
		if r.Err() != nil {
			break
		}
		mode, known := uint32(unix.S_IFDIR), h.node == RootID
		if !known {
			if at, ok := slices.BinarySearchFunc(ids, h.node, func(e nodeMode, id uint64) int { return cmp.Compare(e.id, id) }); ok {
				mode, known = ids[at].mode, true
			}
		}
		switch {
		case h.fh == 0 || h.fh >= hd.fhNext:
			r.Fail(fmt.Errorf("handle id %d out of range", h.fh))
		case !known:
			r.Fail(fmt.Errorf("handle %d names node id %d, which the state does not hold", h.fh, h.node))
		case dir > 1:
			r.Fail(fmt.Errorf("handle %d: directory flag %d", h.fh, dir))
		case h.dir != (mode == unix.S_IFDIR):
			r.Fail(fmt.Errorf("handle %d: directory flag %d on a node of type %#o", h.fh, dir, mode))
		case mode != unix.S_IFDIR && mode != unix.S_IFREG:
			r.Fail(fmt.Errorf("handle %d on a node of type %#o", h.fh, mode))
		case h.flags&unix.O_PATH != 0:
			r.Fail(fmt.Errorf("handle %d: open flags %#x", h.fh, h.flags))
		}
		fhs = append(fhs, h.fh)
	}
	slices.Sort(fhs)
	for k := 1; k < len(fhs) && r.Err() == nil; k++ {
		if fhs[k] == fhs[k-1] {
			r.Fail(fmt.Errorf("handle id %d appears twice", fhs[k]))
		}
	}
	return hd, r.End()
}

func (s *inodeState) check(inodeNext uint64) error {
	switch {
	case s.id <= RootID || s.id >= inodeNext:
		return fmt.Errorf("node id out of range (next %d)", inodeNext)
	case s.lookups == 0:
		return errors.New("lookup count 0")
	}
	switch s.mode {
	case unix.S_IFREG, unix.S_IFDIR, unix.S_IFLNK, unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO, unix.S_IFSOCK:
	default:
		return fmt.Errorf("file type %#o", s.mode)
	}
	if fh := s.fileHandle; len(fh) != 0 {
		if len(fh) <= fileHandleHead {
			return fmt.Errorf("file handle of %d bytes", len(fh))
		}
		if n := int(uint32(fh[0]) | uint32(fh[1])<<8 | uint32(fh[2])<<16 | uint32(fh[3])<<24); n != len(fh)-fileHandleHead {
			return fmt.Errorf("file handle says %d bytes, carries %d", n, len(fh)-fileHandleHead)
		}
	}
	switch s.kind {
	case kindPath:
		return checkRelPath(s.path)
	case kindFileHandle:
		if len(s.fileHandle) == 0 {
			return errors.New("file handle entry without a handle")
		}
		if len(s.path) != 0 {
			return checkRelPath(s.path)
		}
	case kindLost:
	default:
		return fmt.Errorf("kind %d", s.kind)
	}
	return nil
}

// checkRelPath accepts a relative path of real names: no empty, "." or
// ".." components, no NUL.
func checkRelPath(p []byte) error {
	if len(p) == 0 || p[0] == '/' || bytes.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("path %q is not a relative path", p)
	}
	for c := range bytes.SplitSeq(p, []byte("/")) {
		if len(c) == 0 || string(c) == "." || string(c) == ".." || len(c) > fuse.MaxNameLen {
			return fmt.Errorf("path %q has a component %q", p, c)
		}
	}
	return nil
}

// restorer is one RestoreState in progress.
type restorer struct {
	m        *Migration
	rootFd   int
	rootLink string // the shared directory's link in /proc/self/fd
	mountFd  int    // for open_by_handle_at, opened at the first handle entry
	link     []byte // readlink buffer
	lost     int    // entries left out
	first    string // the first of them
}

// RestoreState implements fuse.MigratableFileSystem. The state may come
// from a compromised source host: it is checked whole first
// (decodeMigration), then every inode entry must lead to an inode beneath
// the shared directory, of the type the source gave, before it enters the
// table under its node id (restoreInode), and every handle is opened
// through the gate with flags a source could have had (restoreOpenFile).
// Entries that fail are left out or fail the restore, as OnError says; on
// error the tables are left empty.
func (m *Migration) RestoreState(b []byte) (err error) {
	fs := m.fs
	m.last = MigrationCounts{}
	hd, err := decodeMigration(b, fs.maxOpenFiles)
	if err != nil {
		return fmt.Errorf("filesystem state: %w", err)
	}
	if a, h := fs.Counts(); a != 1 || h != 0 {
		return fmt.Errorf("restoring into a session that has %d inodes and %d handles", a-1, h)
	}
	root := fs.inodes.get(RootID)
	if root == nil {
		return errors.New("no root inode")
	}
	defer root.put()
	rs := &restorer{m: m, rootFd: root.fd, mountFd: -1, link: make([]byte, maxPathLen+16)}
	defer func() {
		if rs.mountFd >= 0 {
			unix.Close(rs.mountFd)
		}
	}()
	link, e := fs.fdLinkBuf(root.fd, rs.link)
	if e != 0 {
		return fmt.Errorf("reading the shared directory's path in /proc/self/fd: %w", e)
	}
	rs.rootLink = link
	defer func() {
		if err != nil {
			fs.openFiles.clear()
			fs.inodes.clear()
		}
	}()
	// Inodes get their saved ids after newInode enters them under a
	// fresh one: start the fresh ones above every saved id.
	fs.inodes.mu.Lock()
	fs.inodes.next = max(fs.inodes.next, hd.inodeNext)
	fs.inodes.mu.Unlock()

	r := fuse.NewStateReader(b)
	readHeader(r)
	n := r.Count(minInodeEntry)
	for range n {
		s, why := readInode(r)
		if r.Err() != nil {
			break
		}
		var e error
		if s.kind != kindLost {
			if e = rs.restoreInode(&s); e == nil {
				m.last.Inodes++
				continue
			}
			if errors.Is(e, errMount) {
				return e
			}
		}
		var msg string
		switch {
		case !rs.wantMsg():
		case s.kind == kindLost:
			msg = fmt.Sprintf("node id %d (inode %d): the source could not describe it (%q)", s.id, s.ino, why)
		default:
			msg = fmt.Sprintf("node id %d (inode %d, %s): %v", s.id, s.ino, s.where(), e)
		}
		if err := rs.leaveOut("an inode", msg); err != nil {
			return err
		}
	}
	nh := r.Count(minOpenFileEntry)
	for range nh {
		h, _ := readOpenFile(r)
		if r.Err() != nil {
			break
		}
		if e := m.restoreOpenFile(h); e != nil {
			var msg string
			if rs.wantMsg() {
				msg = fmt.Sprintf("handle %d on node id %d: %v", h.fh, h.node, e)
			}
			if err := rs.leaveOut("a handle", msg); err != nil {
				return err
			}
			continue
		}
		m.last.Handles++
	}
	if err := r.End(); err != nil {
		return fmt.Errorf("filesystem state: %w", err)
	}
	if more := rs.lost - maxLostLogged; more > 0 {
		m.cfg.Logf("Migration: %d more inodes and handles left out, not logged one by one; the guest gets errors for them", more)
	}
	fs.openFiles.mu.Lock()
	fs.openFiles.next = max(fs.openFiles.next, hd.fhNext)
	fs.openFiles.mu.Unlock()
	return nil
}

// maxLostLogged is how many entries left out are logged one by one; the
// rest are counted (a hostile state could hold millions).
const maxLostLogged = 16

// wantMsg reports whether leaveOut will use the message of the next entry
// left out (only a few are formatted: a hostile state may hold millions).
func (rs *restorer) wantMsg() bool {
	return rs.first == "" || rs.lost < maxLostLogged || rs.m.cfg.OnError == MigrationAbort
}

// leaveOut records an entry that could not be restored, described by msg
// when wantMsg said so: with MigrationAbort it fails the restore.
func (rs *restorer) leaveOut(what, msg string) error {
	m := rs.m
	m.last.Lost++
	rs.lost++
	if rs.first == "" {
		rs.first = msg
	}
	if m.cfg.OnError == MigrationAbort {
		return fmt.Errorf("%s could not be restored (--migration-on-error=abort): %s", what, msg)
	}
	if rs.lost <= maxLostLogged {
		m.cfg.Logf("Migration: %s; the guest gets errors for it", msg)
	}
	return nil
}

func (s *inodeState) where() string {
	if s.kind == kindPath {
		return fmt.Sprintf("path %q", s.path)
	}
	return "by file handle"
}

var (
	// errMount is the destination failing to open file handles at all.
	errMount = errors.New("opening the shared directory for file handles")
	// errNoFileHandles refuses a file handle entry outside file-handles mode.
	errNoFileHandles = errors.New("a file handle entry, but this daemon opens file handles only with --migration-mode=file-handles")
	// errNotRestored refuses an open file on an inode left out.
	errNotRestored = errors.New("its inode was not restored")
)

// restoreInode finds s's inode and enters it under s's node id. It opens
// an O_PATH descriptor: a path entry's is resolved beneath the shared
// directory following no symlink, a file handle entry's (only in
// file-handles mode) is opened on the shared directory's filesystem. The
// inode is then checked with what the kernel reports for that descriptor:
// its type is the one the source gave (and becomes the inode's, which the
// gate goes by), a handle's inode number is the source's, with
// VerifyHandles a path leads to the source's very file handle, the inode
// lies beneath the shared directory (beneath), and no other node id holds
// it (the shared directory included).
func (rs *restorer) restoreInode(s *inodeState) error {
	fs := rs.m.fs
	var fd int
	var e syscall.Errno
	switch {
	case s.kind == kindPath:
		fd, e = openBeneath(rs.rootFd, s.path)
	case rs.m.cfg.Mode != MigrateFileHandles:
		return errNoFileHandles
	default:
		if rs.mountFd < 0 {
			var pn [24]byte
			if rs.mountFd, e = sysOpenat(fs.procFd, procName(&pn, rs.rootFd), unix.O_RDONLY|unix.O_DIRECTORY, 0); e != 0 {
				return fmt.Errorf("%w: %w", errMount, e)
			}
		}
		fd, e = sysOpenByHandleAt(rs.mountFd, s.fileHandle, unix.O_PATH|unix.O_NOFOLLOW)
	}
	if e != 0 {
		return e
	}
	var st unix.Statx_t
	if err := rs.checkInode(fd, s, &st); err != nil {
		unix.Close(fd)
		return err
	}
	i, e := fs.newInode(fd, &st)
	if e != 0 {
		return e
	}
	defer i.put()
	t := fs.inodes
	t.mu.Lock()
	delete(t.byID, i.id)
	i.id, i.lookups = s.id, s.lookups
	t.byID[s.id] = i
	t.mu.Unlock()
	return nil
}

// checkInode checks the inode fd holds against s (see restoreInode) and
// fills st.
func (rs *restorer) checkInode(fd int, s *inodeState, st *unix.Statx_t) error {
	fs := rs.m.fs
	if e := fstatx(fd, st); e != 0 {
		return e
	}
	if t := uint32(st.Mode) & unix.S_IFMT; t != s.mode {
		return fmt.Errorf("found a node of type %#o, the source had %#o", t, s.mode)
	}
	if s.kind == kindFileHandle && st.Ino != s.ino {
		return fmt.Errorf("the handle opened inode %d (not on the shared directory's filesystem?)", st.Ino)
	}
	if s.kind == kindPath && len(s.fileHandle) != 0 {
		var b fileHandleBuf
		var mnt int32
		if e := sysNameToHandleAt(fd, &b, &mnt); e != 0 || !bytes.Equal(b.raw(), s.fileHandle) {
			return errors.New("the path leads to another inode than the source's (--migration-verify-handles)")
		}
	}
	if !rs.beneath(fd, keyOf(st), s.path) {
		return errors.New("it does not lie beneath the shared directory")
	}
	fs.inodes.mu.Lock()
	_, dup := fs.inodes.byKey[keyOf(st)]
	fs.inodes.mu.Unlock()
	if dup {
		return errors.New("another node id already holds this inode")
	}
	return nil
}

// beneath reports whether the inode fd holds, of key k, lies beneath the
// shared directory: the path its link in /proc/self/fd gives, relative to
// the shared directory's link, or else hint (the source's path for it; a
// file opened by handle may have no name of its own on the destination),
// resolved beneath the shared directory's descriptor without symlinks or
// "..", reaches that very inode (device, inode number and mount).
func (rs *restorer) beneath(fd int, k inodeKey, hint []byte) bool {
	if link, e := rs.m.fs.fdLinkBuf(fd, rs.link); e == 0 {
		if rel, ok := relativeTo(link, rs.rootLink); ok && checkRelPath([]byte(rel)) == nil && pathIs(rs.rootFd, []byte(rel), k) {
			return true
		}
	}
	return len(hint) != 0 && pathIs(rs.rootFd, hint, k)
}

// restoreOpenFile re-opens an open file or directory through the gate: a
// file with the ioFlags it had (creating, truncating and the like already
// happened on the source), never
// writable on a read-only share; a directory read-only.
func (m *Migration) restoreOpenFile(h openFileState) error {
	fs := m.fs
	i := fs.inodes.get(h.node)
	if i == nil {
		return errNotRestored
	}
	defer i.put()
	flags := int(h.flags) & ioFlags
	var ds *dirStream
	want := regular
	if h.dir {
		flags, want = unix.O_RDONLY, directory
		ds = &dirStream{}
	} else if fs.cfg.Readonly && flags&unix.O_ACCMODE != unix.O_RDONLY {
		return errors.New("open for writing, and the share is read-only")
	}
	fd, e := fs.openInode(i, want, flags)
	if e != 0 {
		return e
	}
	i.refs.Add(1)
	f := &openFile{fd: fd, ino: i, dir: ds, flags: uint32(flags)}
	f.refs.Store(1)
	fs.openFiles.mu.Lock()
	fs.openFiles.m[h.fh] = f
	fs.openFiles.mu.Unlock()
	return nil
}
