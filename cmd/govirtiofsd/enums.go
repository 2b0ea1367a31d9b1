// The options that take one of a few names (--sandbox, --seccomp,
// --log-level, --posix-acl, --security-label, --dax-transport), as small
// int types: parseOptions parses
// each once, with virtiofsd's message for a bad name, and the rest of the
// daemon compares constants. --cache, --inode-file-handles and the
// --migration-* modes are passthrough's types, parsed there.

package main

import (
	"fmt"
	"strings"

	"github.com/sirupsen/logrus"
)

// parseEnum is the value whose name (names in the order of T's constants)
// is s.
func parseEnum[T ~int](names []string, s string) (T, bool) {
	for i, n := range names {
		if n == s {
			return T(i), true
		}
	}
	return 0, false
}

// enumName is v's name in names, the names in the order of T's constants.
func enumName[T ~int](names []string, v T) string {
	if v >= 0 && int(v) < len(names) {
		return names[v]
	}
	return fmt.Sprintf("%T(%d)", v, int(v))
}

// sandboxMode is --sandbox: how the serving process is confined.
type sandboxMode int

// The --sandbox modes.
const (
	// sandboxNamespace (the default) re-executes the daemon in mount, pid
	// and network namespaces of its own (parent.go, sandbox.go).
	sandboxNamespace sandboxMode = iota
	// sandboxChroot chroots the daemon into the shared directory.
	sandboxChroot
	// sandboxNone confines nothing.
	sandboxNone
)

var sandboxNames = []string{"namespace", "chroot", "none"}

// String is the mode's name on the command line.
func (m sandboxMode) String() string { return enumName(sandboxNames, m) }

// parseSandboxMode parses --sandbox.
func parseSandboxMode(s string) (sandboxMode, error) {
	if m, ok := parseEnum[sandboxMode](sandboxNames, s); ok {
		return m, nil
	}
	return 0, usagef("invalid sandbox mode %q (want namespace, chroot or none)", s)
}

// seccompMode is --seccomp: what a system call outside the allow-list
// (seccomp.go) meets.
type seccompMode int

// The --seccomp modes.
const (
	// seccompKill (the default) kills the process.
	seccompKill seccompMode = iota
	// seccompLog lets the call through and has the kernel log it.
	seccompLog
	// seccompTrap sends SIGSYS.
	seccompTrap
	// seccompNone installs no filter.
	seccompNone
)

var seccompNames = []string{"kill", "log", "trap", "none"}

// String is the mode's name on the command line.
func (m seccompMode) String() string { return enumName(seccompNames, m) }

// parseSeccompMode parses --seccomp.
func parseSeccompMode(s string) (seccompMode, error) {
	if m, ok := parseEnum[seccompMode](seccompNames, s); ok {
		return m, nil
	}
	return 0, usagef("invalid seccomp action %q (want none, kill, log or trap)", s)
}

// logLevel is --log-level (or RUST_LOG, or --debug): the least severe
// messages logged, or none.
type logLevel int

// The log levels, from the fewest messages to the most; logOff logs
// nothing.
const (
	logError logLevel = iota
	logWarn
	logInfo
	logDebug
	logTrace
	logOff
)

var logLevelNames = []string{"error", "warn", "info", "debug", "trace", "off"}

// String is the level's name on the command line.
func (l logLevel) String() string { return enumName(logLevelNames, l) }

// parseLogLevel parses a level name, in any case.
func parseLogLevel(s string) (logLevel, error) {
	if l, ok := parseEnum[logLevel](logLevelNames, strings.ToLower(s)); ok {
		return l, nil
	}
	return 0, usagef("invalid log level %q (want error, warn, info, debug, trace or off)", s)
}

// logrusLevel is the logger's level for l; with logOff the logger's output
// is discarded besides (run).
func (l logLevel) logrusLevel() logrus.Level {
	switch l {
	case logError:
		return logrus.ErrorLevel
	case logWarn:
		return logrus.WarnLevel
	case logInfo:
		return logrus.InfoLevel
	case logDebug:
		return logrus.DebugLevel
	case logTrace:
		return logrus.TraceLevel
	}
	return logrus.PanicLevel
}

// daxTransport is --dax-transport: how the DAX window asks the VMM for
// mappings (dax.go).
type daxTransport int

// The --dax-transport forms.
const (
	// daxShmem (the default) is SHMEM_MAP and SHMEM_UNMAP on the shared
	// memory region the back-end announces (QEMU 11.1).
	daxShmem daxTransport = iota
	// daxLegacy is FS_MAP and FS_UNMAP (Kata, Cloud Hypervisor,
	// Dragonball).
	daxLegacy
)

var daxTransportNames = []string{"shmem", "legacy"}

// String is the form's name on the command line.
func (t daxTransport) String() string { return enumName(daxTransportNames, t) }

// parseDAXTransport parses --dax-transport.
func parseDAXTransport(s string) (daxTransport, error) {
	if t, ok := parseEnum[daxTransport](daxTransportNames, s); ok {
		return t, nil
	}
	return 0, usagef("--dax-transport %s: want shmem or legacy", s)
}

// negotiationMode is --posix-acl or --security-label (virtiofsd 1.14's
// NegotiationMode): whether to offer the feature to the guest at INIT, and
// whether the session may go without it.
type negotiationMode int

// The negotiation modes.
const (
	// negotiateNever (the default) does not offer the feature.
	negotiateNever negotiationMode = iota
	// negotiateAuto offers it and, when the guest does not take it,
	// warns and goes on without.
	negotiateAuto
	// negotiateAlways offers it and fails INIT (EPROTO) when the guest
	// does not support it. The option given alone, and -o posix_acl or
	// -o security_label, mean this.
	negotiateAlways
)

var negotiationNames = []string{"never", "auto", "always"}

// String is the mode's name on the command line.
func (m negotiationMode) String() string { return enumName(negotiationNames, m) }
