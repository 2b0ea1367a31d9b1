package passthrough

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// TestReadSplit compares split reads with the file: split points inside
// and across segments, reads that end in either half, and reads past the
// end.
func TestReadSplit(t *testing.T) {
	if splitHelpers() == nil {
		t.Fatalf("no split helpers with GOMAXPROCS %d: this test needs 2 CPUs", runtime.GOMAXPROCS(0))
	}
	data := make([]byte, 3<<20+123)
	for i := range data {
		data[i] = byte(i*31 + i>>9)
	}
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	for _, c := range []struct {
		name string
		off  int64
		segs []int
	}{
		{"one segment", 0, []int{1 << 20}},
		{"pages", 4096, pages(256)},
		{"uneven", 777, []int{1000, 300 << 10, 5, 200 << 10, 3}},
		{"end in second half", int64(len(data)) - 400<<10, []int{1 << 20}},
		{"end in first half", int64(len(data)) - 100<<10, []int{1 << 20}},
		{"past the end", int64(len(data)) + 10, []int{1 << 20}},
		{"small", 0, []int{64 << 10}},
	} {
		bufs := make([][]byte, len(c.segs))
		want := 0
		for i, n := range c.segs {
			bufs[i] = make([]byte, n)
			want += n
		}
		segs := append([][]byte(nil), bufs...)
		n, e, split := readSplit(fd, segs, c.off)
		if !split {
			n, e = rwv(fd, segs, c.off, false)
		}
		if e != 0 {
			t.Fatalf("%s: %v", c.name, e)
		}
		for i := range segs {
			if len(segs[i]) != len(bufs[i]) || &segs[i][0] != &bufs[i][0] {
				t.Fatalf("%s: segment %d not restored", c.name, i)
			}
		}
		exp := min(want, max(0, len(data)-int(c.off)))
		if n != exp {
			t.Errorf("%s: read %d bytes, want %d (split %v)", c.name, n, exp, split)
		}
		if got := bytes.Join(bufs, nil)[:n]; n > 0 && !bytes.Equal(got, data[c.off:int(c.off)+n]) {
			t.Errorf("%s: bytes differ from the file (split %v)", c.name, split)
		}
		if wantSplit := want >= splitMin; split != wantSplit {
			t.Errorf("%s: split %v, want %v", c.name, split, wantSplit)
		}
	}
	bufs := make([][]byte, 256)
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
	}
	if a := testing.AllocsPerRun(50, func() { readSplit(fd, bufs, 0) }); a != 0 {
		t.Errorf("a split read allocates %.1f times", a)
	}
}

func pages(n int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = 4096
	}
	return p
}
