package compat

import (
	"os/exec"
	"strings"
	"testing"
)

// optionCase is one command line of TestOptionsMatchReference.
type optionCase struct {
	args []string
	// in113 says why virtiofsd 1.13.2's verdict differs from 1.14.0's,
	// or is "" where the two agree; the test checks both ways.
	in113 string
	// ours says why govirtiofsd deliberately accepts a command line
	// virtiofsd 1.14.0 refuses, or is "" where the two must agree.
	ours string
}

// optionCases are every option and spelling virtiofsd 1.14.0 accepts or
// refuses, each on the command line verdict makes (shared folder, socket,
// --sandbox none --seccomp none).
var optionCases = []optionCase{
	// --tag: 1 to 36 bytes.
	{args: []string{"--tag", "myfs"}},
	{args: []string{"--tag=myfs"}},
	{args: []string{"--tag", ""}},
	{args: []string{"--tag", strings.Repeat("t", 36)}},
	{args: []string{"--tag", strings.Repeat("t", 37)}},
	// --socket (deprecated) beside --socket-path: --socket-path wins.
	{args: []string{"--socket", "/nonexistent/dir/s.sock"}},
	{args: []string{"--socket-group", "root"}},
	{args: []string{"--socket-group", "no-such-group-x"}},
	{args: []string{"--fd", "3"}},
	{args: []string{"--thread-pool-size", "0"}},
	{args: []string{"--thread-pool-size=4"}},
	{args: []string{"--thread-pool-size", "-1"}},
	{args: []string{"--thread-pool-size", "x"}},
	{args: []string{"--xattr"}},
	{args: []string{"--xattr=true"}},
	// --posix-acl[=never|auto|always], the value only after '='.
	{args: []string{"--posix-acl"}},
	{args: []string{"--posix-acl=never"}, in113: "1.13.2's --posix-acl takes no value"},
	{args: []string{"--posix-acl=auto"}, in113: "1.13.2's --posix-acl takes no value"},
	{args: []string{"--posix-acl=always"}, in113: "1.13.2's --posix-acl takes no value"},
	{args: []string{"--posix-acl=sometimes"}, in113: "1.13.2's --posix-acl takes no value"},
	{args: []string{"--posix-acl="}, in113: "1.13.2's --posix-acl takes no value"},
	{args: []string{"--posix-acl", "auto"}},
	{args: []string{"--posix-acl", "--xattr"}},
	// --security-label[=never|auto|always], likewise.
	{args: []string{"--security-label"}},
	{args: []string{"--security-label=never"}, in113: "1.13.2's --security-label takes no value"},
	{args: []string{"--security-label=auto"}, in113: "1.13.2's --security-label takes no value"},
	{args: []string{"--security-label=always"}, in113: "1.13.2's --security-label takes no value"},
	{args: []string{"--security-label=bogus"}, in113: "1.13.2's --security-label takes no value"},
	{args: []string{"--security-label", "always"}},
	// --translate-uid/gid with --posix-acl: 1.13.2 refuses any --posix-acl
	// (clap conflict, exit 2), 1.14.0 auto and always (exit 1).
	{args: []string{"--translate-uid", "guest:0:1:1", "--posix-acl"}, in113: "1.13.2 refuses the pair as a clap conflict (exit 2), 1.14.0 after parsing (exit 1)"},
	{args: []string{"--translate-uid", "guest:0:1:1", "--posix-acl=always"}, in113: "1.13.2's --posix-acl takes no value"},
	{args: []string{"--translate-uid", "guest:0:1:1", "--posix-acl=auto"}, in113: "1.13.2's --posix-acl takes no value"},
	{args: []string{"--translate-gid", "guest:0:1:1", "--posix-acl=never"}, in113: "1.13.2's --posix-acl takes no value"},
	{args: []string{"--translate-gid", "guest:0:1:1", "-o", "posix_acl"}, in113: "1.13.2 checks the conflict before -o applies, so -o posix_acl passes"},
	{args: []string{"--xattrmap", ":map::user.virtiofs.:"}},
	{args: []string{"--xattrmap", ":bad:"}},
	{args: []string{"--sandbox", "none"}},
	{args: []string{"--sandbox", "chroot"}},
	{args: []string{"--sandbox", "NONE"}},
	{args: []string{"--sandbox", "jail"}},
	{args: []string{"--readonly"}},
	{args: []string{"--seccomp", "none"}},
	{args: []string{"--seccomp", "log"}},
	{args: []string{"--seccomp", "NONE"}},
	{args: []string{"--seccomp", "deny"}},
	{args: []string{"--announce-submounts"}},
	{args: []string{"--no-announce-submounts"}},
	{args: []string{"--no-announce-submounts", "--announce-submounts"}},
	// --inode-file-handles=never|prefer|mandatory (fallback: deprecated
	// prefer), the value only after '='.
	{args: []string{"--inode-file-handles=never"}},
	{args: []string{"--inode-file-handles=prefer"}},
	{args: []string{"--inode-file-handles=mandatory"}},
	{args: []string{"--inode-file-handles=fallback"}},
	{args: []string{"--inode-file-handles=always"}},
	{args: []string{"--inode-file-handles", "never"}},
	{args: []string{"--modcaps=-dac_read_search"}, in113: "1.13.2 defaults to --inode-file-handles=never and needs no dac_read_search"},
	{args: []string{"--modcaps=-dac_read_search", "--inode-file-handles=never"}},
	{args: []string{"--modcaps=-dac_read_search", "--inode-file-handles=mandatory"}},
	{args: []string{"--cache", "auto"}},
	{args: []string{"--cache", "always"}},
	{args: []string{"--cache", "never"}},
	{args: []string{"--cache=metadata"}},
	{args: []string{"--cache", "NEVER"}},
	{args: []string{"--cache", "none"}},
	{args: []string{"--allow-mmap"}},
	{args: []string{"--no-readdirplus"}},
	{args: []string{"--writeback"}},
	{args: []string{"--allow-direct-io"}},
	{args: []string{"--preserve-noatime"}},
	{args: []string{"--modcaps=+sys_admin:-chown"}},
	{args: []string{"--modcaps", "+SYS_ADMIN"}},
	{args: []string{"--modcaps=sys_admin"}},
	{args: []string{"--modcaps=+no_such_cap"}},
	{args: []string{"--modcaps=+chown:"}},
	{args: []string{"--log-level", "error"}},
	{args: []string{"--log-level", "warn"}},
	{args: []string{"--log-level", "debug"}},
	{args: []string{"--log-level", "trace"}},
	{args: []string{"--log-level", "off"}},
	{args: []string{"--log-level", "INFO"}},
	{args: []string{"--log-level", "loud"}},
	{args: []string{"--syslog"}},
	{args: []string{"--rlimit-nofile", "0"}},
	{args: []string{"--rlimit-nofile", "100000"}},
	{args: []string{"--rlimit-nofile", "100"}},
	{args: []string{"--rlimit-nofile", "abc"}},
	{args: []string{"--rlimit-nofile", "-1"}},
	{args: []string{"--rlimit-nofile", "99999999999"}},
	{args: []string{"--killpriv-v2"}},
	{args: []string{"--no-killpriv-v2"}},
	{args: []string{"--killpriv-v2", "--no-killpriv-v2"}},
	{args: []string{"-d"}},
	{args: []string{"--debug"}},
	{args: []string{"-f"}},
	{args: []string{"--foreground"}},
	{args: []string{"--migration-mode", "find-paths"}},
	{args: []string{"--migration-mode", "file-handles"}},
	{args: []string{"--migration-mode", "paths"}},
	{args: []string{"--migration-on-error", "abort"}},
	{args: []string{"--migration-on-error", "guest-error"}},
	{args: []string{"--migration-on-error", "ignore"}},
	{args: []string{"--migration-verify-handles"}},
	{args: []string{"--migration-confirm-paths"}},
	{args: []string{"--migration-mode", "file-handles", "--migration-verify-handles"}},
	{args: []string{"--migration-mode", "file-handles", "--migration-confirm-paths", "--migration-verify-handles"}},
	{args: []string{"--no-such-option"}},
	{args: []string{"stray"}},
	// -o: the legacy forms, one fixed deprecation warning for any.
	{args: []string{"-o", "xattr"}},
	{args: []string{"-o", "xattr,no_xattr"}},
	{args: []string{"-o", "xattr", "-o", "writeback"}},
	{args: []string{"-oxattr"}},
	{args: []string{"-o", "no_xattr"}},
	{args: []string{"-o", "readdirplus"}},
	{args: []string{"-o", "no_readdirplus"}},
	{args: []string{"-o", "writeback"}},
	{args: []string{"-o", "no_writeback"}},
	{args: []string{"-o", "allow_direct_io"}},
	{args: []string{"-o", "no_allow_direct_io"}},
	{args: []string{"-o", "announce_submounts"}},
	{args: []string{"-o", "killpriv_v2"}},
	{args: []string{"-o", "no_killpriv_v2"}},
	{args: []string{"-o", "posix_acl"}},
	{args: []string{"-o", "no_posix_acl"}},
	{args: []string{"-o", "security_label"}},
	{args: []string{"-o", "no_security_label"}},
	{args: []string{"-o", "no_posix_lock"}},
	{args: []string{"-o", "no_flock"}},
	{args: []string{"-o", "flock"}, ours: "the C virtiofsd's spelling, kept working: locks forwarded (the default)"},
	{args: []string{"-o", "posix_lock"}, ours: "the C virtiofsd's spelling, kept working: locks forwarded (the default)"},
	{args: []string{"-o", "timeout=1"}},
	{args: []string{"-o", "cache=auto"}},
	{args: []string{"-o", "cache=always"}},
	{args: []string{"-o", "cache=none"}},
	{args: []string{"-o", "cache=metadata"}},
	{args: []string{"-o", "cache=never"}},
	{args: []string{"-o", "loglevel=debug"}},
	{args: []string{"-o", "loglevel=err"}},
	{args: []string{"-o", "loglevel=error"}},
	{args: []string{"-o", "sandbox=chroot"}},
	{args: []string{"-o", "sandbox=none"}},
	{args: []string{"-o", "modcaps=+sys_admin"}},
	{args: []string{"-o", "xattrmap=:map::user.virtiofs.:"}},
	{args: []string{"-o", "xattrmap=:bad:"}},
	{args: []string{"-o", "source=/nonexistent/share"}},
	{args: []string{"-o", "cache=auto=x"}},
	{args: []string{"-o", "xattr="}},
	{args: []string{"-o", ""}},
}

