package main

import (
	"io"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/passthrough"
	"github.com/stretchr/testify/require"
)

// What the reference virtiofsd makes of the same id options, binary
// against binary, is test/compat's TestIDOptionsMatchReference (it needs
// the lab).

// baseArgs is a command line the id options are added to.
var baseArgs = []string{"--shared-dir", "/srv/share", "--socket-path", "/run/vfs.sock", "--sandbox", "none", "--seccomp", "none"}

func parseWith(args ...string) (*options, error) {
	return parseOptions(append(append([]string{}, baseArgs...), args...), io.Discard)
}

func TestTranslateOptions(t *testing.T) {
	o, err := parseWith("--translate-uid", "guest:1000:2000:10", "--translate-uid=host:0:7:1",
		"--translate-gid", "squash-guest:200:65534:100", "--translate-uid", "FORBID-GUEST/30/3",
		"--translate-gid", "map:1:2:3", "--translate-gid", "squash-host:5:6:7")
	require.NoError(t, err)
	require.Equal(t, []passthrough.IDMapping{
		{Kind: passthrough.IDMapGuest, From: 1000, To: 2000, Count: 10},
		{Kind: passthrough.IDMapHost, From: 0, To: 7, Count: 1},
		{Kind: passthrough.IDMapForbidGuest, From: 30, Count: 3},
	}, o.uidRules)
	require.Equal(t, []passthrough.IDMapping{
		{Kind: passthrough.IDMapSquashGuest, From: 200, To: 65534, Count: 100},
		{Kind: passthrough.IDMapBoth, From: 1, To: 2, Count: 3},
		{Kind: passthrough.IDMapSquashHost, From: 5, To: 6, Count: 7},
	}, o.gidRules)
	uids, gids, err := buildIDMaps(o)
	require.NoError(t, err)
	h, ok := uids.ToHost(1005)
	require.True(t, ok)
	require.Equal(t, uint32(2005), h)
	_, ok = uids.ToHost(31)
	require.False(t, ok)
	require.Equal(t, uint32(6), gids.ToGuest(9))

	// None given: no tables, nothing to look up.
	o, err = parseWith()
	require.NoError(t, err)
	uids, gids, err = buildIDMaps(o)
	require.NoError(t, err)
	require.Nil(t, uids)
	require.Nil(t, gids)

	// virtiofsd 1.14 refuses translation with --posix-acl=always or
	// auto (-o posix_acl is always) once running, exit status 1; never
	// goes.
	for _, acl := range [][]string{{"--posix-acl"}, {"--posix-acl=auto"}, {"-o", "posix_acl"}} {
		o, err = parseWith(append([]string{"--translate-uid", "guest:0:1:1"}, acl...)...)
		require.NoError(t, err, acl)
		require.Len(t, o.optionErrors(), 1, acl)
	}
	o, err = parseWith("--translate-gid", "guest:0:1:1", "--posix-acl=never")
	require.NoError(t, err)
	require.Empty(t, o.optionErrors())

	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"--translate-uid", "foo:0:1:2"}, "invalid value 'foo:0:1:2' for '--translate-uid <TRANSLATE_UID>': Invalid ID map prefix foo"},
		{[]string{"--translate-gid", "guest:0:1000"}, "invalid value 'guest:0:1000' for '--translate-gid <TRANSLATE_GID>': Invalid ID map length (expected 3 elements, got 2 elements)"},
		{[]string{"--translate-uid", "guest:0:1:1", "--translate-uid", "guest:x:1:1"}, "invalid value 'guest:x:1:1' for '--translate-uid <TRANSLATE_UID>': Invalid value x in ID map: invalid digit found in string"},
		{[]string{"--uid-map", ":0:1000:1"}, "invalid value ':0:1000:1' for '--uid-map <UID_MAP>': A delimiter has been found that does not match the delimiter the map started with"},
		{[]string{"--gid-map", ":0:1000:"}, "invalid value ':0:1000:' for '--gid-map <GID_MAP>': The map is empty or incorrect number of values are provided"},
		{[]string{"--gid-map", ":0:-1:1:"}, "invalid value ':0:-1:1:' for '--gid-map <GID_MAP>': invalid digit found in string"},
	} {
		_, err := parseWith(tc.args...)
		require.EqualError(t, err, tc.err, "%q", tc.args)
		require.IsType(t, usageError{}, err, "%q: exit status 2", tc.args)
	}

	o, err = parseWith("--translate-uid", "guest:0:1000:10", "--translate-uid", "guest:5:2000:10")
	require.NoError(t, err, "overlaps are found when the filesystem is made")
	_, _, err = buildIDMaps(o)
	require.EqualError(t, err, "Failed to create internal filesystem representation: UID map: guest:5:2000:10: Guest-to-host mapping 'map [5, 15) to [2000, 2010)' intersects previously added entry")
	o, err = parseWith("--translate-gid", "host:4294967295:0:1")
	require.NoError(t, err)
	_, _, err = buildIDMaps(o)
	require.EqualError(t, err, "Failed to create internal filesystem representation: GID map: Parameter host:4294967295:0:1: Range overflow")
}

func TestNSMapOptions(t *testing.T) {
	for in, want := range map[string]nsIDMap{
		":0:100000:65536:": {0, 100000, 65536},
		"/1/2/3/":          {1, 2, 3},
		"-+1-02-3-":        {1, 2, 3},
		"→5→6→7→":          {5, 6, 7},
	} {
		got, err := parseNSMap(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	const badSep = "A delimiter has been found that does not match the delimiter the map started with"
	const badCount = "The map is empty or incorrect number of values are provided"
	for in, want := range map[string]string{
		"":                 badCount,
		":":                badSep,
		":0:1000:1":        badSep,
		"0:1000:1:":        badSep,
		"x0x1x1x":          badSep,
		":0:1000:":         badCount,
		":0:1000:1:2:":     badCount,
		"::::":             "cannot parse integer from empty string",
		":a:1:1:":          "invalid digit found in string",
		":4294967296:1:1:": "number too large to fit in target type",
	} {
		_, err := parseNSMap(in)
		require.EqualError(t, err, want, "%q", in)
	}

	o, err := parseWith("--uid-map", ":0:1000:1:", "--gid-map", ":0:1000:1:", "--gid-map", "/1/100000/65536/")
	require.NoError(t, err)
	require.Equal(t, []nsIDMap{{0, 1000, 1}}, o.uidNSMaps)
	require.Equal(t, []nsIDMap{{0, 1000, 1}, {1, 100000, 65536}}, o.gidNSMaps)
	// Only an unprivileged daemon's namespace sandbox has a user
	// namespace to put them in.
	const uidErr = "Error entering sandbox: uid_map can only be used by unprivileged user where sandbox mod is namespace (Use '--sandbox namespace' instead)"
	const gidErr = "Error entering sandbox: gid_map can only be used by unprivileged user where sandbox mod is namespace (Use '--sandbox namespace' instead)"
	require.EqualError(t, nsMapsError(o, 0), uidErr)
	require.EqualError(t, nsMapsError(o, 1000), uidErr, "--sandbox none")
	o.sandbox = sandboxNamespace
	require.EqualError(t, nsMapsError(o, 0), uidErr)
	require.NoError(t, nsMapsError(o, 1000))
	o.uidNSMaps = nil
	require.EqualError(t, nsMapsError(o, 0), gidErr)
}
