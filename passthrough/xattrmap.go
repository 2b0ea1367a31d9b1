package passthrough

import (
	"bytes"
	"fmt"
	"strings"
	"syscall"
	"unicode"
	"unicode/utf8"
)

// XattrMap translates extended attribute names between the guest (client)
// and the host (server), following virtiofsd's --xattrmap.
//
// A map is a list of rules, each written as
//
//	<sep>type<sep>scope<sep>key<sep>prepend<sep>
//
// where <sep> is the first character of the rule (any character; each rule
// may pick its own) and rules are separated by optional white space.
//
//   - type is prefix, ok, bad or unsupported.
//   - scope is client (the rule applies to names the guest passes to
//     getxattr, setxattr and removexattr, matched against key), server (it
//     applies to names listxattr finds on the host, matched against prepend)
//     or all (both).
//   - key and prepend are prefixes; an empty one matches every name.
//
// The first rule whose scope and prefix match a name decides:
//
//   - prefix: a client name gets prepend put in front of it; a server name
//     has prepend stripped from it.
//   - ok: the name passes unchanged.
//   - bad: a client name is refused with EPERM (ENODATA for getxattr); a
//     server name is hidden from listxattr.
//   - unsupported: a client name is refused with EOPNOTSUPP; a server name
//     is hidden.
//
// The shorthand <sep>map<sep>key<sep>prepend<sep> must be the last rule. It
// stands for
//
//	prefix all key prepend   (add prepend to client names starting with key)
//	bad all prepend key      (refuse client names already starting with
//	                          prepend, hide server names starting with key
//	                          that do not carry prepend)
//	ok all "" ""             (everything else passes)
//
// and, when key is empty, for prefix all "" prepend followed by bad all "" ""
// (every name is prefixed; unprefixed host names are hidden).
//
// Every name must meet a rule. virtiofsd only finds out when a name matches
// nothing (and then aborts); ParseXattrMap refuses such a map up front: some
// rule must match every client name (client or all scope, empty key) and
// some rule every server name (server or all scope, empty prepend).
type XattrMap struct {
	rules []xattrRule
}

type xattrRuleType uint8

const (
	xattrPrefix xattrRuleType = iota
	xattrOK
	xattrBad
	xattrUnsupported
	xattrMapType // only while parsing; expanded into the rules above
)

func (t xattrRuleType) String() string {
	return [...]string{"prefix", "ok", "bad", "unsupported", "map"}[t]
}

type xattrScope uint8

const (
	scopeClient xattrScope = 1 << iota
	scopeServer
	scopeAll = scopeClient | scopeServer
)

type xattrRule struct {
	typ     xattrRuleType
	scope   xattrScope
	key     []byte
	prepend []byte
}

func (r xattrRule) String() string {
	scope := map[xattrScope]string{scopeClient: "client", scopeServer: "server", scopeAll: "all"}[r.scope]
	return fmt.Sprintf(":%s:%s:%s:%s:", r.typ, scope, r.key, r.prepend)
}

// XattrMapError reports a malformed --xattrmap.
type XattrMapError struct {
	Rule int // 1-based number of the offending rule; 0 for the map as a whole
	Msg  string
	// Cause is virtiofsd's name for the mistake, as Rust debug-prints
	// its xattrmap ErrorKind ("IncompleteRule", `InvalidScope { got:
	// "x", expected: "all, client, server" }`), or "" for a map that
	// virtiofsd takes but this parser refuses.
	Cause string
}

// Error implements error.
func (e *XattrMapError) Error() string {
	if e.Rule == 0 {
		return "xattrmap: " + e.Msg
	}
	return fmt.Sprintf("xattrmap rule %d: %s", e.Rule, e.Msg)
}

