package fuse

import (
	"fmt"
	"slices"
	"syscall"
	"testing"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// fakeDAX is a window that records what the server asks of it.
type fakeDAX struct {
	clamped   bool
	refuse    map[uint64]bool // Extending refuses these nodes
	inodeDAX  map[uint64]bool
	all       bool // InodeDAX says yes to every node
	grown     []uint64
	extending [][2]uint64
	asked     [][2]uint64 // InodeDAX(node, parent)
}

func (d *fakeDAX) Epoch() uint64 { return 0 }
func (d *fakeDAX) SetupIn(epoch, nodeID, foff, length, flags, moff uint64) Status {
	return OK
}
func (d *fakeDAX) Remove(moff, length uint64) Status { return OK }
func (d *fakeDAX) Reset(unmap bool)                  {}
func (d *fakeDAX) AlignmentLog2() uint16             { return 12 }
func (d *fakeDAX) Clamped() bool                     { return d.clamped }
func (d *fakeDAX) Grow(nodeID uint64) Status {
	d.grown = append(d.grown, nodeID)
	return OK
}
func (d *fakeDAX) Extending(nodeID, end uint64) Status {
	d.extending = append(d.extending, [2]uint64{nodeID, end})
	if d.refuse[nodeID] {
		return syscall.EIO
	}
	return OK
}
func (d *fakeDAX) InodeDAX(nodeID, parent uint64) bool {
	d.asked = append(d.asked, [2]uint64{nodeID, parent})
	return d.all || d.inodeDAX[nodeID]
}

func (d *fakeDAX) clear() { d.grown, d.extending, d.asked = nil, nil, nil }

func newDAXSession(t *testing.T, guest uint64) (*client, *fakeDAX) {
	d := &fakeDAX{refuse: map[uint64]bool{}, inodeDAX: map[uint64]bool{}}
	c := newClientCfg(t, layouts[1], Config{Capabilities: testCaps, DAX: d})
	in := initIn()
	in.Flags, in.Flags2 = uint32(guest), uint32(guest>>32)
	out := decode[gofuse.InitOut](t, c.ok(opInit, 0, args(in)))
	if got := uint64(out.Flags) | uint64(out.Flags2)<<32; got&gofuse.CAP_HAS_INODE_DAX != guest&gofuse.CAP_HAS_INODE_DAX {
		t.Fatalf("INIT flags %#x for a guest offering %#x", got, guest)
	}
	if out.MapAlignment != 12 {
		t.Fatalf("map_alignment %d", out.MapAlignment)
	}
	return c, d
}

// TestDAXInit: HAS_INODE_DAX is offered with a window, never without.
func TestDAXInit(t *testing.T) {
	newDAXSession(t, guestFlags)
	c := newSession(t, layouts[0])
	if f := c.srv.Negotiated(); f&(gofuse.CAP_HAS_INODE_DAX|gofuse.CAP_MAP_ALIGNMENT) != 0 {
		t.Fatalf("without a window the server agreed to %#x", f)
	}
}

// TestDAXInodeFlag: in dax=inode mode, every reply carrying a regular
// file's attributes says whether the guest maps it; directories never;
// without the guest's HAS_INODE_DAX nobody is asked.
func TestDAXInodeFlag(t *testing.T) {
	c, d := newDAXSession(t, guestFlags)
	dir := c.mkdir(root, "d", 0o755)
	on := c.create(dir.NodeId, "on", syscall.O_RDWR, 0o644)
	off := c.create(dir.NodeId, "off", syscall.O_RDWR, 0o644)
	d.inodeDAX[on.NodeId] = true
	d.inodeDAX[dir.NodeId] = true // a directory is not mapped, flag or not
	flagged := func(a gofuse.Attr) bool { return a.Flags&gofuse.ATTR_DAX != 0 }
	if e := c.lookup(dir.NodeId, "on"); !flagged(e.Attr) {
		t.Errorf("LOOKUP of a DAX file: flags %#x", e.Attr.Flags)
	}
	if e := c.lookup(dir.NodeId, "off"); flagged(e.Attr) {
		t.Errorf("LOOKUP of another file: flags %#x", e.Attr.Flags)
	}
	if e := c.lookup(root, "d"); flagged(e.Attr) {
		t.Errorf("LOOKUP of a directory: flags %#x", e.Attr.Flags)
	}
	if a := c.getattr(on.NodeId); !flagged(a) {
		t.Errorf("GETATTR of a DAX file: flags %#x", a.Flags)
	}
	if a := c.getattr(off.NodeId); flagged(a) {
		t.Errorf("GETATTR of another file: flags %#x", a.Flags)
	}
	if !slices.Contains(d.asked, [2]uint64{on.NodeId, dir.NodeId}) || !slices.Contains(d.asked, [2]uint64{on.NodeId, 0}) {
		t.Errorf("InodeDAX asked %v: want the parent on LOOKUP, 0 on GETATTR", d.asked)
	}
	fh := c.opendir(dir.NodeId)
	seen := 0
	for _, e := range readAll(c, dir.NodeId, fh, 4096, true) {
		if e.entry.NodeId == on.NodeId || e.entry.NodeId == off.NodeId {
			seen++
			if flagged(e.entry.Attr) != (e.entry.NodeId == on.NodeId) {
				t.Errorf("READDIRPLUS %q: flags %#x", e.name, e.entry.Attr.Flags)
			}
		}
	}
	if seen != 2 {
		t.Errorf("READDIRPLUS showed %d of the two files", seen)
	}
	d.all = true
	d.asked = nil
	cr := c.create(dir.NodeId, "new", syscall.O_RDWR, 0o644)
	if !flagged(cr.Attr) || !slices.Contains(d.asked, [2]uint64{cr.NodeId, dir.NodeId}) {
		t.Errorf("CREATE: flags %#x, asked %v", cr.Attr.Flags, d.asked)
	}

	// A guest that did not negotiate HAS_INODE_DAX.
	c, d = newDAXSession(t, guestFlags&^gofuse.CAP_HAS_INODE_DAX)
	f := c.create(root, "f", syscall.O_RDWR, 0o644)
	d.inodeDAX[f.NodeId] = true
	if e := c.lookup(root, "f"); flagged(e.Attr) || flagged(c.getattr(f.NodeId)) || len(d.asked) != 0 {
		t.Errorf("without HAS_INODE_DAX: flags %#x, asked %v", e.Attr.Flags, d.asked)
	}
}

// TestDAXGrowHooks: while the window has clamped mappings, every request
// that may grow a file asks first (and a refusal keeps the file as it
// was), and every reply that shows a size or follows a growth grows the
// mappings first; with nothing clamped, neither is asked.
func TestDAXGrowHooks(t *testing.T) {
	c, d := newDAXSession(t, guestFlags&^gofuse.CAP_HAS_INODE_DAX)
	f := c.create(root, "f", syscall.O_RDWR, 0o644)
	g := c.create(root, "g", syscall.O_RDWR, 0o644)
	c.write(f.NodeId, f.Fh, 0, pattern(8192, 1))
	steps := func() {
		c.write(f.NodeId, f.Fh, 8192, pattern(100, 2))
		c.ok(opSetattr, f.NodeId, args(&gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{Valid: gofuse.FATTR_SIZE, Size: 20000}}))
		c.ok(opFallocate, f.NodeId, args(&gofuse.FallocateIn{Fh: f.Fh, Offset: 20000, Length: 5000}))
		c.ok(opFallocate, f.NodeId, args(&gofuse.FallocateIn{Fh: f.Fh, Offset: 0, Length: 50000, Mode: 1})) // KEEP_SIZE
		c.ok(opCopyFileRange, f.NodeId, args(&gofuse.CopyFileRangeIn{FhIn: f.Fh, NodeIdOut: g.NodeId, FhOut: g.Fh, OffOut: 10, Len: 1000}))
		c.lookup(root, "f")
		c.getattr(g.NodeId)
		c.readdir(root, c.opendir(root), 0, 4096, true)
	}
	steps()
	if len(d.grown)+len(d.extending)+len(d.asked) != 0 {
		t.Fatalf("nothing clamped, yet grown %v, extending %v, asked %v", d.grown, d.extending, d.asked)
	}
	d.clamped = true
	steps()
	wantExt := [][2]uint64{{f.NodeId, 8292}, {f.NodeId, 20000}, {f.NodeId, 25000}, {g.NodeId, 1010}}
	if fmt.Sprint(d.extending) != fmt.Sprint(wantExt) {
		t.Errorf("Extending asked %v, want %v", d.extending, wantExt)
	}
	wantGrown := []uint64{f.NodeId, f.NodeId, f.NodeId, f.NodeId, g.NodeId, f.NodeId, g.NodeId}
	if got := d.grown[:min(len(d.grown), len(wantGrown))]; fmt.Sprint(got) != fmt.Sprint(wantGrown) {
		t.Errorf("Grow asked for %v, want %v then the READDIRPLUS entries", d.grown, wantGrown)
	}
	if rest := d.grown[min(len(d.grown), len(wantGrown)):]; !slices.Contains(rest, f.NodeId) || !slices.Contains(rest, g.NodeId) {
		t.Errorf("READDIRPLUS grew %v", rest)
	}
	// Refused: the file keeps its size and nothing grows.
	d.refuse[f.NodeId] = true
	d.clear()
	before := c.getattr(f.NodeId).Size
	req := c.writeReq(f.NodeId, f.Fh, before, pattern(10, 3))
	if r := c.serve(req, 16+8); r.errno() != syscall.EIO {
		t.Errorf("refused WRITE: %v", r.errno())
	}
	c.wantErr(syscall.EIO, opSetattr, f.NodeId, args(&gofuse.SetAttrIn{SetAttrInCommon: gofuse.SetAttrInCommon{Valid: gofuse.FATTR_SIZE, Size: 1 << 20}}))
	c.wantErr(syscall.EIO, opFallocate, f.NodeId, args(&gofuse.FallocateIn{Fh: f.Fh, Offset: 0, Length: 1 << 20}))
	if after := c.getattr(f.NodeId).Size; after != before {
		t.Errorf("refused requests changed the size from %d to %d", before, after)
	}
	if len(d.grown) != 2 { // the two GETATTRs
		t.Errorf("refused requests grew mappings: %v", d.grown)
	}
}

// TestDAXServeAllocs: a window with nothing clamped adds no allocation to
// the steady-state requests.
func TestDAXServeAllocs(t *testing.T) {
	c, reqs := steadyRequests(t, 4096, 0)
	c2, _ := newDAXSession(t, guestFlags&^gofuse.CAP_HAS_INODE_DAX)
	// Serve the same prebuilt requests with the DAX server's worker: the
	// memFS state they name exists in c only, so reuse c's filesystem.
	c2.srv.fs = c.srv.fs
	for i := range reqs {
		r := &reqs[i]
		for range 3 {
			if err := serveSteady(c2.w, r); err != nil {
				t.Fatalf("%s: %v", r.name, err)
			}
		}
		if n := testing.AllocsPerRun(50, func() { serveSteady(c2.w, r) }); n != 0 {
			t.Errorf("%s with a window: %v allocations", r.name, n)
		}
	}
}
