package frontend_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// variant is one way of driving the device.
type variant struct {
	name   string
	opts   frontend.Options
	client fuseclient.Options
}

var variants = []variant{
	{name: "default", opts: frontend.Options{WindowSize: 64 << 20}},
	{name: "2regions-addmemreg", opts: frontend.Options{Memory: frontend.MemoryLayout{Regions: 2}, AddMemReg: true}},
	{name: "hole-direct-noeventidx-pages", opts: frontend.Options{
		Memory: frontend.MemoryLayout{Regions: 2, HighGPA: 4 << 30}, NoIndirect: true, NoEventIdx: true, QueueSize: 1024},
		client: fuseclient.Options{SplitPages: true}},
	{name: "indirect-pages-poll", opts: frontend.Options{Poll: true, QueueSize: 256}, client: fuseclient.Options{SplitPages: true}},
}

// TestSession runs negotiation, INIT and a file's whole life on one
// request queue, against both daemons and in every variant.
func TestSession(t *testing.T) {
	for _, dc := range daemons {
		t.Run(dc.name, func(t *testing.T) {
			d := dc.get(t)
			for _, v := range variants {
				t.Run(v.name, func(t *testing.T) {
					begin := time.Now()
					fe, share := start(t, d, v.opts)
					checkNegotiation(t, fe, dc)
					c := fuseclient.New(fe, v.client)
					defer c.Close()
					initOut := mustInit(t, c)
					exerciseFile(t, c, share, initOut)
					checkStop(t, fe)
					t.Logf("%s/%s: %v", dc.name, v.name, time.Since(begin))
				})
			}
		})
	}
}

func checkNegotiation(t *testing.T, fe *frontend.Frontend, dc daemonCase) {
	t.Helper()
	n := fe.Negotiated()
	t.Logf("features offered %#x acked %#x; protocol offered %#x acked %#x; %d queues; %d memory slots",
		n.OfferedFeatures, n.Features, n.OfferedProtocol, n.Protocol, n.QueueNum, n.MaxMemSlots)
	if n.Features&vhostuser.FeatureVersion1 == 0 || n.Features&vhostuser.FeatureProtocolFeatures == 0 {
		t.Errorf("features %#x lack VERSION_1 or PROTOCOL_FEATURES", n.Features)
	}
	if n.Protocol&vhostuser.ProtocolReplyAck == 0 || n.Protocol&vhostuser.ProtocolMQ == 0 {
		t.Errorf("protocol features %#x lack REPLY_ACK or MQ", n.Protocol)
	}
	if int(n.QueueNum) != 1+dc.requestQueues {
		t.Errorf("GET_QUEUE_NUM = %d, want %d", n.QueueNum, 1+dc.requestQueues)
	}
	if fe.Backend() == nil {
		t.Errorf("no back-end channel although BACKEND_REQ is offered")
	}
	if w := fe.Window(); w != nil && len(w.Mappings()) != 0 {
		t.Errorf("window has mappings before any DAX request: %+v", w.Mappings())
	}
}

func mustInit(t *testing.T, c *fuseclient.Client) *fuse.InitOut {
	t.Helper()
	out, err := c.Init()
	if err != nil {
		t.Fatalf("INIT: %v", err)
	}
	t.Logf("INIT reply %d.%d flags %#x max_write %d max_pages %d max_readahead %d",
		out.Major, out.Minor, out.Flags64(), out.MaxWrite, out.MaxPages, out.MaxReadAhead)
	if out.Minor < 31 || out.MaxWrite < 4096 {
		t.Fatalf("INIT reply %+v is implausible", out)
	}
	// The guest keeps at most max_background readahead and async
	// direct-I/O requests in flight; left at 0 it would keep 12.
	if out.MaxBackground < 1024 || out.CongestionThreshold < out.MaxBackground/2 {
		t.Errorf("INIT reply max_background %d congestion_threshold %d keep the guest from filling the ring",
			out.MaxBackground, out.CongestionThreshold)
	}
	if out.Flags64()&^fuseclient.LinuxInitFlags&^fuse.CAP_INIT_EXT != 0 {
		t.Errorf("server accepted flags %#x that were not offered", out.Flags64()&^fuseclient.LinuxInitFlags)
	}
	return out
}

