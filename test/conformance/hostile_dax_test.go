package frontend_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
)

// The hostile cases of the DAX window: what a guest can make the daemon
// hold through SETUPMAPPING (descriptors, book entries) and what a
// REMOVEMAPPING the window cannot honour does to the mappings beside it.
// The window is served for real, with QEMU 11.1's SHMEM_MAP semantics.

func init() { moreHostileCases = append(moreHostileCases, hostileDAXCases) }

const (
	hDAXMappings = 10000
	hDAXFiles    = 1024 // the distinct files a 64 MiB window maps by default
	hPage        = 4096
)

// hSetupMapIn is a SETUPMAPPING's arguments (fh -1: the request's node).
func hSetupMapIn(foff, length, flags, moff uint64) []byte {
	return hle(^uint64(0), foff, length, flags, moff)
}

// hRemoveMapIn is a REMOVEMAPPING's arguments.
func hRemoveMapIn(ranges ...[2]uint64) []byte {
	b := hle(uint32(len(ranges)))
	for _, r := range ranges {
		b = append(b, hle(r[0], r[1])...)
	}
	return b
}

// hWindowHolds checks that the window shows the probe file's first n
// bytes at offset 0.
func (h *hctx) hWindowHolds(n int) error {
	b := make([]byte, n)
	if _, err := h.fe.Window().ReadAt(b, 0); err != nil {
		return fmt.Errorf("the window at 0: %w", err)
	}
	if !bytes.Equal(b, hProbeData[:n]) {
		return fmt.Errorf("the window at 0 differs from the probe file")
	}
	return nil
}

