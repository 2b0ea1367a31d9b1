// Package frontend is a vhost-user front-end written in Go: the VMM and
// guest-driver side of a virtio-fs device, for driving any vhost-user-fs
// back-end (govirtiofsd or the reference virtiofsd) without QEMU or a
// kernel.
//
// A Frontend connects to a back-end's socket (or starts one, see Start),
// negotiates features the way QEMU 10 does, shares a memfd as guest RAM
// (one or two regions, through SET_MEM_TABLE or ADD_MEM_REG), and drives
// split virtqueues from the driver side with virtqueue.Driver: indirect
// descriptors, EVENT_IDX, kick and call eventfds, the high-priority queue
// plus any number of request queues. It serves the back-end channel
// (SET_BACKEND_REQ_FD) with a real DAX window (see Window). Raw primitives
// let hostile tests send arbitrary vhost-user messages and hand-built
// descriptor chains. An Owner drives one queue as an event loop from a
// single goroutine, without the reaper, for benchmarks.
//
// The back-end under test is not trusted: every reply is checked (acks,
// ring indices, used heads and lengths) and a misbehaving back-end makes a
// call fail with a descriptive error rather than hang or crash the test.
// FUSE lives one level up, in package fuseclient.
package frontend