func wantErrno(t *testing.T, what string, err error, want syscall.Errno) {
	t.Helper()
	var e syscall.Errno
	if !errors.As(err, &e) || e != want {
		t.Fatalf("%s: got %v, want %v", what, err, want)
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// exerciseFile creates, writes, reads back, lists, renames, syncs and
// removes a file, checking the host side as it goes.
func exerciseFile(t *testing.T, c *fuseclient.Client, share string, initOut *fuse.InitOut) {
	_, err := c.Lookup(fuseclient.RootID, "missing")
	wantErrno(t, "LOOKUP missing", err, syscall.ENOENT)

	dir, err := c.Mkdir(fuseclient.RootID, "dir", 0o755)
	must(t, "MKDIR", err)
	if !dir.IsDir() {
		t.Fatalf("MKDIR returned mode %#o", dir.Mode)
	}
	if st, err := os.Stat(filepath.Join(share, "dir")); err != nil || !st.IsDir() {
		t.Fatalf("host side of MKDIR: %v", err)
	}
	e, o, err := c.Create(dir.NodeId, "file", syscall.O_RDWR|syscall.O_CREAT, syscall.S_IFREG|0o644)
	must(t, "CREATE", err)

	data := make([]byte, 700<<10+123)
	rand.New(rand.NewSource(1)).Read(data)
	chunk := int(min(initOut.MaxWrite, 256<<10))
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		n, err := c.Write(e.NodeId, o.Fh, uint64(off), data[off:end])
		must(t, "WRITE", err)
		if int(n) != end-off {
			t.Fatalf("WRITE at %d wrote %d of %d", off, n, end-off)
		}
	}
	must(t, "FSYNC", c.Fsync(e.NodeId, o.Fh, false))
	if host, err := os.ReadFile(filepath.Join(share, "dir", "file")); err != nil || !bytes.Equal(host, data) {
		t.Fatalf("host file after WRITE: %d bytes, err %v; want %d bytes equal", len(host), err, len(data))
	}
	a, err := c.GetAttr(e.NodeId)
	must(t, "GETATTR", err)
	if a.Size != uint64(len(data)) || !a.IsRegular() || a.Mode&0o777 != 0o644 {
		t.Fatalf("GETATTR: size %d mode %#o, want %d 0644", a.Size, a.Mode, len(data))
	}
	got := make([]byte, len(data))
	rchunk := 128 << 10
	for off := 0; off < len(got); off += rchunk {
		end := min(off+rchunk, len(got))
		n, err := c.Read(e.NodeId, o.Fh, uint64(off), got[off:end])
		must(t, "READ", err)
		if n != end-off {
			t.Fatalf("READ at %d returned %d of %d", off, n, end-off)
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("READ back differs from what was written")
	}
	if n, err := c.Read(e.NodeId, o.Fh, uint64(len(data)), got[:4096]); err != nil || n != 0 {
		t.Fatalf("READ at EOF: %d, %v", n, err)
	}
	a, err = c.SetAttr(e.NodeId, &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{Valid: fuse.FATTR_SIZE | fuse.FATTR_FH, Fh: o.Fh, Size: 1000}})
	must(t, "SETATTR size", err)
	if a.Size != 1000 {
		t.Fatalf("SETATTR size: %d", a.Size)
	}
	must(t, "FLUSH", c.Flush(e.NodeId, o.Fh))
	must(t, "RELEASE", c.Release(e.NodeId, o.Fh, syscall.O_RDWR))

	ro, err := c.Open(e.NodeId, syscall.O_RDONLY)
	must(t, "OPEN", err)
	if n, err := c.Read(e.NodeId, ro.Fh, 0, got[:2000]); err != nil || n != 1000 || !bytes.Equal(got[:n], data[:1000]) {
		t.Fatalf("READ after truncation: %d bytes, %v", n, err)
	}
	_, err = c.Write(e.NodeId, ro.Fh, 0, data[:10])
	wantErrno(t, "WRITE through a read-only handle", err, syscall.EBADF)
	must(t, "RELEASE read-only", c.Release(e.NodeId, ro.Fh, syscall.O_RDONLY))

	l, err := c.Lookup(dir.NodeId, "file")
	must(t, "LOOKUP", err)
	if l.NodeId != e.NodeId || l.Size != 1000 {
		t.Fatalf("LOOKUP: node %d size %d, want node %d size 1000", l.NodeId, l.Size, e.NodeId)
	}

	// A second file, so that the listing has more than one entry.
	e2, o2, err := c.Create(dir.NodeId, "second", syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, syscall.S_IFREG|0o600)
	must(t, "CREATE second", err)
	must(t, "RELEASE second", c.Release(e2.NodeId, o2.Fh, syscall.O_WRONLY))
	_, _, err = c.Create(dir.NodeId, "second", syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, syscall.S_IFREG|0o600)
	wantErrno(t, "CREATE O_EXCL existing", err, syscall.EEXIST)

	od, err := c.Opendir(dir.NodeId)
	must(t, "OPENDIR", err)
	names := map[string]fuseclient.DirEntryPlus{}
	var off uint64
	for {
		ents, err := c.ReaddirPlus(dir.NodeId, od.Fh, off, 4096)
		must(t, "READDIRPLUS", err)
		if len(ents) == 0 {
			break
		}
		for _, de := range ents {
			names[de.Name] = de
			off = de.Off
		}
	}
	plain, err := c.Readdir(dir.NodeId, od.Fh, 0, 4096)
	must(t, "READDIR", err)
	if len(plain) != 4 {
		t.Errorf("READDIR returned %d entries: %+v", len(plain), plain)
	}
	must(t, "RELEASEDIR", c.Releasedir(dir.NodeId, od.Fh))
	for _, n := range []string{".", "..", "file", "second"} {
		if _, ok := names[n]; !ok {
			t.Errorf("READDIRPLUS lacks %q (got %v)", n, keys(names))
		}
	}
	if len(names) != 4 {
		t.Errorf("READDIRPLUS returned %v", keys(names))
	}
	if f := names["file"]; f.Entry.NodeId != e.NodeId || f.Entry.Size != 1000 || f.Type != syscall.DT_REG {
		t.Errorf("READDIRPLUS entry for file: node %d size %d type %d", f.Entry.NodeId, f.Entry.Size, f.Type)
	}

	must(t, "RENAME", c.Rename(dir.NodeId, "file", fuseclient.RootID, "renamed"))
	_, err = c.Lookup(dir.NodeId, "file")
	wantErrno(t, "LOOKUP after RENAME", err, syscall.ENOENT)
	if st, err := os.Stat(filepath.Join(share, "renamed")); err != nil || st.Size() != 1000 {
		t.Fatalf("host side of RENAME: %v", err)
	}
	r, err := c.Lookup(fuseclient.RootID, "renamed")
	must(t, "LOOKUP renamed", err)
	if r.NodeId != e.NodeId {
		t.Errorf("renamed file has node %d, was %d", r.NodeId, e.NodeId)
	}

	s, err := c.Statfs(fuseclient.RootID)
	must(t, "STATFS", err)
	if s.Blocks == 0 || s.Bsize == 0 || s.NameLen == 0 {
		t.Errorf("STATFS: %+v", s)
	}

	must(t, "UNLINK", c.Unlink(fuseclient.RootID, "renamed"))
	wantErrno(t, "UNLINK again", c.Unlink(fuseclient.RootID, "renamed"), syscall.ENOENT)
	if _, err := os.Stat(filepath.Join(share, "renamed")); !os.IsNotExist(err) {
		t.Fatalf("host file still there after UNLINK: %v", err)
	}
	wantErrno(t, "RMDIR non-empty", c.Rmdir(fuseclient.RootID, "dir"), syscall.ENOTEMPTY)
	must(t, "UNLINK second", c.Unlink(dir.NodeId, "second"))
	must(t, "RMDIR", c.Rmdir(fuseclient.RootID, "dir"))
	must(t, "SYNCFS", c.Syncfs())

	// Drop every reference taken: file (CREATE, LOOKUP, READDIRPLUS,
	// LOOKUP renamed), second (CREATE, READDIRPLUS), dir (MKDIR).
	must(t, "FORGET", c.Forget(e.NodeId, 4))
	must(t, "BATCH_FORGET", c.BatchForget([]fuseclient.ForgetOne{{NodeID: e2.NodeId, Nlookup: 2}, {NodeID: dir.NodeId, Nlookup: 1}}))
	// The high-priority queue is served apart: make sure it is drained.
	if _, err := c.GetAttr(fuseclient.RootID); err != nil {
		t.Fatalf("GETATTR root: %v", err)
	}
	must(t, "DESTROY", c.Destroy())
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// checkStop stops the device and checks every queue was consumed.
func checkStop(t *testing.T, fe *frontend.Frontend) {
	t.Helper()
	bases, err := fe.Stop()
	if err != nil {
		t.Fatalf("stopping: %v", err)
	}
	for _, b := range bases {
		if b.Base != b.Avail {
			t.Errorf("queue %d: GET_VRING_BASE %d, driver published %d", b.Index, b.Base, b.Avail)
		}
	}
	for i := 0; i < fe.NumQueues(); i++ {
		if s := fe.Queue(i).Strays(); len(s) > 0 {
			t.Errorf("queue %d: used entries for unknown heads: %v", i, s)
		}
	}
}

// TestConcurrent runs many goroutines' file lives at once: on the one
// request queue of each daemon, and on more request queues of ours, with
// and without a thread pool.
func TestConcurrent(t *testing.T) {
	cases := []struct {
		dc     daemonCase
		queues int
		opts   frontend.Options
	}{
		{daemons[0], 1, frontend.Options{}},
		{daemons[1], 1, frontend.Options{}},
		{daemons[0], 4, frontend.Options{AddMemReg: true, Memory: frontend.MemoryLayout{Regions: 2}}},
		{daemons[0], 64, frontend.Options{QueueSize: 1024}},
		{oursPool, 1, frontend.Options{}},
		{oursPool, 4, frontend.Options{}},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/%dq", tc.dc.name, tc.queues), func(t *testing.T) {
			begin := time.Now()
			opts := tc.opts
			opts.RequestQueues = tc.queues
			fe, share := start(t, tc.dc.get(t), opts)
			c := fuseclient.New(fe, fuseclient.Options{})
			defer c.Close()
			mustInit(t, c)
			workers, rounds := 16, 40
			if tc.queues > workers {
				workers, rounds = tc.queues, 10
			}
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					q := c
					if tc.queues > 1 {
						q = c.OnQueue(1 + w%tc.queues)
					}
					if err := worker(q, share, w, rounds); err != nil {
						errs <- fmt.Errorf("worker %d: %w", w, err)
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			var total uint64
			for i := 0; i < fe.NumQueues(); i++ {
				s := fe.Queue(i).Stats()
				total += s.Completed
				t.Logf("queue %d: %+v", i, s)
				if i > 0 && s.Completed == 0 {
					t.Errorf("request queue %d served nothing", i)
				}
			}
			checkStop(t, fe)
			t.Logf("%d requests in %v", total, time.Since(begin))
		})
	}
}

func worker(c *fuseclient.Client, share string, w, rounds int) error {
	buf := make([]byte, 64<<10)
	got := make([]byte, len(buf))
	for r := 0; r < rounds; r++ {
		name := fmt.Sprintf("w%d-%d", w, r)
		for i := range buf {
			buf[i] = byte(w*31 + r*7 + i)
		}
		size := 1 + (w*4099+r*977)%len(buf)
		e, o, err := c.Create(fuseclient.RootID, name, syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, syscall.S_IFREG|0o644)
		if err != nil {
			return fmt.Errorf("CREATE %s: %w", name, err)
		}
		if n, err := c.Write(e.NodeId, o.Fh, 0, buf[:size]); err != nil || int(n) != size {
			return fmt.Errorf("WRITE %s: %d, %v", name, n, err)
		}
		if n, err := c.Read(e.NodeId, o.Fh, 0, got); err != nil || n != size || !bytes.Equal(got[:n], buf[:size]) {
			return fmt.Errorf("READ %s: %d of %d, %v", name, n, size, err)
		}
		if a, err := c.GetAttr(e.NodeId); err != nil || a.Size != uint64(size) {
			return fmt.Errorf("GETATTR %s: size %d, %v", name, a.Size, err)
		}
		if err := c.Release(e.NodeId, o.Fh, syscall.O_RDWR); err != nil {
			return fmt.Errorf("RELEASE %s: %w", name, err)
		}
		if st, err := os.Stat(filepath.Join(share, name)); err != nil || st.Size() != int64(size) {
			return fmt.Errorf("host %s: %v", name, err)
		}
		if err := c.Unlink(fuseclient.RootID, name); err != nil {
			return fmt.Errorf("UNLINK %s: %w", name, err)
		}
		if err := c.Forget(e.NodeId, 1); err != nil {
			return fmt.Errorf("FORGET %s: %w", name, err)
		}
	}
	return nil
}

// TestStopDrains stops the device while requests are in flight on every
// queue: GET_VRING_BASE must answer only once everything the back-end
// consumed is completed (used index = base), as QEMU relies on.
func TestStopDrains(t *testing.T) {
	for _, dc := range append(daemons, oursPool) {
		t.Run(dc.name, func(t *testing.T) {
			queues := min(4, dc.requestQueues)
			fe, _ := start(t, dc.get(t), frontend.Options{RequestQueues: queues})
			c := fuseclient.New(fe, fuseclient.Options{})
			defer c.Close()
			mustInit(t, c)
			e, o, err := c.Create(fuseclient.RootID, "f", syscall.O_RDWR|syscall.O_CREAT, syscall.S_IFREG|0o644)
			must(t, "CREATE", err)
			var wg sync.WaitGroup
			stop := make(chan struct{})
			var completed, failed sync.Map
			for w := 0; w < 32; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					q := c.OnQueue(1 + w%queues)
					buf := make([]byte, 128<<10)
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						var err error
						if i%2 == 0 {
							_, err = q.Write(e.NodeId, o.Fh, uint64(w)*uint64(len(buf)), buf)
						} else {
							_, err = q.GetAttr(e.NodeId)
						}
						if err != nil {
							if !errors.Is(err, frontend.ErrQueueClosed) {
								failed.Store(w, err)
							}
							return
						}
						completed.Store(w, i)
					}
				}()
			}
			time.Sleep(50 * time.Millisecond)
			bases, err := fe.Stop()
			close(stop)
			wg.Wait()
			must(t, "stop", err)
			failed.Range(func(k, v any) bool {
				t.Errorf("worker %v: %v", k, v)
				return true
			})
			for _, b := range bases {
				t.Logf("queue %d: base %d, avail %d, used %d", b.Index, b.Base, b.Avail, b.Used)
				if b.Used != b.Base {
					t.Errorf("queue %d: GET_VRING_BASE answered %d with only %d chains completed", b.Index, b.Base, b.Used)
				}
			}
			// A stopped ring is left alone: nothing more gets used.
			time.Sleep(50 * time.Millisecond)
			for _, b := range bases {
				var used uint16
				fe.Queue(b.Index).WithDriver(func(d *virtqueue.Driver) { used = d.UsedIdx() })
				if used != b.Used {
					t.Errorf("queue %d: used index moved from %d to %d after GET_VRING_BASE", b.Index, b.Used, used)
				}
			}
		})
	}
}

