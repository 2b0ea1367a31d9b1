package main

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/govirtiofsd/govirtiofsd/passthrough"
)

// Two kinds of id mapping, as in virtiofsd:
//
//   - --translate-uid and --translate-gid: the daemon itself translates ids
//     between guest and host (passthrough/translate.go). Their rules are
//     checked for syntax when the command line is parsed (exit 2) and built
//     into tables when the filesystem is made (exit 1 for overlapping
//     ranges), where virtiofsd does each.
//   - --uid-map and --gid-map: the ranges of host ids the user namespace of
//     an unprivileged daemon's namespace sandbox holds (sandbox.go), given
//     as :inside:outside:count: with any non-alphanumeric separator.

// parseTranslations parses the --translate-uid or --translate-gid values
// (flag names which) with virtiofsd's messages.
func parseTranslations(flag string, vals []string) ([]passthrough.IDMapping, error) {
	var rules []passthrough.IDMapping
	for _, v := range vals {
		m, err := passthrough.ParseIDMapping(v)
		if err != nil {
			return nil, usagef("invalid value '%s' for '--%s <%s>': %v", v, flag, argName(flag), err)
		}
		rules = append(rules, m)
	}
	return rules, nil
}

// argName is clap's placeholder for a flag's value: TRANSLATE_UID.
func argName(flag string) string {
	return strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// buildIDMaps makes the translation tables of --translate-uid and
// --translate-gid; an error reads as virtiofsd's (after its log prefix).
func buildIDMaps(o *options) (uids, gids *passthrough.IDMap, err error) {
	if uids, err = passthrough.NewIDMap(o.uidRules); err != nil {
		return nil, nil, fmt.Errorf("Failed to create internal filesystem representation: UID map: %w", err)
	}
	if gids, err = passthrough.NewIDMap(o.gidRules); err != nil {
		return nil, nil, fmt.Errorf("Failed to create internal filesystem representation: GID map: %w", err)
	}
	return uids, gids, nil
}

// nsIDMap is one --uid-map or --gid-map range: count ids from outside on
// in the parent namespace appear as inside on in the sandbox's user
// namespace.
type nsIDMap struct {
	inside, outside, count uint32
}

// parseNSMaps parses the --uid-map or --gid-map values (flag names which)
// with virtiofsd's messages.
func parseNSMaps(flag string, vals []string) ([]nsIDMap, error) {
	var maps []nsIDMap
	for _, v := range vals {
		m, err := parseNSMap(v)
		if err != nil {
			return nil, usagef("invalid value '%s' for '--%s <%s>': %v", v, flag, argName(flag), err)
		}
		maps = append(maps, m)
	}
	return maps, nil
}

// parseNSMap parses ":inside:outside:count:": the last character is the
// separator, which must not be a letter or digit and must also come first.
func parseNSMap(s string) (nsIDMap, error) {
	const (
		badSep   = "A delimiter has been found that does not match the delimiter the map started with"
		badCount = "The map is empty or incorrect number of values are provided"
	)
	sep, n := utf8.DecodeLastRuneInString(s)
	if s == "" {
		return nsIDMap{}, fmt.Errorf(badCount)
	}
	if unicode.IsLetter(sep) || unicode.IsNumber(sep) || unicode.Is(unicode.Other_Alphabetic, sep) {
		return nsIDMap{}, fmt.Errorf(badSep)
	}
	body, ok := strings.CutPrefix(s[:len(s)-n], string(sep))
	if !ok {
		return nsIDMap{}, fmt.Errorf(badSep)
	}
	fields := strings.Split(body, string(sep))
	if len(fields) != 3 {
		return nsIDMap{}, fmt.Errorf(badCount)
	}
	var v [3]uint32
	for i, f := range fields {
		x, err := passthrough.ParseIDNumber(f)
		if err != nil {
			return nsIDMap{}, err
		}
		v[i] = x
	}
	return nsIDMap{inside: v[0], outside: v[1], count: v[2]}, nil
}

// nsMapsError is virtiofsd's refusal of --uid-map and --gid-map: they
// describe the user namespace that only an unprivileged daemon's namespace
// sandbox makes.
func nsMapsError(o *options, euid int) error {
	if len(o.uidNSMaps) > 0 && (euid == 0 || o.sandbox != sandboxNamespace) {
		return fmt.Errorf("Error entering sandbox: uid_map can only be used by unprivileged user where sandbox mod is namespace (Use '--sandbox namespace' instead)")
	}
	if len(o.gidNSMaps) > 0 && (euid == 0 || o.sandbox != sandboxNamespace) {
		return fmt.Errorf("Error entering sandbox: gid_map can only be used by unprivileged user where sandbox mod is namespace (Use '--sandbox namespace' instead)")
	}
	return nil
}

// parseIDMaps parses the four id mapping options (parseArgv checked
// their values already, in the order given, with the same messages).
func (o *options) parseIDMaps() error {
	var err error
	if o.uidRules, err = parseTranslations("translate-uid", o.text.translateUID); err != nil {
		return err
	}
	if o.gidRules, err = parseTranslations("translate-gid", o.text.translateGID); err != nil {
		return err
	}
	if o.uidNSMaps, err = parseNSMaps("uid-map", o.text.uidMap); err != nil {
		return err
	}
	if o.gidNSMaps, err = parseNSMaps("gid-map", o.text.gidMap); err != nil {
		return err
	}
	return nil
}

// checkIDMapping and checkNSMap are parseArgv's checks of one
// --translate-uid/gid and one --uid-map/--gid-map value.
func checkIDMapping(v string) string {
	if _, err := passthrough.ParseIDMapping(v); err != nil {
		return err.Error()
	}
	return ""
}

func checkNSMap(v string) string {
	if _, err := parseNSMap(v); err != nil {
		return err.Error()
	}
	return ""
}

// argIndex is the position of the first --name (or --name=value) in args,
// or -1.
func argIndex(args []string, name string) int {
	for i, a := range args {
		if a == "--" {
			break
		}
		if a == "--"+name || strings.HasPrefix(a, "--"+name+"=") {
			return i
		}
	}
	return -1
}
