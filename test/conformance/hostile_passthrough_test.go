package frontend_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"golang.org/x/sys/unix"
)

// The hostile cases of the passthrough layer's classes: an open that
// reaches a special file (the gate), thread state that outlives a request
// (the guard), and what a guest can make the daemon hold (the bounds).

func init() { moreHostileCases = append(moreHostileCases, hostilePassthroughCases) }

// hCreateIn is a CREATE request's arguments for name.
func hCreateIn(name string, flags uint32) []byte {
	return append(hle(flags, uint32(0o644), uint32(0), uint32(0)), hcstr(name)...)
}

// hThreadsClean checks that every thread of the serving process pid has
// the daemon's ids and no supplementary group a request set.
func hThreadsClean(pid int) error {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		return fmt.Errorf("no threads of %d: %v", pid, err)
	}
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread ended
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, ":")
			switch k {
			case "Uid", "Gid":
				if f := strings.Fields(v); len(f) != 4 || f[0] != f[1] || f[1] != f[2] || f[2] != f[3] {
					return fmt.Errorf("%s: %s:%s", f, k, v)
				}
			}
		}
	}
	return nil
}

func hostilePassthroughCases() []hcase {
	special := func(h *hctx) error {
		if err := unix.Mkfifo(filepath.Join(h.share, "fifo"), 0o666); err != nil {
			return err
		}
		if err := unix.Mknod(filepath.Join(h.share, "urandom"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 9))); err != nil {
			return err
		}
		return unix.Mknod(filepath.Join(h.share, "sock"), unix.S_IFSOCK|0o666, 0)
	}
	accessPadded := hcase{cat: "fuse", name: "ACCESS as another uid padded to 256 KiB, sixteen at once (an assistant's chains)", want: "served; no thread of the daemon keeps the caller's ids",
		run: func(h *hctx) error {
			req := h.req(fuseclient.OpAccess, fuseclient.RootID, hle(uint32(unix.R_OK), uint32(0)), 0)
			binary.LittleEndian.PutUint32(req[24:], 4242)
			binary.LittleEndian.PutUint32(req[28:], 4242)
			padded := append(req, make([]byte, 256<<10)...)
			var wg sync.WaitGroup
			errs := make([]error, 16)
			for k := range errs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r, err := h.call(1, padded, 4096)
					if err == nil && r.used == 0 {
						err = errors.New("no reply")
					}
					errs[k] = err
				}()
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				return err
			}
			if h.first {
				return hThreadsClean(hServingPid(h.fe.Proc().Pid()))
			}
			return nil
		},
		post: func(h *hctx, reps int) error { return hThreadsClean(hServingPid(h.fe.Proc().Pid())) }}
	withExtra := func(c hcase, name string, extra ...string) hcase {
		c.name, c.extra = name, extra
		return c
	}
	return []hcase{
		{cat: "fuse", name: "CREATE without O_EXCL over an existing fifo, char device or socket", want: "errno reply EACCES; nothing is opened, the worker does not block",
			setup: special,
			run: func(h *hctx) error {
				for _, n := range []string{"fifo", "urandom", "sock"} {
					for _, fl := range []uint32{syscall.O_RDONLY, syscall.O_RDWR} {
						if err := h.expectErrno(h.req(fuseclient.OpCreate, fuseclient.RootID, hCreateIn(n, fl), 0), syscall.EACCES); err != nil {
							return fmt.Errorf("CREATE %s flags %#o: %w", n, fl, err)
						}
					}
				}
				return nil
			}},
		{cat: "fuse", name: "OPEN and OPENDIR of a fifo, char device or socket", want: "errno replies (EACCES, ENOTDIR); nothing is opened",
			setup: special,
			run: func(h *hctx) error {
				for _, n := range []string{"fifo", "urandom", "sock"} {
					e, err := h.c.Lookup(fuseclient.RootID, n)
					if err != nil {
						return err
					}
					if err := h.expectErrno(h.req(fuseclient.OpOpen, e.NodeId, hle(uint32(syscall.O_RDONLY), uint32(0)), 0), syscall.EACCES); err != nil {
						return fmt.Errorf("OPEN %s: %w", n, err)
					}
					if err := h.expectErrno(h.req(fuseclient.OpOpendir, e.NodeId, hle(uint32(syscall.O_RDONLY), uint32(0)), 0), syscall.ENOTDIR); err != nil {
						return fmt.Errorf("OPENDIR %s: %w", n, err)
					}
					if err := h.c.Forget(e.NodeId, 1); err != nil {
						return err
					}
				}
				return nil
			}},
		accessPadded,
		withExtra(accessPadded, "ACCESS as another uid, sixteen at once, on a pool of two", "--thread-pool-size=2"),
		{cat: "fuse", name: "100,000 OPENDIRs never released, each read one entry", want: "served, or EMFILE past the descriptor limit, within bounded memory (VmRSS +64 MiB at most); then OPENDIR/RELEASEDIR pairs",
			setup: func(h *hctx) error {
				for k := range 64 {
					if err := os.WriteFile(filepath.Join(h.share, fmt.Sprintf("entry%02d", k)), nil, 0o644); err != nil {
						return err
					}
				}
				pid := hServingPid(h.fe.Proc().Pid())
				before, err := hMeasure(pid)
				if err != nil {
					return err
				}
				// Past the daemon's descriptor limit (the machine's hard
				// limit may be lower than the 1,000,000 it asks for) the
				// answer is EMFILE.
				const n = 100000
				var fhs []uint64
				refused := 0
				for k := range n {
					o, err := h.c.Opendir(fuseclient.RootID)
					if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
						refused++
						continue
					}
					if err != nil {
						return fmt.Errorf("OPENDIR %d: %w", k, err)
					}
					fhs = append(fhs, o.Fh)
					if _, err := h.c.Readdir(fuseclient.RootID, o.Fh, 0, 80); err != nil {
						return fmt.Errorf("READDIR %d: %w", k, err)
					}
				}
				after, err := hMeasure(pid)
				if err != nil {
					return err
				}
				h.t.Logf("%d OPENDIRs: %d open, %d refused with EMFILE; VmRSS %d -> %d KiB, fds %d -> %d", n, len(fhs), refused, before.rssKiB, after.rssKiB, before.fds, after.fds)
				if len(fhs) < 10000 {
					return fmt.Errorf("only %d directories opened", len(fhs))
				}
				if after.rssKiB-before.rssKiB > 64<<10 {
					return fmt.Errorf("VmRSS grew by %d KiB for %d open directories", after.rssKiB-before.rssKiB, len(fhs))
				}
				for _, fh := range fhs {
					if err := h.c.Releasedir(fuseclient.RootID, fh); err != nil {
						return err
					}
				}
				return nil
			},
			run: func(h *hctx) error {
				o, err := h.c.Opendir(fuseclient.RootID)
				if err != nil {
					return err
				}
				return h.c.Releasedir(fuseclient.RootID, o.Fh)
			}},
	}
}
