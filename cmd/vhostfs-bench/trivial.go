package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	"github.com/govirtiofsd/govirtiofsd/virtqueue"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
)

// The trivial back-end is govirtiofsd's vhost-user plumbing
// (vhostuser.Backend: control channel, ring workers, kicks and calls)
// serving a device whose handler answers every FUSE request with the same
// GETATTR reply, touching no file system. Run in this process, it shows
// what the harness and the plumbing reach on their own: the ceiling of any
// measurement.

// trivialDevice is the vhostuser.Device.
type trivialDevice struct{ requestQueues int }

func (d trivialDevice) Features() uint64              { return 0 }
func (d trivialDevice) MaxQueues() int                { return 1 + d.requestQueues }
func (d trivialDevice) Config() []byte                { return nil }
func (d trivialDevice) Reset()                        {}
func (d trivialDevice) NewHandler() vhostuser.Handler { return newTrivialHandler() }

const (
	inHeaderSize  = int(unsafe.Sizeof(fuse.InHeader{}))
	outHeaderSize = int(unsafe.Sizeof(fuse.OutHeader{}))
	attrOutSize   = int(unsafe.Sizeof(fuse.AttrOut{}))
)

// trivialHandler holds the fixed reply; only the unique changes.
type trivialHandler struct {
	reply [outHeaderSize + attrOutSize]byte
	hdr   [inHeaderSize]byte
}

func newTrivialHandler() *trivialHandler {
	h := &trivialHandler{}
	out := (*fuse.OutHeader)(unsafe.Pointer(&h.reply[0]))
	out.Length = uint32(len(h.reply))
	a := (*fuse.AttrOut)(unsafe.Pointer(&h.reply[outHeaderSize]))
	a.AttrValid = 1
	a.Attr = fuse.Attr{Ino: 1, Mode: 0o40755, Nlink: 2, Blksize: 4096}
	return h
}

// Handle answers the chain; requests on the high-priority queue (FORGET)
// get no reply, as FUSE wants.
func (h *trivialHandler) Handle(qi int, c *virtqueue.DescriptorChain) uint32 {
	if qi == 0 {
		return 0
	}
	n := 0
	for _, seg := range c.Readable {
		n += copy(h.hdr[n:], seg)
		if n == len(h.hdr) {
			break
		}
	}
	if n < 16 {
		return 0
	}
	binary.LittleEndian.PutUint64(h.reply[8:], binary.LittleEndian.Uint64(h.hdr[8:]))
	w := 0
	for _, seg := range c.Writable {
		w += copy(seg, h.reply[w:])
		if w == len(h.reply) {
			break
		}
	}
	return uint32(w)
}

// trivialServer listens on a socket in a temporary folder and serves one
// front-end connection with the trivial device.
type trivialServer struct {
	dir    string
	socket string
	ln     *net.UnixListener
	done   chan error
}

func startTrivial(requestQueues int, poll time.Duration) (*trivialServer, error) {
	dir, err := os.MkdirTemp("", "vhostfs-bench-trivial-")
	if err != nil {
		return nil, err
	}
	s := &trivialServer{dir: dir, socket: filepath.Join(dir, "trivial.sock"), done: make(chan error, 1)}
	if s.ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: s.socket, Net: "unix"}); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	go func() {
		uc, err := s.ln.AcceptUnix()
		s.ln.Close()
		if err != nil {
			s.done <- err
			return
		}
		b := vhostuser.NewBackend(trivialDevice{requestQueues: requestQueues}, vhostuser.Options{Log: log, Poll: poll})
		s.done <- b.Serve(uc)
		uc.Close()
	}()
	return s, nil
}

// close waits for the connection to end (the front-end closes it first).
func (s *trivialServer) close() error {
	s.ln.Close()
	err := <-s.done
	os.RemoveAll(s.dir)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("trivial back-end: %w", err)
	}
	return nil
}

// serveTrivialEnv makes this program (or the test binary) the trivial
// back-end: "--daemon trivial" runs it as a process of its own, as the
// real daemons run, so that it does not share the harness's Go scheduler
// ("--daemon trivial-inproc" serves it from this process instead).
const serveTrivialEnv = "VHOSTFS_BENCH_SERVE_TRIVIAL"

// serveTrivialAndExit serves one connection with the trivial back-end
// ("serve-trivial --socket-path S [--request-queues N]") and exits.
func serveTrivialAndExit(args []string) {
	if len(args) > 0 && args[0] == "serve-trivial" {
		args = args[1:]
	}
	if err := serveTrivial(args); err != nil {
		fmt.Fprintln(os.Stderr, "vhostfs-bench serve-trivial:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func serveTrivial(args []string) error {
	f := pflag.NewFlagSet("vhostfs-bench serve-trivial", pflag.ContinueOnError)
	socket := f.String("socket-path", "", "vhost-user socket to listen on")
	queues := f.Int("request-queues", 64, "request queues served")
	poll := f.Duration("poll", 0, "how long an idle ring worker polls before it sleeps")
	f.String("shared-dir", "", "ignored")
	if err := f.Parse(args); err != nil {
		return err
	}
	if *socket == "" {
		return errors.New("serve-trivial needs --socket-path")
	}
	os.Remove(*socket)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: *socket, Net: "unix"})
	if err != nil {
		return err
	}
	uc, err := ln.AcceptUnix()
	ln.Close()
	os.Remove(*socket)
	if err != nil {
		return err
	}
	log := logrus.New()
	log.SetOutput(os.Stderr)
	log.SetLevel(logrus.WarnLevel)
	return vhostuser.NewBackend(trivialDevice{requestQueues: *queues}, vhostuser.Options{Log: log, Poll: *poll}).Serve(uc)
}
