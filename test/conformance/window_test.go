package frontend_test

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	"golang.org/x/sys/unix"
)

// TestBackendChannelWindow plays the back-end on a socketpair: it maps a
// memfd into the window with SHMEM_MAP and legacy FS_MAP messages, checks
// the bytes through the window, and checks that bad requests are refused
// and leave the window as it was.
func TestBackendChannelWindow(t *testing.T) {
	const winSize = 16 << 20
	const MiB = 1 << 20
	w, err := frontend.NewWindow(winSize)
	must(t, "window", err)
	defer w.Close()
	conn, peer, err := frontend.Socketpair()
	must(t, "socketpair", err)
	srv := frontend.NewBackendServer(conn, w)
	go srv.Serve()
	dev, err := frontend.PeerConn(peer)
	must(t, "peer", err)

	// The "file": a 4 MiB memfd with a recognisable pattern.
	fd, err := unix.MemfdCreate("dax-file", unix.MFD_CLOEXEC)
	must(t, "memfd", err)
	defer unix.Close(fd)
	file := make([]byte, 4*MiB)
	for i := range file {
		file[i] = byte(i/4096 + i%251)
	}
	if _, err := unix.Pwrite(fd, file, 0); err != nil {
		t.Fatal(err)
	}
	emptyfd, err := unix.MemfdCreate("dax-empty", unix.MFD_CLOEXEC)
	must(t, "memfd", err)
	defer unix.Close(emptyfd)
	rofd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, "read-only fd", err)
	defer unix.Close(rofd)

	// send sends one back-end request, with NEED_REPLY unless noReply,
	// and returns the ack status.
	send := func(req vhostuser.Request, payload []byte, noReply bool, fds ...int) uint64 {
		t.Helper()
		flags := uint32(vhostuser.FlagVersion | vhostuser.FlagNeedReply)
		if noReply {
			flags = vhostuser.FlagVersion
		}
		must(t, "write", dev.Write(req, flags, payload, fds...))
		if noReply {
			return 0
		}
		m, err := dev.Read()
		must(t, "read ack", err)
		if m.Request != req || m.Flags != vhostuser.FlagVersion|vhostuser.FlagReply || len(m.Payload) != 8 {
			t.Fatalf("ack of %d: request %d flags %#x %d bytes", req, m.Request, m.Flags, len(m.Payload))
		}
		return binary.LittleEndian.Uint64(m.Payload)
	}
	shmem := func(req vhostuser.Request, m frontend.ShmemMsg, fds ...int) uint64 {
		t.Helper()
		return send(req, m.Encode(), false, fds...)
	}
	window := func(off, n int) []byte {
		t.Helper()
		b := make([]byte, n)
		if _, err := w.ReadAt(b, int64(off)); err != nil {
			t.Fatalf("reading window %#x+%#x: %v", off, n, err)
		}
		return b
	}
	unmapped := func(off int) {
		t.Helper()
		if _, err := w.ReadAt(make([]byte, 1), int64(off)); err == nil {
			t.Fatalf("window offset %#x is readable, want unmapped", off)
		}
	}

	// Generic SHMEM_MAP, read-write.
	if st := shmem(frontend.BackendShmemMap, frontend.ShmemMsg{FdOffset: MiB, ShmOffset: 2 * MiB, Len: MiB, Flags: frontend.ShmemFlagRW}, fd); st != 0 {
		failure(t, srv, "SHMEM_MAP", st)
	}
	if !bytes.Equal(window(2*MiB, MiB), file[MiB:2*MiB]) {
		t.Fatal("window bytes differ from the mapped file range")
	}
	if _, err := w.WriteAt([]byte("through the window"), 2*MiB+10); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 18)
	unix.Pread(fd, got, MiB+10)
	if string(got) != "through the window" {
		t.Fatalf("write through the window not in the file: %q", got)
	}
	copy(file[MiB+10:], "through the window")
	unmapped(2*MiB - 1)
	unmapped(3 * MiB)

	// Requests that must be refused.
	bad := []struct {
		name string
		m    frontend.ShmemMsg
		fds  []int
	}{
		{"overlap", frontend.ShmemMsg{ShmOffset: 3*MiB - 4096, Len: 8192}, []int{fd}},
		{"past the end", frontend.ShmemMsg{ShmOffset: winSize - 4096, Len: 8192}, []int{fd}},
		{"offset overflow", frontend.ShmemMsg{ShmOffset: ^uint64(0) - 4095, Len: 8192}, []int{fd}},
		{"zero length", frontend.ShmemMsg{ShmOffset: 8 * MiB}, []int{fd}},
		{"unaligned window offset", frontend.ShmemMsg{ShmOffset: 8*MiB + 100, Len: 4096}, []int{fd}},
		{"unaligned file offset", frontend.ShmemMsg{FdOffset: 100, ShmOffset: 8 * MiB, Len: 4096}, []int{fd}},
		{"unaligned length", frontend.ShmemMsg{ShmOffset: 8 * MiB, Len: 100}, []int{fd}},
		{"other shmid", frontend.ShmemMsg{ShmID: 1, ShmOffset: 8 * MiB, Len: 4096}, []int{fd}},
		{"unknown flags", frontend.ShmemMsg{ShmOffset: 8 * MiB, Len: 4096, Flags: 6}, []int{fd}},
		{"no fd", frontend.ShmemMsg{ShmOffset: 8 * MiB, Len: 4096}, nil},
		{"two fds", frontend.ShmemMsg{ShmOffset: 8 * MiB, Len: 4096}, []int{fd, fd}},
		{"rw on a read-only fd", frontend.ShmemMsg{ShmOffset: 8 * MiB, Len: 4096, Flags: frontend.ShmemFlagRW}, []int{rofd}},
		{"past the end of the file", frontend.ShmemMsg{FdOffset: 4*MiB - 4096, ShmOffset: 8 * MiB, Len: 8192}, []int{fd}},
		{"an empty file", frontend.ShmemMsg{ShmOffset: 8 * MiB, Len: 4096, Flags: frontend.ShmemFlagRW}, []int{emptyfd}},
	}
	for _, b := range bad {
		if st := shmem(frontend.BackendShmemMap, b.m, b.fds...); st == 0 {
			t.Errorf("SHMEM_MAP %s: accepted", b.name)
		}
	}
	if st := send(frontend.BackendShmemMap, make([]byte, 39), false, fd); st == 0 {
		t.Error("SHMEM_MAP with a 39-byte payload: accepted")
	}
	unmapped(8 * MiB)
	if !bytes.Equal(window(2*MiB, MiB), file[MiB:2*MiB]) {
		t.Fatal("a refused request changed the mapping")
	}

	// Read-only mapping: readable, not writable.
	if st := shmem(frontend.BackendShmemMap, frontend.ShmemMsg{FdOffset: 0, ShmOffset: 8 * MiB, Len: 64 << 10}, rofd); st != 0 {
		failure(t, srv, "SHMEM_MAP read-only", st)
	}
	if !bytes.Equal(window(8*MiB, 64<<10), file[:64<<10]) {
		t.Fatal("read-only mapping differs from the file")
	}
	if _, err := w.WriteAt([]byte{1}, 8*MiB); err == nil {
		t.Fatal("wrote through a read-only mapping")
	}

	// SHMEM_UNMAP must name a whole mapping.
	if st := shmem(frontend.BackendShmemUnmap, frontend.ShmemMsg{ShmOffset: 2 * MiB, Len: 4096}); st == 0 {
		t.Error("SHMEM_UNMAP of part of a mapping: accepted")
	}
	if st := shmem(frontend.BackendShmemUnmap, frontend.ShmemMsg{ShmOffset: 2 * MiB, Len: MiB}); st != 0 {
		failure(t, srv, "SHMEM_UNMAP", st)
	}
	unmapped(2 * MiB)
	if st := shmem(frontend.BackendShmemUnmap, frontend.ShmemMsg{ShmOffset: 2 * MiB, Len: MiB}); st == 0 {
		t.Error("SHMEM_UNMAP twice: accepted")
	}
	if st := shmem(frontend.BackendShmemUnmap, frontend.ShmemMsg{ShmOffset: 8 * MiB, Len: 64 << 10}); st != 0 {
		failure(t, srv, "SHMEM_UNMAP read-only", st)
	}
	if n := len(w.Mappings()); n != 0 {
		t.Fatalf("%d mappings left: %+v", n, w.Mappings())
	}

	// Legacy FS_MAP: two slots in one message, then a remap over one.
	var fm frontend.FSMsg
	fm[0] = frontend.FSSlot{FdOffset: 0, COffset: 0, Len: 64 << 10, Flags: frontend.FSFlagRead | frontend.FSFlagWrite}
	fm[3] = frontend.FSSlot{FdOffset: 3 * MiB, COffset: 4 * MiB, Len: 128 << 10, Flags: frontend.FSFlagRead}
	if st := send(frontend.BackendFSMap, fm.Encode(), false, fd); st != 0 {
		failure(t, srv, "FS_MAP", st)
	}
	if !bytes.Equal(window(0, 64<<10), file[:64<<10]) || !bytes.Equal(window(4*MiB, 128<<10), file[3*MiB:3*MiB+128<<10]) {
		t.Fatal("FS_MAP: window differs from the file")
	}
	fm = frontend.FSMsg{{FdOffset: 2 * MiB, COffset: 4 * MiB, Len: 4096, Flags: frontend.FSFlagRead}}
	if st := send(frontend.BackendFSMap, fm.Encode(), false, fd); st != 0 {
		failure(t, srv, "FS_MAP over a mapping", st)
	}
	if !bytes.Equal(window(4*MiB, 4096), file[2*MiB:2*MiB+4096]) || !bytes.Equal(window(4*MiB+4096, 4096), file[3*MiB+4096:3*MiB+8192]) {
		t.Fatal("FS_MAP over a mapping: window differs from the file")
	}

	// A bad slot fails the whole message and undoes its good slots.
	fm = frontend.FSMsg{
		{FdOffset: 0, COffset: 12 * MiB, Len: 4096, Flags: frontend.FSFlagRead},
		{FdOffset: 0, COffset: winSize - 4096, Len: 8192, Flags: frontend.FSFlagRead},
	}
	if st := send(frontend.BackendFSMap, fm.Encode(), false, fd); st == 0 {
		t.Error("FS_MAP past the end: accepted")
	}
	unmapped(12 * MiB)
	fm = frontend.FSMsg{{FdOffset: 0, COffset: ^uint64(0) - 4095, Len: 8192, Flags: frontend.FSFlagRead}}
	if st := send(frontend.BackendFSMap, fm.Encode(), false, fd); st == 0 {
		t.Error("FS_MAP with an overflowing offset: accepted")
	}
	if st := send(frontend.BackendFSMap, fm.Encode()[:100], false, fd); st == 0 {
		t.Error("FS_MAP with a short payload: accepted")
	}

	// FS_SYNC, then FS_UNMAP of one page and of the whole window (len ~0),
	// the latter without NEED_REPLY: the next reply must be the next
	// request's.
	fm = frontend.FSMsg{{COffset: 0, Len: 64 << 10}}
	if st := send(frontend.BackendFSSync, fm.Encode(), false); st != 0 {
		failure(t, srv, "FS_SYNC", st)
	}
	fm = frontend.FSMsg{{COffset: 4096, Len: 4096}}
	if st := send(frontend.BackendFSUnmap, fm.Encode(), false); st != 0 {
		failure(t, srv, "FS_UNMAP", st)
	}
	unmapped(4096)
	if !bytes.Equal(window(0, 4096), file[:4096]) || !bytes.Equal(window(8192, 4096), file[8192:12288]) {
		t.Fatal("FS_UNMAP of a page disturbed its neighbours")
	}
	fm = frontend.FSMsg{{Len: ^uint64(0)}}
	send(frontend.BackendFSUnmap, fm.Encode(), true)
	if st := send(42, nil, false); st == 0 {
		t.Error("unknown back-end request 42: accepted")
	}
	unmapped(0)
	unmapped(4 * MiB)
	if n := len(w.Mappings()); n != 0 {
		t.Fatalf("%d mappings left after FS_UNMAP of everything: %+v", n, w.Mappings())
	}
	if srv.Count(frontend.BackendFSMap) != 5 || srv.Count(frontend.BackendShmemMap) != 17 {
		t.Errorf("counted %d FS_MAP and %d SHMEM_MAP", srv.Count(frontend.BackendFSMap), srv.Count(frontend.BackendShmemMap))
	}
	dev.Close()
	if err := srv.Err(); err != nil {
		t.Fatalf("server: %v", err)
	}
}

func failure(t *testing.T, srv *frontend.BackendServer, what string, st uint64) {
	t.Helper()
	_, err := srv.Failures()
	t.Fatalf("%s: status %d: %v", what, st, err)
}