// TestPauseResume stops and restarts the rings under load, as QEMU does
// on VM stop/cont: requests the back-end had not consumed at
// GET_VRING_BASE must be served after SET_VRING_BASE restarts the ring,
// and no request may fail.
func TestPauseResume(t *testing.T) {
	for _, dc := range append(daemons, oursPool) {
		t.Run(dc.name, func(t *testing.T) {
			queues := min(4, dc.requestQueues)
			fe, _ := start(t, dc.get(t), frontend.Options{RequestQueues: queues})
			c := fuseclient.New(fe, fuseclient.Options{})
			defer c.Close()
			mustInit(t, c)
			e, o, err := c.Create(fuseclient.RootID, "f", syscall.O_RDWR|syscall.O_CREAT, syscall.S_IFREG|0o644)
			must(t, "CREATE", err)
			var wg sync.WaitGroup
			stop := make(chan struct{})
			errs := make(chan error, 32)
			var done [32]int
			for w := 0; w < 32; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					q := c.OnQueue(1 + w%queues)
					buf := make([]byte, 64<<10)
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						var err error
						if i%2 == 0 {
							_, err = q.Write(e.NodeId, o.Fh, uint64(w)*uint64(len(buf)), buf)
						} else {
							_, err = q.GetAttr(e.NodeId)
						}
						if err != nil {
							errs <- fmt.Errorf("worker %d request %d: %w", w, i, err)
							return
						}
						done[w]++
					}
				}()
			}
			for round := 0; round < 5; round++ {
				time.Sleep(20 * time.Millisecond)
				bases, err := fe.Pause()
				must(t, "pause", err)
				pending := 0
				for _, b := range bases {
					if b.Used != b.Base {
						t.Errorf("round %d queue %d: GET_VRING_BASE answered %d with %d chains completed", round, b.Index, b.Base, b.Used)
					}
					pending += int(b.Avail - b.Base)
				}
				t.Logf("round %d: %d requests left unconsumed at pause", round, pending)
				time.Sleep(10 * time.Millisecond)
				must(t, "resume", fe.Resume())
			}
			time.Sleep(20 * time.Millisecond)
			close(stop)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			total := 0
			for _, n := range done {
				total += n
			}
			t.Logf("%d requests served across 5 pauses", total)
			checkStop(t, fe)
		})
	}
}

