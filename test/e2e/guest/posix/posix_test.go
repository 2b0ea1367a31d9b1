//go:build guest

package posix

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
	"golang.org/x/sys/unix"
)

// knownBad lists posixtest entries that are wrong in themselves, with the
// reason; they are skipped.
var knownBad = map[string]string{
	"FcntlFlockLocksFile": "posixtest.FcntlFlockLocksFile is wrong: POSIX record locks (F_SETLK) of one process never conflict with each other, so expecting EAGAIN from the same process is a bug in the test",
}

var (
	skippedMu sync.Mutex
	skipped   []string
)

func noteSkip(name, reason string) {
	skippedMu.Lock()
	defer skippedMu.Unlock()
	skipped = append(skipped, name+": "+reason)
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	mnt := os.Getenv("POSIXTEST_MNT")
	tag := os.Getenv("POSIXTEST_TAG")
	if mnt != "" && tag != "" {
		if err := os.MkdirAll(mnt, 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "posix: mkdir %s: %v\n", mnt, err)
			return 1
		}
		opts := os.Getenv("POSIXTEST_MOUNT_OPTS")
		if err := unix.Mount(tag, mnt, "virtiofs", 0, opts); err != nil {
			fmt.Fprintf(os.Stderr, "posix: mount(%q, %q, virtiofs, 0, %q): %v\n", tag, mnt, opts, err)
			return 1
		}
		fmt.Printf("posix: mounted virtio-fs tag %s at %s\n", tag, mnt)
		defer func() {
			unix.Sync()
			if err := unix.Unmount(mnt, 0); err != nil {
				fmt.Fprintf(os.Stderr, "posix: umount %s: %v\n", mnt, err)
			}
		}()
	}
	code := m.Run()
	if len(skipped) > 0 {
		sort.Strings(skipped)
		fmt.Printf("posix: skipped %d posixtest entries:\n", len(skipped))
		for _, s := range skipped {
			fmt.Printf("posix:   %s\n", s)
		}
	}
	return code
}

// TestPosix runs every entry of posixtest.All, each in a fresh directory.
func TestPosix(t *testing.T) {
	mnt := os.Getenv("POSIXTEST_MNT")
	if mnt == "" {
		t.Fatal("POSIXTEST_MNT is not set: it must name the virtio-fs mount point")
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(mnt, &sfs); err != nil {
		t.Fatalf("statfs %s: %v", mnt, err)
	}
	if sfs.Type != unix.FUSE_SUPER_MAGIC {
		t.Logf("note: %s is not a FUSE/virtio-fs mount (f_type %#x)", mnt, sfs.Type)
	}
	base := filepath.Join(mnt, "posixtest")
	if err := os.RemoveAll(base); err != nil {
		t.Fatalf("remove %s: %v", base, err)
	}
	if err := os.Mkdir(base, 0o755); err != nil {
		t.Fatalf("mkdir %s: %v", base, err)
	}

	skip := make(map[string]string, len(knownBad))
	for name, why := range knownBad {
		skip[name] = why
	}
	for _, name := range strings.Split(os.Getenv("POSIXTEST_SKIP"), ",") {
		if name = strings.TrimSpace(name); name != "" {
			skip[name] = "listed in POSIXTEST_SKIP"
		}
	}

	names := make([]string, 0, len(posixtest.All))
	for name := range posixtest.All {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fn := posixtest.All[name]
		t.Run(name, func(t *testing.T) {
			why, listed := skip[name]
			t.Cleanup(func() {
				switch {
				case listed:
					noteSkip(name, why)
				case t.Skipped():
					noteSkip(name, "skipped by the posixtest entry itself (reason in its log)")
				}
			})
			if listed {
				t.Skip(why)
			}
			dir := filepath.Join(base, name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatalf("mkdir %s: %v", dir, err)
			}
			fn(t, dir)
			if !t.Failed() {
				if err := os.RemoveAll(dir); err != nil {
					t.Errorf("cleanup %s: %v", dir, err)
				}
			}
		})
	}
	if !t.Failed() {
		os.Remove(base)
	}
}
