package vm

import (
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// File type bits of a cpio newc mode field (the st_mode values of Linux).
const (
	cpioTypeDir     = 0o040000
	cpioTypeRegular = 0o100000
	cpioTypeSymlink = 0o120000
	cpioTypeChar    = 0o020000
)

// CPIOWriter writes a cpio archive in the "newc" format (magic 070701), the
// format the Linux kernel unpacks as an initramfs. Names are stored without
// a leading slash. Parent directories that were not written explicitly are
// added (mode 0755) before the first entry below them, since the kernel
// does not create them on its own.
type CPIOWriter struct {
	w      io.Writer
	ino    uint32
	dirs   map[string]bool
	closed bool
	err    error
}

// NewCPIOWriter returns a writer of a newc archive to w. Close writes the
// trailer; it does not close w.
func NewCPIOWriter(w io.Writer) *CPIOWriter {
	return &CPIOWriter{w: w, ino: 1, dirs: map[string]bool{".": true, "": true}}
}

// cleanName turns a guest path into an archive name ("bin/sh").
func cleanName(name string) (string, error) {
	n := strings.TrimPrefix(path.Clean("/"+name), "/")
	if n == "" || n == "." {
		return "", fmt.Errorf("cpio: bad entry name %q", name)
	}
	return n, nil
}

// Dir adds a directory with the given permission bits.
func (c *CPIOWriter) Dir(name string, perm uint32) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if c.dirs[n] {
		return nil
	}
	if err := c.parents(n); err != nil {
		return err
	}
	c.dirs[n] = true
	return c.entry(n, cpioTypeDir|perm&0o7777, 2, 0, 0, nil)
}

// File adds a regular file with the given permission bits and contents.
func (c *CPIOWriter) File(name string, perm uint32, data []byte) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.parents(n); err != nil {
		return err
	}
	return c.entry(n, cpioTypeRegular|perm&0o7777, 1, 0, 0, data)
}

// Symlink adds a symbolic link name -> target.
func (c *CPIOWriter) Symlink(name, target string) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.parents(n); err != nil {
		return err
	}
	return c.entry(n, cpioTypeSymlink|0o777, 1, 0, 0, []byte(target))
}

// CharDev adds a character device node.
func (c *CPIOWriter) CharDev(name string, perm, major, minor uint32) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.parents(n); err != nil {
		return err
	}
	return c.entry(n, cpioTypeChar|perm&0o7777, 1, major, minor, nil)
}

// Close writes the trailer entry.
func (c *CPIOWriter) Close() error {
	if c.closed {
		return c.err
	}
	err := c.entry("TRAILER!!!", 0, 1, 0, 0, nil)
	c.closed = true
	return err
}

func (c *CPIOWriter) parents(n string) error {
	dir := path.Dir(n)
	if c.dirs[dir] {
		return nil
	}
	return c.Dir(dir, 0o755)
}

func pad4(n int) int { return (4 - n%4) % 4 }

func (c *CPIOWriter) entry(name string, mode, nlink, rmajor, rminor uint32, data []byte) error {
	if c.err != nil {
		return c.err
	}
	if c.closed {
		return errors.New("cpio: write after Close")
	}
	if uint64(len(data)) > 0xffffffff {
		return fmt.Errorf("cpio: %s is too large for newc", name)
	}
	ino := c.ino
	c.ino++
	if name == "TRAILER!!!" {
		ino = 0
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+8)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = append(buf, make([]byte, pad4(len(buf)))...)
	if _, err := c.w.Write(buf); err != nil {
		c.err = err
		return err
	}
	if len(data) > 0 {
		if _, err := c.w.Write(data); err != nil {
			c.err = err
			return err
		}
		if p := pad4(len(data)); p > 0 {
			if _, err := c.w.Write(make([]byte, p)); err != nil {
				c.err = err
				return err
			}
		}
	}
	return nil
}

// CPIOEntry is one entry read back by ReadCPIO.
type CPIOEntry struct {
	Name  string
	Mode  uint32 // type and permission bits
	Data  []byte // file contents or symlink target
	Major uint32 // device number of a device node
	Minor uint32
}

// ReadCPIO parses a newc archive up to its trailer. It exists so tests can
// check what BuildInitramfs wrote.
func ReadCPIO(r io.Reader) ([]CPIOEntry, error) {
	var out []CPIOEntry
	var off int
	read := func(n int) ([]byte, error) {
		b := make([]byte, n)
		_, err := io.ReadFull(r, b)
		off += n
		return b, err
	}
	for {
		hdr, err := read(110)
		if err != nil {
			return out, fmt.Errorf("cpio: header at %d: %w", off-110, err)
		}
		if string(hdr[:6]) != "070701" {
			return out, fmt.Errorf("cpio: bad magic %q at %d", hdr[:6], off-110)
		}
		var f [13]uint32
		for i := range f {
			if _, err := fmt.Sscanf(string(hdr[6+8*i:14+8*i]), "%08x", &f[i]); err != nil {
				return out, fmt.Errorf("cpio: bad header field %d at %d: %w", i, off-110, err)
			}
		}
		nameLen := int(f[11])
		if nameLen < 1 {
			return out, fmt.Errorf("cpio: empty name at %d", off-110)
		}
		nb, err := read(nameLen + pad4(110+nameLen))
		if err != nil {
			return out, err
		}
		name := string(nb[:nameLen-1])
		if name == "TRAILER!!!" {
			return out, nil
		}
		size := int(f[6])
		db, err := read(size + pad4(size))
		if err != nil {
			return out, err
		}
		out = append(out, CPIOEntry{Name: name, Mode: f[1], Data: db[:size], Major: f[9], Minor: f[10]})
	}
}