// ParseXattrMap parses virtiofsd's --xattrmap syntax.
func ParseXattrMap(s string) (*XattrMap, error) {
	m := &XattrMap{}
	rest := strings.TrimSpace(s)
	n := 0
	for {
		rest = strings.TrimLeftFunc(rest, unicode.IsSpace)
		if rest == "" {
			break
		}
		n++
		sep, size := utf8.DecodeRuneInString(rest)
		rest = rest[size:]
		field := func(what string) (string, error) {
			i := strings.IndexRune(rest, sep)
			if i < 0 {
				return "", &XattrMapError{n, fmt.Sprintf("incomplete rule: %s is not closed by %q", what, sep), "IncompleteRule"}
			}
			f := rest[:i]
			rest = rest[i+utf8.RuneLen(sep):]
			return f, nil
		}
		typName, err := field("the type")
		if err != nil {
			return nil, err
		}
		var r xattrRule
		switch typName {
		case "prefix":
			r.typ = xattrPrefix
		case "ok":
			r.typ = xattrOK
		case "bad":
			r.typ = xattrBad
		case "unsupported":
			r.typ = xattrUnsupported
		case "map":
			r.typ = xattrMapType
		default:
			return nil, &XattrMapError{n, fmt.Sprintf("invalid type %q (want prefix, ok, bad, unsupported or map)", typName),
				fmt.Sprintf("InvalidType { got: %q, expected: %q }", typName, "prefix, ok, bad, map")}
		}
		if r.typ == xattrMapType {
			r.scope = scopeAll
		} else {
			scope, err := field("the scope")
			if err != nil {
				return nil, err
			}
			switch scope {
			case "client":
				r.scope = scopeClient
			case "server":
				r.scope = scopeServer
			case "all":
				r.scope = scopeAll
			default:
				return nil, &XattrMapError{n, fmt.Sprintf("invalid scope %q (want client, server or all)", scope),
					fmt.Sprintf("InvalidScope { got: %q, expected: %q }", scope, "all, client, server")}
			}
		}
		key, err := field("the key")
		if err != nil {
			return nil, err
		}
		prepend, err := field("the prepend")
		if err != nil {
			return nil, err
		}
		if strings.IndexByte(key, 0) >= 0 || strings.IndexByte(prepend, 0) >= 0 {
			return nil, &XattrMapError{n, "key and prepend cannot hold NUL bytes", ""}
		}
		r.key, r.prepend = []byte(key), []byte(prepend)
		if r.typ != xattrMapType {
			m.rules = append(m.rules, r)
			continue
		}
		if strings.TrimSpace(rest) != "" {
			return nil, &XattrMapError{n, "a map rule must be the last rule (and there can be only one)", "MapRuleViolation"}
		}
		m.rules = append(m.rules, xattrRule{typ: xattrPrefix, scope: scopeAll, key: r.key, prepend: r.prepend})
		if len(r.key) == 0 {
			m.rules = append(m.rules, xattrRule{typ: xattrBad, scope: scopeAll, key: []byte{}, prepend: []byte{}})
		} else {
			m.rules = append(m.rules,
				xattrRule{typ: xattrBad, scope: scopeAll, key: r.prepend, prepend: r.key},
				xattrRule{typ: xattrOK, scope: scopeAll, key: []byte{}, prepend: []byte{}})
		}
	}
	if len(m.rules) == 0 {
		return nil, &XattrMapError{0, "no rules", "NoRulesProvided"}
	}
	var client, server bool
	for _, r := range m.rules {
		client = client || r.scope&scopeClient != 0 && len(r.key) == 0
		server = server || r.scope&scopeServer != 0 && len(r.prepend) == 0
	}
	switch {
	case !client:
		return nil, &XattrMapError{0, "no rule matches every name from the guest: end the map with a catch-all rule such as \":ok:all:::\" or \":bad:all:::\"", ""}
	case !server:
		return nil, &XattrMapError{0, "no rule matches every name from the host: end the map with a catch-all rule such as \":ok:all:::\" or \":bad:all:::\"", ""}
	}
	return m, nil
}

// String returns the map's rules, map shorthands expanded, with ':' as the
// separator.
func (m *XattrMap) String() string {
	var b strings.Builder
	for i, r := range m.rules {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(r.String())
	}
	return b.String()
}

func (m *XattrMap) find(scope xattrScope, name []byte) *xattrRule {
	for i := range m.rules {
		r := &m.rules[i]
		if r.scope&scope == 0 {
			continue
		}
		p := r.key
		if scope == scopeServer {
			p = r.prepend
		}
		if bytes.HasPrefix(name, p) {
			return r
		}
	}
	return nil // ParseXattrMap makes sure this does not happen
}

// mapClient translates a name from the guest into the host's name, written
// NUL-terminated into buf. It returns the host name (without the NUL) or
// EPERM (bad), EOPNOTSUPP (unsupported) or ERANGE (the result would be
// longer than an xattr name can be).
func (m *XattrMap) mapClient(name []byte, buf *[xattrNameMax + 1]byte) ([]byte, syscall.Errno) {
	r := m.find(scopeClient, name)
	if r == nil {
		return nil, syscall.EPERM
	}
	switch r.typ {
	case xattrOK:
		if len(name) > xattrNameMax {
			return nil, syscall.ERANGE
		}
		n := copy(buf[:], name)
		buf[n] = 0
		return buf[:n], 0
	case xattrPrefix:
		if len(r.prepend)+len(name) > xattrNameMax {
			return nil, syscall.ERANGE
		}
		n := copy(buf[:], r.prepend)
		n += copy(buf[n:], name)
		buf[n] = 0
		return buf[:n], 0
	case xattrUnsupported:
		return nil, syscall.EOPNOTSUPP
	}
	return nil, syscall.EPERM
}

// mapServer translates a name found on the host for the guest: it returns
// the name to show (a suffix of name) and whether to show it at all.
func (m *XattrMap) mapServer(name []byte) ([]byte, bool) {
	r := m.find(scopeServer, name)
	if r == nil {
		return nil, false
	}
	switch r.typ {
	case xattrOK:
		return name, true
	case xattrPrefix:
		return name[len(r.prepend):], true
	}
	return nil, false
}

// MapClient translates a guest xattr name into the host's, as getxattr,
// setxattr and removexattr do; the error is EPERM for a bad name and
// EOPNOTSUPP for an unsupported one.
func (m *XattrMap) MapClient(name string) (string, error) {
	var buf [xattrNameMax + 1]byte
	out, e := m.mapClient([]byte(name), &buf)
	if e != 0 {
		return "", e
	}
	return string(out), nil
}

// MapServer translates a host xattr name into the guest's, as listxattr
// does; ok is false when the name is hidden from the guest.
func (m *XattrMap) MapServer(name string) (guest string, ok bool) {
	out, ok := m.mapServer([]byte(name))
	return string(out), ok
}
