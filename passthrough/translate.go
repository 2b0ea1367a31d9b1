package passthrough

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"unicode"
)

// Translating user and group ids between guest and host, as virtiofsd's
// --translate-uid and --translate-gid do. Each option is a list of rules
// (IDMapping), one per occurrence, built into an IDMap for uids and one
// for gids. An IDMap holds two independent tables: guest to host, applied
// to every id the guest hands over (the caller's uid and gid when a request
// runs as the caller, the supplementary group, the owner a SETATTR gives),
// and host to guest, applied to the owner in every attribute reply. An id
// that no rule of a direction covers passes unchanged; a guest id in a
// forbid-guest range cannot be used at all: the request fails with EIO,
// the error virtiofsd 1.13 answers (its "permission denied" carries no
// errno, which its server turns into EIO).
//
// Arithmetic is on uint32 and wraps, as in virtiofsd's release builds:
// guest:0:4294967295:2 sends guest id 1 to host id 0.

// IDMapKind is the type of an IDMapping: which direction it translates and
// how.
type IDMapKind uint8

// ID mapping types, named as on virtiofsd's command line.
const (
	// IDMapGuest (guest:GUEST:HOST:COUNT) maps COUNT guest ids from GUEST
	// on one to one to host ids from HOST.
	IDMapGuest IDMapKind = iota + 1
	// IDMapHost (host:HOST:GUEST:COUNT) maps COUNT host ids from HOST on
	// one to one to guest ids from GUEST.
	IDMapHost
	// IDMapSquashGuest (squash-guest:GUEST:HOST:COUNT) maps COUNT guest
	// ids from GUEST on all to the host id HOST.
	IDMapSquashGuest
	// IDMapSquashHost (squash-host:HOST:GUEST:COUNT) maps COUNT host ids
	// from HOST on all to the guest id GUEST.
	IDMapSquashHost
	// IDMapBoth (map:GUEST:HOST:COUNT) maps COUNT guest ids from GUEST on
	// to host ids from HOST, and those host ids back.
	IDMapBoth
	// IDMapForbidGuest (forbid-guest:GUEST:COUNT) refuses COUNT guest ids
	// from GUEST on.
	IDMapForbidGuest
)

var idMapKindNames = [...]string{
	IDMapGuest:       "guest",
	IDMapHost:        "host",
	IDMapSquashGuest: "squash-guest",
	IDMapSquashHost:  "squash-host",
	IDMapBoth:        "map",
	IDMapForbidGuest: "forbid-guest",
}

// String returns the kind's name in the option syntax.
func (k IDMapKind) String() string {
	if int(k) < len(idMapKindNames) && idMapKindNames[k] != "" {
		return idMapKindNames[k]
	}
	return "IDMapKind(" + strconv.Itoa(int(k)) + ")"
}

// IDMapping is one --translate-uid or --translate-gid rule. From is the
// first id of the source range (the guest's for guest, squash-guest, map
// and forbid-guest; the host's for host and squash-host), To the first id
// of the target range or the single target id (unused by forbid-guest).
type IDMapping struct {
	Kind  IDMapKind
	From  uint32
	To    uint32
	Count uint32
}

// String writes m as virtiofsd does, e.g. "guest:1000:2000:10".
func (m IDMapping) String() string {
	if m.Kind == IDMapForbidGuest {
		return fmt.Sprintf("%v:%d:%d", m.Kind, m.From, m.Count)
	}
	return fmt.Sprintf("%v:%d:%d:%d", m.Kind, m.From, m.To, m.Count)
}

