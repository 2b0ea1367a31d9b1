// Tests of the command line: the options accepted and ignored.

package main

import (
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestIgnoredOptions passes each of ignoredOptions: it is accepted and
// changes nothing in the parsed options.
func TestIgnoredOptions(t *testing.T) {
	want, err := parseWith()
	require.NoError(t, err)
	flags := newFlagSet(&options{}, io.Discard)
	for opt := range ignoredOptions {
		var args []string
		if key, ok := strings.CutPrefix(opt, "-o "); ok {
			args = []string{"-o", key}
		} else {
			name := strings.TrimPrefix(opt, "--")
			fl := flags.Lookup(name)
			require.NotNil(t, fl, "%s is not an option", opt)
			require.Equal(t, "bool", fl.Value.Type(), opt)
			args = []string{opt}
			if fl.Shorthand != "" {
				args = append(args, "-"+fl.Shorthand)
			}
		}
		got, err := parseWith(args...)
		require.NoError(t, err, opt)
		got.text = want.text // the text of -o
		require.Equal(t, want, got, opt)
	}
}

// TestEnumOptions parses each name of the enumerated options back to
// itself, and a bad one to virtiofsd's message (exit status 2).
func TestEnumOptions(t *testing.T) {
	for _, c := range []struct {
		flag  string
		names []string
		value func(*options) fmt.Stringer
		bad   string
	}{
		{"--sandbox", sandboxNames, func(o *options) fmt.Stringer { return o.sandbox },
			`invalid sandbox mode "bogus" (want namespace, chroot or none)`},
		{"--seccomp", seccompNames, func(o *options) fmt.Stringer { return o.seccomp },
			`invalid seccomp action "bogus" (want none, kill, log or trap)`},
		{"--log-level", logLevelNames, func(o *options) fmt.Stringer { return o.logLevel },
			`invalid log level "bogus" (want error, warn, info, debug, trace or off)`},
		{"--dax-transport", daxTransportNames, func(o *options) fmt.Stringer { return o.daxTransport },
			`--dax-transport bogus: want shmem or legacy`},
	} {
		for _, name := range c.names {
			o, err := parseWith(c.flag, name)
			require.NoError(t, err, "%s %s", c.flag, name)
			require.Equal(t, name, c.value(o).String(), c.flag)
		}
		_, err := parseWith(c.flag, "bogus")
		require.EqualError(t, err, c.bad)
		require.IsType(t, usageError{}, err, c.flag)
	}

	// The defaults, and the log level's other sources.
	o, err := parseOptions([]string{"--shared-dir", "/srv/share", "--socket-path", "/run/vfs.sock"}, io.Discard)
	require.NoError(t, err)
	require.Equal(t, []fmt.Stringer{sandboxNamespace, seccompKill, logInfo, daxShmem},
		[]fmt.Stringer{o.sandbox, o.seccomp, o.logLevel, o.daxTransport})
	for _, c := range []struct {
		env  string
		args []string
		want logLevel
	}{
		{"", []string{"--log-level", "WARN"}, logWarn},
		{"", []string{"-d", "--log-level", "error"}, logDebug},
		{"", []string{"-o", "loglevel=trace"}, logTrace},
		{"virtiofsd=debug,vhost=bogus", []string{"--log-level", "off"}, logDebug},
		{"bogus", []string{"--log-level", "off"}, logOff},
	} {
		t.Setenv("RUST_LOG", c.env)
		o, err := parseWith(c.args...)
		require.NoError(t, err, "RUST_LOG=%s %q", c.env, c.args)
		require.Equal(t, c.want, o.logLevel, "RUST_LOG=%s %q", c.env, c.args)
	}
	require.Equal(t, "main.sandboxMode(7)", sandboxMode(7).String())
}
