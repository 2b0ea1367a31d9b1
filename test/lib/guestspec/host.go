package guestspec

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteGuestFiles writes GuestEntries into dir, which is removed first if
// it exists. The guest calls it with <mount>/<workdir>/HostCheckDir.
func WriteGuestFiles(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove old %s: %w", dir, err)
	}
	return Materialize(dir, GuestEntries())
}

// VerifyGuestFiles checks that dir holds exactly GuestEntries.
func VerifyGuestFiles(dir string) error {
	return Verify(dir, GuestEntries())
}

// HostCheckPath is where the guest leaves its files for the host:
// <shareDir>/<workdir>/HostCheckDir. An empty workdir means DefaultWorkdir.
func HostCheckPath(shareDir, workdir string) string {
	if workdir == "" {
		workdir = DefaultWorkdir
	}
	return filepath.Join(shareDir, workdir, HostCheckDir)
}

// VerifyHost runs on the host after the guest has finished: it checks the
// files the guest left in the shared directory shareDir for the run that
// used workdir (content, sizes, modes, owners, link targets, link counts
// and mtimes, exactly).
func VerifyHost(shareDir, workdir string) error {
	return VerifyGuestFiles(HostCheckPath(shareDir, workdir))
}

// PrepareHost runs on the host before boot: it (re)creates
// <shareDir>/HostPreparedDir holding exactly HostEntries.
func PrepareHost(shareDir string) error {
	dir := filepath.Join(shareDir, HostPreparedDir)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove old %s: %w", dir, err)
	}
	return Materialize(dir, HostEntries())
}

// VerifyPrepared checks, in the guest, that dir (<mount>/HostPreparedDir)
// holds exactly what PrepareHost made.
func VerifyPrepared(dir string) error {
	return Verify(dir, HostEntries())
}