// TestOptionsMatchReference gives virtiofsd 1.14.0 (the reference),
// virtiofsd 1.13.2 and govirtiofsd each command line of optionCases and
// checks that govirtiofsd's verdict (accepted, or the exit status and
// message, and the warnings logged) is 1.14.0's, and that 1.13.2's is
// 1.14.0's too except for the cases that name a difference, where it
// must differ.
func TestOptionsMatchReference(t *testing.T) {
	bins := []string{referenceBinary(t), reference113Binary(t), oursBinary(t)}
	cases := make([][]string, len(optionCases))
	for i, c := range optionCases {
		cases[i] = c.args
	}
	got := verdicts(t, bins, cases)
	accepted := 0
	for i, c := range optionCases {
		v14, v13, ours := got[i][0], got[i][1], got[i][2]
		t.Logf("%q\n  1.14.0: %s\n  1.13.2: %s\n  ours:   %s", c.args, v14, v13, ours)
		switch {
		case c.ours == "" && ours != v14:
			t.Errorf("%q: govirtiofsd's verdict\n\t%s\nis not virtiofsd 1.14.0's\n\t%s", c.args, indent(ours), indent(v14))
		case c.ours != "" && (strings.HasPrefix(v14, "accepted") || !strings.HasPrefix(ours, "accepted")):
			t.Errorf("%q: the case says govirtiofsd accepts what virtiofsd 1.14.0 refuses (%s), but 1.14.0: %s; ours: %s", c.args, c.ours, indent(v14), indent(ours))
		}
		switch {
		case c.in113 == "" && v13 != v14:
			t.Errorf("%q: virtiofsd 1.13.2's verdict\n\t%s\ndiffers from 1.14.0's\n\t%s\nand the case names no difference", c.args, indent(v13), indent(v14))
		case c.in113 != "" && v13 == v14:
			t.Errorf("%q: virtiofsd 1.13.2 and 1.14.0 agree (%s), but the case says they differ: %s", c.args, indent(v14), c.in113)
		}
		if strings.HasPrefix(v14, "accepted") {
			accepted++
		}
	}
	if accepted == 0 || accepted == len(optionCases) {
		t.Errorf("%d of %d command lines accepted: both kinds of verdict should be compared", accepted, len(optionCases))
	}
}

// indent indents the lines after the first of a verdict for a message.
func indent(v string) string { return strings.ReplaceAll(v, "\n", "\n\t") }

// TestPrintCapabilitiesMatchReference compares the --print-capabilities
// answer (libvirt reads it) byte for byte with virtiofsd 1.14.0's; 1.13.2
// lacks the two *-negotiation-mode features.
func TestPrintCapabilitiesMatchReference(t *testing.T) {
	out := func(bin string) string {
		b, err := exec.Command(bin, "--print-capabilities").Output()
		if err != nil {
			t.Fatalf("%s --print-capabilities: %v", bin, err)
		}
		return string(b)
	}
	want, old := out(referenceBinary(t)), out(reference113Binary(t))
	if got := out(oursBinary(t)); got != want {
		t.Errorf("govirtiofsd --print-capabilities:\n%s\nvirtiofsd 1.14.0:\n%s", got, want)
	}
	for _, f := range []string{"posix-acl-negotiation-mode", "security-label-negotiation-mode"} {
		if !strings.Contains(want, f) || strings.Contains(old, f) {
			t.Errorf("%s: expected in 1.14.0's answer and not in 1.13.2's:\n%s\n%s", f, want, old)
		}
	}
}
