package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
)

// Files the workloads use in the shared folder. They are created from the
// host side once per shared folder and kept (the big file and the
// directory are expensive to make).
const (
	smallName  = "small"  // 4 KiB file: getattr, lookup
	bigName    = "big-1g" // 1 GiB file: read-4k, read-1m
	dirName    = "dir10k" // 10,000 empty files: readdirplus
	dirEntries = 10000
	dirReady   = "dir10k.ready" // written once dirName is complete
	scratchDir = "scratch"      // write-1m and create-unlink files, emptied per run
	writeSpan  = 16 << 20       // each write-1m slot rewrites this much of its file
)

// bigSize is the size of bigName (tests make it smaller).
var bigSize = int64(1) << 30

// workload is one benchmark operation.
type workload struct {
	name string
	// what one operation is, for the help and the JSON record
	what string
	// requests is how many FUSE requests one operation sends.
	requests int
	// dataSize is the guest data buffer a slot needs.
	dataSize func(cfg runConfig) uint64
	// prepare readies the shared folder from the host side.
	prepare func(dir string) error
	// setup runs once per run over the FUSE session, before the slots.
	setup func(r *runState) error
	// newSlot readies one in-flight slot (opening its handle or file,
	// through the typed calls) and sets its start and done functions.
	newSlot func(r *runState, s *slot) error
	// teardown undoes setup and the slots' state.
	teardown func(r *runState) error
}

var workloads = map[string]*workload{}

var workloadOrder = []string{"getattr", "lookup", "read-4k", "read-1m", "write-1m", "create-unlink", "readdirplus"}

func workloadNames() []string { return append([]string(nil), workloadOrder...) }

func parseWorkloads(s string) ([]string, error) {
	if s == "all" {
		return workloadNames(), nil
	}
	var out []string
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if workloads[n] == nil {
			return nil, fmt.Errorf("unknown workload %q (have %s)", n, strings.Join(workloadNames(), ", "))
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("no workload")
	}
	return out, nil
}

func fixedData(n uint64) func(runConfig) uint64 { return func(runConfig) uint64 { return n } }

func init() {
	for _, w := range []*workload{
		{name: "getattr", what: "GETATTR of a 4 KiB file", requests: 1, dataSize: fixedData(0),
			prepare: prepareSmall, setup: setupSmall, newSlot: getattrSlot, teardown: teardownSmall},
		{name: "lookup", what: "LOOKUP of a 4 KiB file in the root (FORGET of all lookups at the end)", requests: 1,
			dataSize: fixedData(0), prepare: prepareSmall, setup: setupSmall, newSlot: lookupSlot, teardown: teardownSmall},
		{name: "read-4k", what: "READ of 4 KiB at a random 4 KiB-aligned offset of a 1 GiB file in the host page cache", requests: 1,
			dataSize: fixedData(4096), prepare: prepareBig, setup: setupBig, newSlot: readSlot(4096), teardown: teardownBig},
		{name: "read-1m", what: "READ of 1 MiB at a random 1 MiB-aligned offset of a 1 GiB file in the host page cache", requests: 1,
			dataSize: fixedData(1 << 20), prepare: prepareBig, setup: setupBig, newSlot: readSlot(1 << 20), teardown: teardownBig},
		{name: "write-1m", what: "WRITE of 1 MiB to a slot's own file, cycling over its first 16 MiB", requests: 1,
			dataSize: fixedData(1 << 20), prepare: prepareScratch, setup: setupScratch, newSlot: writeSlot, teardown: teardownScratch},
		{name: "create-unlink", what: "CREATE, RELEASE, UNLINK and FORGET of a file", requests: 4,
			dataSize: fixedData(0), prepare: prepareScratch, setup: setupScratch, newSlot: createUnlinkSlot, teardown: teardownScratch},
		{name: "readdirplus", what: "READDIRPLUS of one page of a 10,000-entry folder, listing it over and over", requests: 1,
			dataSize: func(cfg runConfig) uint64 { return uint64(cfg.readdirSize) }, prepare: prepareDir, setup: setupDir,
			newSlot: readdirSlot, teardown: teardownDir},
	} {
		workloads[w.name] = w
	}
}

// Host-side preparation.

func prepareSmall(dir string) error {
	p := filepath.Join(dir, smallName)
	if st, err := os.Stat(p); err == nil && st.Size() == 4096 {
		return nil
	}
	return os.WriteFile(p, make([]byte, 4096), 0o644)
}

