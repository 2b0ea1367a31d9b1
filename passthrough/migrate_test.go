package passthrough

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"
)

// TestMigrationSearch moves an inode whose descriptor's link went stale: it
// was looked up by a name the host then removed, and lives on only under
// another hard link, deep in the tree. The source must find that name by
// walking the share.
func TestMigrationSearch(t *testing.T) {
	eachMode(t, func(t *testing.T) {
		src, root := newFS(t, Config{Cache: CacheAuto})
		deep := filepath.Join(root, "d1", "d2", "d3")
		require.NoError(t, os.MkdirAll(deep, 0o755))
		for i := range 20 { // siblings the walk has to pass
			require.NoError(t, os.Mkdir(filepath.Join(root, "d1", "s"+string(rune('a'+i))), 0o755))
		}
		require.NoError(t, os.WriteFile(filepath.Join(root, "a"), []byte("kept"), 0o644))
		require.NoError(t, os.Link(filepath.Join(root, "a"), filepath.Join(deep, "b")))
		e, errno := lookup(t, src, 1, "a")
		require.Equal(t, syscall.Errno(0), errno)
		require.NoError(t, os.Remove(filepath.Join(root, "a")))

		m := src.Migration(MigrationConfig{})
		state, err := m.SaveState()
		require.NoError(t, err)
		require.Equal(t, 1, m.Counts().Searched, "inodes found by walking: %+v", m.Counts())

		dst, err := New(Config{Root: root, Cache: CacheAuto, InodeFileHandles: testHandles})
		require.NoError(t, err)
		t.Cleanup(dst.Destroy)
		require.NoError(t, dst.Migration(MigrationConfig{}).RestoreState(state))
		var out gofuse.AttrOut
		require.Equal(t, syscall.Errno(0), dst.GetAttr(&gofuse.GetAttrIn{InHeader: hdr(e.NodeId)}, &out))
		require.Equal(t, e.Attr.Ino, out.Ino)
		require.Equal(t, uint64(4), out.Size)
	})
}
