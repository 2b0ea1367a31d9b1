package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"syscall"

	"github.com/sirupsen/logrus"
)

// setRlimitNofile applies --rlimit-nofile as virtiofsd does: an explicit
// value sets both limits (0 leaves them alone); by default the daemon asks
// for min(1000000, fs.nr_open) and, when it may not raise the hard limit,
// uses the hard limit and says so.
func setRlimitNofile(opt string, log *logrus.Logger) error {
	explicit := opt != ""
	var want uint64
	if explicit {
		v, err := strconv.ParseUint(opt, 10, 64)
		if err != nil {
			return fmt.Errorf("invalid --rlimit-nofile %q", opt)
		}
		if v == 0 {
			return nil
		}
		want = v
	} else {
		want = 1000000
		if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
			if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n < want {
				want = n
			}
		}
	}
	lim := syscall.Rlimit{Cur: want, Max: want}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		if explicit {
			return fmt.Errorf("set the open-file limit to %d: %w", want, err)
		}
		var cur syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &cur); err == nil {
			cur.Cur = cur.Max
			syscall.Setrlimit(syscall.RLIMIT_NOFILE, &cur)
			log.Warnf("Failure when trying to set the limit to %d, the hard limit (%d) of open file descriptors is used instead.", want, cur.Max)
		}
	}
	return nil
}
