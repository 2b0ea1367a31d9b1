package fuse

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Live migration of a FUSE session.
//
// The destination daemon serves the guest without a new INIT: it needs the
// negotiated flags and minor, and the FileSystem's node ids and handles
// (MigratableFileSystem). The state travels as one stream:
//
//	magic "GVFS-MIG" | u32 version | u32 reserved (0) | u64 payload length
//	payload: u8 initialized | u32 minor | u64 flags | u32 fs state length | fs state
//	u32 CRC-32C of everything before it
//
// all little endian. The destination reads the whole stream (at most
// MaxStateSize bytes, into one buffer of the size the header gives: see
// readState), checks its length, checksum and every field, and
// only then hands the FileSystem its part, which the FileSystem checks in
// turn. A stream that fails any check is refused with an error naming what
// was wrong; it never reaches the tables.

// MigratableFileSystem is a FileSystem whose session state can move to a
// FileSystem of the same kind in another daemon.
type MigratableFileSystem interface {
	// SaveState returns the state of the node ids and handles issued in
	// the session. No request runs meanwhile.
	SaveState() ([]byte, error)
	// RestoreState makes a state SaveState returned (elsewhere) its own,
	// after Init with the session's flags. It must reject anything
	// malformed. No request runs meanwhile.
	RestoreState(state []byte) error
}

const (
	stateMagic   = "GVFS-MIG"
	stateVersion = 1
	stateHeader  = 8 + 4 + 4 + 8
	// MaxStateSize bounds the stream a destination accepts (a share with
	// millions of known inodes stays well under it).
	MaxStateSize = 1 << 30
)

var stateCRC = crc32.MakeTable(crc32.Castagnoli)

// ErrNotMigratable is returned when the FileSystem cannot move its state.
var ErrNotMigratable = errors.New("the filesystem cannot migrate its state")

func (s *Server) migratable() (MigratableFileSystem, bool) {
	if s.cfg.Migration != nil {
		return s.cfg.Migration, true
	}
	m, ok := s.fs.(MigratableFileSystem)
	return m, ok
}

