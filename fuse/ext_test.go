package fuse

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"syscall"
	"testing"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// --- encoding request extensions as Linux does (fs/fuse/dir.c) ---

func le32(vals ...uint32) []byte {
	var b []byte
	for _, v := range vals {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return b
}

func pad8(b []byte) []byte {
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	return b
}

// secCtxExt is a security-context extension with one context: a
// fuse_secctx_header {size, nr_secctx 1}, a fuse_secctx {size of value},
// the NUL-terminated name and the value, padded to 8.
func secCtxExt(name string, value []byte) []byte {
	body := pad8(append(append(le32(uint32(len(value)), 0), cstr(name)...), value...))
	return append(le32(uint32(8+len(body)), 1), body...)
}

// emptySecCtx is what Linux sends when no security module made a context.
func emptySecCtx() []byte { return le32(8, 0) }

// groupsExt is a FUSE_EXT_GROUPS extension.
func groupsExt(gids ...uint32) []byte {
	body := pad8(le32(append([]uint32{uint32(len(gids))}, gids...)...))
	return append(le32(uint32(8+len(body)), extGroups), body...)
}

// withExt appends ext to req and sets total_extlen and the length.
func withExt(req, ext []byte) []byte {
	req = append(req, ext...)
	binary.LittleEndian.PutUint32(req[0:], uint32(len(req)))
	return setExtlen(req, uint16(len(ext)/8))
}

// creators are the four node-creating requests, building a request that
// creates name in parent, then the extensions.
var creators = []struct {
	op    string
	build func(c *client, parent uint64, name string, ext []byte) []byte
}{
	{"MKDIR", func(c *client, parent uint64, name string, ext []byte) []byte {
		return withExt(c.build(opMkdir, parent, args(&gofuse.MkdirIn{Mode: 0o755}), cstr(name)), ext)
	}},
	{"MKNOD", func(c *client, parent uint64, name string, ext []byte) []byte {
		return withExt(c.build(opMknod, parent, args(&gofuse.MknodIn{Mode: syscall.S_IFIFO | 0o644}), cstr(name)), ext)
	}},
	{"SYMLINK", func(c *client, parent uint64, name string, ext []byte) []byte {
		return withExt(c.build(opSymlink, parent, cstr(name), cstr("target")), ext)
	}},
	{"CREATE", func(c *client, parent uint64, name string, ext []byte) []byte {
		return withExt(c.build(opCreate, parent, args(&gofuse.CreateIn{Flags: syscall.O_RDWR, Mode: 0o644}), cstr(name)), ext)
	}},
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// TestExtensions checks that well-formed extensions reach the FileSystem
// decoded, for each node-creating request and every layout.
func TestExtensions(t *testing.T) {
	label := []byte("system_u:object_r:container_file_t:s0\x00")
	tests := []struct {
		name string
		ext  []byte
		want memExt // op is filled in; zero: the plain method serves it
	}{
		{name: "context", ext: secCtxExt("security.selinux", label),
			want: memExt{hasSecCtx: true, secName: "security.selinux", secValue: label}},
		{name: "context needing no padding", ext: secCtxExt("user.ab", []byte("12345678")),
			want: memExt{hasSecCtx: true, secName: "user.ab", secValue: []byte("12345678")}},
		{name: "one-byte context", ext: secCtxExt("user.x", []byte("v")),
			want: memExt{hasSecCtx: true, secName: "user.x", secValue: []byte("v")}},
		{name: "255-byte name", ext: secCtxExt("user."+strings.Repeat("n", 250), []byte("v")),
			want: memExt{hasSecCtx: true, secName: "user." + strings.Repeat("n", 250), secValue: []byte("v")}},
		{name: "empty context", ext: emptySecCtx()},
		{name: "group", ext: groupsExt(4321), want: memExt{hasSuppGroup: true, suppGroup: 4321}},
		{name: "empty context and group", ext: cat(emptySecCtx(), groupsExt(7)), want: memExt{hasSuppGroup: true, suppGroup: 7}},
		{name: "context and group", ext: cat(secCtxExt("security.selinux", label), groupsExt(0xfffffffe)),
			want: memExt{hasSecCtx: true, secName: "security.selinux", secValue: label, hasSuppGroup: true, suppGroup: 0xfffffffe}},
		{name: "group and context", ext: cat(groupsExt(9), secCtxExt("user.l", []byte("abc"))),
			want: memExt{hasSecCtx: true, secName: "user.l", secValue: []byte("abc"), hasSuppGroup: true, suppGroup: 9}},
	}
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		for i, tc := range tests {
			for _, cr := range creators {
				name := fmt.Sprintf("n%d-%s", i, cr.op)
				_, before := c.fs.lastExt()
				r := c.serve(cr.build(c, root, name, tc.ext), 4096)
				if r.n == 0 || r.errno() != 0 {
					t.Fatalf("%s %s: n %d, %v", cr.op, tc.name, r.n, r.errno())
				}
				e := decode[gofuse.EntryOut](t, r.body)
				got, calls := c.fs.lastExt()
				if !tc.want.hasSecCtx && !tc.want.hasSuppGroup {
					if calls != before {
						t.Errorf("%s %s: %s reached the FileSystem with %+v", cr.op, tc.name, got.op, got)
					}
					continue
				}
				want := tc.want
				want.op = cr.op
				if calls != before+1 || fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s %s: FileSystem got %+v (%d calls), want %+v", cr.op, tc.name, got, calls-before, want)
				}
				if want.hasSecCtx {
					if v, ok := c.fs.xattr(e.NodeId, want.secName); !ok || !bytes.Equal(v, want.secValue) {
						t.Errorf("%s %s: xattr %q = %q, %v", cr.op, tc.name, want.secName, v, ok)
					}
				}
				if cr.op == "CREATE" {
					c.release(e.NodeId, decode[gofuse.CreateOut](t, r.body).Fh)
				}
			}
		}
		// CREATE of an existing file hands over its context too; the
		// FileSystem labels only what it creates.
		f := c.create(root, "existing", syscall.O_RDWR, 0o644)
		c.release(f.NodeId, f.Fh)
		r := c.serve(creators[3].build(c, root, "existing", secCtxExt("user.l", []byte("new"))), 4096)
		if r.errno() != 0 {
			t.Fatalf("CREATE of an existing file with a context: %v", r.errno())
		}
		if v, ok := c.fs.xattr(f.NodeId, "user.l"); ok {
			t.Errorf("existing file labelled %q", v)
		}
		c.release(f.NodeId, decode[gofuse.CreateOut](t, r.body).Fh)
		c.checkFS()
	})
}

