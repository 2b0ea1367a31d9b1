package main

import (
	"io"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	"github.com/govirtiofsd/govirtiofsd/passthrough"
	"github.com/sirupsen/logrus"
)

// capabilities is the --print-capabilities answer, virtiofsd 1.14.0's
// byte for byte: libvirt passes the long options (separate-options),
// migrates the guest (migrate-precopy) and may pass --posix-acl and
// --security-label a mode (never, auto, always: the two
// *-negotiation-mode features).
const capabilities = `{
  "type": "fs",
  "features": [
    "migrate-precopy",
    "posix-acl-negotiation-mode",
    "security-label-negotiation-mode",
    "separate-options"
  ]
}`

// parseMigration parses --migration-mode and --migration-on-error; the
// two boolean --migration-* flags set o.migration directly.
func (o *options) parseMigration() error {
	var err error
	if o.migration.Mode, err = passthrough.ParseMigrationMode(o.text.migrationMode); err != nil {
		return usagef("--migration-mode: %v", err)
	}
	if o.migration.OnError, err = passthrough.ParseMigrationOnError(o.text.migrationOnError); err != nil {
		return usagef("--migration-on-error: %v", err)
	}
	return nil
}

// newMigration returns what moves fs's tables in a live migration.
func newMigration(fs *passthrough.FS, o *options, log logrus.FieldLogger) fuse.MigratableFileSystem {
	cfg := o.migration
	cfg.Logf = log.Warnf
	return &loggedMigration{m: fs.Migration(cfg), log: log}
}

// loggedMigration reports what each transfer moved.
type loggedMigration struct {
	m   *passthrough.Migration
	log logrus.FieldLogger
}

// SaveState serializes the inode and handle tables and logs what they
// hold.
func (l *loggedMigration) SaveState() ([]byte, error) {
	b, err := l.m.SaveState()
	if err == nil {
		c := l.m.Counts()
		l.log.Infof("Migration: sending %d inodes (%d found by searching the shared directory, %d not describable) and %d open handles",
			c.Inodes, c.Searched, c.Lost, c.Handles)
	}
	return b, err
}

// RestoreState loads the inode and handle tables from b and logs what was
// restored.
func (l *loggedMigration) RestoreState(b []byte) error {
	err := l.m.RestoreState(b)
	c := l.m.Counts()
	if err == nil {
		l.log.Infof("Migration: restored %d inodes and %d open handles (%d left out)", c.Inodes, c.Handles, c.Lost)
	}
	return err
}

// SaveState and LoadState make the device a vhostuser.Migrator: its state
// is the FUSE session's. SaveState writes it to w.
func (d *virtioFS) SaveState(w io.Writer) error { return d.srv.SaveState(w) }

// LoadState reads the FUSE session's state from r.
func (d *virtioFS) LoadState(r io.Reader) error { return d.srv.LoadState(r) }
