package passthrough

import (
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestParseIDMapping(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want IDMapping
		str  string
	}{
		{"guest:1000:2000:10", IDMapping{IDMapGuest, 1000, 2000, 10}, "guest:1000:2000:10"},
		{"host:2000:1000:10", IDMapping{IDMapHost, 2000, 1000, 10}, "host:2000:1000:10"},
		{"squash-guest:0:65534:1000", IDMapping{IDMapSquashGuest, 0, 65534, 1000}, "squash-guest:0:65534:1000"},
		{"squash-host:0:65534:1000", IDMapping{IDMapSquashHost, 0, 65534, 1000}, "squash-host:0:65534:1000"},
		{"map:0:100000:65536", IDMapping{IDMapBoth, 0, 100000, 65536}, "map:0:100000:65536"},
		{"forbid-guest:7:2", IDMapping{IDMapForbidGuest, 7, 0, 2}, "forbid-guest:7:2"},
		// The type ignores case; any other separator serves; '+' and
		// leading zeros are fine; the whole u32 range parses.
		{"GUEST:1:2:3", IDMapping{IDMapGuest, 1, 2, 3}, "guest:1:2:3"},
		{"Squash-Host/1/2/3", IDMapping{IDMapSquashHost, 1, 2, 3}, "squash-host:1:2:3"},
		{"map→+1→007→3", IDMapping{IDMapBoth, 1, 7, 3}, "map:1:7:3"},
		{"guest:4294967295:0:4294967295", IDMapping{IDMapGuest, 4294967295, 0, 4294967295}, "guest:4294967295:0:4294967295"},
	} {
		got, err := ParseIDMapping(tc.in)
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
		require.Equal(t, tc.str, got.String(), tc.in)
	}
	// virtiofsd 1.13.2's messages for the same values.
	for in, want := range map[string]string{
		"":                      "Invalid ID map length (expected 1 elements, got 0 elements)",
		"guest":                 "Invalid ID map length (expected 1 elements, got 0 elements)",
		"foo:0:1:2":             "Invalid ID map prefix foo",
		"guest_x:1:0:1":         "Invalid ID map prefix guest_x",
		"Foo:a":                 "Invalid value a in ID map: invalid digit found in string",
		"guest:0:1000":          "Invalid ID map length (expected 3 elements, got 2 elements)",
		"guest:0:1000:1:2":      "Invalid ID map length (expected 3 elements, got 4 elements)",
		"forbid-guest:5":        "Invalid ID map length (expected 2 elements, got 1 elements)",
		"forbid-guest:5:2:3":    "Invalid ID map length (expected 2 elements, got 3 elements)",
		"guest:a:1:1":           "Invalid value a in ID map: invalid digit found in string",
		"guest:-1:1:1":          "Invalid value -1 in ID map: invalid digit found in string",
		"guest:+:0:1":           "Invalid value + in ID map: invalid digit found in string",
		"guest:":                "Invalid value  in ID map: cannot parse integer from empty string",
		"guest::1:0:1":          "Invalid value  in ID map: cannot parse integer from empty string",
		"guest:1:0:1:":          "Invalid value  in ID map: cannot parse integer from empty string",
		"guest:0/1000:1":        "Invalid value 0/1000 in ID map: invalid digit found in string",
		"guest:4294967296:0:1":  "Invalid value 4294967296 in ID map: number too large to fit in target type",
		"guest:1:0:1 ":          "Invalid value 1  in ID map: invalid digit found in string",
		"gu est:1:0:1":          "Invalid value est:1:0:1 in ID map: invalid digit found in string",
		":guest:1:0:1":          "Invalid value guest in ID map: invalid digit found in string",
		"guestä:1:0:1":          "Invalid ID map prefix guestä",
		"map:99999999999a:1:1":  "Invalid value 99999999999a in ID map: number too large to fit in target type",
		"host:1:2:3:4:5:6:7:8x": "Invalid value 8x in ID map: invalid digit found in string",
	} {
		_, err := ParseIDMapping(in)
		require.EqualError(t, err, want, "%q", in)
	}
}

func mustIDMap(t *testing.T, rules ...string) *IDMap {
	t.Helper()
	var rs []IDMapping
	for _, r := range rules {
		m, err := ParseIDMapping(r)
		require.NoError(t, err, r)
		rs = append(rs, m)
	}
	m, err := NewIDMap(rs)
	require.NoError(t, err, "%v", rules)
	return m
}

