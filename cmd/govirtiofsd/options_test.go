// Tests of the command line: the options accepted and ignored.

package main

import (
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/passthrough"
	"github.com/stretchr/testify/require"
)

// TestIgnoredOptions passes each of ignoredOptions: it is accepted and
// changes nothing in the parsed options but the -o warning.
func TestIgnoredOptions(t *testing.T) {
	want, err := parseWith()
	require.NoError(t, err)
	for opt := range ignoredOptions {
		key, ok := strings.CutPrefix(opt, "-o ")
		require.True(t, ok, "%s: only -o options are ignored", opt)
		got, err := parseWith("-o", key)
		require.NoError(t, err, opt)
		require.Len(t, got.warnings, 1, opt)
		got.text, got.warnings = want.text, want.warnings // the text of -o
		require.Equal(t, want, got, opt)
	}
}

// TestCompatOptions checks that each -o option sets what virtiofsd's
// parse_compat sets, over the command line's options, that the no_ forms
// turn options off, and that one warning says -o is deprecated.
func TestCompatOptions(t *testing.T) {
	for _, c := range []struct {
		args []string
		ok   func(*options) bool
	}{
		{[]string{"--xattr", "-o", "no_xattr"}, func(o *options) bool { return !o.xattr }},
		{[]string{"-o", "no_xattr,xattr"}, func(o *options) bool { return o.xattr }},
		{[]string{"-o", "no_posix_lock,no_flock"}, func(o *options) bool { return o.localPosixLocks && o.localFlock }},
		{[]string{"-o", "no_posix_lock,no_flock,posix_lock,flock"}, func(o *options) bool { return !o.localPosixLocks && !o.localFlock }},
		{[]string{"-o", "posix_lock,no_flock"}, func(o *options) bool { return !o.localPosixLocks && o.localFlock }},
		{[]string{"--no-readdirplus", "-o", "readdirplus"}, func(o *options) bool { return !o.noReaddirplus }},
		{[]string{"-o", "no_readdirplus"}, func(o *options) bool { return o.noReaddirplus }},
		{[]string{"--writeback", "-o", "no_writeback"}, func(o *options) bool { return !o.writeback }},
		{[]string{"--allow-direct-io", "-o", "no_allow_direct_io"}, func(o *options) bool { return !o.allowDirectIO }},
		{[]string{"--killpriv-v2", "-o", "no_killpriv_v2"}, func(o *options) bool { return !o.killprivV2 }},
		{[]string{"-o", "killpriv_v2"}, func(o *options) bool { return o.killprivV2 }},
		{[]string{"--posix-acl=auto", "-o", "posix_acl"}, func(o *options) bool { return o.posixACL == negotiateAlways }},
		{[]string{"--posix-acl", "-o", "no_posix_acl"}, func(o *options) bool { return o.posixACL == negotiateNever }},
		{[]string{"-o", "security_label"}, func(o *options) bool { return o.securityLabel == negotiateAlways }},
		{[]string{"--security-label=auto", "-o", "no_security_label"}, func(o *options) bool { return o.securityLabel == negotiateNever }},
		{[]string{"--no-announce-submounts", "-o", "announce_submounts"}, func(o *options) bool { return !o.announce }},
		{[]string{"--cache", "always", "-o", "cache=none"}, func(o *options) bool { return o.cache == passthrough.CacheNever }},
		{[]string{"-o", "loglevel=err"}, func(o *options) bool { return o.logLevel == logError }},
		{[]string{"-o", "sandbox=chroot"}, func(o *options) bool { return o.sandbox == sandboxChroot }},
		{[]string{"-o", "source=/other,modcaps=+sys_admin"}, func(o *options) bool { return o.sharedDir == "/other" && o.modcaps == "+sys_admin" }},
		{[]string{"-o", "xattr", "-o", "writeback", "-oallow_direct_io"}, func(o *options) bool {
			return o.xattr && o.writeback && o.allowDirectIO && len(o.warnings) == 1
		}},
	} {
		o, err := parseWith(c.args...)
		require.NoError(t, err, "%q", c.args)
		require.True(t, c.ok(o), "%q: %+v", c.args, o)
		require.Equal(t, []string{"Use of deprecated option format '-o': Please specify options without it (e.g., '--cache auto' instead of '-o cache=auto')"}, o.warnings, "%q", c.args)
	}
	for opt, msg := range map[string]string{
		"no_such_option": "Invalid compat argument '-o no_such_option'",
		"xattr=":         "Invalid compat argument '-o xattr='",
		"cache=auto=x":   "Invalid compat argument '-o cache=auto=x'",
		"cache=never":    "Invalid compat value 'never' for '-o cache'",
		"loglevel=error": "Invalid compat value 'error' for '-o loglevel'",
		"sandbox=none":   "Invalid compat value 'none' for '-o sandbox'",
		"xattrmap=:bad:": "Invalid compat value ':bad:' for '-o xattrmap'",
	} {
		_, err := parseWith("-o", opt)
		require.EqualError(t, err, msg, opt)
		require.IsType(t, usageError{}, err, opt)
	}
}

