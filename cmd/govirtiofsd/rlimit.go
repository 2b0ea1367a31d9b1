package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"
)

// defaultNofile is the open-file limit virtiofsd asks for by default.
const defaultNofile = 1000000

// internalFdReserve is what virtiofsd keeps of the open-file limit for
// itself (one descriptor per memory slot, 509, and 100 more) besides one
// per pool thread; a limit that leaves the guest nothing is refused.
const internalFdReserve = 509 + 100

// setRlimitNofile applies --rlimit-nofile (opt, checked by parseArgv) as
// virtiofsd's setup_rlimit_nofile does and returns the limit in force: an
// explicit value sets both limits (0 leaves them alone) and may not exceed
// fs.nr_open; by default the daemon asks for min(1000000, fs.nr_open)
// unless the soft limit is that high already and, when it may not raise
// the hard limit, uses the hard limit and says so. Errors have
// virtiofsd's text (after "Error increasing number of open files: ").
func setRlimitNofile(opt string, log *logrus.Logger) (uint64, error) {
	b, err := os.ReadFile("/proc/sys/fs/nr_open")
	if err != nil {
		return 0, fmt.Errorf("Reading /proc/sys/fs/nr_open: %v", err)
	}
	maxNofile, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("Parsing /proc/sys/fs/nr_open: %v", err)
	}
	var cur syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &cur); err != nil {
		return 0, fmt.Errorf("getrlimit: %s", rustIOError(err))
	}
	explicit := opt != ""
	var target uint64
	if explicit {
		v, _ := parseRustInt(opt, 64, false)
		if v == 0 {
			return cur.Cur, nil // --rlimit-nofile=0 leaves the limit alone
		}
		target = uint64(v)
	} else {
		if defaultNofile <= cur.Cur {
			return cur.Cur, nil
		}
		target = min(defaultNofile, maxNofile)
	}
	if target > maxNofile {
		return 0, fmt.Errorf("It cannot be increased above %d", maxNofile)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: target, Max: target}); err != nil {
		if explicit {
			return 0, fmt.Errorf("Failed to increase the limit: %s", rustIODebug(err))
		}
		log.Warnf("Failure when trying to set the limit to %d, the hard limit (%d) of open file descriptors is used instead.", target, cur.Max)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: cur.Max, Max: cur.Max}); err != nil {
			return 0, fmt.Errorf("Cannot increase the soft limit to the hard limit: Failed to increase the limit: %s", rustIODebug(err))
		}
		return cur.Max, nil
	}
	return target, nil
}

// checkFdLimit is virtiofsd's check of the open-file limit: what is left
// for the guest after its own reserve must not be negative (an error) and
// should be at least 128 (a warning).
func checkFdLimit(limit uint64, threadPoolSize int, log *logrus.Logger) error {
	reserve := uint64(internalFdReserve + max(threadPoolSize, 1))
	if limit < reserve {
		return fmt.Errorf("Maximum number of file descriptors too small: Limit is %d, must be at least %d", limit, reserve)
	}
	if left := limit - reserve; left < 128 {
		log.Warnf("File descriptor count limit is very small, leaving only %d file descriptors for the guest", left)
	}
	return nil
}

// rustIODebug is how Rust debug-prints an io::Error of errno err:
// `Os { code: 1, kind: PermissionDenied, message: "Operation not permitted" }`.
func rustIODebug(err error) string {
	n, ok := errnoOf(err)
	if !ok {
		return err.Error()
	}
	kind := "Uncategorized"
	switch {
	case errors.Is(n, syscall.EPERM), errors.Is(n, syscall.EACCES):
		kind = "PermissionDenied"
	case errors.Is(n, syscall.EINVAL):
		kind = "InvalidInput"
	case errors.Is(n, syscall.ENOENT):
		kind = "NotFound"
	}
	return fmt.Sprintf("Os { code: %d, kind: %s, message: %q }", int(n), kind, capitalized(n.Error()))
}
