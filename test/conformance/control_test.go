package frontend_test

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
)

// connectRaw starts d and connects without setting anything up.
func connectRaw(t *testing.T, d daemon.Daemon, opts frontend.Options) (*frontend.Frontend, *daemon.Proc) {
	t.Helper()
	sock := t.TempDir() + "/vhost.sock"
	proc, err := d.Start(daemon.Options{SharedDir: t.TempDir(), Socket: sock})
	must(t, "start", err)
	t.Cleanup(func() {
		proc.Stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", d.Name, proc.Stderr())
		}
	})
	fe, err := frontend.Connect(sock, opts)
	must(t, "connect", err)
	return fe, proc
}

// TestBadControlRequests sends ring requests that must be refused. Ours
// refuses each through REPLY_ACK and keeps the session; the reference
// (rust-vmm) refuses the first and then drops the connection. Both must
// exit 0 afterwards.
func TestBadControlRequests(t *testing.T) {
	for _, dc := range daemons {
		t.Run(dc.name, func(t *testing.T) {
			fe, proc := connectRaw(t, dc.get(t), frontend.Options{})
			must(t, "negotiate", fe.Negotiate())
			offered, err := fe.CallU64(vhostuser.GetFeatures, nil)
			must(t, "GET_FEATURES", err)
			if offered != fe.Negotiated().OfferedFeatures {
				t.Errorf("GET_FEATURES changed from %#x to %#x", fe.Negotiated().OfferedFeatures, offered)
			}
			bad := []struct {
				what    string
				req     vhostuser.Request
				payload []byte
			}{
				{"SET_VRING_NUM on queue 200", vhostuser.SetVringNum, vringState(200, 128)},
				{"SET_VRING_NUM of size 3", vhostuser.SetVringNum, vringState(1, 3)},
				{"SET_VRING_NUM of size 0", vhostuser.SetVringNum, vringState(1, 0)},
				{"SET_VRING_BASE on queue 200", vhostuser.SetVringBase, vringState(200, 0)},
				{"SET_VRING_ADDR with a short payload", vhostuser.SetVringAddr, make([]byte, 12)},
				{"SET_VRING_KICK without an fd", vhostuser.SetVringKick, u64(1)},
				{"SET_MEM_TABLE claiming regions without fds", vhostuser.SetMemTable, frontend.MemTablePayload(fe.Mem.Regions())},
			}
			for i, b := range bad {
				err := fe.Request(b.req, b.payload)
				var ne *frontend.NackError
				if !errors.As(err, &ne) {
					t.Errorf("%s: got %v, want a refusal", b.what, err)
				}
				if dc.name == "reference" && i == 0 {
					t.Logf("the reference refused %s and ends the session", b.what)
					break
				}
			}
			if dc.name != "reference" {
				// The session survives: finish it and use it.
				must(t, "memory", fe.RegisterMemory())
				must(t, "queues", fe.StartQueues())
				c := fuseclient.New(fe, fuseclient.Options{})
				defer c.Close()
				mustInit(t, c)
				_, err = c.GetAttr(fuseclient.RootID)
				must(t, "GETATTR", err)
				checkStop(t, fe)
			}
			fe.Close()
			if err := proc.WaitTimeout(10 * time.Second); err != nil {
				t.Errorf("after disconnect: %v", err)
			}
		})
	}
}

// TestMemoryHotplug removes and re-adds a memory region and replaces the
// whole table while the queues run, as QEMU does on memory hotplug.
func TestMemoryHotplug(t *testing.T) {
	for _, dc := range daemons {
		t.Run(dc.name, func(t *testing.T) {
			fe, proc := connectRaw(t, dc.get(t), frontend.Options{Memory: frontend.MemoryLayout{Regions: 2}, AddMemReg: true})
			must(t, "setup", fe.Setup())
			c := fuseclient.New(fe, fuseclient.Options{})
			defer c.Close()
			mustInit(t, c)
			_, err := c.GetAttr(fuseclient.RootID)
			must(t, "GETATTR", err)

			regions := fe.Mem.Regions()
			must(t, "REM_MEM_REG", fe.Request(vhostuser.RemMemReg, frontend.MemRegPayload(regions[1])))
			must(t, "ADD_MEM_REG", fe.Request(vhostuser.AddMemReg, frontend.MemRegPayload(regions[1]), fe.Mem.Fd()))
			for i := 0; i < 20; i++ {
				_, err = c.GetAttr(fuseclient.RootID)
				must(t, "GETATTR after re-plugging", err)
			}
			must(t, "SET_MEM_TABLE", fe.Request(vhostuser.SetMemTable, frontend.MemTablePayload(regions), fe.Mem.Fd(), fe.Mem.Fd()))
			_, err = c.Lookup(fuseclient.RootID, "nothing")
			wantErrno(t, "LOOKUP after SET_MEM_TABLE", err, 2)
			for i := 0; i < 20; i++ {
				_, err = c.Statfs(fuseclient.RootID)
				must(t, "STATFS after SET_MEM_TABLE", err)
			}
			checkStop(t, fe)
			must(t, "close", fe.Close())
			if err := proc.WaitTimeout(10 * time.Second); err != nil {
				t.Errorf("after disconnect: %v", err)
			}
		})
	}
}

func vringState(index, num uint32) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint32(b, index)
	binary.LittleEndian.PutUint32(b[4:], num)
	return b
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	return b
}
