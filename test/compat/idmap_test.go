package compat

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// idCases are the id-mapping command lines compared.
var idCases = [][]string{
	{"--translate-uid", "guest:0:1000:1"},
	{"--translate-uid", "host:0:1000:10", "--translate-gid", "map:0:1000:10"},
	{"--translate-uid", "squash-guest:0:1000:10", "--translate-uid", "squash-host:0:1000:10"},
	{"--translate-gid", "forbid-guest:5:2"},
	{"--translate-uid", "GUEST:0:1000:1"},
	{"--translate-uid", "Squash-Host/1/0/1"},
	{"--translate-uid", "guest→1→0→1"},
	{"--translate-uid", "guest:+1:00012:1"},
	{"--translate-uid", "foo:0:1:2"},
	{"--translate-uid", "guest_x:1:0:1"},
	{"--translate-uid", "guestä:1:0:1"},
	{"--translate-uid", "guest:0:1000"},
	{"--translate-uid", "guest:0:1000:1:2"},
	{"--translate-gid", "forbid-guest:5"},
	{"--translate-gid", "forbid-guest:5:2:3"},
	{"--translate-uid", "guest:a:1:1"},
	{"--translate-uid", "guest:-1:1:1"},
	{"--translate-uid", "guest:+:0:1"},
	{"--translate-uid", ""},
	{"--translate-uid", "guest"},
	{"--translate-uid", "guest:"},
	{"--translate-uid", "guest:1:0:1:"},
	{"--translate-uid", ":guest:1:0:1"},
	{"--translate-uid", "gu est:1:0:1"},
	{"--translate-uid", "guest:4294967296:0:1"},
	{"--translate-uid", "guest:4294967295:0:1"},
	{"--translate-uid", "guest:4294967294:0:1"},
	{"--translate-uid", "guest:1:0:4294967295"},
	{"--translate-uid", "guest:0:0:4294967295"},
	{"--translate-gid", "map:0:4294967295:2"},
	{"--translate-gid", "guest:0:4294967295:2"},
	{"--translate-uid", "forbid-guest:4294967295:2"},
	{"--translate-uid", "forbid-guest:4294967290:6", "--translate-uid", "guest:4294967291:5:3"},
	{"--translate-uid", "guest:0:1000:10", "--translate-uid", "guest:5:2000:10"},
	{"--translate-uid", "guest:0:1000:10", "--translate-uid", "host:5:2000:10"},
	{"--translate-uid", "map:0:1000:10", "--translate-uid", "host:1005:2000:10"},
	{"--translate-uid", "map:0:1000:10", "--translate-uid", "forbid-guest:9:1"},
	{"--translate-uid", "map:0:1000:10", "--translate-uid", "forbid-guest:10:1"},
	{"--translate-uid", "map:0:1000:10", "--translate-uid", "guest:0:0:0"},
	{"--translate-gid", "guest:0:1000:10", "--translate-gid", "squash-guest:5:2000:10"},
	{"--translate-gid", "guest:0:1000:10", "--translate-uid", "squash-guest:5:2000:10"},
	{"--translate-uid", "guest:0:1000:10", "--translate-uid", "guest:5:2000:10", "--translate-gid", "foo:1:1:1"},
	{"--translate-uid", "guest:0:1:1", "--posix-acl"},
	{"--posix-acl", "--translate-gid", "guest:0:1:1"},
	{"--posix-acl", "--translate-gid", "guest:0:1:1", "--translate-uid", "guest:0:1:1"},
	{"--translate-gid", "guest:0:1:1", "--posix-acl", "--translate-uid", "guest:0:1:1"},
	{"--translate-gid", "guest:0:1:1", "-o", "posix_acl"},
	{"--uid-map", ":0:1000:1:"},
	{"--gid-map", "/0/1000/1/"},
	{"--uid-map", ":0:1000:1"},
	{"--uid-map", "0:1000:1:"},
	{"--uid-map", ":0:1000:"},
	{"--gid-map", ":0:1000:1:2:"},
	{"--gid-map", ":a:1:1:"},
	{"--gid-map", "x0x1x1x"},
	{"--uid-map", ""},
	{"--uid-map", ":"},
}

// TestIDOptionsMatchReference runs the reference virtiofsd and govirtiofsd
// with each command line of idCases and checks that they accept and
// refuse the same ones, with the same exit status and message.
func TestIDOptionsMatchReference(t *testing.T) {
	ref := referenceBinary(t)
	ours := oursBinary(t)
	got := verdicts(t, []string{ref, ours}, idCases)
	accepted := 0
	for i, args := range idCases {
		theirs, ours := got[i][0], got[i][1]
		require.Equal(t, theirs, ours, "%q (expected: the reference's verdict, actual: govirtiofsd's)", args)
		if strings.HasPrefix(theirs, "accepted") {
			accepted++
		}
	}
	// Both kinds of verdict are compared: a case list all accepted or all
	// refused would say little.
	require.NotZero(t, accepted, "no command line accepted")
	require.Less(t, accepted, len(idCases), "no command line refused")
}