func TestIDMapTranslates(t *testing.T) {
	var none *IDMap
	for _, id := range []uint32{0, 1, 1000, 65534, 4294967295} {
		h, ok := none.ToHost(id)
		require.True(t, ok)
		require.Equal(t, id, h)
		require.Equal(t, id, none.ToGuest(id))
	}
	m0, err := NewIDMap(nil)
	require.NoError(t, err)
	require.Nil(t, m0, "no rules, no table")

	m := mustIDMap(t,
		"map:1000:2000:10",            // guest 1000..1009 <-> host 2000..2009
		"guest:0:5000:1",              // guest 0 -> host 5000
		"host:0:7:1",                  // host 0 -> guest 7
		"squash-guest:60000:65534:10", // guest 60000..60009 -> host 65534
		"squash-host:100000:65534:50", // host 100000..100049 -> guest 65534
		"forbid-guest:30:3",           // guest 30..32 refused
		"guest:4294967290:10:5",       // up to 4294967294 (the end is exclusive)
	)
	toHost := []struct {
		guest, host uint32
		ok          bool
	}{
		{999, 999, true}, {1000, 2000, true}, {1005, 2005, true}, {1009, 2009, true}, {1010, 1010, true},
		{0, 5000, true}, {1, 1, true},
		{59999, 59999, true}, {60000, 65534, true}, {60009, 65534, true}, {60010, 60010, true},
		{29, 29, true}, {30, 0, false}, {32, 0, false}, {33, 33, true},
		{4294967290, 10, true}, {4294967294, 14, true}, {4294967295, 4294967295, true},
		// Host-to-guest rules do not act guest to host.
		{7, 7, true}, {100000, 100000, true},
	}
	for _, tc := range toHost {
		h, ok := m.ToHost(tc.guest)
		require.Equal(t, tc.ok, ok, "guest %d", tc.guest)
		if ok {
			require.Equal(t, tc.host, h, "guest %d", tc.guest)
		}
	}
	toGuest := map[uint32]uint32{
		1999: 1999, 2000: 1000, 2009: 1009, 2010: 2010,
		0: 7, 1: 1, 5000: 5000, // guest:0:5000:1 is one way
		99999: 99999, 100000: 65534, 100049: 65534, 100050: 100050,
		65534: 65534, 30: 30,
	}
	for host, guest := range toGuest {
		require.Equal(t, guest, m.ToGuest(host), "host %d", host)
	}

	// As virtiofsd's release build, a target range past 4294967295 wraps.
	w := mustIDMap(t, "guest:0:4294967295:2")
	h, ok := w.ToHost(1)
	require.True(t, ok)
	require.Equal(t, uint32(0), h)
}

