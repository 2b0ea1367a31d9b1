package guestspec

import (
	"strings"
)

// Console protocol of the guest program: one line per check, then DoneLine.
//
//	GUEST RESULT <name> <PASS|FAIL|SKIP> <detail>
//	GUEST DONE
const (
	ResultPrefix = "GUEST RESULT "
	DoneLine     = "GUEST DONE"
)

// Status is the outcome of one guest check.
type Status string

// The outcomes of a check.
const (
	Pass Status = "PASS"
	Fail Status = "FAIL"
	Skip Status = "SKIP"
)

// Result is one result line.
type Result struct {
	Name   string
	Status Status
	Detail string
}

// String formats r as a result line (without newline). Spaces in the name
// become '_'; the detail is made one line, and is "-" if empty.
func (r Result) String() string {
	name := strings.Map(func(c rune) rune {
		if c <= ' ' || c == 0x7f {
			return '_'
		}
		return c
	}, r.Name)
	if name == "" {
		name = "_"
	}
	detail := sanitize(r.Detail)
	if detail == "" {
		detail = "-"
	}
	return ResultPrefix + name + " " + string(r.Status) + " " + detail
}

// sanitize turns s into one line of printable text.
func sanitize(s string) string {
	s = strings.Map(func(c rune) rune {
		switch {
		case c == '\n' || c == '\r' || c == '\t':
			return ' '
		case c < ' ' || c == 0x7f:
			return '?'
		}
		return c
	}, s)
	return strings.TrimSpace(s)
}

// ParseResult parses a result line. Anything before ResultPrefix on the
// line (console noise) is ignored.
func ParseResult(line string) (Result, bool) {
	i := strings.Index(line, ResultPrefix)
	if i < 0 {
		return Result{}, false
	}
	fields := strings.SplitN(strings.TrimSpace(line[i+len(ResultPrefix):]), " ", 3)
	if len(fields) < 2 {
		return Result{}, false
	}
	r := Result{Name: fields[0], Status: Status(fields[1])}
	switch r.Status {
	case Pass, Fail, Skip:
	default:
		return Result{}, false
	}
	if len(fields) == 3 {
		r.Detail = strings.TrimSpace(fields[2])
	}
	return r, true
}

// ParseOutput returns the results found in the console output of a guest
// run, and whether the done line was seen.
func ParseOutput(out string) (results []Result, done bool) {
	for _, line := range strings.Split(out, "\n") {
		if r, ok := ParseResult(line); ok {
			results = append(results, r)
		} else if strings.Contains(line, DoneLine) {
			done = true
		}
	}
	return results, done
}
