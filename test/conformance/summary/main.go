// Command conformance summarises, per daemon, a run of the test/conformance
// tests (make conformance): it reads "go test -json -v" from its input,
// echoes the test output as go test -v prints it, then tells for
// govirtiofsd ("ours") and the reference ("reference", the lab's
// virtiofsd or $GOVIRTIOFSD_REFERENCE) how many of the tests that ran
// against it passed, failed or were skipped, naming the failures and the
// deliberate differences the tests document (cases not run or not sent
// against the reference, requests it refuses where ours carries on).
// Tests that run against no daemon in particular are summarised as
// "shared". It exits with status 1 when anything failed or the package did
// not build.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
)

// event is one line of go test -json.
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// daemonOf tells which daemon a test name ran against: the first path
// element that names one.
func daemonOf(test string) string {
	for _, p := range strings.Split(test, "/") {
		switch p {
		case "ours", "reference":
			return p
		}
	}
	return "shared"
}

// differenceMarkers are the phrases the tests log where a daemon is
// deliberately treated differently (see helpers_test.go and the tests'
// refPanics fields).
var differenceMarkers = []string{"not run", "not sent", "ends the session", "deliberate"}

type tally struct {
	pass, fail, skip int
	failed           []string
	notes            []string
}

func main() {
	reference := os.Getenv("GOVIRTIOFSD_REFERENCE")
	if reference == "" {
		reference = "the lab's virtiofsd-ref"
	}
	ok, err := summarise(os.Stdin, os.Stdout, reference)
	if err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

func summarise(in io.Reader, out io.Writer, reference string) (bool, error) {
	results := map[string]string{} // test -> pass, fail, skip
	notes := map[string][]string{}
	parents := map[string]bool{}
	pkgFailed, sawEvent := false, false
	var pkgOutput []string
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// go test prints build failures as plain text.
			fmt.Fprintln(out, string(line))
			pkgOutput = append(pkgOutput, string(line))
			continue
		}
		sawEvent = true
		switch e.Action {
		case "output":
			fmt.Fprint(out, e.Output)
			if e.Test == "" {
				pkgOutput = append(pkgOutput, strings.TrimRight(e.Output, "\n"))
				continue
			}
			text := strings.TrimSpace(e.Output)
			for _, m := range differenceMarkers {
				if strings.Contains(text, m) && !strings.HasPrefix(text, "---") && !strings.HasPrefix(text, "===") {
					notes[e.Test] = append(notes[e.Test], text)
					break
				}
			}
		case "pass", "fail", "skip":
			if e.Test == "" {
				if e.Action == "fail" {
					pkgFailed = true
				}
				continue
			}
			results[e.Test] = e.Action
			for i := strings.LastIndexByte(e.Test, '/'); i > 0; i = strings.LastIndexByte(e.Test[:i], '/') {
				parents[e.Test[:i]] = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return false, err
	}

	tallies := map[string]*tally{"ours": {}, "reference": {}, "shared": {}}
	names := make([]string, 0, len(results))
	for name := range results {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if parents[name] {
			continue // counted through its subtests
		}
		tl := tallies[daemonOf(name)]
		switch results[name] {
		case "pass":
			tl.pass++
		case "fail":
			tl.fail++
			tl.failed = append(tl.failed, name)
		case "skip":
			tl.skip++
		}
	}
	for name, ns := range notes {
		d := daemonOf(name)
		if d == "shared" {
			continue // summary tables of parent tests repeat their subtests' notes
		}
		tl := tallies[d]
		for _, n := range ns {
			tl.notes = append(tl.notes, name+"\x00"+logPrefix.ReplaceAllString(n, ""))
		}
	}

	fmt.Fprintln(out)
	fmt.Fprintln(out, "conformance: the test/conformance tests, per daemon")
	allOK := true
	for _, d := range []struct{ key, desc string }{
		{"ours", "govirtiofsd"},
		{"reference", reference},
		{"shared", "daemon-independent or single-daemon tests"},
	} {
		tl := tallies[d.key]
		verdict := "PASS"
		if tl.fail > 0 {
			verdict, allOK = "FAIL", false
		}
		if tl.pass+tl.fail+tl.skip == 0 {
			verdict = "none ran"
		}
		fmt.Fprintf(out, "  %-9s %-4s  %3d passed, %d failed, %d skipped  (%s)\n", d.key, verdict, tl.pass, tl.fail, tl.skip, d.desc)
		for _, f := range tl.failed {
			fmt.Fprintf(out, "      FAIL %s\n", f)
		}
		printNotes(out, tl.notes)
	}
	if !sawEvent || pkgFailed && allOK {
		fmt.Fprintln(out, "  the package failed outside any test (build error, panic or timeout):")
		for _, l := range lastN(pkgOutput, 20) {
			fmt.Fprintf(out, "      %s\n", l)
		}
		allOK = false
	}
	return allOK, nil
}

func lastN(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// logPrefix is the file:line prefix of a t.Log line.
var logPrefix = regexp.MustCompile(`^\S+\.go:\d+: `)

// printNotes prints the documented differences grouped by reason, with
// how many tests give it and a few of their names.
func printNotes(out io.Writer, notes []string) {
	if len(notes) == 0 {
		return
	}
	byReason := map[string][]string{}
	for _, n := range notes {
		test, reason, _ := strings.Cut(n, "\x00")
		byReason[reason] = append(byReason[reason], test)
	}
	reasons := make([]string, 0, len(byReason))
	for r := range byReason {
		reasons = append(reasons, r)
	}
	sort.Slice(reasons, func(i, j int) bool {
		if a, b := len(byReason[reasons[i]]), len(byReason[reasons[j]]); a != b {
			return a > b
		}
		return reasons[i] < reasons[j]
	})
	fmt.Fprintf(out, "      deliberate differences the tests document (%d cases):\n", len(notes))
	for _, r := range reasons {
		tests := byReason[r]
		sort.Strings(tests)
		more := ""
		if len(tests) > 3 {
			more = fmt.Sprintf(", and %d more", len(tests)-3)
			tests = tests[:3]
		}
		fmt.Fprintf(out, "        %3dx %s\n             (%s%s)\n", len(byReason[r]), r, strings.Join(tests, ", "), more)
	}
}