// TestExtensionsMalformed sends each malformed extension with each
// node-creating request: every one must be refused with EINVAL before
// anything is created or the FileSystem sees it.
func TestExtensionsMalformed(t *testing.T) {
	ctx := secCtxExt("user.l", []byte("abc")) // 8 + 8 + 7 + 3 = 26, padded to 32
	patch := func(b []byte, off int, v uint32) []byte {
		b = bytes.Clone(b)
		binary.LittleEndian.PutUint32(b[off:], v)
		return b
	}
	twoCtx := func() []byte {
		one := pad8(append(append(le32(3, 0), cstr("user.a")...), "abc"...))
		body := append(bytes.Clone(one), one...)
		return append(le32(uint32(8+len(body)), 2), body...)
	}
	tests := []struct {
		name string
		ext  []byte
	}{
		{"zero header", make([]byte, 8)},
		{"size 0 with data", cat(le32(0, 1), make([]byte, 24))},
		{"size 4", cat(le32(4, 0), make([]byte, 4))},
		{"size not a multiple of 8", patch(ctx, 0, 28)},
		{"size past the end", patch(ctx, 0, 40)},
		{"size 2^32-8", patch(ctx, 0, 0xfffffff8)},
		{"size past the end of a second extension", cat(emptySecCtx(), patch(groupsExt(1), 0, 24))},
		{"garbage after an extension", cat(groupsExt(1), le32(0, 0))},
		{"unknown type 33", patch(groupsExt(1), 4, 33)},
		{"unknown type 2^32-1", patch(groupsExt(1), 4, 0xffffffff)},
		{"nr_secctx 2", twoCtx()},
		{"nr_secctx 31", patch(ctx, 4, 31)},
		{"nr_secctx 0 with a context", patch(ctx, 4, 0)},
		{"nr_secctx 1 without a context", le32(8, 1)},
		{"fuse_secctx alone", cat(le32(16, 1), le32(3, 0))},
		{"context size 0", patch(ctx, 8, 0)},
		{"context size past the end", patch(ctx, 8, 10)},
		{"context size 2^32-1", patch(ctx, 8, 0xffffffff)},
		{"context shorter than its padded extension", patch(secCtxExt("user.l", []byte("abcdefghijk")), 8, 3)},
		{"unterminated name", cat(le32(24, 1), le32(8, 0), []byte("user.abc"))},
		{"name with value but no NUL", cat(le32(32, 1), le32(3, 0), []byte("user.abcdefghijk"))},
		{"empty name", secCtxExt("", []byte("abc"))},
		{"256-byte name", secCtxExt("user."+strings.Repeat("n", 251), []byte("v"))},
		{"two contexts extensions", cat(ctx, ctx)},
		{"empty and full context", cat(emptySecCtx(), ctx)},
		{"two group extensions", cat(groupsExt(1), groupsExt(2))},
		{"no groups", groupsExt()},
		{"two groups", groupsExt(1, 2)},
		{"three groups", groupsExt(1, 2, 3)},
		{"groups nr 1 with two groups' room", patch(groupsExt(1, 2), 8, 1)},
		{"groups nr 2^32-1", patch(groupsExt(1), 8, 0xffffffff)},
		{"groups without a body", le32(8, extGroups)},
	}
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		for _, tc := range tests {
			for _, cr := range creators {
				req := cr.build(c, root, "victim", tc.ext)
				if r := c.serve(req, 4096); r.n == 0 || r.errno() != syscall.EINVAL {
					t.Errorf("%s with %s: n %d, %v, want EINVAL", cr.op, tc.name, r.n, r.errno())
				}
			}
		}
		if _, calls := c.fs.lastExt(); calls != 0 {
			t.Errorf("%d malformed requests reached the FileSystem", calls)
		}
		if c.fail(opLookup, root, cstr("victim")) != syscall.ENOENT {
			t.Errorf("a refused request created its node")
		}
		c.checkFS()
	})
}

