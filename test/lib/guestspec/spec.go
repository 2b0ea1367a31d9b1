package guestspec

import (
	"fmt"
	"time"
)

// Names of directories inside the share.
const (
	// DefaultWorkdir is the subdirectory of the mount the guest uses for a
	// run unless told otherwise.
	DefaultWorkdir = "guest-suite"
	// HostCheckDir is the subdirectory of the workdir where the guest leaves
	// GuestEntries for the host to check.
	HostCheckDir = "host-check"
	// HostPreparedDir is the subdirectory of the share where the host
	// prepares HostEntries before boot.
	HostPreparedDir = "host-prepared"
)

// Kind is the type of an Entry.
type Kind int

// The kinds of entries.
const (
	KindFile     Kind = iota + 1 // regular file
	KindDir                      // directory
	KindSymlink                  // symbolic link to Target
	KindHardlink                 // another name of the file at path Target
)

func (k Kind) String() string {
	switch k {
	case KindFile:
		return "file"
	case KindDir:
		return "dir"
	case KindSymlink:
		return "symlink"
	case KindHardlink:
		return "hardlink"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Extent is a byte range of a file that holds pattern data.
type Extent struct {
	Off, Len int64
}

// Owner is a numeric owner and group.
type Owner struct {
	UID, GID int
}

// Entry describes one file, directory or link of a tree, relative to the
// root of the tree.
type Entry struct {
	// Path is slash separated and relative to the root of the tree.
	// Parents come before their children in a list of entries.
	Path string
	Kind Kind
	// Perm holds the permission bits including setuid, setgid and sticky
	// (mode & 07777). Unused for symlinks and hardlinks.
	Perm uint32
	// Size of a regular file.
	Size int64
	// Sparse marks a file whose data is only in Extents; the rest reads
	// as zeros. A file that is not sparse holds pattern data from 0 to Size.
	Sparse  bool
	Extents []Extent
	// Target is the symlink's target, or the Path of the file a hardlink
	// is another name of.
	Target string
	// Owner, when set, is applied and checked.
	Owner *Owner
	// Mtime, when not zero, is applied and checked to the nanosecond.
	Mtime time.Time
	// MaxBlocks, when positive, is the most 512-byte blocks the file may
	// occupy (st_blocks); used for sparse files.
	MaxBlocks int64
}

// Seed is the pattern seed of a file's content: derived from its path.
func (e Entry) Seed() uint64 {
	return SeedOf(e.Path)
}

// DataExtents returns the ranges of the file that hold pattern data.
func (e Entry) DataExtents() []Extent {
	if e.Sparse {
		return e.Extents
	}
	if e.Size == 0 {
		return nil
	}
	return []Extent{{0, e.Size}}
}

func file(path string, perm uint32, size int64) Entry {
	return Entry{Path: path, Kind: KindFile, Perm: perm, Size: size}
}

func sparse(path string, perm uint32, size int64, extents ...Extent) Entry {
	var data int64
	for _, x := range extents {
		data += x.Len
	}
	// Allow one MiB of allocation beyond the data: whole blocks around
	// each extent and metadata blocks of the host file system.
	maxBlocks := (data + 1<<20) / 512
	return Entry{Path: path, Kind: KindFile, Perm: perm, Size: size, Sparse: true, Extents: extents, MaxBlocks: maxBlocks}
}

func dir(path string, perm uint32) Entry {
	return Entry{Path: path, Kind: KindDir, Perm: perm}
}

func symlink(path, target string) Entry {
	return Entry{Path: path, Kind: KindSymlink, Target: target}
}

func hardlink(path, target string) Entry {
	return Entry{Path: path, Kind: KindHardlink, Target: target}
}

// Timestamps used by the trees.
var (
	// GuestMtime is the mtime of GuestEntries' "mtime-fixed".
	GuestMtime = time.Unix(1234567890, 123456789)
	// HostMtime is the mtime of HostEntries' "hp-mtime".
	HostMtime = time.Unix(1000000000, 987654321)
)

// GuestOwner is the owner the guest gives to "owned-0640".
var GuestOwner = Owner{UID: 1234, GID: 5678}

// GuestEntries is the tree the guest writes to
// <mount>/<workdir>/HostCheckDir for the host to check.
func GuestEntries() []Entry {
	owned := file("owned-0640", 0o640, 123)
	owned.Owner = &GuestOwner
	mtime := file("mtime-fixed", 0o644, 10)
	mtime.Mtime = GuestMtime
	return []Entry{
		file("empty", 0o644, 0),
		file("one-byte", 0o644, 1),
		file("page-4k", 0o644, 4096),
		file("mib-plus-13", 0o644, 1<<20+13),
		sparse("sparse-8g", 0o644, 8<<30+4103, Extent{8 << 30, 4103}),
		file("exec-0755", 0o755, 333),
		owned,
		mtime,
		file("name with spaces, ümlaut & $hell chars", 0o644, 5),
		file("hardlink-src", 0o644, 777),
		dir("tree", 0o755),
		dir("tree/a", 0o755),
		file("tree/a/file-a", 0o644, 100),
		dir("tree/a/b", 0o750),
		file("tree/a/b/file-b", 0o600, 5000),
		dir("tree/a/b/c", 0o700),
		file("tree/a/b/c/file-c", 0o644, 3),
		dir("tree/empty-dir", 0o755),
		hardlink("tree/hardlink-dst", "hardlink-src"),
		symlink("symlink-rel", "tree/a/file-a"),
		symlink("tree/a/b/up-link", "../../../one-byte"),
		symlink("dangling", "/nonexistent/target"),
	}
}

// HostManyCount is the number of files in HostEntries' "many" directory.
const HostManyCount = 300

// HostEntries is the tree the host prepares in <share>/HostPreparedDir
// before boot for the guest to check. Owners are not part of it: the
// host side may not run as root.
func HostEntries() []Entry {
	mtime := file("hp-mtime", 0o644, 42)
	mtime.Mtime = HostMtime
	list := []Entry{
		file("hp-empty", 0o644, 0),
		file("hp-17", 0o644, 17),
		file("hp-3mib-plus-1", 0o644, 3<<20+1),
		sparse("hp-sparse-6g", 0o644, 6<<30+1334, Extent{0, 100}, Extent{6<<30 + 1, 333}),
		file("hp-0600", 0o600, 3*4096+5),
		file("hp-0755", 0o755, 64),
		mtime,
		file("hp-hardlink-src", 0o644, 4321),
		dir("dir", 0o755),
		dir("dir/sub", 0o711),
		file("dir/sub/deep-file", 0o644, 9999),
		symlink("dir/link-to-17", "../hp-17"),
		hardlink("dir/hp-hardlink-dst", "hp-hardlink-src"),
		dir("many", 0o755),
	}
	for i := 0; i < HostManyCount; i++ {
		list = append(list, file(fmt.Sprintf("many/entry-%03d", i), 0o644, int64(i)))
	}
	return list
}