// prepareBig creates the 1 GiB file if needed (real data, no holes), then
// reads it once so that it is in the host page cache.
func prepareBig(dir string) error {
	p := filepath.Join(dir, bigName)
	buf := make([]byte, 1<<20)
	if st, err := os.Stat(p); err != nil || st.Size() != bigSize {
		tmp := p + ".tmp"
		f, err := os.Create(tmp)
		if err != nil {
			return err
		}
		for i := int64(0); i < bigSize/int64(len(buf)); i++ {
			for j := range buf {
				buf[j] = byte(i) ^ byte(j>>12)
			}
			if _, err := f.Write(buf); err != nil {
				f.Close()
				return err
			}
		}
		if err := f.Close(); err != nil {
			return err
		}
		if err := os.Rename(tmp, p); err != nil {
			return err
		}
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
	if err != nil {
		return err
	}
	if n != bigSize {
		return fmt.Errorf("%s: read %d bytes, want %d", p, n, bigSize)
	}
	return nil
}

func prepareDir(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, dirReady)); err == nil {
		return nil
	}
	d := filepath.Join(dir, dirName)
	if err := os.RemoveAll(d); err != nil {
		return err
	}
	if err := os.Mkdir(d, 0o755); err != nil {
		return err
	}
	for i := 0; i < dirEntries; i++ {
		f, err := os.OpenFile(filepath.Join(d, fmt.Sprintf("entry-%05d", i)), os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	return os.WriteFile(filepath.Join(dir, dirReady), nil, 0o644)
}

func prepareScratch(dir string) error {
	d := filepath.Join(dir, scratchDir)
	if err := os.RemoveAll(d); err != nil {
		return err
	}
	return os.Mkdir(d, 0o755)
}

// FUSE-side setup and slots.

func (r *runState) lookup(name string) (uint64, error) {
	e, err := r.t.client.OnQueue(1).Lookup(fuseclient.RootID, name)
	if err != nil {
		return 0, fmt.Errorf("LOOKUP %s: %w", name, err)
	}
	return e.NodeId, nil
}

func (r *runState) forget(node, n uint64) error {
	if node == 0 || node == fuseclient.RootID || n == 0 || r.t.trivial {
		return nil
	}
	return r.t.client.Forget(node, n)
}

func setupSmall(r *runState) error {
	if r.t.trivial {
		r.node = fuseclient.RootID
		return nil
	}
	var err error
	r.node, err = r.lookup(smallName)
	return err
}

func teardownSmall(r *runState) error {
	var n uint64
	for _, s := range r.slots {
		n += s.count
	}
	return r.forget(r.node, 1+n)
}

func getattrSlot(r *runState, s *slot) error {
	node := r.node
	s.start = func(q *fuseclient.Req) error {
		q.GetAttr(node)
		return nil
	}
	s.done = func(*fuseclient.Req) (bool, int, error) { return true, 0, nil }
	return nil
}

func lookupSlot(r *runState, s *slot) error {
	s.start = func(q *fuseclient.Req) error { return q.Lookup(fuseclient.RootID, smallName) }
	s.done = func(*fuseclient.Req) (bool, int, error) {
		s.count++ // forgotten at teardown
		return true, 0, nil
	}
	return nil
}

func setupBig(r *runState) error {
	if r.t.trivial {
		return errors.New("the trivial back-end only serves getattr")
	}
	var err error
	r.node, err = r.lookup(bigName)
	return err
}

func teardownBig(r *runState) error {
	var errs []error
	for _, s := range r.slots {
		if s.open {
			if err := s.c.Release(r.node, s.fh, syscall.O_RDONLY); err != nil {
				errs = append(errs, err)
			}
		}
	}
	errs = append(errs, r.forget(r.node, 1))
	return errors.Join(errs...)
}

func readSlot(size int) func(r *runState, s *slot) error {
	return func(r *runState, s *slot) error {
		o, err := s.c.Open(r.node, syscall.O_RDONLY)
		if err != nil {
			return fmt.Errorf("OPEN %s: %w", bigName, err)
		}
		s.fh, s.open = o.Fh, true
		node, fh := r.node, o.Fh
		blocks := uint64(bigSize) / uint64(size)
		s.start = func(q *fuseclient.Req) error {
			return q.Read(node, fh, (s.rand()%blocks)*uint64(size), size)
		}
		s.done = func(q *fuseclient.Req) (bool, int, error) {
			if q.N != size {
				return true, 0, fmt.Errorf("READ returned %d bytes of %d", q.N, size)
			}
			return true, q.N, nil
		}
		return nil
	}
}

func setupScratch(r *runState) error {
	if r.t.trivial {
		return errors.New("the trivial back-end only serves getattr")
	}
	var err error
	r.node, err = r.lookup(scratchDir)
	return err
}

func teardownScratch(r *runState) error {
	var errs []error
	for _, s := range r.slots {
		if s.open {
			errs = append(errs, s.c.Release(s.node, s.fh, syscall.O_RDWR))
			errs = append(errs, s.c.Unlink(r.node, s.name))
			errs = append(errs, r.forget(s.node, 1))
		}
	}
	errs = append(errs, r.forget(r.node, 1))
	return errors.Join(errs...)
}

func writeSlot(r *runState, s *slot) error {
	if r.t.init.MaxWrite < 1<<20 {
		return fmt.Errorf("the back-end's max_write is %d, below 1 MiB", r.t.init.MaxWrite)
	}
	e, o, err := s.c.Create(r.node, s.name, syscall.O_RDWR|syscall.O_CREAT|syscall.O_TRUNC, syscall.S_IFREG|0o644)
	if err != nil {
		return fmt.Errorf("CREATE %s: %w", s.name, err)
	}
	s.node, s.fh, s.open = e.NodeId, o.Fh, true
	node, fh := e.NodeId, o.Fh
	const size = 1 << 20
	fill := byte(s.id) | 1
	var off uint64
	s.start = func(q *fuseclient.Req) error {
		err := q.Write(node, fh, off, size, fill)
		if off += size; off >= writeSpan {
			off = 0
		}
		return err
	}
	s.done = func(q *fuseclient.Req) (bool, int, error) {
		if n := q.Written(); n != size {
			return true, 0, fmt.Errorf("WRITE wrote %d bytes of %d", n, size)
		}
		return true, size, nil
	}
	return nil
}

// createUnlinkSlot runs CREATE, RELEASE, UNLINK, then queues the FORGET
// a guest sends once the inode is evicted.
func createUnlinkSlot(r *runState, s *slot) error {
	dir, name := r.node, s.name
	const flags = syscall.O_RDWR | syscall.O_CREAT | syscall.O_EXCL
	s.start = func(q *fuseclient.Req) error {
		s.step = 0
		return q.Create(dir, name, flags, syscall.S_IFREG|0o644)
	}
	s.done = func(q *fuseclient.Req) (bool, int, error) {
		switch s.step {
		case 0:
			e, o := q.Entry(), q.Open()
			s.node, s.step = e.NodeId, 1
			q.Release(e.NodeId, o.Fh, flags)
			return false, 0, nil
		case 1:
			s.step = 2
			return false, 0, q.Unlink(dir, name)
		default:
			return true, 0, s.ql.forget(s.node, 1)
		}
	}
	return nil
}

func setupDir(r *runState) error {
	if r.t.trivial {
		return errors.New("the trivial back-end only serves getattr")
	}
	var err error
	r.node, err = r.lookup(dirName)
	return err
}

func teardownDir(r *runState) error {
	var errs []error
	for _, s := range r.slots {
		if s.open {
			errs = append(errs, s.c.Releasedir(r.node, s.fh))
		}
	}
	// Entries READDIRPLUS looked up stay referenced, as in a guest that
	// keeps them cached; the session ends right after.
	errs = append(errs, r.forget(r.node, 1))
	return errors.Join(errs...)
}

func readdirSlot(r *runState, s *slot) error {
	o, err := s.c.Opendir(r.node)
	if err != nil {
		return fmt.Errorf("OPENDIR %s: %w", dirName, err)
	}
	s.fh, s.open = o.Fh, true
	node, fh, size := r.node, o.Fh, r.cfg.readdirSize
	var cookie uint64
	s.start = func(q *fuseclient.Req) error { return q.ReaddirPlus(node, fh, cookie, size) }
	s.done = func(q *fuseclient.Req) (bool, int, error) {
		b := q.Data()
		if len(b) == 0 {
			cookie = 0 // the end of the folder: list it again
			return true, 0, nil
		}
		for len(b) > 0 {
			_, off, n := fuseclient.NextDirentPlus(b)
			if n == 0 {
				return true, 0, fmt.Errorf("READDIRPLUS at %d: malformed entry %d bytes before the end", cookie, len(b))
			}
			cookie, b = off, b[n:]
		}
		return true, q.N, nil
	}
	return nil
}
