package main

import (
	"bytes"
	"io"
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