// SaveState writes the session's state to w. The rings are stopped.
func (s *Server) SaveState(w io.Writer) error {
	mfs, ok := s.migratable()
	if !ok {
		return ErrNotMigratable
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var fsState []byte
	init := s.initialized.Load()
	if init {
		var err error
		if fsState, err = mfs.SaveState(); err != nil {
			return err
		}
	}
	var p StateWriter
	p.U8(boolByte(init))
	p.U32(s.minor.Load())
	p.U64(s.flags.Load())
	p.Bytes32(fsState)

	var out StateWriter
	out.buf = append(out.buf, stateMagic...)
	out.U32(stateVersion)
	out.U32(0)
	out.U64(uint64(len(p.buf)))
	out.buf = append(out.buf, p.buf...)
	out.U32(crc32.Checksum(out.buf, stateCRC))
	_, err := w.Write(out.buf)
	return err
}

// LoadState reads a state SaveState wrote from r, up to end of file, and
// makes it the session's: the guest continues without a new INIT. It ends
// any session in progress first. On error the session stays uninitialised.
func (s *Server) LoadState(r io.Reader) error {
	mfs, ok := s.migratable()
	if !ok {
		return ErrNotMigratable
	}
	b, err := readState(r)
	if err != nil {
		return fmt.Errorf("reading the migration state: %w", err)
	}
	init, minor, flags, fsState, err := decodeState(b)
	if err != nil {
		return fmt.Errorf("migration state: %w", err)
	}
	if init {
		if minor < MinMinor || minor > KernelMinor {
			return fmt.Errorf("migration state: FUSE minor %d is outside %d..%d", minor, MinMinor, KernelMinor)
		}
		if extra := flags &^ s.cfg.Capabilities; extra != 0 {
			return fmt.Errorf("migration state: the source negotiated capabilities %#x that this daemon does not offer (start it with the same options)", extra)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.initialized.Swap(false) {
		s.destroyLocked()
	}
	if !init {
		return nil
	}
	s.fs.Init(InitInfo{Flags: flags, Minor: minor})
	if err := mfs.RestoreState(fsState); err != nil {
		s.fs.Destroy()
		return err
	}
	s.flags.Store(flags)
	s.minor.Store(minor)
	s.initialized.Store(true)
	return nil
}

// readState reads a stream from r for decodeState: the header, then as
// many bytes as it gives and one more (a padded stream is refused), into
// one buffer of that size once its first MiB has arrived, so that reading
// a state costs its size and a bare header a MiB. A header that is not a
// state's, or that gives more than MaxStateSize, ends the read there.
func readState(r io.Reader) ([]byte, error) {
	head := make([]byte, stateHeader+4)
	n, err := io.ReadFull(r, head[:stateHeader])
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return head[:n], nil // too short
		}
		return nil, err
	}
	l := binary.LittleEndian.Uint64(head[16:])
	if !bytes.Equal(head[:8], []byte(stateMagic)) {
		// Enough for decodeState to tell what is wrong.
		n, err := io.ReadFull(r, head[stateHeader:])
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, err
		}
		return head[:stateHeader+n], nil
	}
	if l > MaxStateSize-stateHeader-4 {
		return nil, fmt.Errorf("the header gives a payload of %d bytes, more than %d", l, MaxStateSize-stateHeader-4)
	}
	// What the header gives (and one byte more, to see trailing bytes) is
	// read into one buffer of that size, so that a state costs its size
	// and no more; but only once the first MiB has come, so that a bare
	// header claiming a large state costs a MiB.
	want := stateHeader + int(l) + 4 + 1
	first := make([]byte, min(want, stateHeader+1<<20))
	copy(first, head[:stateHeader])
	n, err = io.ReadFull(r, first[stateHeader:])
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, err
	}
	if n < len(first)-stateHeader || len(first) == want {
		return first[:stateHeader+n], nil
	}
	b := make([]byte, want)
	copy(b, first)
	n, err = io.ReadFull(r, b[len(first):])
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, err
	}
	return b[:len(first)+n], nil
}