func TestIDMapRefuses(t *testing.T) {
	for _, tc := range []struct {
		rules []string
		err   string // "" when accepted
	}{
		{[]string{"guest:0:1000:10", "guest:5:2000:10"}, "guest:5:2000:10: Guest-to-host mapping 'map [5, 15) to [2000, 2010)' intersects previously added entry"},
		{[]string{"guest:5:2000:10", "guest:0:1000:6"}, "guest:0:1000:6: Guest-to-host mapping 'map [0, 6) to [1000, 1006)' intersects previously added entry"},
		{[]string{"guest:0:1000:10", "guest:10:2000:10", "guest:20:3000:1"}, ""},
		{[]string{"guest:0:1000:10", "host:5:2000:10"}, ""},
		{[]string{"map:0:1000:10", "host:1005:2000:10"}, "host:1005:2000:10: Host-to-guest mapping 'map [1005, 1015) to [2000, 2010)' intersects previously added entry"},
		{[]string{"map:0:1000:10", "forbid-guest:9:1"}, "forbid-guest:9:1: Guest-to-host mapping 'fail [9, 10)' intersects previously added entry"},
		{[]string{"map:0:1000:10", "forbid-guest:10:1"}, ""},
		{[]string{"guest:0:1000:10", "squash-guest:5:2000:10"}, "squash-guest:5:2000:10: Guest-to-host mapping 'squash [5, 15) to 2000' intersects previously added entry"},
		{[]string{"squash-host:0:1:100", "map:50:99:1"}, "map:50:99:1: Host-to-guest mapping 'map [99, 100) to [50, 51)' intersects previously added entry"},
		// Empty ranges are ignored, overlapping or not.
		{[]string{"map:0:1000:10", "guest:0:0:0"}, ""},
		{[]string{"guest:5:1000:0", "guest:5:0:1"}, ""},
		{[]string{"forbid-guest:5:0", "forbid-guest:5:1"}, ""},
		// Ranges end at 4294967295 (exclusive)...
		{[]string{"guest:4294967295:0:1"}, "Parameter guest:4294967295:0:1: Range overflow"},
		{[]string{"guest:1:0:4294967295"}, "Parameter guest:1:0:4294967295: Range overflow"},
		{[]string{"host:4294967295:0:1"}, "Parameter host:4294967295:0:1: Range overflow"},
		{[]string{"squash-guest:4294967290:0:6"}, "Parameter squash-guest:4294967290:0:6: Range overflow"},
		{[]string{"map:0:4294967295:2"}, "Parameter map:0:4294967295:2: Range overflow"},
		{[]string{"guest:4294967294:0:1", "guest:0:0:4294967295"}, "guest:0:0:4294967295: Guest-to-host mapping 'map [0, 4294967295) to [0, 4294967295)' intersects previously added entry"},
		{[]string{"guest:0:4294967295:2"}, ""},
		// ...but a forbid-guest range that passes it wraps to nothing.
		{[]string{"forbid-guest:4294967295:2", "forbid-guest:4294967295:2"}, ""},
		{[]string{"forbid-guest:4294967290:6", "guest:4294967291:5:3"}, ""},
	} {
		var rs []IDMapping
		for _, r := range tc.rules {
			m, err := ParseIDMapping(r)
			require.NoError(t, err)
			rs = append(rs, m)
		}
		_, err := NewIDMap(rs)
		if tc.err == "" {
			require.NoError(t, err, "%v", tc.rules)
		} else {
			require.EqualError(t, err, tc.err, "%v", tc.rules)
		}
	}
	// A wrapped forbid-guest range refuses nothing.
	m := mustIDMap(t, "forbid-guest:4294967295:2")
	for _, id := range []uint32{4294967295, 0, 1} {
		_, ok := m.ToHost(id)
		require.True(t, ok, "%d", id)
	}
}

func TestIDMapAllocations(t *testing.T) {
	m := mustIDMap(t, "map:1000:2000:10", "guest:0:5000:1", "squash-host:100000:65534:50", "forbid-guest:30:3", "host:3:4:5")
	var sink uint32
	require.Zero(t, testing.AllocsPerRun(100, func() {
		for id := uint32(0); id < 2100; id += 7 {
			h, _ := m.ToHost(id)
			sink += h + m.ToGuest(id)
		}
	}))
	_ = sink
}

// --- the filesystem with translation ---

const (
	trGuestUID, trGuestGID = 1005, 1006 // the caller, in the guest
	trHostUID, trHostGID   = 2005, 3006 // the same, on the host
)

// trFS is a filesystem translating guest uids 1000..1009 to host
// 2000..2009 and gids 1000..1009 to 3000..3009 (both ways), refusing guest
// uids 7 and 8 and gid 17.
func trFS(t *testing.T) (*FS, string) {
	t.Helper()
	requireRoot(t)
	uids := mustIDMap(t, "map:1000:2000:10", "forbid-guest:7:2")
	gids := mustIDMap(t, "map:1000:3000:10", "forbid-guest:17:1")
	fs, root := newFS(t, Config{Readdirplus: true, UIDMap: uids, GIDMap: gids})
	require.NoError(t, os.Chmod(root, 0o777))
	return fs, root
}

func trHdr(node uint64, uid, gid uint32) gofuse.InHeader {
	return gofuse.InHeader{NodeId: node, Caller: gofuse.Caller{Owner: gofuse.Owner{Uid: uid, Gid: gid}}}
}

func hostOwner(t *testing.T, p string) [2]uint32 {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(p, &st), p)
	return [2]uint32{st.Uid, st.Gid}
}

