package main

import (
	"encoding/binary"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	"github.com/govirtiofsd/govirtiofsd/virtqueue"
)

// virtioFS is the virtio-fs device: a high-priority queue plus request
// queues, all carrying FUSE requests to one fuse.Server.
type virtioFS struct {
	srv           *fuse.Server
	requestQueues int
	config        []byte
}

// tagLen is the size of the tag field in the virtio-fs config space.
const tagLen = 36

// newVirtioFS returns the device. It serves up to requestQueues request
// queues; with a tag it offers a config space (for front-ends that read it
// from the back-end) announcing configQueues request queues, which must
// match what the front-end gives the guest.
func newVirtioFS(srv *fuse.Server, requestQueues, configQueues int, tag string) *virtioFS {
	d := &virtioFS{srv: srv, requestQueues: requestQueues}
	if tag != "" {
		d.config = make([]byte, tagLen+4)
		copy(d.config, tag)
		binary.LittleEndian.PutUint32(d.config[tagLen:], uint32(configQueues))
	}
	return d
}

// Features is the device's feature bits: virtio-fs has none.
func (d *virtioFS) Features() uint64 { return 0 }

// MaxQueues is the high-priority queue plus the request queues.
func (d *virtioFS) MaxQueues() int { return 1 + d.requestQueues }

// Config is the config space (nil without --tag).
func (d *virtioFS) Config() []byte { return d.config }

// Reset ends the FUSE session: the device was reset or the front-end
// went away.
func (d *virtioFS) Reset() { d.srv.Reset() }

// NewHandler returns a handler for one queue's chains, with a FUSE worker
// of its own.
func (d *virtioFS) NewHandler() vhostuser.Handler { return chainHandler{d.srv.NewWorker()} }

// chainHandler feeds descriptor chains to a FUSE worker.
type chainHandler struct{ w *fuse.Worker }

// Handle serves the FUSE request in c and returns the length of the reply
// written.
func (h chainHandler) Handle(_ int, c *virtqueue.DescriptorChain) uint32 {
	return h.w.Serve(c.Readable, c.Writable)
}

// HandleDeferring is Handle for the back-end, which lets a request that
// waits (a SETLKW whose lock is held) park its chain rather than its
// worker.
func (h chainHandler) HandleDeferring(_ int, c *virtqueue.DescriptorChain, p *vhostuser.Parker) uint32 {
	return h.w.ServeParking(c.Readable, c.Writable, chainParker{p})
}

// chainParker parks FUSE requests as the back-end parks their chains.
type chainParker struct{ p *vhostuser.Parker }

// Park parks the chain being served; nil when the back-end refuses.
func (p chainParker) Park(c fuse.Canceler) fuse.Pending {
	if d := p.p.Park(c); d != nil {
		return d
	}
	return nil
}
