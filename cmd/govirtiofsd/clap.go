// The command line is read as virtiofsd's clap parser reads it, so that a
// command line virtiofsd refuses is refused here with the same message
// (exit status 2), and one it takes is taken the same way. pflag keeps the
// options (their storage, defaults and --help); parseArgv walks argv and
// sets them.
//
// What clap does, and so parseArgv:
//   - --name VALUE and --name=VALUE; a VALUE that starts with '-' is not
//     taken (so --thread-pool-size -1 is the unknown argument '-1');
//   - a boolean option takes no value (--xattr=true is refused);
//   - --posix-acl and --security-label take a value only after '='
//     (alone they mean "always"), --inode-file-handles only with '=';
//   - -o, -d and -f are short only; -oVALUE, -o=VALUE and -o VALUE are one;
//     short flags cluster (-df);
//   - a repeated option overrides the one before (args_override_self),
//     the list options (-o, --uid-map, --translate-uid...) add up;
//   - values are checked as they come, in order; then conflicts, then the
//     required options.

package main

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"unicode"

	"github.com/spf13/pflag"
)

// clapKind is how an option takes its value.
type clapKind int

const (
	clapValue    clapKind = iota // --name VALUE or --name=VALUE
	clapFlag                     // --name, no value
	clapOptional                 // --name (missing value) or --name=VALUE
	clapEquals                   // --name=VALUE only
)

// clapArg is what parseArgv knows of an option beyond pflag's flag.
type clapArg struct {
	kind clapKind
	// missing is the value of a clapOptional option given alone.
	missing string
	// shortOnly options have no long spelling (-o, -d, -f).
	shortOnly bool
	// check returns why value is refused (clap's message after the
	// option's name), or "".
	check func(value string) string
}

// clapArgs are the options whose handling is not pflag's default: value
// checks with virtiofsd's messages, the optional and '='-only values, the
// short-only flags.
var clapArgs = map[string]clapArg{
	"tag":                {check: checkTag},
	"fd":                 {check: checkRustInt(32, true)},
	"thread-pool-size":   {check: checkRustInt(64, false)},
	"rlimit-nofile":      {check: checkRustInt(64, false)},
	"posix-acl":          {kind: clapOptional, missing: "always", check: checkNegotiation},
	"security-label":     {kind: clapOptional, missing: "always", check: checkNegotiation},
	"inode-file-handles": {kind: clapEquals, check: checkInodeFileHandles},
	"sandbox":            {check: checkEnumFold(sandboxNames, "Unknown sandbox mode")},
	"seccomp":            {check: checkEnum(seccompNames, "Matching variant not found")},
	"cache":              {check: checkEnumFold([]string{"auto", "always", "never", "metadata"}, "invalid cache policy")},
	"log-level":          {check: checkEnumFold(logLevelNames, "attempted to convert a string that doesn't match an existing log level")},
	"migration-mode":     {check: checkEnum([]string{"find-paths", "file-handles"}, "invalid migration-mode value")},
	"migration-on-error": {check: checkEnum([]string{"abort", "guest-error"}, "invalid migration-on-error value")},
	"xattrmap":           {check: checkXattrMap},
	"translate-uid":      {check: checkIDMapping},
	"translate-gid":      {check: checkIDMapping},
	"uid-map":            {check: checkNSMap},
	"gid-map":            {check: checkNSMap},
	"compat-options":     {shortOnly: true},
	"debug":              {shortOnly: true},
	"foreground":         {shortOnly: true},
}

// kindOf is how fl takes its value.
func kindOf(fl *pflag.Flag) clapKind {
	if a, ok := clapArgs[fl.Name]; ok && a.kind != clapValue {
		return a.kind
	}
	if fl.Value.Type() == "bool" {
		return clapFlag
	}
	return clapValue
}

// clapName is how clap names fl in a message: "--tag <TAG>", "--xattr",
// "--posix-acl[=<never|auto|always>]",
// "--inode-file-handles=<INODE_FILE_HANDLES>", "-o <COMPAT_OPTIONS>".
func clapName(fl *pflag.Flag) string {
	name := "--" + fl.Name
	if clapArgs[fl.Name].shortOnly {
		name = "-" + fl.Shorthand
	}
	switch kindOf(fl) {
	case clapFlag:
		return name
	case clapOptional:
		return name + "[=<never|auto|always>]"
	case clapEquals:
		return name + "=<" + argName(fl.Name) + ">"
	}
	return name + " <" + argName(fl.Name) + ">"
}