// ParseIDMapping parses one rule, TYPE:A:B:COUNT (forbid-guest:A:COUNT),
// with virtiofsd's grammar and error messages: TYPE is matched without
// regard to case, and the separator is the first character that is not a
// letter, digit, '-' or '_' (so guest/0/1000/1 is guest:0:1000:1); the
// numbers are decimal u32 values.
func ParseIDMapping(s string) (IDMapping, error) {
	var prefix strings.Builder
	sep, rest := rune(-1), ""
	for i, c := range s {
		if isIDMapPrefixRune(c) {
			prefix.WriteRune(unicode.ToLower(c))
			continue
		}
		sep, rest = c, s[i+len(string(c)):]
		break
	}
	if sep < 0 {
		return IDMapping{}, idMapLengthError(1, 0)
	}
	fields := strings.Split(rest, string(sep))
	vals := make([]uint32, len(fields))
	for i, f := range fields {
		v, err := ParseIDNumber(f)
		if err != nil {
			return IDMapping{}, fmt.Errorf("Invalid value %s in ID map: %w", f, err)
		}
		vals[i] = v
	}
	m := IDMapping{}
	want := 3
	switch prefix.String() {
	case "guest":
		m.Kind = IDMapGuest
	case "host":
		m.Kind = IDMapHost
	case "squash-guest":
		m.Kind = IDMapSquashGuest
	case "squash-host":
		m.Kind = IDMapSquashHost
	case "map":
		m.Kind = IDMapBoth
	case "forbid-guest":
		m.Kind, want = IDMapForbidGuest, 2
	default:
		return IDMapping{}, fmt.Errorf("Invalid ID map prefix %s", prefix.String())
	}
	if len(vals) != want {
		return IDMapping{}, idMapLengthError(want, len(vals))
	}
	if want == 2 {
		m.From, m.Count = vals[0], vals[1]
	} else {
		m.From, m.To, m.Count = vals[0], vals[1], vals[2]
	}
	return m, nil
}

// isIDMapPrefixRune reports whether c belongs to a rule's type (Rust's
// char::is_alphanumeric, '-' or '_').
func isIDMapPrefixRune(c rune) bool {
	return c == '-' || c == '_' || unicode.IsLetter(c) || unicode.IsNumber(c) || unicode.Is(unicode.Other_Alphabetic, c)
}

func idMapLengthError(want, got int) error {
	return fmt.Errorf("Invalid ID map length (expected %d elements, got %d elements)", want, got)
}

// ParseIDNumber parses a decimal id as virtiofsd (Rust's u32::from_str)
// does, an optional '+' and ASCII digits, with Rust's error messages.
func ParseIDNumber(s string) (uint32, error) {
	if s == "" {
		return 0, errors.New("cannot parse integer from empty string")
	}
	if s[0] == '+' && len(s) > 1 {
		s = s[1:]
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, errors.New("invalid digit found in string")
		}
		if v = v*10 + uint64(c-'0'); v > 0xffffffff {
			return 0, errors.New("number too large to fit in target type")
		}
	}
	return uint32(v), nil
}

// IDMap translates one kind of id (uids or gids) between guest and host. A
// nil *IDMap translates nothing; its lookups cost a nil check.
type IDMap struct {
	toHost  []idRange // guest ids, sorted, disjoint
	toGuest []idRange // host ids, sorted, disjoint
}

// idRange maps the source ids first..last (inclusive).
type idRange struct {
	first, last uint32
	to          uint32 // first target id (idShift) or the target (idSquash)
	op          idOp
}

type idOp uint8

const (
	idShift  idOp = iota // first+n -> to+n
	idSquash             // any -> to
	idForbid             // refused
)

// NewIDMap builds the map for rules, in order, refusing what virtiofsd
// refuses: a range whose end passes 4294967295 ("Range overflow"; a
// forbid-guest range that does is ignored, as in virtiofsd) and a range
// that meets an earlier one of the same direction. Empty ranges are
// ignored. It returns nil (translate nothing) for no rules.
func NewIDMap(rules []IDMapping) (*IDMap, error) {
	if len(rules) == 0 {
		return nil, nil
	}
	m := &IDMap{}
	for _, r := range rules {
		var err error
		switch r.Kind {
		case IDMapGuest:
			err = addIDRange(&m.toHost, "Guest-to-host", r, r.From, r.To, idShift)
		case IDMapHost:
			err = addIDRange(&m.toGuest, "Host-to-guest", r, r.From, r.To, idShift)
		case IDMapSquashGuest:
			err = addIDRange(&m.toHost, "Guest-to-host", r, r.From, r.To, idSquash)
		case IDMapSquashHost:
			err = addIDRange(&m.toGuest, "Host-to-guest", r, r.From, r.To, idSquash)
		case IDMapBoth:
			if err = addIDRange(&m.toHost, "Guest-to-host", r, r.From, r.To, idShift); err == nil {
				err = addIDRange(&m.toGuest, "Host-to-guest", r, r.To, r.From, idShift)
			}
		case IDMapForbidGuest:
			// virtiofsd computes this range's end without an overflow
			// check: past 4294967295 it wraps below the start and the
			// range is empty.
			if uint64(r.From)+uint64(r.Count) <= 0xffffffff {
				err = addIDRange(&m.toHost, "Guest-to-host", r, r.From, 0, idForbid)
			}
		default:
			err = fmt.Errorf("%v: unknown mapping type", r)
		}
		if err != nil {
			return nil, err
		}
	}
	return m, nil
}

