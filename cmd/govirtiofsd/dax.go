package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/govirtiofsd/govirtiofsd/dax"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
)

// daxAlignment is the granularity of window mappings: a page.
const daxAlignment = 4096

// parseSize reads sizes such as 1073741824, 512M or 1G.
func parseSize(s string) (uint64, error) {
	mult := uint64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v == 0 || v > (1<<48)/mult {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return v * mult, nil
}

// daxChannel carries the window's map and unmap requests over the
// back-end channel in one of the two wire forms. The back-end is set once
// it exists.
type daxChannel struct {
	legacy bool
	b      *vhostuser.Backend
}

var _ dax.Channel = (*daxChannel)(nil)

// Map asks the VMM to map length bytes of fd from fdOffset at
// windowOffset in the DAX window.
func (c *daxChannel) Map(fd int, fdOffset, windowOffset, length uint64, writable bool) error {
	var err error
	if c.legacy {
		err = c.b.FSMap(fd, fdOffset, windowOffset, length, writable)
	} else {
		err = c.b.ShmemMap(0, fd, fdOffset, windowOffset, length, writable)
	}
	return err // the window logs refusals, rate-limited
}

// MapsPastEOF: a plain mmap in the VMM (legacy FS_MAP) maps past the end of
// a file; QEMU 11.1's SHMEM_MAP refuses to.
func (c *daxChannel) MapsPastEOF() bool { return c.legacy }

// ReadsNeedWritableFd: QEMU 11.1's SHMEM_MAP refuses a read range from a
// read-only descriptor; the legacy VMMs map it with PROT_READ.
func (c *daxChannel) ReadsNeedWritableFd() bool { return !c.legacy }

// Unmap asks the VMM to unmap length bytes of the window at windowOffset.
func (c *daxChannel) Unmap(windowOffset, length uint64) error {
	var err error
	if c.legacy {
		err = c.b.FSUnmap(windowOffset, length)
	} else {
		err = c.b.ShmemUnmap(0, windowOffset, length)
	}
	return err // the window logs refusals, rate-limited
}
