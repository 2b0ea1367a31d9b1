// Package vm is the real-VM test lab harness: it boots a Linux guest under
// QEMU (TCG) whose only disk is an initramfs, attaches it to a
// vhost-user-fs back-end on a unix socket, and reads the guest's verdicts
// from the serial console.
//
// The pieces come from test/lib/lab/fetch.sh (QEMU 10.0, a Debian 6.12 guest
// kernel, busybox-static, the reference virtiofsd 1.14.0 and 1.13.2 beside
// it); FindLab locates them and names whatever is missing. The harness
// never skips: a caller that cannot find the lab fails with that message.
//
// The guest reports with lines on its console:
//
//	GUEST RESULT <name> <PASS|FAIL|SKIP> <free text detail>
//	GUEST DONE
//
// A run that never prints GUEST DONE is an error. Everything the guest says
// is untrusted text: the parser only picks out these lines.
//
// No wait has a fixed wall-clock deadline: a guest under TCG on a loaded
// machine is slow, not stuck, as long as its console moves. Boot waits for
// the guest's init and retries once a boot that stalled before it (the
// share untouched); a hang after init fails with the back-end's goroutine
// dump. See watch.go (StallError, ReferenceBoot, Run.Scale).
package vm