func hostileDAXCases() []hcase {
	dax := []string{"--dax-window-size", "64M", "--dax-transport", "shmem"}
	opts := frontend.Options{WindowSize: hWinSize, ProtocolFeatures: frontend.DefaultProtocolFeatures | vhostuser.ProtocolShmem}
	wraps := func(name string, foff, length, moff uint64) hcase {
		return hcase{cat: "fuse", name: name, refSkip: refDAX, extra: dax, opts: opts, want: "errno reply EINVAL; the VMM was asked nothing",
			run: func(h *hctx) error {
				if err := h.expectErrno(h.req(fuseclient.OpSetupMap, h.probe, hSetupMapIn(foff, length, 2, moff), 0), syscall.EINVAL); err != nil {
					return err
				}
				if n := h.fe.Backend().Count(vhostuser.BackendShmemMap); n != 0 {
					return fmt.Errorf("the VMM was asked %d maps", n)
				}
				return nil
			}}
	}
	return []hcase{
		wraps("SETUPMAPPING whose window offset plus length wraps", 0, ^uint64(0)&^(hPage-1), 2*hPage),
		wraps("SETUPMAPPING whose file offset plus length wraps", ^uint64(0)&^(hPage-1), 2*hPage, 0),
		wraps("SETUPMAPPING at a file offset past 2^63", 1<<63, hPage, 0),
		{cat: "fuse", name: "10,000 DAX mappings of 4 KiB of one file, then REMOVEMAPPING of all", refSkip: refDAX, extra: dax, opts: opts,
			want: "every mapping served while the daemon holds one descriptor of the file (+2 at most), none once all are removed; then SETUPMAPPING/REMOVEMAPPING pairs",
			setup: func(h *hctx) error {
				pid := hServingPid(h.fe.Proc().Pid())
				before, err := hMeasure(pid)
				if err != nil {
					return err
				}
				start := time.Now()
				for i := range uint64(hDAXMappings) {
					if err := setupMapping(h.c, h.probe, i%2*hPage, hPage, 2, i*hPage); err != nil {
						return fmt.Errorf("SETUPMAPPING %d: %w", i, err)
					}
				}
				held, err := hMeasure(pid)
				if err != nil {
					return err
				}
				h.t.Logf("%d mappings of one file in %v: the daemon's descriptors %d -> %d, VmRSS %d -> %d KiB",
					hDAXMappings, time.Since(start).Round(time.Millisecond), before.fds, held.fds, before.rssKiB, held.rssKiB)
				if held.fds > before.fds+hFdSlack {
					return fmt.Errorf("%d mappings of one file: the daemon's descriptors grew from %d to %d", hDAXMappings, before.fds, held.fds)
				}
				if n := len(h.fe.Window().Mappings()); n != hDAXMappings {
					return fmt.Errorf("the window holds %d mappings, want %d", n, hDAXMappings)
				}
				if err := h.hWindowHolds(hPage); err != nil {
					return err
				}
				var batch [][2]uint64
				for i := range uint64(hDAXMappings) {
					if batch = append(batch, [2]uint64{i * hPage, hPage}); len(batch) == 256 || i == hDAXMappings-1 {
						if err := removeMapping(h.c, fuseclient.RootID, batch...); err != nil {
							return fmt.Errorf("REMOVEMAPPING up to %d: %w", i, err)
						}
						batch = batch[:0]
					}
				}
				after, err := hMeasure(pid)
				if err != nil {
					return err
				}
				h.t.Logf("after REMOVEMAPPING of all: descriptors %d, VmRSS %d KiB", after.fds, after.rssKiB)
				if after.fds > before.fds {
					return fmt.Errorf("after REMOVEMAPPING of all the daemon holds %d descriptors, %d before", after.fds, before.fds)
				}
				if n := len(h.fe.Window().Mappings()); n != 0 {
					return fmt.Errorf("the window holds %d mappings after REMOVEMAPPING of all", n)
				}
				noBackendFailures(h.t, h.fe)
				return nil
			},
			run: func(h *hctx) error {
				if _, err := h.expectOK(h.req(fuseclient.OpSetupMap, h.probe, hSetupMapIn(0, hPage, 2, 0), 0), 4096); err != nil {
					return fmt.Errorf("SETUPMAPPING: %w", err)
				}
				if err := h.hWindowHolds(hPage); err != nil {
					return err
				}
				if _, err := h.expectOK(h.req(fuseclient.OpRemoveMap, fuseclient.RootID, hRemoveMapIn([2]uint64{0, hPage}), 0), 4096); err != nil {
					return fmt.Errorf("REMOVEMAPPING: %w", err)
				}
				if n := len(h.fe.Window().Mappings()); n != 0 {
					return fmt.Errorf("the window holds %d mappings after REMOVEMAPPING", n)
				}
				return nil
			}},
		{cat: "fuse", name: "REMOVEMAPPING of an unaligned range inside a DAX mapping", refSkip: refDAX, extra: dax, opts: opts,
			want: "errno reply EINVAL; the mapping is whole and the VMM was asked nothing",
			setup: func(h *hctx) error {
				return setupMapping(h.c, h.probe, 0, hProbeSize, 2, 0)
			},
			run: func(h *hctx) error {
				before := h.fe.Backend().Count(vhostuser.BackendShmemMap) + h.fe.Backend().Count(vhostuser.BackendShmemUnmap)
				if err := h.expectErrno(h.req(fuseclient.OpRemoveMap, fuseclient.RootID, hRemoveMapIn([2]uint64{100, hPage}), 0), syscall.EINVAL); err != nil {
					return err
				}
				if err := h.hWindowHolds(hProbeSize); err != nil {
					return err
				}
				if n := h.fe.Backend().Count(vhostuser.BackendShmemMap) + h.fe.Backend().Count(vhostuser.BackendShmemUnmap); n != before {
					return fmt.Errorf("the refused REMOVEMAPPING sent %d requests to the VMM", n-before)
				}
				return nil
			}},
		{cat: "fuse", name: "SETUPMAPPING of a 1,025th distinct file", refSkip: refDAX, extra: dax, opts: opts,
			want: "1,024 files mapped at once, then errno reply ENOSPC, with one log line per 10 s at most",
			setup: func(h *hctx) error {
				start := time.Now()
				h.vals["start"] = uint64(start.UnixNano())
				for i := range uint64(hDAXFiles + 1) {
					name := fmt.Sprintf("m%04d", i)
					if err := os.WriteFile(filepath.Join(h.share, name), hProbeData[:hPage], 0o644); err != nil {
						return err
					}
					e, err := h.c.Lookup(fuseclient.RootID, name)
					if err != nil {
						return err
					}
					err = setupMapping(h.c, e.NodeId, 0, hPage, 2, i*hPage)
					if i < hDAXFiles && err != nil {
						return fmt.Errorf("SETUPMAPPING of file %d: %w", i+1, err)
					}
					if i == hDAXFiles {
						if err != syscall.ENOSPC {
							return fmt.Errorf("SETUPMAPPING of file %d: %v, want ENOSPC", i+1, err)
						}
						h.vals["last"] = e.NodeId
					}
				}
				h.t.Logf("%d files mapped in %v", hDAXFiles, time.Since(start).Round(time.Millisecond))
				return nil
			},
			run: func(h *hctx) error {
				return h.expectErrno(h.req(fuseclient.OpSetupMap, h.vals["last"], hSetupMapIn(0, hPage, 2, hDAXFiles*hPage), 0), syscall.ENOSPC)
			},
			post: func(h *hctx, reps int) error {
				took := time.Since(time.Unix(0, int64(h.vals["start"])))
				n := strings.Count(h.fe.Proc().Stderr(), "refused with ENOSPC")
				h.t.Logf("%d refusals in %v: %d log lines", reps+1, took.Round(time.Millisecond), n)
				if most := 2 + int(took/(10*time.Second)); n > most {
					return fmt.Errorf("%d refusals in %v logged %d lines, want %d at most", reps+1, took, n, most)
				}
				return nil
			}},
	}
}