// TestExtensionsBounds moves total_extlen over well-formed requests: the
// extension area must lie within the request, after the names.
func TestExtensionsBounds(t *testing.T) {
	forLayouts(t, func(t *testing.T, lay layout) {
		c := newSession(t, lay)
		for _, cr := range creators {
			req := cr.build(c, root, "victim-"+cr.op, cat(emptySecCtx(), groupsExt(5)))
			// total_extlen 1 takes the group extension's tail.
			if r := c.serve(setExtlen(bytes.Clone(req), 1), 4096); r.errno() != syscall.EINVAL {
				t.Errorf("%s with total_extlen 1: %v, want EINVAL", cr.op, r.errno())
			}
			units := binary.LittleEndian.Uint16(req[36:])
			for _, n := range []uint16{units + 1, units + 2, 0x100, 0xffff} {
				if r := c.serve(setExtlen(bytes.Clone(req), n), 4096); r.errno() != syscall.EINVAL {
					t.Errorf("%s with total_extlen %d of %d: %v, want EINVAL", cr.op, n, units, r.errno())
				}
			}
			// Fewer units than sent: the empty context is left
			// between the names and the extension area, which Linux
			// never does.
			if r := c.serve(setExtlen(bytes.Clone(req), units-1), 4096); r.errno() != syscall.EINVAL {
				t.Errorf("%s with total_extlen %d of %d: %v, want EINVAL", cr.op, units-1, units, r.errno())
			}
			// Extensions but total_extlen 0: they are taken as trailing
			// bytes after the names, which are ignored.
			r := c.serve(setExtlen(bytes.Clone(req), 0), 4096)
			if r.errno() != 0 {
				t.Errorf("%s with total_extlen 0: %v", cr.op, r.errno())
			}
			if cr.op == "CREATE" {
				c.release(decode[gofuse.EntryOut](t, r.body).NodeId, decode[gofuse.CreateOut](t, r.body).Fh)
			}
			if _, calls := c.fs.lastExt(); calls != 0 {
				t.Errorf("%s with total_extlen 0 went to the *Ext method", cr.op)
			}
		}
		// A request that is all extension: no name before it.
		r := c.serve(withExt(c.build(opMkdir, root, args(&gofuse.MkdirIn{Mode: 0o755})), groupsExt(5)), 4096)
		if r.errno() != syscall.EINVAL {
			t.Errorf("MKDIR without a name but an extension: %v", r.errno())
		}
		c.checkFS()
	})
}

// plainFS hides memFS's *Ext methods: a FileSystem without extensions.
type plainFS struct{ FileSystem }