// TestSecurityContextEncoding checks the client's SECURITY_CTX extension
// (the empty context Linux appends to CREATE, MKDIR and SYMLINK once the
// server accepts SECURITY_CTX) against both daemons run with
// --security-label.
func TestSecurityContextEncoding(t *testing.T) {
	for _, dc := range daemons {
		t.Run(dc.name, func(t *testing.T) {
			d := dc.get(t)
			share := t.TempDir()
			fe, err := frontend.Start(d, daemon.Options{SharedDir: share, Extra: []string{"--security-label"}}, frontend.Options{})
			must(t, "start", err)
			defer func() {
				if err := fe.Close(); err != nil {
					t.Errorf("close: %v\n%s", err, fe.Proc().Stderr())
				}
			}()
			c := fuseclient.New(fe, fuseclient.Options{})
			defer c.Close()
			out := mustInit(t, c)
			if out.Flags64()&fuse.CAP_SECURITY_CTX == 0 {
				t.Fatalf("%s with --security-label did not accept SECURITY_CTX (flags %#x)", d.Name, out.Flags64())
			}
			_, err = c.Symlink(fuseclient.RootID, "link", "target")
			must(t, "SYMLINK", err)
			if got, err := os.Readlink(filepath.Join(share, "link")); err != nil || got != "target" {
				t.Fatalf("host symlink: %q, %v", got, err)
			}
			exerciseFile(t, c, share, out) // ends with DESTROY
		})
	}
}
