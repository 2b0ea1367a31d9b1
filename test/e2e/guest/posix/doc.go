// Package posix runs the POSIX conformance tests of go-fuse
// (github.com/hanwen/go-fuse/v2/posixtest) against a virtio-fs mount inside
// the test VM.
//
// The test is behind the build tag "guest" and runs only in the guest:
//
//	CGO_ENABLED=0 go test -c -tags guest -o posix.test ./test/e2e/guest/posix
//	/posix.test -test.v    # in the guest
//
// Environment:
//
//	POSIXTEST_MNT         mount point of the share (required); every
//	                      posixtest entry runs in a fresh subdirectory of
//	                      POSIXTEST_MNT/posixtest
//	POSIXTEST_TAG         if set, TestMain mounts this virtio-fs tag at
//	                      POSIXTEST_MNT first and unmounts it at the end
//	POSIXTEST_MOUNT_OPTS  extra mount options for that mount
//	POSIXTEST_SKIP        comma-separated names of more entries to skip
package posix