// TestNegotiationOptions checks --posix-acl and --security-label: alone
// always, a mode only after '='.
func TestNegotiationOptions(t *testing.T) {
	for _, name := range []string{"--posix-acl", "--security-label"} {
		get := func(o *options) negotiationMode {
			if name == "--posix-acl" {
				return o.posixACL
			}
			return o.securityLabel
		}
		o, err := parseWith()
		require.NoError(t, err)
		require.Equal(t, negotiateNever, get(o), name)
		o, err = parseWith(name)
		require.NoError(t, err)
		require.Equal(t, negotiateAlways, get(o), name)
		for _, m := range negotiationNames {
			o, err = parseWith(name + "=" + m)
			require.NoError(t, err)
			require.Equal(t, m, get(o).String(), name)
		}
		_, err = parseWith(name, "auto")
		require.EqualError(t, err, "unexpected argument 'auto' found")
		_, err = parseWith(name + "=yes")
		require.EqualError(t, err, "invalid value 'yes' for '"+name+"[=<never|auto|always>]': invalid mode, expected: never, auto, always")
	}
}

// TestClapReading checks parseArgv's reading of the command line where it
// is clap's and not pflag's.
func TestClapReading(t *testing.T) {
	for _, c := range []struct {
		args []string
		err  string
	}{
		{[]string{"--xattr=true"}, "unexpected value 'true' for '--xattr' found; no more were expected"},
		{[]string{"--thread-pool-size", "-1"}, "unexpected argument '-1' found"},
		{[]string{"--thread-pool-size=-1"}, "invalid value '-1' for '--thread-pool-size <THREAD_POOL_SIZE>': invalid digit found in string"},
		{[]string{"--rlimit-nofile", "x"}, "invalid value 'x' for '--rlimit-nofile <RLIMIT_NOFILE>': invalid digit found in string"},
		{[]string{"--rlimit-nofile", "99999999999999999999"}, "invalid value '99999999999999999999' for '--rlimit-nofile <RLIMIT_NOFILE>': number too large to fit in target type"},
		{[]string{"--inode-file-handles", "never"}, "equal sign is needed when assigning values to '--inode-file-handles=<INODE_FILE_HANDLES>'"},
		{[]string{"--tag"}, "a value is required for '--tag <TAG>' but none was supplied"},
		{[]string{"--tag", "--xattr"}, "a value is required for '--tag <TAG>' but none was supplied"},
		{[]string{"--tag", "-x"}, "unexpected argument '-x' found"},
		{[]string{"--debug"}, "unexpected argument '--debug' found"},
		{[]string{"--foreground"}, "unexpected argument '--foreground' found"},
		{[]string{"--nope=1"}, "unexpected argument '--nope' found"},
		{[]string{"stray"}, "unexpected argument 'stray' found"},
		{[]string{"--", "stray"}, "unexpected argument 'stray' found"},
		{[]string{"--fd", "3"}, "the argument '--socket-path <SOCKET_PATH>' cannot be used with '--fd <FD>'"},
	} {
		_, err := parseWith(c.args...)
		require.EqualError(t, err, c.err, "%q", c.args)
		require.IsType(t, usageError{}, err, "%q", c.args)
	}
	_, err := parseOptions([]string{"--fd=3", "--socket-path", "/s"}, io.Discard)
	require.EqualError(t, err, "the argument '--fd <FD>' cannot be used with '--socket-path <SOCKET_PATH>'")
	_, err = parseOptions([]string{"--socket-path", "/s"}, io.Discard)
	require.EqualError(t, err, "the following required arguments were not provided:\n  --shared-dir <SHARED_DIR>")
	_, err = parseOptions([]string{"--shared-dir", "/s"}, io.Discard)
	require.EqualError(t, err, "the following required arguments were not provided:\n  --socket <SOCKET>\n  --socket-path <SOCKET_PATH>\n  --fd <FD>")
	for _, args := range [][]string{{"-df"}, {"-d", "-f"}, {"-o=xattr"}, {"-oxattr"}, {"--tag=a", "--tag", "b"}} {
		o, err := parseWith(args...)
		require.NoError(t, err, "%q", args)
		if args[0] == "--tag=a" {
			require.Equal(t, "b", o.tag, "the last one counts")
		}
	}
	o, err := parseWith("--killpriv-v2", "--no-killpriv-v2")
	require.NoError(t, err)
	require.False(t, o.killprivV2, "the last one counts")
	o, err = parseWith("--no-killpriv-v2", "--killpriv-v2", "--no-announce-submounts", "--announce-submounts")
	require.NoError(t, err)
	require.True(t, o.killprivV2 && o.announce, "the last one counts")
	o, err = parseWith("--inode-file-handles=fallback", "--sandbox", "NONE", "--cache", "Never")
	require.NoError(t, err)
	require.Equal(t, passthrough.FileHandlesPrefer, o.fileHandles)
	require.Equal(t, sandboxNone, o.sandbox)
	require.Equal(t, passthrough.CacheNever, o.cache)
	require.Equal(t, []string{"Use of deprecated value 'fallback' for '--inode-file-handles': Please use 'prefer' instead"}, o.warnings)
	o, err = parseWith("--socket", "/old.sock")
	require.NoError(t, err)
	require.Equal(t, "/run/vfs.sock", o.socketPath, "--socket-path wins over --socket")
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
			`invalid value 'bogus' for '--sandbox <SANDBOX>': Unknown sandbox mode`},
		{"--seccomp", seccompNames, func(o *options) fmt.Stringer { return o.seccomp },
			`invalid value 'bogus' for '--seccomp <SECCOMP>': Matching variant not found`},
		{"--log-level", logLevelNames, func(o *options) fmt.Stringer { return o.logLevel },
			`invalid value 'bogus' for '--log-level <LOG_LEVEL>': attempted to convert a string that doesn't match an existing log level`},
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
		{"", []string{"-o", "loglevel=warn"}, logWarn},
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