// parseArgv sets f's options from args as clap would, or returns clap's
// message for the first mistake.
func parseArgv(f *pflag.FlagSet, args []string) error {
	var missingValue *pflag.Flag
	set := func(fl *pflag.Flag, v string) error {
		if c := clapArgs[fl.Name].check; c != nil {
			if why := c(v); why != "" {
				return usagef("invalid value '%s' for '%s': %s", v, clapName(fl), why)
			}
		}
		if err := f.Set(fl.Name, v); err != nil {
			return usagef("invalid value '%s' for '%s': %v", v, clapName(fl), err)
		}
		return nil
	}
	// known says whether tok is an option clap knows, so that a value
	// missing before it is "a value is required" rather than tok being
	// an unexpected argument.
	known := func(tok string) bool {
		if name, ok := strings.CutPrefix(tok, "--"); ok {
			name, _, _ = strings.Cut(name, "=")
			fl := f.Lookup(name)
			return fl != nil && !clapArgs[name].shortOnly
		}
		return len(tok) > 1 && f.ShorthandLookup(tok[1:2]) != nil
	}
	// value takes the next argument as fl's value.
	value := func(fl *pflag.Flag, i *int) error {
		if *i+1 < len(args) && (!strings.HasPrefix(args[*i+1], "-") || args[*i+1] == "-") {
			*i++
			return set(fl, args[*i])
		}
		if *i+1 < len(args) && !known(args[*i+1]) {
			return nil // the next argument's own error comes first
		}
		if missingValue == nil {
			missingValue = fl
		}
		return nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			if i+1 < len(args) {
				return usagef("unexpected argument '%s' found", args[i+1])
			}
		case strings.HasPrefix(a, "--"):
			name, v, hasValue := strings.Cut(a[2:], "=")
			fl := f.Lookup(name)
			if fl == nil || clapArgs[name].shortOnly {
				return usagef("unexpected argument '--%s' found", name)
			}
			var err error
			switch kindOf(fl) {
			case clapFlag:
				if hasValue {
					return usagef("unexpected value '%s' for '--%s' found; no more were expected", v, name)
				}
				err = f.Set(name, "true")
			case clapOptional:
				if !hasValue {
					v = clapArgs[name].missing
				}
				err = set(fl, v)
			case clapEquals:
				if !hasValue {
					return usagef("equal sign is needed when assigning values to '%s'", clapName(fl))
				}
				err = set(fl, v)
			default:
				if hasValue {
					err = set(fl, v)
				} else {
					err = value(fl, &i)
				}
			}
			if err != nil {
				return err
			}
		case strings.HasPrefix(a, "-") && a != "-":
			for j := 1; j < len(a); j++ {
				fl := f.ShorthandLookup(a[j : j+1])
				if fl == nil {
					return usagef("unexpected argument '-%c' found", a[j])
				}
				if kindOf(fl) == clapFlag {
					if err := f.Set(fl.Name, "true"); err != nil {
						return err
					}
					continue
				}
				var err error
				if rest := strings.TrimPrefix(a[j+1:], "="); j+1 < len(a) {
					err = set(fl, rest)
				} else {
					err = value(fl, &i)
				}
				if err != nil {
					return err
				}
				break
			}
		default:
			return usagef("unexpected argument '%s' found", a)
		}
	}
	if missingValue != nil {
		return usagef("a value is required for '%s' but none was supplied", clapName(missingValue))
	}
	return checkConflicts(f, args)
}

// clapConflicts are virtiofsd's pairs of options that cannot be given
// together.
var clapConflicts = [][2]string{
	{"socket-path", "fd"},
	{"socket", "fd"},
	{"socket-group", "fd"},
	{"socket-group", "print-capabilities"},
}