// trCreateAll makes prefix-{file,dir,fifo,link} in parent as uid:gid (with
// ext) and returns each one's errno and entry.
func trCreateAll(fs *FS, parent uint64, prefix string, uid, gid uint32, ext *fuse.Extensions) (map[string]syscall.Errno, map[string]gofuse.EntryOut) {
	errs, entries := map[string]syscall.Errno{}, map[string]gofuse.EntryOut{}
	var co gofuse.CreateOut
	errs["file"] = fs.CreateExt(&gofuse.CreateIn{InHeader: trHdr(parent, uid, gid), Flags: unix.O_RDWR, Mode: 0o644}, name(prefix+"-file"), ext, &co)
	if errs["file"] == 0 {
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(co.NodeId), Fh: co.Fh})
	}
	entries["file"] = co.EntryOut
	var eo gofuse.EntryOut
	errs["dir"] = fs.MkdirExt(&gofuse.MkdirIn{InHeader: trHdr(parent, uid, gid), Mode: 0o755}, name(prefix+"-dir"), ext, &eo)
	entries["dir"] = eo
	eo = gofuse.EntryOut{}
	errs["fifo"] = fs.MknodExt(&gofuse.MknodIn{InHeader: trHdr(parent, uid, gid), Mode: unix.S_IFIFO | 0o644}, name(prefix+"-fifo"), ext, &eo)
	entries["fifo"] = eo
	eo = gofuse.EntryOut{}
	h := trHdr(parent, uid, gid)
	errs["link"] = fs.SymlinkExt(&h, name(prefix+"-link"), name("target"), ext, &eo)
	entries["link"] = eo
	return errs, entries
}

// TestTranslateCreates checks that what a guest caller creates belongs on
// the host to its translated ids, and that the reply shows the guest ids.
func TestTranslateCreates(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		fs, root := trFS(t)
		errs, entries := trCreateAll(fs, RootID, "c", trGuestUID, trGuestGID, nil)
		for op, e := range errs {
			require.Zero(t, e, op)
			require.Equal(t, [2]uint32{trHostUID, trHostGID}, hostOwner(t, filepath.Join(root, "c-"+op)), op)
			a := entries[op].Attr
			require.Equal(t, [2]uint32{trGuestUID, trGuestGID}, [2]uint32{a.Uid, a.Gid}, op)
		}
		// An id outside every range passes as it is.
		errs, entries = trCreateAll(fs, RootID, "u", 5, 6, nil)
		for op, e := range errs {
			require.Zero(t, e, op)
			require.Equal(t, [2]uint32{5, 6}, hostOwner(t, filepath.Join(root, "u-"+op)), op)
			require.Equal(t, uint32(5), entries[op].Attr.Uid, op)
		}
	})
}

// TestTranslateForbidden checks forbid-guest: a caller or a new owner in a
// forbidden range gets EIO (as from virtiofsd 1.13) and nothing changes.
func TestTranslateForbidden(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		fs, root := trFS(t)
		for _, who := range [][2]uint32{{7, 1}, {8, 1}, {1, 17}} {
			errs, _ := trCreateAll(fs, RootID, "f", who[0], who[1], nil)
			for op, e := range errs {
				require.Equal(t, syscall.EIO, e, "%s as %v", op, who)
				_, err := os.Lstat(filepath.Join(root, "f-"+op))
				require.True(t, os.IsNotExist(err), "%s as %v", op, who)
			}
		}
		// A forbidden supplementary group, too.
		errs, _ := trCreateAll(fs, RootID, "g", 1, 1, &fuse.Extensions{SuppGroup: 17, HasSuppGroup: true})
		for op, e := range errs {
			require.Equal(t, syscall.EIO, e, op)
		}

		p := filepath.Join(root, "h")
		require.NoError(t, os.WriteFile(p, nil, 0o644))
		require.NoError(t, os.Lchown(p, 9, 9))
		eo, e := lookup(t, fs, RootID, "h")
		require.Zero(t, e)
		var ao gofuse.AttrOut
		for _, in := range []gofuse.SetAttrInCommon{
			{Valid: gofuse.FATTR_UID, Owner: gofuse.Owner{Uid: 7}},
			{Valid: gofuse.FATTR_UID | gofuse.FATTR_GID, Owner: gofuse.Owner{Uid: 8, Gid: 1}},
			{Valid: gofuse.FATTR_GID, Owner: gofuse.Owner{Gid: 17}},
			{Valid: gofuse.FATTR_UID | gofuse.FATTR_GID, Owner: gofuse.Owner{Uid: 1, Gid: 17}},
		} {
			in.InHeader = hdr(eo.NodeId)
			require.Equal(t, syscall.EIO, fs.SetAttr(&gofuse.SetAttrIn{SetAttrInCommon: in}, &ao), "%+v", in.Owner)
			require.Equal(t, [2]uint32{9, 9}, hostOwner(t, p))
		}
		// Only the fields the request sets count: a forbidden id in an
		// unset field is no matter.
		in := gofuse.SetAttrInCommon{InHeader: hdr(eo.NodeId), Valid: gofuse.FATTR_UID, Owner: gofuse.Owner{Uid: 10, Gid: 17}}
		require.Zero(t, fs.SetAttr(&gofuse.SetAttrIn{SetAttrInCommon: in}, &ao))
		require.Equal(t, [2]uint32{10, 9}, hostOwner(t, p))

		// Reading stays open to a forbidden caller: ACCESS answers.
		require.NoError(t, os.Chmod(p, 0o644))
		require.Zero(t, fs.Access(&gofuse.AccessIn{InHeader: trHdr(eo.NodeId, 7, 1), Mask: unix.R_OK}))
		require.Equal(t, syscall.EACCES, fs.Access(&gofuse.AccessIn{InHeader: trHdr(eo.NodeId, 7, 1), Mask: unix.W_OK}))
	})
}

