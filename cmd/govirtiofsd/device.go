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

func newVirtioFS(srv *fuse.Server, requestQueues int, tag string) *virtioFS {
	d := &virtioFS{srv: srv, requestQueues: requestQueues}
	if tag != "" {
		d.config = make([]byte, tagLen+4)
		copy(d.config, tag)
		binary.LittleEndian.PutUint32(d.config[tagLen:], uint32(requestQueues))
	}
	return d
}

func (d *virtioFS) Features() uint64 { return 0 }
func (d *virtioFS) MaxQueues() int   { return 1 + d.requestQueues }
func (d *virtioFS) Config() []byte   { return d.config }
func (d *virtioFS) Reset()           { d.srv.Reset() }

func (d *virtioFS) NewHandler() vhostuser.Handler { return chainHandler{d.srv.NewWorker()} }

// chainHandler feeds descriptor chains to a FUSE worker.
type chainHandler struct{ w *fuse.Worker }

func (h chainHandler) Handle(_ int, c *virtqueue.DescriptorChain) uint32 {
	return h.w.Serve(c.Readable, c.Writable)
}