func decodeState(b []byte) (init bool, minor uint32, flags uint64, fsState []byte, err error) {
	if len(b) > MaxStateSize {
		return false, 0, 0, nil, fmt.Errorf("larger than %d bytes", MaxStateSize)
	}
	if len(b) < stateHeader+4 {
		return false, 0, 0, nil, fmt.Errorf("%d bytes, too short for a header", len(b))
	}
	if !bytes.Equal(b[:8], []byte(stateMagic)) {
		return false, 0, 0, nil, fmt.Errorf("bad magic %q (not a govirtiofsd state)", b[:8])
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != stateVersion {
		return false, 0, 0, nil, fmt.Errorf("version %d, this daemon reads version %d", v, stateVersion)
	}
	if r := binary.LittleEndian.Uint32(b[12:]); r != 0 {
		return false, 0, 0, nil, fmt.Errorf("reserved field %#x is not zero", r)
	}
	n := binary.LittleEndian.Uint64(b[16:])
	if n != uint64(len(b)-stateHeader-4) {
		return false, 0, 0, nil, fmt.Errorf("payload length %d, but %d bytes arrived (truncated or padded stream)", n, len(b)-stateHeader-4)
	}
	body := b[:len(b)-4]
	if want, got := binary.LittleEndian.Uint32(b[len(b)-4:]), crc32.Checksum(body, stateCRC); want != got {
		return false, 0, 0, nil, fmt.Errorf("checksum %#x does not match the content (%#x): corrupt stream", want, got)
	}
	d := NewStateReader(body[stateHeader:])
	i := d.U8()
	minor = d.U32()
	flags = d.U64()
	fsState = d.Bytes32(MaxStateSize)
	if err := d.End(); err != nil {
		return false, 0, 0, nil, err
	}
	if i > 1 {
		return false, 0, 0, nil, fmt.Errorf("initialized flag is %d", i)
	}
	if i == 0 && len(fsState) != 0 {
		return false, 0, 0, nil, errors.New("filesystem state without a session")
	}
	return i == 1, minor, flags, fsState, nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// StateWriter encodes a migration state, little endian.
type StateWriter struct{ buf []byte }

// Bytes returns what was written.
func (w *StateWriter) Bytes() []byte { return w.buf }

// U8 appends a byte.
func (w *StateWriter) U8(v uint8) { w.buf = append(w.buf, v) }

// U16 appends a u16.
func (w *StateWriter) U16(v uint16) { w.buf = binary.LittleEndian.AppendUint16(w.buf, v) }

// U32 appends a u32.
func (w *StateWriter) U32(v uint32) { w.buf = binary.LittleEndian.AppendUint32(w.buf, v) }

// U64 appends a u64.
func (w *StateWriter) U64(v uint64) { w.buf = binary.LittleEndian.AppendUint64(w.buf, v) }

// Bytes16 appends a byte string of at most 65535 bytes with its u16 length.
func (w *StateWriter) Bytes16(b []byte) {
	w.U16(uint16(len(b)))
	w.buf = append(w.buf, b...)
}

// Bytes32 appends a byte string with its u32 length.
func (w *StateWriter) Bytes32(b []byte) {
	w.U32(uint32(len(b)))
	w.buf = append(w.buf, b...)
}

// StateReader decodes a migration state. The first error sticks: later
// reads return zero values, and Err or End report it.
type StateReader struct {
	b   []byte
	off int
	err error
}

// NewStateReader reads b.
func NewStateReader(b []byte) *StateReader { return &StateReader{b: b} }

func (r *StateReader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.err = fmt.Errorf("truncated at byte %d: %s needs %d bytes, %d left", r.off, what, n, len(r.b)-r.off)
		return nil
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p
}

// U8 reads a byte.
func (r *StateReader) U8() uint8 {
	if p := r.take(1, "u8"); p != nil {
		return p[0]
	}
	return 0
}

// U16 reads a u16.
func (r *StateReader) U16() uint16 {
	if p := r.take(2, "u16"); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}

// U32 reads a u32.
func (r *StateReader) U32() uint32 {
	if p := r.take(4, "u32"); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

// U64 reads a u64.
func (r *StateReader) U64() uint64 {
	if p := r.take(8, "u64"); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

// Bytes16 reads a byte string with a u16 length of at most max bytes. The
// result aliases the input.
func (r *StateReader) Bytes16(max int) []byte {
	n := int(r.U16())
	if r.err == nil && n > max {
		r.err = fmt.Errorf("string of %d bytes at byte %d exceeds %d", n, r.off, max)
	}
	return r.take(n, "string")
}

// Bytes32 reads a byte string with a u32 length of at most max bytes.
func (r *StateReader) Bytes32(max int) []byte {
	n := int64(r.U32())
	if r.err == nil && n > int64(max) {
		r.err = fmt.Errorf("block of %d bytes at byte %d exceeds %d", n, r.off, max)
	}
	return r.take(int(n), "block")
}

// Count reads a u32 element count and checks that the rest of the input
// could hold that many elements of at least minSize bytes each.
func (r *StateReader) Count(minSize int) int {
	n := int64(r.U32())
	if r.err == nil && n*int64(minSize) > int64(len(r.b)-r.off) {
		r.err = fmt.Errorf("count %d at byte %d: the %d bytes left cannot hold that many", n, r.off, len(r.b)-r.off)
		return 0
	}
	return int(n)
}

// Fail records err (if no error came first).
func (r *StateReader) Fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

// Err returns the first error.
func (r *StateReader) Err() error { return r.err }

// End returns the first error, or an error if input is left over.
func (r *StateReader) End() error {
	if r.err == nil && r.off != len(r.b) {
		r.err = fmt.Errorf("%d bytes of trailing data", len(r.b)-r.off)
	}
	return r.err
}
