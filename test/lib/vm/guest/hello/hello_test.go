//go:build guest

package main

import (
	"os"
	"testing"
)

// TestGuestReadsShare runs inside the guest as a test binary built by
// daemon.BuildStatic(..., true, "guest"); HELLO_FILE names a file on the
// share. The build tag keeps it out of the host's go test ./....
func TestGuestReadsShare(t *testing.T) {
	path := os.Getenv("HELLO_FILE")
	if path == "" {
		t.Fatal("HELLO_FILE is not set")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		t.Fatalf("%s is empty", path)
	}
}
