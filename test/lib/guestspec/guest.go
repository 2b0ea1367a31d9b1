package guestspec

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrName names err for a guest's result line: "ok" for nil, the errno's
// name ("ENOSPC") when err wraps one, "errno N" for an errno without a
// name, and otherwise err's text with its spaces made underscores, so that
// the name is one word wherever a line puts it.
func ErrName(err error) string {
	if err == nil {
		return "ok"
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
		return fmt.Sprintf("errno %d", int(e))
	}
	return strings.ReplaceAll(err.Error(), " ", "_")
}

// DropCaches writes the guest's dirty pages back and drops its caches at
// level: 1 the page cache only, 3 the dentries and inodes too (the kernel
// then forgets the inodes, sending FORGET, and a DAX inode's eviction
// takes its window mappings with it).
func DropCaches(level int) error {
	unix.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte(strconv.Itoa(level)+"\n"), 0o200)
}