// checkConflicts refuses the options of a conflicting pair given together
// (the one given first named first, as clap does) and reports missing
// required options.
func checkConflicts(f *pflag.FlagSet, args []string) error {
	first := func(name string) int { return argIndex(args, name) }
	for _, c := range clapConflicts {
		if f.Changed(c[0]) && f.Changed(c[1]) {
			a, b := f.Lookup(c[0]), f.Lookup(c[1])
			if first(c[1]) < first(c[0]) {
				a, b = b, a
			}
			return usagef("the argument '%s' cannot be used with '%s'", clapName(a), clapName(b))
		}
	}
	if f.Changed("print-capabilities") {
		return nil
	}
	var missing []string
	if !f.Changed("shared-dir") && !f.Changed("compat-options") {
		missing = append(missing, clapName(f.Lookup("shared-dir")))
	}
	if !f.Changed("socket-path") && !f.Changed("socket") && !f.Changed("fd") {
		for _, n := range []string{"socket", "socket-path", "fd"} {
			missing = append(missing, clapName(f.Lookup(n)))
		}
	}
	if len(missing) > 0 {
		return usagef("the following required arguments were not provided:\n  %s", strings.Join(missing, "\n  "))
	}
	return nil
}

// checkRustInt checks an integer as Rust's from_str for an integer of
// bits bits reads it (a leading '+', and '-' when signed).
func checkRustInt(bits int, signed bool) func(string) string {
	return func(s string) string {
		_, why := parseRustInt(s, bits, signed)
		return why
	}
}

// parseRustInt parses s as Rust's integer from_str does, with its
// messages.
func parseRustInt(s string, bits int, signed bool) (int64, string) {
	if s == "" {
		return 0, "cannot parse integer from empty string"
	}
	neg := false
	digits := s
	switch {
	case s[0] == '+':
		digits = s[1:]
	case s[0] == '-' && signed:
		neg, digits = true, s[1:]
	}
	if digits == "" {
		return 0, "invalid digit found in string"
	}
	var v uint64
	over := false
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, "invalid digit found in string"
		}
		if v > (1<<64-1-uint64(c-'0'))/10 {
			over = true
		}
		v = v*10 + uint64(c-'0')
	}
	limit := uint64(1<<64 - 1)
	if signed {
		limit = 1<<(bits-1) - 1
		if neg {
			limit++
		}
	} else if bits < 64 {
		limit = 1<<bits - 1
	}
	if over || v > limit {
		if neg {
			return 0, "number too small to fit in target type"
		}
		return 0, "number too large to fit in target type"
	}
	if neg {
		return -int64(v), ""
	}
	return int64(v), ""
}

// checkTag checks --tag: 1 to 36 bytes.
func checkTag(s string) string {
	if s == "" || len(s) > 36 {
		return "The tag may not be empty or longer than 36 bytes (encoded as UTF-8)."
	}
	return ""
}

// checkEnum accepts the names, as given; why is clap's message otherwise.
func checkEnum(names []string, why string) func(string) string {
	return func(s string) string {
		for _, n := range names {
			if s == n {
				return ""
			}
		}
		return why
	}
}

// checkEnumFold accepts the names in any case.
func checkEnumFold(names []string, why string) func(string) string {
	return func(s string) string {
		for _, n := range names {
			if strings.EqualFold(s, n) {
				return ""
			}
		}
		return why
	}
}

func checkNegotiation(s string) string {
	if _, ok := parseEnum[negotiationMode](negotiationNames, s); !ok {
		return "invalid mode, expected: never, auto, always"
	}
	return ""
}

func checkInodeFileHandles(s string) string {
	switch s {
	case "never", "prefer", "fallback", "mandatory":
		return ""
	}
	return "invalid inode file handles mode"
}

// capitalized is msg with its first letter upper case, as glibc's
// strerror spells what Go's errno texts spell in lower case.
func capitalized(msg string) string {
	for i, r := range msg {
		return string(unicode.ToUpper(r)) + msg[i+len(string(r)):]
	}
	return msg
}

// errnoOf is the errno inside err.
func errnoOf(err error) (syscall.Errno, bool) {
	var n syscall.Errno
	ok := errors.As(err, &n)
	return n, ok
}

// rustIOError is how Rust displays an io::Error of errno e:
// "No such file or directory (os error 2)".
func rustIOError(e error) string {
	if n, ok := errnoOf(e); ok {
		return fmt.Sprintf("%s (os error %d)", capitalized(n.Error()), int(n))
	}
	return e.Error()
}
