package frontend_test

import (
	"testing"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
)

// TestGuestMemory checks the region layouts, address translation and the
// allocator.
func TestGuestMemory(t *testing.T) {
	const MiB = 1 << 20
	cases := []struct {
		name   string
		layout frontend.MemoryLayout
		// crossOK: a range across the region boundary is one host slice.
		crossOK bool
	}{
		{"one region", frontend.MemoryLayout{Size: 8 * MiB}, true},
		{"two contiguous regions", frontend.MemoryLayout{Size: 8 * MiB, Regions: 2}, true},
		{"two regions around a hole", frontend.MemoryLayout{Size: 8 * MiB, Regions: 2, HighGPA: 4 << 30, UserBase: 0x7f0000000000}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := frontend.NewGuestMemory(tc.layout)
			must(t, "new", err)
			defer m.Close()
			rs := m.Regions()
			var total uint64
			for i, r := range rs {
				total += r.Size
				if u, err := m.UserAddr(r.GuestAddr + 100); err != nil || u != r.UserAddr+100 {
					t.Errorf("region %d: user address of %#x: %#x, %v", i, r.GuestAddr+100, u, err)
				}
				if i > 0 && r.MmapOffset != rs[i-1].MmapOffset+rs[i-1].Size {
					t.Errorf("region %d: mmap offset %#x", i, r.MmapOffset)
				}
			}
			if total != m.Size() || total != 8*MiB {
				t.Fatalf("regions cover %d bytes of %d", total, m.Size())
			}
			if tc.layout.UserBase != 0 && rs[0].UserAddr != tc.layout.UserBase {
				t.Errorf("user base %#x, want %#x", rs[0].UserAddr, tc.layout.UserBase)
			}
			last := rs[len(rs)-1]
			if _, err := m.Bytes(last.GuestAddr+last.Size-8, 16); err == nil {
				t.Error("a range past the end of RAM translated")
			}
			if len(rs) == 2 {
				_, err := m.Bytes(rs[1].GuestAddr-8, 16)
				if (err == nil) != tc.crossOK {
					t.Errorf("range across the boundary: %v, want ok=%v", err, tc.crossOK)
				}
			}

			// Writes through one translation are seen through another.
			a, err := m.Alloc(100)
			must(t, "alloc", err)
			b1, _ := m.Bytes(a, 100)
			copy(b1, "hello")
			b2, _ := m.Bytes(a+1, 4)
			if string(b2) != "ello" {
				t.Errorf("read back %q", b2)
			}
			if a < 64<<10 {
				t.Errorf("allocation at %#x, inside the reserved low memory", a)
			}

			// Allocations do not overlap, land in every region, and
			// freed memory is reused.
			seen := map[int]bool{}
			type span struct{ a, n uint64 }
			var spans []span
			for _, n := range []uint64{1, 64, 65, 4096, 5000, 100 << 10, 1 * MiB} {
				g, err := m.Alloc(n)
				must(t, "alloc", err)
				size := frontend.ClassSize(n)
				if size < n || (size >= 4096 && g%4096 != 0) {
					t.Errorf("alloc %d: %d bytes at %#x", n, size, g)
				}
				for _, s := range spans {
					if g < s.a+s.n && s.a < g+size {
						t.Fatalf("alloc %d at %#x overlaps %#x+%d", n, g, s.a, s.n)
					}
				}
				spans = append(spans, span{g, size})
				for i, r := range rs {
					if g >= r.GuestAddr && g+size <= r.GuestAddr+r.Size {
						seen[i] = true
					}
				}
			}
			if len(seen) != len(rs) {
				t.Errorf("allocations landed in regions %v of %d", seen, len(rs))
			}
			m.Free(spans[3].a, 4096)
			if g, _ := m.Alloc(4000); g != spans[3].a {
				t.Errorf("freed block at %#x not reused (got %#x)", spans[3].a, g)
			}
			low, err := m.AllocIn(0, 4096)
			must(t, "alloc in region 0", err)
			if low >= rs[0].GuestAddr+rs[0].Size {
				t.Errorf("AllocIn(0) returned %#x outside region 0", low)
			}
			if _, err := m.Alloc(64 * MiB); err == nil {
				t.Error("allocated more than the RAM")
			}
		})
	}
}
