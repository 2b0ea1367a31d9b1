// Tests of the descriptor cache of handle-backed inodes (fdcache.go).

package passthrough

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/fuse"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// open returns the number of descriptors the cache holds.
func (c *fdCache) open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for k := range c.slots {
		if c.slots[k].fd >= 0 {
			n++
		}
	}
	return n
}

// TestFileHandleFdCount looks up 5,000 files: with file handles the daemon's
// descriptors grow by at most the cache and the mounts, with O_PATH
// descriptors by one per file.
func TestFileHandleFdCount(t *testing.T) {
	requireRoot(t)
	const n = 5000
	for _, m := range []InodeFileHandles{FileHandlesNever, FileHandlesPrefer} {
		fs, root := newFS(t, Config{InodeFileHandles: m, Readdirplus: true})
		dir := filepath.Join(root, "many")
		require.NoError(t, os.Mkdir(dir, 0o755))
		for k := 0; k < n; k++ {
			require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprint("f", k)), nil, 0o644))
		}
		before := fdCount(t)
		d, e := lookup(t, fs, RootID, "many")
		require.Zero(t, e)
		ids := make([]uint64, n)
		for k := range ids {
			eo, e := lookup(t, fs, d.NodeId, fmt.Sprint("f", k))
			require.Zero(t, e)
			ids[k] = eo.NodeId
		}
		for _, id := range ids {
			_, e := getattr(fs, id)
			require.Zero(t, e)
		}
		// READDIRPLUS over the directory looks every entry up again.
		var oo gofuse.OpenOut
		require.Zero(t, fs.OpenDir(&gofuse.OpenIn{InHeader: hdr(d.NodeId)}, &oo))
		buf := make([]byte, 64<<10)
		var off uint64
		for {
			dl := fuse.NewDirList(buf, true)
			require.Zero(t, fs.ReadDir(&gofuse.ReadIn{InHeader: hdr(d.NodeId), Fh: oo.Fh, Offset: off, Size: uint32(len(buf))}, &dl))
			if dl.Len() == 0 {
				break
			}
			fuse.WalkDirList(buf[:dl.Len()], true, func(_ string, next uint64, eo *gofuse.EntryOut) { off = next })
		}
		fs.ReleaseDir(&gofuse.ReleaseIn{InHeader: hdr(d.NodeId), Fh: oo.Fh})
		grown := fdCount(t) - before
		inodes, _ := fs.Counts()
		t.Logf("%s: %d inodes, descriptors grew by %d", m, inodes, grown)
		require.Equal(t, n+2, inodes)
		if m == FileHandlesNever {
			require.GreaterOrEqual(t, grown, n)
		} else {
			require.LessOrEqual(t, grown, DefaultHandleCacheSize+fs.mounts.count()+2)
			require.LessOrEqual(t, fs.fdc.open(), DefaultHandleCacheSize)
		}
		fs.Destroy()
		require.LessOrEqual(t, fdCount(t)-before, fs.mounts.count(), "%s: Destroy closes every inode's descriptor", m)
	}
}

// TestFdCacheConcurrent hammers a small descriptor cache from several
// goroutines that look up, stat and forget the same inodes: every
// descriptor used must be the inode's own (a descriptor closed under a
// request and its number reused would show another inode).
func TestFdCacheConcurrent(t *testing.T) {
	requireRoot(t)
	for _, size := range []int{4, -1} {
		fs, root := newFS(t, Config{InodeFileHandles: FileHandlesPrefer, HandleCacheSize: size, Xattr: true})
		require.NoError(t, os.Mkdir(filepath.Join(root, "d"), 0o755))
		const files = 40
		inos := make([]uint64, files)
		for k := range inos {
			p := filepath.Join(root, "d", fmt.Sprint("f", k))
			if k%4 == 3 {
				require.NoError(t, unix.Mkfifo(p, 0o644))
			} else {
				require.NoError(t, os.WriteFile(p, nil, 0o644))
			}
			var st unix.Stat_t
			require.NoError(t, unix.Lstat(p, &st))
			inos[k] = st.Ino
		}
		d, e := lookup(t, fs, RootID, "d")
		require.Zero(t, e)
		base := fdCount(t)

		const workers, rounds = 8, 1500
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(seed int64) {
				defer wg.Done()
				r := rand.New(rand.NewSource(seed))
				buf := make([]byte, 64)
				for k := 0; k < rounds; k++ {
					f := r.Intn(files)
					eo, e := lookup(t, fs, d.NodeId, fmt.Sprint("f", f))
					if e != 0 {
						errs <- fmt.Errorf("lookup f%d: %v", f, e)
						return
					}
					ao, e := getattr(fs, eo.NodeId)
					if e != 0 || ao.Ino != inos[f] {
						errs <- fmt.Errorf("getattr f%d: %v, ino %d want %d", f, e, ao.Ino, inos[f])
						return
					}
					if f%4 == 3 {
						// fifos: xattrs through the O_PATH descriptor.
						if _, e := getX(fs, eo.NodeId, "trusted.none", buf); e != syscall.ENODATA {
							errs <- fmt.Errorf("getxattr f%d: %v", f, e)
							return
						}
					}
					fs.Forget(eo.NodeId, 1)
				}
			}(int64(w))
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		inodes, _ := fs.Counts()
		require.LessOrEqual(t, inodes, 2)
		require.LessOrEqual(t, fdCount(t)-base, max(size, 0))
		// Every slot is unreferenced, and holds a descriptor only for
		// a live inode that points back at it.
		fs.fdc.mu.Lock()
		for k := range fs.fdc.slots {
			s := &fs.fdc.slots[k]
			require.Zero(t, s.refs)
			if s.fd >= 0 {
				require.NotNil(t, s.owner)
				require.Same(t, s, s.owner.slot)
			} else {
				require.Nil(t, s.owner)
			}
		}
		fs.fdc.mu.Unlock()
	}
}

// TestFdCacheSymlinkRenamedOver has a symlink renamed over right after its
// lookup, as posixtest's OpenSymlinkRace does from the guest: its READLINK
// still answers, through the descriptor kept at the lookup, where its
// handle alone would give ESTALE.
func TestFdCacheSymlinkRenamedOver(t *testing.T) {
	requireRoot(t)
	fs, root := newFS(t, Config{InodeFileHandles: FileHandlesPrefer})
	require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(root, "l")))
	l, e := lookup(t, fs, RootID, "l")
	require.Zero(t, e)
	require.NoError(t, os.WriteFile(filepath.Join(root, "tmp"), nil, 0o644))
	require.NoError(t, os.Rename(filepath.Join(root, "tmp"), filepath.Join(root, "l")))
	buf := make([]byte, 256)
	n, e := fs.Readlink(&gofuse.InHeader{NodeId: l.NodeId}, buf)
	require.Zero(t, e, "READLINK of a symlink renamed over")
	require.Equal(t, "/etc/passwd", string(buf[:n]))
	// Once its descriptor is gone too, the handle is stale.
	fs.fdc.flush()
	_, e = fs.Readlink(&gofuse.InHeader{NodeId: l.NodeId}, buf)
	require.Equal(t, syscall.ESTALE, e)
}
