package frontend_test

import (
	"fmt"
	"path/filepath"
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"golang.org/x/sys/unix"
)

// Requests whose reply buffer is smaller than their handler needs, down
// to the out header alone: the guest decides the size of the writable part
// of a chain, and a handler that trusted it with less room than it assumed
// (READLINK handing the filesystem an empty buffer) crashed the daemon.
// Each must get an errno reply, or a success that fits in the room, and
// leave the daemon serving (the suite checks GETATTR and LOOKUP after
// every case and exit status 0 on disconnect).

func init() { moreHostileCases = append(moreHostileCases, hostilePanicCases) }

// hpXattrName and hpXattrValue are the extended attribute the xattr cases
// put on the probe file.
const (
	hpXattrName  = "user.hostile"
	hpXattrValue = "value"
)

func hostilePanicCases() []hcase {
	xattr := []string{"--xattr"}
	// room is a case whose request gets outLen writable bytes and must
	// be answered with one of want.
	room := func(name string, outLen int, build func(h *hctx) []byte, want ...syscall.Errno) hcase {
		return hcase{cat: "fuse", name: name, want: fmt.Sprintf("errno reply %v in %d writable bytes", want, outLen),
			run: func(h *hctx) error { return h.expectErrnoIn(build(h), outLen, want...) }}
	}
	// empty is a case whose request gets outLen writable bytes and must
	// succeed with an empty body.
	empty := func(name string, outLen int, build func(h *hctx) []byte) hcase {
		return hcase{cat: "fuse", name: name, want: fmt.Sprintf("success with an empty body in %d writable bytes", outLen),
			run: func(h *hctx) error { return h.hpExpectEmpty(build(h), outLen) }}
	}
	withSetup := func(c hcase, setup func(h *hctx) error) hcase { c.setup = setup; return c }
	// The reference's device dies on a reply that does not fit
	// (ProcessQueue(EncodeMessage(WriteZero)), see refPanic).
	withRefPanic := func(c hcase) hcase { c.refSkip = refPanic; return c }
	withXattr := func(c hcase) hcase {
		c.extra = xattr
		c.setup = func(h *hctx) error {
			return unix.Setxattr(filepath.Join(h.share, "probe"), hpXattrName, []byte(hpXattrValue), 0)
		}
		return c
	}

	link := func(h *hctx) error {
		e, err := h.c.Symlink(fuseclient.RootID, "hp-link", "probe")
		h.vals["hp-link"] = e.NodeId
		return err
	}
	readlink := func(h *hctx) []byte { return h.req(fuseclient.OpReadlink, h.vals["hp-link"], nil, 0) }
	getxattr := func(size uint32) func(h *hctx) []byte {
		return func(h *hctx) []byte {
			return h.req(fuseclient.OpGetxattr, h.probe, append(hle(size, uint32(0)), hcstr(hpXattrName)...), 0)
		}
	}
	listxattr := func(size uint32) func(h *hctx) []byte {
		return func(h *hctx) []byte { return h.req(fuseclient.OpListxattr, h.probe, hle(size, uint32(0)), 0) }
	}
	read := func(size uint32) func(h *hctx) []byte {
		return func(h *hctx) []byte { return h.req(fuseclient.OpRead, h.probe, hReadIn(h.probeFh, 0, size), 0) }
	}
	readdir := func(op, size uint32) func(h *hctx) []byte {
		return func(h *hctx) []byte { return h.req(op, h.dir, hReadIn(h.dirFh, 0, size), 0) }
	}
	const hdr = 16 // the out header: no room for a reply body at all

	return []hcase{
		withRefPanic(withSetup(room("READLINK with no reply room", hdr, readlink, syscall.EINVAL), link)),
		// The target ("probe") does not fit: refused, never cut short.
		withRefPanic(withSetup(room("READLINK into 1 byte of reply room", hdr+1, readlink, syscall.ENAMETOOLONG), link)),
		withXattr(room("GETXATTR of a value with no reply room", hdr, getxattr(64), syscall.ERANGE)),
		withXattr(room("GETXATTR of 4 GiB - 1 bytes with no reply room", hdr, getxattr(^uint32(0)), syscall.ERANGE)),
		withXattr(room("GETXATTR of a value into 1 byte of reply room", hdr+1, getxattr(64), syscall.ERANGE)),
		withXattr(room("GETXATTR size query with no room for the size", hdr+7, getxattr(0), syscall.EINVAL)),
		withXattr(room("LISTXATTR with no reply room", hdr, listxattr(4096), syscall.ERANGE)),
		withXattr(room("LISTXATTR size query with no room for the size", hdr, listxattr(0), syscall.EINVAL)),
		empty("READ of 0 bytes", 4096, read(0)),
		empty("READ with no reply room", hdr, read(4096)),
		empty("READDIR with no reply room", hdr, readdir(fuseclient.OpReaddir, 4096)),
		empty("READDIR of 1 byte", 4096, readdir(fuseclient.OpReaddir, 1)),
		empty("READDIRPLUS with no reply room", hdr, readdir(fuseclient.OpReaddirplus, 4096)),
		empty("READDIRPLUS of 1 byte", 4096, readdir(fuseclient.OpReaddirplus, 1)),
		{cat: "fuse", name: "INIT with room for a 24-byte reply only", want: "errno reply EINVAL; the session goes on (the probe's node id still serves)",
			refSkip: refPanic,
			run: func(h *hctx) error {
				if err := h.expectErrnoIn(h.req(fuseclient.OpInit, 0, hInitIn(7, 41), 0), hdr+24, syscall.EINVAL); err != nil {
					return err
				}
				// An INIT that acted would have ended the session and
				// with it the fixture's node ids.
				_, err := h.expectOK(h.req(fuseclient.OpGetattr, h.probe, make([]byte, 16), 0), 4096)
				return err
			}},
	}
}

// hpExpectEmpty sends req on request queue 1 with outLen writable bytes
// and wants a success reply without a body.
func (h *hctx) hpExpectEmpty(req []byte, outLen int) error {
	body, err := h.expectOK(req, outLen)
	if err != nil {
		return err
	}
	if len(body) != 0 {
		return fmt.Errorf("success with %d bytes, want none", len(body))
	}
	return nil
}