// TestTranslateAttributes checks the owners LOOKUP, GETATTR, READDIRPLUS
// and SETATTR report, and that SETATTR's owner is translated to the host.
func TestTranslateAttributes(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		fs, root := trFS(t)
		owners := map[string][2]uint32{
			"mapped":   {2003, 3004}, // -> 1003:1004
			"guestish": {1003, 1004}, // host ids in the guest range: unmapped
			"other":    {7, 17},      // forbid-guest acts guest to host only
		}
		want := map[string][2]uint32{"mapped": {1003, 1004}, "guestish": {1003, 1004}, "other": {7, 17}}
		nodes := map[string]uint64{}
		for n, o := range owners {
			p := filepath.Join(root, n)
			require.NoError(t, os.WriteFile(p, nil, 0o644))
			require.NoError(t, os.Lchown(p, int(o[0]), int(o[1])))
			eo, e := lookup(t, fs, RootID, n)
			require.Zero(t, e)
			require.Equal(t, want[n], [2]uint32{eo.Attr.Uid, eo.Attr.Gid}, "LOOKUP %s", n)
			nodes[n] = eo.NodeId
			var ao gofuse.AttrOut
			require.Zero(t, fs.GetAttr(&gofuse.GetAttrIn{InHeader: hdr(eo.NodeId)}, &ao))
			require.Equal(t, want[n], [2]uint32{ao.Attr.Uid, ao.Attr.Gid}, "GETATTR %s", n)
		}

		var oo gofuse.OpenOut
		require.Zero(t, fs.OpenDir(&gofuse.OpenIn{InHeader: hdr(RootID)}, &oo))
		buf := make([]byte, 8192)
		dl := fuse.NewDirList(buf, true)
		require.Zero(t, fs.ReadDir(&gofuse.ReadIn{InHeader: hdr(RootID), Fh: oo.Fh, Size: uint32(len(buf))}, &dl))
		seen := 0
		fuse.WalkDirList(buf[:dl.Len()], true, func(nm string, _ uint64, eo *gofuse.EntryOut) {
			if w, ok := want[nm]; ok {
				require.Equal(t, w, [2]uint32{eo.Attr.Uid, eo.Attr.Gid}, "READDIRPLUS %s", nm)
				seen++
			}
		})
		require.Equal(t, len(want), seen)
		fs.ReleaseDir(&gofuse.ReleaseIn{InHeader: hdr(RootID), Fh: oo.Fh})

		// chown: guest ids in, host ids on disk, guest ids back.
		p := filepath.Join(root, "other")
		var ao gofuse.AttrOut
		in := gofuse.SetAttrInCommon{InHeader: hdr(nodes["other"]), Valid: gofuse.FATTR_UID | gofuse.FATTR_GID, Owner: gofuse.Owner{Uid: 1001, Gid: 1002}}
		require.Zero(t, fs.SetAttr(&gofuse.SetAttrIn{SetAttrInCommon: in}, &ao))
		require.Equal(t, [2]uint32{2001, 3002}, hostOwner(t, p))
		require.Equal(t, [2]uint32{1001, 1002}, [2]uint32{ao.Attr.Uid, ao.Attr.Gid})
		// One field at a time leaves the other alone.
		in = gofuse.SetAttrInCommon{InHeader: hdr(nodes["other"]), Valid: gofuse.FATTR_UID, Owner: gofuse.Owner{Uid: 5, Gid: 9999}}
		require.Zero(t, fs.SetAttr(&gofuse.SetAttrIn{SetAttrInCommon: in}, &ao))
		require.Equal(t, [2]uint32{5, 3002}, hostOwner(t, p))
		require.Equal(t, [2]uint32{5, 1002}, [2]uint32{ao.Attr.Uid, ao.Attr.Gid})
		in = gofuse.SetAttrInCommon{InHeader: hdr(nodes["other"]), Valid: gofuse.FATTR_GID, Owner: gofuse.Owner{Uid: 9999, Gid: 1009}}
		require.Zero(t, fs.SetAttr(&gofuse.SetAttrIn{SetAttrInCommon: in}, &ao))
		require.Equal(t, [2]uint32{5, 3009}, hostOwner(t, p))
		require.Equal(t, [2]uint32{5, 1009}, [2]uint32{ao.Attr.Uid, ao.Attr.Gid})
	})
}

