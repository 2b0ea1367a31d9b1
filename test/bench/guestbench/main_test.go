package main

import (
	"bytes"
	"io"
	"math"
	"regexp"
	"testing"
)

// TestGuestbenchRuns runs one small round: one guest, both daemons, every
// workload on each, and the ratio table with its geomean line.
func TestGuestbenchRuns(t *testing.T) {
	var out bytes.Buffer
	cfg := config{rounds: 1, queues: 2, shareFS: "tmpfs", guestArgs: "-small-files 50 -mid-files 10 -seq-mib 4 -rand-ops 100"}
	if err := run(cfg, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())
	for _, w := range []string{"small-create", "small-stat", "small-readdir", "small-unlink", "mid-write", "mid-read", "seq-write", "seq-read", "rand-read-4k"} {
		re := regexp.MustCompile(`(?m)^` + w + ` +ours +[0-9.]+ ref +[0-9.]+ ratio +[0-9.]+ `)
		if !re.Match(out.Bytes()) {
			t.Errorf("no line for %s", w)
		}
	}
	if !regexp.MustCompile(`(?m)^geomean ratio [0-9.]+$`).Match(out.Bytes()) {
		t.Error("no geomean line")
	}
	// Each daemon serves every workload, so its CPU share is above 0.
	if !regexp.MustCompile(`(?m)^# daemon CPU per second of its workloads \(median\): ours [0-9.]*[1-9][0-9.]*% ref [0-9.]*[1-9][0-9.]*%$`).Match(out.Bytes()) {
		t.Error("no CPU share line, or a share of 0")
	}
}

// TestBalanced: an order effect that slows whichever daemon runs first by
// half cancels, even when ours goes first in more rounds.
func TestBalanced(t *testing.T) {
	// True ratio 1.2: the reference takes 1.2 s where ours takes 1 s.
	first := []bool{true, false, true, false, true}
	var o, f []float64
	for _, of := range first {
		oo, ff := 1.0, 1.2
		if of {
			oo *= 1.5
		} else {
			ff *= 1.5
		}
		o, f = append(o, oo), append(f, ff)
	}
	r, desc := balanced(o, f, first)
	if math.Abs(r-1.2) > 1e-9 {
		t.Errorf("ratio %.3f, want 1.2 (%s)", r, desc)
	}
	if want := "ours first 0.80 over 3, reference first 1.80 over 2"; desc != want {
		t.Errorf("description %q, want %q", desc, want)
	}
	// The plain median of the five rounds would have said 0.8.
	if r, _ := balanced(o[:1], f[:1], first[:1]); math.Abs(r-0.8) > 1e-9 {
		t.Errorf("one round: ratio %.3f, want its own 0.8", r)
	}
}
