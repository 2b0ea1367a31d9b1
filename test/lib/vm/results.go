package vm

import (
	"fmt"
	"strconv"
	"strings"
)

// Status is a guest test's verdict.
type Status string

// The verdicts a guest may print.
const (
	Pass Status = "PASS"
	Fail Status = "FAIL"
	Skip Status = "SKIP"
)

// Result is one "GUEST RESULT <name> <status> <detail>" line.
type Result struct {
	Name   string
	Status Status
	Detail string
}

func (r Result) String() string {
	if r.Detail == "" {
		return fmt.Sprintf("%s %s", r.Name, r.Status)
	}
	return fmt.Sprintf("%s %s %s", r.Name, r.Status, r.Detail)
}

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

// Result markers on the console.
const (
	resultMarker = "GUEST RESULT "
	doneMarker   = "GUEST DONE"
	exitMarker   = "GUEST EXIT "
)

// ParseResults picks the protocol lines out of console output. Lines may
// end in \r\n and may carry other output (kernel messages) before the
// marker.
func ParseResults(console string) *Results {
	res := &Results{ExitCode: -1}
	for _, line := range strings.Split(console, "\n") {
		line = strings.TrimRight(line, "\r")
		if i := strings.Index(line, resultMarker); i >= 0 {
			rest := strings.TrimSpace(line[i+len(resultMarker):])
			fields := strings.SplitN(rest, " ", 3)
			if len(fields) < 2 {
				res.Malformed = append(res.Malformed, line)
				continue
			}
			st := Status(fields[1])
			if st != Pass && st != Fail && st != Skip {
				res.Malformed = append(res.Malformed, line)
				continue
			}
			r := Result{Name: fields[0], Status: st}
			if len(fields) == 3 {
				r.Detail = strings.TrimSpace(fields[2])
			}
			res.List = append(res.List, r)
			continue
		}
		if i := strings.Index(line, exitMarker); i >= 0 {
			if n, err := strconv.Atoi(strings.TrimSpace(line[i+len(exitMarker):])); err == nil {
				res.ExitCode = n
			}
			continue
		}
		if i := strings.Index(line, doneMarker); i >= 0 && strings.TrimSpace(line[i+len(doneMarker):]) == "" {
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
