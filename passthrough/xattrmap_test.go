package passthrough

import (
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseXattrMap(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want: the expanded rules, ':'-separated
	}{
		// virtiofsd's documentation, mapping example 1 and its map form.
		{":prefix:all::user.virtiofs.::bad:all:::", ":prefix:all::user.virtiofs.: :bad:all:::"},
		{":map::user.virtiofs.:", ":prefix:all::user.virtiofs.: :bad:all:::"},
		// Example 2, rules on separate lines, '/' as the separator.
		{`/prefix/all/trusted./user.virtiofs./
		  /bad/server//trusted./
		  /bad/client/user.virtiofs.//
		  /ok/all///`,
			":prefix:all:trusted.:user.virtiofs.: :bad:server::trusted.: :bad:client:user.virtiofs.:: :ok:all:::"},
		{"/map/trusted./user.virtiofs./",
			":prefix:all:trusted.:user.virtiofs.: :bad:all:user.virtiofs.:trusted.: :ok:all:::"},
		// Example 3.
		{"/bad/all/security./security./ /ok/all///", ":bad:all:security.:security.: :ok:all:::"},
		// The "unsupported" type, from its introduction.
		{"/unsupported/all/security.selinux/security.selinux//ok/all///",
			":unsupported:all:security.selinux:security.selinux: :ok:all:::"},
		// Every rule picks its own separator, which may be any character.
		{":prefix:all:trusted.:user.virtiofs.: /prefix/all/trusted./user.virtiofs./ xokxallxxx",
			":prefix:all:trusted.:user.virtiofs.: :prefix:all:trusted.:user.virtiofs.: :ok:all:::"},
		{"\t :ok:all:::\n", ":ok:all:::"},
		{"§ok§all§§§", ":ok:all:::"},
		// Separate client and server catch-alls are enough.
		{":ok:client::: :bad:server:::", ":ok:client::: :bad:server:::"},
		// The documentation's one-rule examples, terminated.
		{":prefix:client:trusted.:user.virtiofs.: :ok:all:::", ":prefix:client:trusted.:user.virtiofs.: :ok:all:::"},
		{":prefix:server::user.virtiofs.: :ok:all:::", ":prefix:server::user.virtiofs.: :ok:all:::"},
		{":ok:client:user.:: :ok:server::security.: :bad:all:::", ":ok:client:user.:: :ok:server::security.: :bad:all:::"},
	} {
		m, err := ParseXattrMap(tc.in)
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, m.String(), tc.in)
	}
}

func TestParseXattrMapErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		rule int
		msg  string
	}{
		{"", 0, "no rules"},
		{"  \n ", 0, "no rules"},
		{":prefix:client:hi", 1, "incomplete rule"},
		{":prefix:all:trusted.:user.vm.", 1, "incomplete rule"},
		{":ok:all::: :ok", 2, "incomplete rule"},
		{":TOMATOPIRATE:trusted.:virtiofs.user.:", 1, `invalid type "TOMATOPIRATE"`},
		{"/prefix/helloworld///", 1, `invalid scope "helloworld"`},
		{":ok:all::: /Prefix/all///", 2, `invalid type "Prefix"`},
		{":map:trusted.:virtiofs.user.::map:trusted.:virtiofs.user.:", 1, "must be the last rule"},
		{":map::user.virtiofs.: :ok:all:::", 1, "must be the last rule"},
		// No catch-all: virtiofsd would abort on the first unmatched name.
		{":prefix:client:trusted.:user.virtiofs.:", 0, "every name from the guest"},
		{":ok:client::: :ok:server::security.:", 0, "every name from the host"},
		{":prefix:all:trusted.:user.virtiofs.: :bad:server::trusted.:", 0, "every name from the guest"},
		{":ok:all:\x00::", 1, "NUL"},
	} {
		_, err := ParseXattrMap(tc.in)
		require.Error(t, err, tc.in)
		var me *XattrMapError
		require.True(t, errors.As(err, &me), tc.in)
		require.Equal(t, tc.rule, me.Rule, "%q: %v", tc.in, err)
		require.Contains(t, err.Error(), tc.msg, tc.in)
		if tc.rule > 0 {
			require.True(t, strings.HasPrefix(err.Error(), "xattrmap rule "), err.Error())
		}
	}
}

