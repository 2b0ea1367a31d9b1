package passthrough

import (
	"fmt"
	"golang.org/x/sys/unix"
)

// Supplementary groups (CREATE_SUPP_GROUP). The guest checks permissions
// itself and tells the host only the caller's uid and fsgid. When a caller
// creates something in a directory whose group is not its fsgid but one
// of its supplementary groups, the host, running as uid/fsgid alone, would
// refuse what the guest allowed; so the guest names that group in the
// request (FUSE_EXT_GROUPS) and the creation runs with it as the thread's
// only supplementary group, as virtiofsd does.
//
// The switch itself is the guard's (guard.go: asCallerExt); the daemon's
// own groups, read once by New, are put back when the guard ends.

// initGroups reads the daemon's supplementary groups, to restore after a
// creation that set others.
func (fs *FS) initGroups() error {
	gs, err := unix.Getgroups()
	if err != nil {
		return fmt.Errorf("read supplementary groups: %w", err)
	}
	fs.groups = make([]uint32, len(gs))
	for i, g := range gs {
		fs.groups[i] = uint32(g)
	}
	return nil
}
