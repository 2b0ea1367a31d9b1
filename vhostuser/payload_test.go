package vhostuser

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// hexBytes decodes space-separated hex groups.
func hexBytes(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkRoundTrip checks that v encodes to want and decodes back to v,
// exactly and with a tail, and that one byte less is refused.
func checkRoundTrip[T interface {
	Payload[T]
	comparable
}](t *testing.T, v T, want []byte) {
	t.Helper()
	got := Encode(v)
	if !bytes.Equal(got, want) {
		t.Errorf("%T encodes to\n%x, want\n%x", v, got, want)
	}
	if len(got) != v.WireSize() {
		t.Errorf("%T encodes to %d bytes, its size is %d", v, len(got), v.WireSize())
	}
	if back, err := DecodeExact[T](want); err != nil || back != v {
		t.Errorf("%T decodes to %+v, %v, want %+v", v, back, err, v)
	}
	if back, err := Decode[T](append(append([]byte(nil), want...), 0xff, 0xff)); err != nil || back != v {
		t.Errorf("%T with a tail decodes to %+v, %v, want %+v", v, back, err, v)
	}
	if _, err := DecodeExact[T](append(append([]byte(nil), want...), 0)); err == nil {
		t.Errorf("%T: DecodeExact of %d bytes succeeded", v, len(want)+1)
	}
	var se *SizeError
	if _, err := Decode[T](want[:len(want)-1]); !errors.As(err, &se) || se.Len != len(want)-1 || se.Want != len(want) {
		t.Errorf("%T: Decode of %d bytes: %v, want a SizeError", v, len(want)-1, err)
	}
}

// TestPayloadLayouts pins every payload's wire form, as the vhost-user
// specification lays it out.
func TestPayloadLayouts(t *testing.T) {
	checkRoundTrip(t, U64{0x0102030405060708}, hexBytes(t, "0807060504030201"))
	checkRoundTrip(t, VringState{Index: 2, Num: 0x100}, hexBytes(t, "02000000 00010000"))
	checkRoundTrip(t, VringAddr{Index: 1, Flags: VringFlagLog, Descriptor: 0x1000, Used: 0x2000, Available: 0x3000, Log: 0x4000},
		hexBytes(t, "01000000 01000000 0010000000000000 0020000000000000 0030000000000000 0040000000000000"))
	checkRoundTrip(t, VringFd{Index: 3}, hexBytes(t, "0300000000000000"))
	checkRoundTrip(t, VringFd{Index: 0xff, NoFd: true}, hexBytes(t, "ff01000000000000"))
	region := MemoryRegion{GuestAddr: 0x100000, Size: 0x2000, UserAddr: 0x7f0000000000, MmapOffset: 0x1000}
	regionWire := "0000100000000000 0020000000000000 00000000007f0000 0010000000000000"
	checkRoundTrip(t, region, hexBytes(t, regionWire))
	checkRoundTrip(t, SingleMemoryRegion{Region: region}, hexBytes(t, "0000000000000000"+regionWire))
	checkRoundTrip(t, LogArea{Size: 0x1000, Offset: 8}, hexBytes(t, "0010000000000000 0800000000000000"))
	checkRoundTrip(t, DeviceStateTransfer{Direction: StateLoad, Phase: StatePhaseStopped}, hexBytes(t, "01000000 00000000"))
	checkRoundTrip(t, ConfigSpace{Offset: 4, Size: 36, Flags: 1}, hexBytes(t, "04000000 24000000 01000000"))
	checkRoundTrip(t, ShmemMap{ShmID: 1, FdOffset: 0x10, ShmOffset: 0x20, Len: 0x30, Flags: ShmemMapRW},
		hexBytes(t, "0100000000000000 1000000000000000 2000000000000000 3000000000000000 0100000000000000"))

	var sc ShmemConfig
	sc.NumRegions, sc.Sizes[0], sc.Sizes[1] = 2, 1<<30, 0x1000
	want := make([]byte, ShmemConfigSize)
	copy(want, hexBytes(t, "02000000 00000000 0000004000000000 0010000000000000"))
	checkRoundTrip(t, sc, want)

	var fs FSMsg
	fs.Slots[0] = FSSlot{FdOffset: 1, CacheOffset: 2, Len: 3, Flags: FSFlagRead | FSFlagWrite}
	fs.Slots[7] = FSSlot{Len: 4}
	want = make([]byte, FSMsgSize)
	want[0], want[64], want[128], want[192] = 1, 2, 3, 3
	want[128+56] = 4
	checkRoundTrip(t, fs, want)

	table := MemoryTable{Regions: []MemoryRegion{region, {GuestAddr: 1}}}
	if got, want := Encode(table), hexBytes(t, "02000000 00000000"+regionWire+"0100000000000000"+strings.Repeat("00", 24)); !bytes.Equal(got, want) {
		t.Errorf("MemoryTable encodes to\n%x, want\n%x", got, want)
	}
}

// TestPayloadDecodeAllocs checks that decoding a fixed-size payload and
// encoding one into a buffer of the caller's allocate nothing, as the
// inline decoding they replaced did not.
func TestPayloadDecodeAllocs(t *testing.T) {
	m := &Message{Request: SetVringAddr, Payload: make([]byte, 64)}
	var out [VringAddrSize]byte
	var sink uint64
	n := testing.AllocsPerRun(100, func() {
		a, err := decodeMsg[VringAddr](m)
		s, _ := decodeMsg[VringState](m)
		f, _ := decodeMsg[VringFd](m)
		u, _ := decodeMsg[U64](m)
		r, _ := decodeMsg[SingleMemoryRegion](m)
		if err != nil {
			t.Fatal(err)
		}
		a.Put(out[:])
		sink += a.Log + uint64(s.Num) + uint64(f.Index) + u.Value + r.Region.Size
	})
	if n != 0 {
		t.Errorf("%v allocations per decode, want 0", n)
	}
	_ = sink
}

// TestPayloadErrors checks the back-end's errors for payloads that do not
// fit, word for word as they were before the payload types.
func TestPayloadErrors(t *testing.T) {
	b := NewBackend(&fakeDevice{queues: 2}, Options{Log: quietLog()})
	for _, tc := range []struct {
		req     Request
		payload []byte
		want    string
	}{
		{SetFeatures, make([]byte, 4), "SET_FEATURES payload is 4 bytes, want 8"},
		{SetProtocolFeatures, nil, "SET_PROTOCOL_FEATURES payload is 0 bytes, want 8"},
		{SetVringNum, make([]byte, 7), "SET_VRING_NUM payload is 7 bytes, want 8"},
		{GetVringBase, make([]byte, 4), "GET_VRING_BASE payload is 4 bytes, want 8"},
		{SetVringAddr, make([]byte, 39), "SET_VRING_ADDR payload is 39 bytes, want 40"},
		{SetVringKick, make([]byte, 4), "SET_VRING_KICK payload is 4 bytes, want 8"},
		{SetMemTable, make([]byte, 4), "SET_MEM_TABLE payload is 4 bytes"},
		{SetMemTable, u32le(1, 0), "SET_MEM_TABLE with 1 regions, 8 bytes and 0 fds"},
		{SetMemTable, u32le(33, 0), "SET_MEM_TABLE with 33 regions, 8 bytes and 0 fds"},
		{AddMemReg, make([]byte, 39), "ADD_MEM_REG payload is 39 bytes, want 40"},
		{AddMemReg, make([]byte, 40), "ADD_MEM_REG carries 0 file descriptors, want 1"},
		{RemMemReg, make([]byte, 8), "REM_MEM_REG payload is 8 bytes, want 40"},
		{RemMemReg, make([]byte, 40), "REM_MEM_REG: no region at guest address 0x0 size 0x0"},
		{SetVringNum, u32le(2, 16), "ring index 2 out of range (device has 2 queues)"},
		{SetVringAddr, append(u32le(7, 0), make([]byte, 32)...), "ring index 7 out of range (device has 2 queues)"},
		{SetVringCall, u64le(0x1ff), "ring index 255 out of range (device has 2 queues)"},
		{SetVringErr, u64le(1), "SET_VRING_ERR carries 0 file descriptors, want 1"},
		{SetVringNum, u32le(1, 3), "queue 1: size 3 is not a power of two up to 32768"},
		{SetBackendReqFd, nil, "SET_BACKEND_REQ_FD carries 0 file descriptors, want 1"},
	} {
		_, err := b.handle(&Message{Request: tc.req, Flags: FlagVersion, Payload: tc.payload})
		if err == nil || err.Error() != tc.want {
			t.Errorf("%v with %d bytes: %v, want %q", tc.req, len(tc.payload), err, tc.want)
		}
	}
}