func TestXattrMapTranslation(t *testing.T) {
	type client struct {
		name, host string
		err        syscall.Errno
	}
	type server struct {
		host, name string // name "" means hidden
	}
	for _, tc := range []struct {
		rules       string
		clients     []client
		servers     []server
		noRoundTrip bool
	}{
		{
			rules: ":map::user.virtiofs.:",
			clients: []client{
				{"trusted.x", "user.virtiofs.trusted.x", 0},
				{"user.y", "user.virtiofs.user.y", 0},
				{"security.capability", "user.virtiofs.security.capability", 0},
			},
			servers: []server{
				{"user.virtiofs.trusted.x", "trusted.x"},
				{"user.plain", ""},
				{"security.selinux", ""},
			},
		},
		{
			rules: "/map/trusted./user.virtiofs./",
			clients: []client{
				{"trusted.x", "user.virtiofs.trusted.x", 0},
				{"user.y", "user.y", 0},
				{"user.virtiofs.z", "", syscall.EPERM},
				{"security.selinux", "security.selinux", 0},
			},
			servers: []server{
				{"user.virtiofs.trusted.x", "trusted.x"},
				{"trusted.host", ""},
				{"user.y", "user.y"},
				{"security.selinux", "security.selinux"},
			},
		},
		{
			rules: "/prefix/all/trusted./user.virtiofs./ /bad/server//trusted./ /bad/client/user.virtiofs.// /ok/all///",
			clients: []client{
				{"trusted.x", "user.virtiofs.trusted.x", 0},
				{"user.virtiofs.z", "", syscall.EPERM},
				{"user.y", "user.y", 0},
			},
			servers: []server{
				{"user.virtiofs.trusted.x", "trusted.x"},
				{"trusted.host", ""},
				{"user.y", "user.y"},
			},
		},
		{
			rules: "/bad/all/security./security./ /ok/all///",
			clients: []client{
				{"security.selinux", "", syscall.EPERM},
				{"user.a", "user.a", 0},
			},
			servers: []server{{"security.selinux", ""}, {"user.a", "user.a"}},
		},
		{
			rules: "/unsupported/all/security.selinux/security.selinux//ok/all///",
			clients: []client{
				{"security.selinux", "", syscall.EOPNOTSUPP},
				{"security.ima", "security.ima", 0},
			},
			servers: []server{{"security.selinux", ""}, {"security.ima", "security.ima"}},
		},
		{
			// First match wins, scopes apart.
			rules: ":prefix:client:a.:x.: :ok:server::x.a.: :bad:all:::",
			clients: []client{
				{"a.1", "x.a.1", 0},
				{"b.1", "", syscall.EPERM},
			},
			servers:     []server{{"x.a.1", "x.a.1"}, {"a.1", ""}},
			noRoundTrip: true,
		},
	} {
		m, err := ParseXattrMap(tc.rules)
		require.NoError(t, err, tc.rules)
		for _, c := range tc.clients {
			host, err := m.MapClient(c.name)
			if c.err != 0 {
				require.Equal(t, c.err, err, "%s: %s", tc.rules, c.name)
				continue
			}
			require.NoError(t, err, "%s: %s", tc.rules, c.name)
			require.Equal(t, c.host, host, "%s: %s", tc.rules, c.name)
			// What a prefix rule writes, listxattr reads back.
			if back, ok := m.MapServer(host); ok && !tc.noRoundTrip {
				require.Equal(t, c.name, back, "%s: round trip of %s", tc.rules, c.name)
			}
		}
		for _, s := range tc.servers {
			name, ok := m.MapServer(s.host)
			require.Equal(t, s.name != "", ok, "%s: %s", tc.rules, s.host)
			require.Equal(t, s.name, name, "%s: %s", tc.rules, s.host)
		}
	}
}

func TestXattrMapLongNames(t *testing.T) {
	m, err := ParseXattrMap(":map::user.virtiofs.:")
	require.NoError(t, err)
	_, err = m.MapClient("user." + strings.Repeat("a", xattrNameMax-len("user.")))
	require.Equal(t, syscall.ERANGE, err)
	h, err := m.MapClient("user." + strings.Repeat("a", xattrNameMax-len("user.")-len("user.virtiofs.")))
	require.NoError(t, err)
	require.Len(t, h, xattrNameMax)
}
