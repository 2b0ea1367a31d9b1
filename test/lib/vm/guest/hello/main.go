// Command hello is a tiny static guest program for the test/lib/vm harness's
// own tests: it reads a file on the virtio-fs mount and reports in the
// GUEST RESULT protocol.
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

// fuseSuperMagic is FUSE_SUPER_MAGIC, the f_type of a virtio-fs mount.
const fuseSuperMagic = 0x65735546

func result(name string, ok bool, format string, args ...any) {
	status := "PASS"
	if !ok {
		status = "FAIL"
	}
	fmt.Printf("GUEST RESULT %s %s %s\n", name, status, fmt.Sprintf(format, args...))
}

func main() {
	if len(os.Args) != 2 {
		result("go-guest", false, "usage: hello FILE")
		os.Exit(2)
	}
	path := os.Args[1]
	b, err := os.ReadFile(path)
	if err != nil {
		result("go-guest", false, "read %s: %v", path, err)
		os.Exit(1)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		result("go-guest", false, "statfs %s: %v", path, err)
		os.Exit(1)
	}
	ok := st.Type == fuseSuperMagic && strings.TrimSpace(string(b)) != ""
	result("go-guest", ok, "read %d bytes from %s, f_type %#x", len(b), path, st.Type)
	if !ok {
		os.Exit(1)
	}
}