// addIDRange puts the range of r starting at from into *tab, checking it as
// virtiofsd does.
func addIDRange(tab *[]idRange, dir string, r IDMapping, from, to uint32, op idOp) error {
	end := uint64(from) + uint64(r.Count)
	if end > 0xffffffff {
		return fmt.Errorf("Parameter %v: Range overflow", r)
	}
	if r.Count == 0 {
		return nil
	}
	n := idRange{first: from, last: uint32(end - 1), to: to, op: op}
	t := *tab
	i := sort.Search(len(t), func(i int) bool { return t[i].first > n.first })
	if (i > 0 && t[i-1].last >= n.first) || (i < len(t) && t[i].first <= n.last) {
		return fmt.Errorf("%v: %s mapping '%v' intersects previously added entry", r, dir, n)
	}
	t = append(t, idRange{})
	copy(t[i+1:], t[i:])
	t[i] = n
	*tab = t
	return nil
}

// String describes the range as virtiofsd's error messages do.
func (r idRange) String() string {
	end := uint64(r.last) + 1
	switch r.op {
	case idSquash:
		return fmt.Sprintf("squash [%d, %d) to %d", r.first, end, r.to)
	case idForbid:
		return fmt.Sprintf("fail [%d, %d)", r.first, end)
	}
	return fmt.Sprintf("map [%d, %d) to [%d, %d)", r.first, end, r.to, r.to+(r.last-r.first)+1)
}

// findIDRange finds the range of t holding id.
func findIDRange(t []idRange, id uint32) *idRange {
	lo, hi := 0, len(t)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		switch {
		case id < t[mid].first:
			hi = mid
		case id > t[mid].last:
			lo = mid + 1
		default:
			return &t[mid]
		}
	}
	return nil
}

// ToHost translates a guest id; ok is false when the id is forbidden.
func (m *IDMap) ToHost(id uint32) (host uint32, ok bool) {
	if m == nil {
		return id, true
	}
	r := findIDRange(m.toHost, id)
	if r == nil {
		return id, true
	}
	switch r.op {
	case idSquash:
		return r.to, true
	case idForbid:
		return 0, false
	}
	return r.to + (id - r.first), true
}

// ToGuest translates a host id.
func (m *IDMap) ToGuest(id uint32) uint32 {
	if m == nil {
		return id
	}
	r := findIDRange(m.toGuest, id)
	if r == nil {
		return id
	}
	if r.op == idSquash {
		return r.to
	}
	return r.to + (id - r.first)
}

// errForbiddenID is what a request naming a forbidden guest id fails with
// (see the top of this file).
const errForbiddenID = syscall.EIO

// hostIDs translates a caller's guest uid and gid, refusing forbidden ones.
func (fs *FS) hostIDs(uid, gid uint32) (uint32, uint32, syscall.Errno) {
	if fs.cfg.UIDMap == nil && fs.cfg.GIDMap == nil {
		return uid, gid, 0
	}
	hu, ok := fs.cfg.UIDMap.ToHost(uid)
	if !ok {
		return 0, 0, errForbiddenID
	}
	hg, ok := fs.cfg.GIDMap.ToHost(gid)
	if !ok {
		return 0, 0, errForbiddenID
	}
	return hu, hg, 0
}

// accessIDs translates the caller's ids for ACCESS, which only asks
// whether the caller could: a forbidden id is not refused there but
// checked as it is (virtiofsd answers ACCESS by comparing the guest's ids
// with the file's owner translated to the guest, never refusing).
func (fs *FS) accessIDs(uid, gid uint32) (uint32, uint32) {
	if hu, ok := fs.cfg.UIDMap.ToHost(uid); ok {
		uid = hu
	}
	if hg, ok := fs.cfg.GIDMap.ToHost(gid); ok {
		gid = hg
	}
	return uid, gid
}

// guestIDs translates a file's host owner and group for a reply.
func (fs *FS) guestIDs(uid, gid uint32) (uint32, uint32) {
	return fs.cfg.UIDMap.ToGuest(uid), fs.cfg.GIDMap.ToGuest(gid)
}