// TestTranslateSuppGroup checks that the supplementary group a creation
// names is translated like the caller's own gid.
func TestTranslateSuppGroup(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		fs, root := trFS(t)
		// Directories only members of host group 3009 (guest 1009), or
		// of host group 1009, may create in.
		dirs := map[string]uint64{}
		for n, g := range map[string]int{"grp": 3009, "raw": 1009} {
			p := filepath.Join(root, n)
			require.NoError(t, os.Mkdir(p, 0o770))
			require.NoError(t, os.Chown(p, 0, g))
			require.NoError(t, os.Chmod(p, 0o770))
			eo, e := lookup(t, fs, RootID, n)
			require.Zero(t, e)
			dirs[n] = eo.NodeId
		}
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()

		ext := &fuse.Extensions{SuppGroup: 1009, HasSuppGroup: true}
		errs, _ := trCreateAll(fs, dirs["raw"], "c", trGuestUID, trGuestGID, ext)
		for op, e := range errs {
			require.Equal(t, syscall.EACCES, e, "%s: guest group 1009 is not host group 1009", op)
		}
		errs, _ = trCreateAll(fs, dirs["grp"], "c", trGuestUID, trGuestGID, ext)
		for op, e := range errs {
			require.Zero(t, e, op)
			require.Equal(t, [2]uint32{trHostUID, trHostGID}, hostOwner(t, filepath.Join(root, "grp", "c-"+op)), op)
		}
	})
}

// TestTranslateAccess checks that ACCESS asks the host about the
// translated caller.
func TestTranslateAccess(t *testing.T) {
	fs, root := trFS(t)
	p := filepath.Join(root, "private")
	require.NoError(t, os.WriteFile(p, nil, 0o600))
	require.NoError(t, os.Lchown(p, trHostUID, trHostGID))
	eo, e := lookup(t, fs, RootID, "private")
	require.Zero(t, e)
	require.Zero(t, fs.Access(&gofuse.AccessIn{InHeader: trHdr(eo.NodeId, trGuestUID, trGuestGID), Mask: unix.R_OK | unix.W_OK}))
	// Guest 1004:1006 is host 2004:3006: the group, not the owner.
	require.Equal(t, syscall.EACCES, fs.Access(&gofuse.AccessIn{InHeader: trHdr(eo.NodeId, 1004, trGuestGID), Mask: unix.R_OK}))
	require.NoError(t, os.Chmod(p, 0o640))
	require.Zero(t, fs.Access(&gofuse.AccessIn{InHeader: trHdr(eo.NodeId, 1004, trGuestGID), Mask: unix.R_OK}))
	// Guest 2005 is no one on the host but uid 2005, the owner.
	require.Zero(t, fs.Access(&gofuse.AccessIn{InHeader: trHdr(eo.NodeId, trHostUID, 1), Mask: unix.R_OK | unix.W_OK}))
	require.Equal(t, syscall.EACCES, fs.Access(&gofuse.AccessIn{InHeader: trHdr(eo.NodeId, 1004, 1), Mask: unix.R_OK}))
}

// TestTranslateAllocations checks that translation keeps GETATTR and
// LOOKUP allocation-free.
func TestTranslateAllocations(t *testing.T) {
	fs, root := trFS(t)
	require.NoError(t, os.WriteFile(filepath.Join(root, "f"), nil, 0o644))
	require.NoError(t, os.Lchown(filepath.Join(root, "f"), 2003, 3003))
	h := hdr(RootID)
	nm := name("f")
	var eo gofuse.EntryOut
	require.Zero(t, fs.Lookup(&h, nm, &eo))
	g := gofuse.GetAttrIn{InHeader: hdr(eo.NodeId)}
	var ao gofuse.AttrOut
	require.Zero(t, testing.AllocsPerRun(200, func() { fs.GetAttr(&g, &ao) }), "GETATTR")
	require.Zero(t, testing.AllocsPerRun(200, func() { fs.Lookup(&h, nm, &eo); fs.Forget(eo.NodeId, 1) }), "LOOKUP")
	require.Equal(t, uint32(1003), ao.Attr.Uid)
}
