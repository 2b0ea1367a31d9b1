package vm

import (
	"strconv"
	"strings"

	"github.com/govirtiofsd/govirtiofsd/test/lib/guestspec"
)

// Status is a guest check's verdict, as guestspec defines it.
type Status = guestspec.Status

// The verdicts a guest may print.
const (
	Pass = guestspec.Pass
	Fail = guestspec.Fail
	Skip = guestspec.Skip
)

// Result is one "GUEST RESULT <name> <status> <detail>" line, parsed by
// guestspec.ParseResult.
type Result = guestspec.Result

// Results is what a guest reported on its console.
type Results struct {
	// List holds the results in the order printed.
	List []Result
	// Done tells whether the guest printed "GUEST DONE".
	Done bool
	// ExitCode is the guest command's exit status as /init printed it
	// ("GUEST EXIT <n>"), or -1 when it printed none.
	ExitCode int
	// Malformed holds RESULT lines that could not be parsed.
	Malformed []string
}

// exitMarker starts the line /init prints with the guest command's exit
// status.
const exitMarker = "GUEST EXIT "

// ParseResults picks the protocol lines out of console output. Lines may
// end in \r\n and may carry other output (kernel messages) before the
// marker.
func ParseResults(console string) *Results {
	res := &Results{ExitCode: -1}
	for _, line := range strings.Split(console, "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.Contains(line, guestspec.ResultPrefix) {
			if r, ok := guestspec.ParseResult(line); ok {
				res.List = append(res.List, r)
			} else {
				res.Malformed = append(res.Malformed, line)
			}
			continue
		}
		if i := strings.Index(line, exitMarker); i >= 0 {
			if n, err := strconv.Atoi(strings.TrimSpace(line[i+len(exitMarker):])); err == nil {
				res.ExitCode = n
			}
			continue
		}
		if i := strings.Index(line, guestspec.DoneLine); i >= 0 && strings.TrimSpace(line[i+len(guestspec.DoneLine):]) == "" {
			res.Done = true
		}
	}
	return res
}

// Map returns the results by name; for a repeated name the last one wins.
func (r *Results) Map() map[string]Result {
	m := make(map[string]Result, len(r.List))
	for _, x := range r.List {
		m[x.Name] = x
	}
	return m
}

// Get returns the last result with the given name.
func (r *Results) Get(name string) (Result, bool) {
	for i := len(r.List) - 1; i >= 0; i-- {
		if r.List[i].Name == name {
			return r.List[i], true
		}
	}
	return Result{}, false
}

// Count returns how many results have each status.
func (r *Results) Count() (pass, fail, skip int) {
	for _, x := range r.List {
		switch x.Status {
		case Pass:
			pass++
		case Fail:
			fail++
		case Skip:
			skip++
		}
	}
	return
}

// Failed returns the FAIL results.
func (r *Results) Failed() []Result {
	var out []Result
	for _, x := range r.List {
		if x.Status == Fail {
			out = append(out, x)
		}
	}
	return out
}
