package passthrough

import (
	"bytes"
	"errors"
	"fmt"
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
//     CAP_DAC_READ_SEARCH), checking the inode number.
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

// MigrationConfig is how a daemon migrates (the source uses Mode,
// VerifyHandles and ConfirmPaths; the destination OnError, as virtiofsd).
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
	migStateVersion = 1
	kindPath        = 0
	kindHandle      = 1
	kindLost        = 2
	maxPathLen      = 4096
	maxFileHandle   = fileHandleHead + maxHandleSize
	maxLostMsg      = 1024
	minInodeEntry   = 8 + 8 + 4 + 8 + 1 + 2 + 2 + 2
	minHandleEntry  = 8 + 8 + 4 + 1
	// maxNodeID keeps restored ids far from wrapping.
	maxNodeID = 1 << 62
)

type inodeState struct {
	id, lookups uint64
	mode        uint32
	ino         uint64
	kind        uint8
	path, fh    []byte
	lost        string
}

type handleState struct {
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
	root := fs.inodes.get(RootID)
	if root == nil {
		return nil, errors.New("no root inode")
	}
	defer root.put()
	var rootLink string
	if m.cfg.Mode == MigrateFindPaths {
		var e syscall.Errno
		if rootLink, e = fs.fdLink(root.fd); e != 0 {
			return nil, fmt.Errorf("reading the shared directory's path in /proc/self/fd: %w", e)
		}
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
	fs.handles.mu.Lock()
	type idHandle struct {
		id uint64
		h  *handle
	}
	handles := make([]idHandle, 0, len(fs.handles.m))
	for id, h := range fs.handles.m {
		h.refs.Add(1)
		handles = append(handles, idHandle{id, h})
	}
	handleNext := fs.handles.next
	fs.handles.mu.Unlock()
	defer func() {
		for _, i := range inodes {
			i.put()
		}
		for _, h := range handles {
			h.h.put()
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
	w.U64(handleNext)
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
		w.Bytes16(s.fh)
		w.Bytes16([]byte(s.lost))
	}
	w.U32(uint32(len(handles)))
	for _, ih := range handles {
		h := ih.h
		w.U64(ih.id)
		w.U64(h.ino.id)
		w.U32(h.flags)
		w.U8(boolByte(h.dir != nil))
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
		fh, e := fs.fileHandle(i, pf.fd)
		if e != 0 {
			s.kind, s.lost = kindLost, fmt.Sprintf("no file handle: %v", e)
			return
		}
		s.fh = fh
	}
	if m.cfg.Mode == MigrateFileHandles {
		s.kind = kindHandle
		return
	}
	s.kind = kindLost
	link, e := fs.fdLink(pf.fd)
	if e != 0 {
		return
	}
	rel, ok := relativeTo(link, rootLink)
	if !ok {
		return
	}
	if m.cfg.ConfirmPaths && !fs.pathIs(rootFd, rel, i.key) {
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
	var pn [24]byte
	buf := make([]byte, maxPathLen+16)
	n, e := sysReadlinkat(fs.procFd, procName(&pn, fd), buf)
	if e != 0 {
		return "", e
	}
	if n >= len(buf) {
		return "", syscall.ENAMETOOLONG
	}
	return string(buf[:n]), 0
}

// fileHandle returns i's file handle (a struct file_handle).
func (fs *FS) fileHandle(i *inode, fd int) ([]byte, syscall.Errno) {
	if i.fh != nil {
		return i.fh, 0
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
func (fs *FS) pathIs(rootFd int, rel string, k inodeKey) bool {
	var st unix.Statx_t
	fd, e := openInRoot(rootFd, rel)
	if e != 0 {
		return false
	}
	defer unix.Close(fd)
	return fstatx(fd, &st) == 0 && keyOf(&st) == k
}

func openInRoot(rootFd int, rel string) (int, syscall.Errno) {
	p, err := unix.BytePtrFromString(rel)
	if err != nil {
		return -1, syscall.EINVAL
	}
	return sysOpenat2(rootFd, p, unix.O_PATH|unix.O_NOFOLLOW, 0)
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

// decodeMigration parses and checks a state without touching the tables.
func decodeMigration(b []byte) (inodes []inodeState, handles []handleState, inodeNext, handleNext uint64, err error) {
	r := fuse.NewStateReader(b)
	if v := r.U32(); r.Err() == nil && v != migStateVersion {
		return nil, nil, 0, 0, fmt.Errorf("filesystem state version %d, this daemon reads %d", v, migStateVersion)
	}
	mode := r.U8()
	verify := r.U8()
	inodeNext, handleNext = r.U64(), r.U64()
	if r.Err() == nil {
		switch {
		case mode > uint8(MigrateFileHandles):
			r.Fail(fmt.Errorf("unknown migration mode %d", mode))
		case verify > 1:
			r.Fail(fmt.Errorf("verify flag is %d", verify))
		case inodeNext <= RootID || inodeNext > maxNodeID:
			r.Fail(fmt.Errorf("next node id %d out of range", inodeNext))
		case handleNext == 0 || handleNext > maxNodeID:
			r.Fail(fmt.Errorf("next handle id %d out of range", handleNext))
		}
	}
	n := r.Count(minInodeEntry)
	ids := make(map[uint64]uint32, n)
	for k := 0; k < n && r.Err() == nil; k++ {
		s := inodeState{id: r.U64(), lookups: r.U64(), mode: r.U32(), ino: r.U64(), kind: r.U8()}
		s.path = r.Bytes16(maxPathLen)
		s.fh = r.Bytes16(maxFileHandle)
		lost := r.Bytes16(maxLostMsg)
		if r.Err() != nil {
			break
		}
		s.lost = string(lost)
		if err := s.check(inodeNext); err != nil {
			r.Fail(fmt.Errorf("inode entry %d (node id %d): %w", k, s.id, err))
			break
		}
		if _, dup := ids[s.id]; dup {
			r.Fail(fmt.Errorf("node id %d appears twice", s.id))
			break
		}
		ids[s.id] = s.mode
		inodes = append(inodes, s)
	}
	m := r.Count(minHandleEntry)
	fhs := make(map[uint64]bool, m)
	for k := 0; k < m && r.Err() == nil; k++ {
		h := handleState{fh: r.U64(), node: r.U64(), flags: r.U32()}
		dir := r.U8()
		if r.Err() != nil {
			break
		}
		mode, known := ids[h.node]
		if h.node == RootID {
			mode, known = unix.S_IFDIR, true
		}
		switch {
		case h.fh == 0 || h.fh >= handleNext:
			r.Fail(fmt.Errorf("handle id %d out of range", h.fh))
		case fhs[h.fh]:
			r.Fail(fmt.Errorf("handle id %d appears twice", h.fh))
		case !known:
			r.Fail(fmt.Errorf("handle %d names node id %d, which the state does not hold", h.fh, h.node))
		case dir > 1:
			r.Fail(fmt.Errorf("handle %d: directory flag %d", h.fh, dir))
		case (dir == 1) != (mode == unix.S_IFDIR):
			r.Fail(fmt.Errorf("handle %d: directory flag %d on a node of type %#o", h.fh, dir, mode))
		case mode != unix.S_IFDIR && mode != unix.S_IFREG:
			r.Fail(fmt.Errorf("handle %d on a node of type %#o", h.fh, mode))
		case h.flags&unix.O_PATH != 0:
			r.Fail(fmt.Errorf("handle %d: open flags %#x", h.fh, h.flags))
		}
		if r.Err() != nil {
			break
		}
		h.dir = dir == 1
		fhs[h.fh] = true
		handles = append(handles, h)
	}
	if err := r.End(); err != nil {
		return nil, nil, 0, 0, err
	}
	return inodes, handles, inodeNext, handleNext, nil
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
	if len(s.fh) != 0 {
		if len(s.fh) <= fileHandleHead {
			return fmt.Errorf("file handle of %d bytes", len(s.fh))
		}
		if n := int(uint32(s.fh[0]) | uint32(s.fh[1])<<8 | uint32(s.fh[2])<<16 | uint32(s.fh[3])<<24); n != len(s.fh)-fileHandleHead {
			return fmt.Errorf("file handle says %d bytes, carries %d", n, len(s.fh)-fileHandleHead)
		}
	}
	switch s.kind {
	case kindPath:
		return checkRelPath(s.path)
	case kindHandle:
		if len(s.fh) == 0 {
			return errors.New("file handle entry without a handle")
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
	for _, c := range bytes.Split(p, []byte("/")) {
		if len(c) == 0 || string(c) == "." || string(c) == ".." || len(c) > fuse.MaxNameLen {
			return fmt.Errorf("path %q has a component %q", p, c)
		}
	}
	return nil
}

// RestoreState implements fuse.MigratableFileSystem.
func (m *Migration) RestoreState(b []byte) error {
	fs := m.fs
	m.last = MigrationCounts{}
	inodes, handles, inodeNext, handleNext, err := decodeMigration(b)
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
	mountFd := -1
	defer func() {
		if mountFd >= 0 {
			unix.Close(mountFd)
		}
	}()
	// Inodes get their saved ids after newInode enters them under a
	// fresh one: start the fresh ones above every saved id.
	fs.inodes.mu.Lock()
	fs.inodes.next = max(fs.inodes.next, inodeNext)
	fs.inodes.mu.Unlock()
	var problems []string
	lost := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		m.last.Lost++
		if m.cfg.OnError == MigrationGuestError {
			m.cfg.Logf("Migration: %s; the guest gets errors for it", msg)
		}
		problems = append(problems, msg)
	}
	for k := range inodes {
		s := &inodes[k]
		if s.kind == kindLost {
			lost("node id %d (inode %d): the source could not describe it (%s)", s.id, s.ino, s.lost)
			continue
		}
		if s.kind == kindHandle && mountFd < 0 {
			var pn [24]byte
			var e syscall.Errno
			if mountFd, e = sysOpenat(fs.procFd, procName(&pn, root.fd), unix.O_RDONLY|unix.O_DIRECTORY, 0); e != 0 {
				return fmt.Errorf("opening the shared directory for file handles: %w", e)
			}
		}
		if e := m.restoreInode(s, root.fd, mountFd); e != nil {
			lost("node id %d (inode %d, %s): %v", s.id, s.ino, s.where(), e)
			continue
		}
		m.last.Inodes++
	}
	if len(problems) > 0 && m.cfg.OnError == MigrationAbort {
		return fmt.Errorf("%d inodes could not be restored (--migration-on-error=abort), first: %s", len(problems), problems[0])
	}
	for _, h := range handles {
		if e := m.restoreHandle(h); e != nil {
			m.last.Lost++
			msg := fmt.Sprintf("handle %d on node id %d: %v", h.fh, h.node, e)
			if m.cfg.OnError == MigrationAbort {
				return fmt.Errorf("%s (--migration-on-error=abort)", msg)
			}
			m.cfg.Logf("Migration: %s; the guest gets errors for it", msg)
			continue
		}
		m.last.Handles++
	}
	fs.handles.mu.Lock()
	fs.handles.next = max(fs.handles.next, handleNext)
	fs.handles.mu.Unlock()
	return nil
}

func (s *inodeState) where() string {
	if s.kind == kindPath {
		return fmt.Sprintf("path %q", s.path)
	}
	return "by file handle"
}

// restoreInode finds s's inode and enters it under s's node id.
func (m *Migration) restoreInode(s *inodeState, rootFd, mountFd int) error {
	fs := m.fs
	var fd int
	var e syscall.Errno
	if s.kind == kindPath {
		fd, e = openInRoot(rootFd, string(s.path))
	} else {
		fd, e = sysOpenByHandleAt(mountFd, s.fh, unix.O_PATH|unix.O_NOFOLLOW)
	}
	if e != 0 {
		return e
	}
	var st unix.Statx_t
	if e := fstatx(fd, &st); e != 0 {
		unix.Close(fd)
		return e
	}
	if t := uint32(st.Mode) & unix.S_IFMT; t != s.mode {
		unix.Close(fd)
		return fmt.Errorf("found a node of type %#o, the source had %#o", t, s.mode)
	}
	if s.kind == kindHandle && st.Ino != s.ino {
		unix.Close(fd)
		return fmt.Errorf("the handle opened inode %d (not on the shared directory's filesystem?)", st.Ino)
	}
	if s.kind == kindPath && len(s.fh) != 0 {
		var b fileHandleBuf
		var mnt int32
		if e := sysNameToHandleAt(fd, &b, &mnt); e != 0 || !bytes.Equal(b.raw(), s.fh) {
			unix.Close(fd)
			return errors.New("the path leads to another inode than the source's (--migration-verify-handles)")
		}
	}
	fs.inodes.mu.Lock()
	_, dup := fs.inodes.byKey[keyOf(&st)]
	fs.inodes.mu.Unlock()
	if dup {
		unix.Close(fd)
		return errors.New("another node id already holds this inode")
	}
	i, e := fs.newInode(fd, &st)
	if e != 0 {
		return e
	}
	t := fs.inodes
	t.mu.Lock()
	delete(t.byID, i.id)
	i.id, i.lookups = s.id, s.lookups
	t.byID[s.id] = i
	t.mu.Unlock()
	return nil
}

// restoreHandle re-opens an open file or directory.
func (m *Migration) restoreHandle(h handleState) error {
	fs := m.fs
	i := fs.inodes.get(h.node)
	if i == nil {
		return errors.New("its inode was not restored")
	}
	defer i.put()
	flags := int(h.flags) &^ (unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC | unix.O_NOCTTY | unix.O_NOFOLLOW)
	var ds *dirStream
	want := regular
	if h.dir {
		flags, want = unix.O_RDONLY, directory
		ds = &dirStream{buf: make([]byte, dirBufSize)}
	}
	fd, e := fs.openInode(i, want, flags)
	if e != 0 {
		return e
	}
	i.refs.Add(1)
	hd := &handle{fd: fd, ino: i, dir: ds, flags: uint32(flags)}
	hd.refs.Store(1)
	fs.handles.mu.Lock()
	fs.handles.m[h.fh] = hd
	fs.handles.mu.Unlock()
	return nil
}