// TestExtensionsNotNegotiated checks that extensions are refused unless
// their capability was agreed at INIT, and that a FileSystem that cannot
// take them is never offered them.
func TestExtensionsNotNegotiated(t *testing.T) {
	ctx, grp := secCtxExt("user.l", []byte("abc")), groupsExt(5)
	t.Run("filesystem without extensions", func(t *testing.T) {
		srv := NewServer(plainFS{newMemFS()}, Config{Capabilities: testCaps, Log: quietLogger()})
		c := &client{t: t, srv: srv, w: srv.NewWorker(), ctx: testCaller, outSize: 8192}
		out := c.init()
		if flags := uint64(out.Flags2) << 32; flags&(gofuse.CAP_SECURITY_CTX|gofuse.CAP_CREATE_SUPP_GROUP) != 0 {
			t.Errorf("offered %#x to a FileSystem without extensions", flags)
		}
		for _, cr := range creators {
			for _, ext := range [][]byte{ctx, grp, emptySecCtx()} {
				c.wantErrReq(syscall.EINVAL, cr.build(c, root, "victim", ext))
			}
		}
		c.ok(opMkdir, root, args(&gofuse.MkdirIn{Mode: 0o755}), cstr("plain"))
	})
	for _, tc := range []struct {
		name     string
		caps     uint64 // the server's
		guest    uint64 // the guest's
		ok, fail [][]byte
	}{
		{name: "server without SECURITY_CTX", caps: testCaps &^ gofuse.CAP_SECURITY_CTX, guest: guestFlags,
			ok: [][]byte{grp}, fail: [][]byte{ctx, emptySecCtx(), cat(grp, emptySecCtx())}},
		{name: "guest without SECURITY_CTX", caps: testCaps, guest: guestFlags &^ gofuse.CAP_SECURITY_CTX,
			ok: [][]byte{grp}, fail: [][]byte{ctx, emptySecCtx()}},
		{name: "server without CREATE_SUPP_GROUP", caps: testCaps &^ gofuse.CAP_CREATE_SUPP_GROUP, guest: guestFlags,
			ok: [][]byte{ctx, emptySecCtx()}, fail: [][]byte{grp, cat(ctx, grp)}},
		{name: "guest without INIT_EXT", caps: testCaps, guest: guestFlags &^ gofuse.CAP_INIT_EXT,
			fail: [][]byte{grp, ctx, emptySecCtx()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClientCfg(t, layout{}, Config{Capabilities: tc.caps})
			in := initIn()
			in.Flags, in.Flags2 = uint32(tc.guest), uint32(tc.guest>>32)
			c.ok(opInit, 0, args(in))
			for i, ext := range tc.fail {
				for _, cr := range creators {
					c.wantErrReq(syscall.EINVAL, cr.build(c, root, fmt.Sprintf("f%d", i), ext))
				}
			}
			for i, ext := range tc.ok {
				for _, cr := range creators {
					r := c.serve(cr.build(c, root, fmt.Sprintf("o%d-%s", i, cr.op), ext), 4096)
					if r.errno() != 0 {
						t.Errorf("%s with extension %d: %v", cr.op, i, r.errno())
					}
				}
			}
		})
	}
}

// wantErrReq serves req and requires errno want.
func (c *client) wantErrReq(want syscall.Errno, req []byte) {
	c.t.Helper()
	r := c.serve(req, 4096)
	if r.n == 0 || r.errno() != want {
		c.t.Errorf("%s: n %d, %v, want %v", describe(req), r.n, r.errno(), want)
	}
}

// TestExtensionsOtherOps checks that extensions on requests that create
// nothing are left alone, as before SECURITY_CTX: Linux sends none there.
func TestExtensionsOtherOps(t *testing.T) {
	c := newSession(t, layout{})
	c.mkdir(root, "d", 0o755)
	for _, ext := range [][]byte{secCtxExt("user.l", []byte("abc")), le32(0, 0xffff)} {
		r := c.serve(withExt(c.build(opLookup, root, cstr("d")), ext), 4096)
		if r.errno() != 0 {
			t.Errorf("LOOKUP with an extension: %v", r.errno())
		}
	}
	if _, calls := c.fs.lastExt(); calls != 0 {
		t.Errorf("LOOKUP extensions reached the FileSystem")
	}
}

// TestExtensionsAllocs checks that decoding extensions allocates nothing.
func TestExtensionsAllocs(t *testing.T) {
	c := newSession(t, layout{})
	// As after a request whose names ended where its extensions begin.
	c.w.args, c.w.namesEnd = c.w.in[:0], 0
	c.w.extArea = cat(secCtxExt("security.selinux", []byte("system_u:object_r:container_file_t:s0\x00")), groupsExt(5))
	allocs := testing.AllocsPerRun(100, func() {
		if e, st := c.w.extensions(); st != OK || e == nil || !e.HasSuppGroup || len(e.SecCtxValue) == 0 {
			panic("extensions not decoded")
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per decode, want 0", allocs)
	}
}
