package vhostuser

import (
	"testing"
)

// TestMappedTotalDefault: ADD_MEM_REG of large sparse regions, each within
// the bound on one region, as long as the back-end accepts them. They took
// the whole address space (about 128 TiB), and the daemon's next heap
// growth was a fatal out-of-memory error. The total is bounded by 16 TiB.
func TestMappedTotalDefault(t *testing.T) {
	s := newTestSession(t)
	fd := testMemfd(t, "sparse", 1<<47)
	ga, ua := uint64(0), uint64(0x1000)
	var total uint64
	for size := uint64(1 << 46); size >= 1<<30; {
		if st := s.request(AddMemReg, append(make([]byte, 8), region(ga, size, ua, 0)...), true, fd); st != 0 {
			size /= 2
			continue
		}
		total += size
		ga += size
		ua += size
		if total > 1<<44 {
			t.Fatalf("%d TiB mapped, beyond 16 TiB", total>>40)
		}
	}
	if total != 1<<44 {
		t.Errorf("%d GiB mapped, want 16 TiB", total>>30)
	}
}

// TestMappedTotalLimit: Options.MaxMapped counts every region still mapped,
// with its mmap offset, and a region removed gives its bytes back.
func TestMappedTotalLimit(t *testing.T) {
	const mib = 1 << 20
	s := newDeviceSession(t, &fakeDevice{queues: 2}, Options{Log: quietLog(), MaxMapped: 4 * mib})
	s.request(SetProtocolFeatures, u64le(ProtocolReplyAck|ProtocolConfigureMemSlots), false)
	fd := testMemfd(t, "limited", 8*mib)
	add := func(ga, size, off uint64) uint64 {
		return s.request(AddMemReg, append(make([]byte, 8), region(ga, size, ga+0x10000000, off)...), true, fd)
	}
	if st := add(0, 2*mib, 0); st != 0 {
		t.Fatal("first 2 MiB refused")
	}
	if st := add(4*mib, mib, mib); st != 0 { // maps 2 MiB: offset and size
		t.Fatal("second region refused")
	}
	if st := add(8*mib, 4096, 0); st == 0 {
		t.Fatal("a region past 4 MiB in all accepted")
	}
	rem := append(make([]byte, 8), region(0, 2*mib, 0x10000000, 0)...)
	if st := s.request(RemMemReg, rem, true); st != 0 {
		t.Fatal("REM_MEM_REG refused")
	}
	if st := add(8*mib, 2*mib, 0); st != 0 {
		t.Fatal("the removed region's bytes were not given back")
	}
	if st := s.request(SetMemTable, append(u32le(1, 0), region(0, 4*mib, 0x10000000, 0)...), true, fd); st == 0 {
		t.Fatal("SET_MEM_TABLE accepted past the limit while the old table is mapped")
	}
}
