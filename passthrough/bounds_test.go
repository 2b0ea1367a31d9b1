package passthrough

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestOpenDirMemory opens 5,000 directories without releasing them and
// reads one entry from each: what the daemon keeps per open directory
// stays far below the 8 KiB buffer each one held from OPENDIR on before.
func TestOpenDirMemory(t *testing.T) {
	fs, root := newFS(t, Config{})
	for k := range 50 {
		require.NoError(t, os.WriteFile(filepath.Join(root, fmt.Sprintf("f%02d", k)), nil, 0o644))
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const n = 5000
	fhs := make([]uint64, 0, n)
	for range n {
		var out gofuse.OpenOut
		require.Equal(t, syscall.Errno(0), fs.OpenDir(&gofuse.OpenIn{InHeader: hdr(1)}, &out))
		fhs = append(fhs, out.Fh)
		// A reply with room for one entry: the rest stay unsent.
		list := fuse.NewDirList(make([]byte, 64), false)
		require.Equal(t, syscall.Errno(0), fs.ReadDir(&gofuse.ReadIn{InHeader: hdr(1), Fh: out.Fh, Size: 64}, &list))
		require.Positive(t, list.Len())
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapInuse) - int64(before.HeapInuse)) / n
	t.Logf("heap per open, partly read directory: %d bytes (%d keep their buffers)", per, fs.keptDirs.Load())
	require.Less(t, per, int64(3000), "per open directory")
	require.LessOrEqual(t, fs.keptDirs.Load(), int64(MaxKeptDirBuffers))
	// Every stream still lists the whole directory, kept buffer or not.
	for _, fh := range []uint64{fhs[0], fhs[n-1]} {
		names := map[string]bool{}
		off := uint64(0)
		for {
			buf := make([]byte, 4096)
			list := fuse.NewDirList(buf, false)
			require.Equal(t, syscall.Errno(0), fs.ReadDir(&gofuse.ReadIn{InHeader: hdr(1), Fh: fh, Offset: off, Size: 4096}, &list))
			if list.Len() == 0 {
				break
			}
			fuse.WalkDirList(buf[:list.Len()], false, func(nm string, next uint64, _ *gofuse.EntryOut) {
				names[nm] = true
				off = next
			})
		}
		require.Len(t, names, 52, "entries of the directory")
	}
	for _, fh := range fhs {
		fs.ReleaseDir(&gofuse.ReleaseIn{InHeader: hdr(1), Fh: fh})
	}
	require.Zero(t, fs.keptDirs.Load())
}

// TestMaxHandles: past MaxHandles, OPEN, OPENDIR and CREATE fail with
// EMFILE, the operator is told once, and releasing one makes room again.
func TestMaxHandles(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	fs, root := newFS(t, Config{MaxHandles: 100, Logf: func(f string, a ...any) {
		mu.Lock()
		lines = append(lines, fmt.Sprintf(f, a...))
		mu.Unlock()
	}})
	require.NoError(t, os.WriteFile(filepath.Join(root, "f"), nil, 0o644))
	f, e := lookup(t, fs, 1, "f")
	require.Equal(t, syscall.Errno(0), e)
	var last uint64
	for range 100 {
		var out gofuse.OpenOut
		require.Equal(t, syscall.Errno(0), fs.OpenDir(&gofuse.OpenIn{InHeader: hdr(1)}, &out))
		last = out.Fh
	}
	for range 10 {
		var out gofuse.OpenOut
		require.Equal(t, syscall.EMFILE, fs.OpenDir(&gofuse.OpenIn{InHeader: hdr(1)}, &out))
		require.Equal(t, syscall.EMFILE, fs.Open(&gofuse.OpenIn{InHeader: hdr(f.NodeId), Flags: unix.O_RDONLY}, &out))
		in := gofuse.CreateIn{InHeader: hdr(1), Flags: unix.O_RDWR, Mode: 0o644}
		var co gofuse.CreateOut
		require.Equal(t, syscall.EMFILE, fs.Create(&in, name("new"), &co))
	}
	_, err := os.Stat(filepath.Join(root, "new"))
	require.True(t, os.IsNotExist(err), "a refused CREATE made its file")
	mu.Lock()
	require.Len(t, lines, 1, "log lines: %q", lines)
	require.True(t, strings.Contains(lines[0], "EMFILE"), lines[0])
	mu.Unlock()
	fs.ReleaseDir(&gofuse.ReleaseIn{InHeader: hdr(1), Fh: last})
	var out gofuse.OpenOut
	require.Equal(t, syscall.Errno(0), fs.Open(&gofuse.OpenIn{InHeader: hdr(f.NodeId), Flags: unix.O_RDONLY}, &out))
}

// TestMaxInodes: a guest that creates and unlinks files without ever
// forgetting them gets ENFILE once it knows MaxInodes inodes, and room
// again when it forgets.
func TestMaxInodes(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		var lines []string
		fs, _ := newFS(t, Config{MaxInodes: 50, Logf: func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }})
		var ids []uint64
		for k := 0; ; k++ {
			require.Less(t, k, 100, "no bound")
			in := gofuse.CreateIn{InHeader: hdr(1), Flags: unix.O_RDWR, Mode: 0o644}
			var out gofuse.CreateOut
			e := fs.Create(&in, name("f"), &out)
			if e == syscall.ENFILE {
				break
			}
			require.Equal(t, syscall.Errno(0), e)
			fs.Release(&gofuse.ReleaseIn{InHeader: hdr(out.NodeId), Fh: out.Fh})
			h := hdr(1)
			require.Equal(t, syscall.Errno(0), fs.Unlink(&h, name("f")))
			ids = append(ids, out.NodeId)
		}
		require.Equal(t, 49, len(ids), "inodes besides the root")
		require.Len(t, lines, 1)
		_, e := lookup(t, fs, 1, "missing")
		require.Equal(t, syscall.ENOENT, e)
		fs.Forget(ids[0], 1)
		in := gofuse.CreateIn{InHeader: hdr(1), Flags: unix.O_RDWR, Mode: 0o644}
		var out gofuse.CreateOut
		require.Equal(t, syscall.Errno(0), fs.Create(&in, name("f"), &out))
		fs.Release(&gofuse.ReleaseIn{InHeader: hdr(out.NodeId), Fh: out.Fh})
	})
}

// TestMaxHandlesConcurrent: OPENs racing on many goroutines at the bound
// never leave more than MaxHandles open (a destination with the same
// options refuses a state holding more).
func TestMaxHandlesConcurrent(t *testing.T) {
	fs, root := newFS(t, Config{MaxHandles: 100})
	require.NoError(t, os.WriteFile(filepath.Join(root, "f"), nil, 0o644))
	f, e := lookup(t, fs, 1, "f")
	require.Equal(t, syscall.Errno(0), e)
	for round := range 20 {
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 20 {
					var out gofuse.OpenOut
					fs.Open(&gofuse.OpenIn{InHeader: hdr(f.NodeId), Flags: unix.O_RDONLY}, &out)
				}
			}()
		}
		wg.Wait()
		require.LessOrEqual(t, fs.openFiles.count(), 100, "round %d", round)
		fs.openFiles.clear()
	}
}
