package frontend_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Request extensions as a Linux guest lays them out (fs/fuse/dir.c).

// extSecCtx is a security-context extension holding the context
// name=value; with name "" it is the empty one (no context).
func extSecCtx(name string, value []byte) []byte {
	if name == "" {
		return hle(uint32(8), uint32(0))
	}
	body := append(append(hle(uint32(len(value)), uint32(0)), hcstr(name)...), value...)
	for len(body)%8 != 0 {
		body = append(body, 0)
	}
	return append(hle(uint32(8+len(body)), uint32(1)), body...)
}

// extGroup is a FUSE_EXT_GROUPS extension holding gid.
func extGroup(gid uint32) []byte { return hle(uint32(16), uint32(32), uint32(1), gid) }

// extRequest is a request from uid:gid carrying extensions after its
// arguments, with total_extlen set.
func extRequest(opcode uint32, nodeid, unique uint64, uid, gid uint32, args []byte, exts ...[]byte) []byte {
	var ext []byte
	for _, e := range exts {
		ext = append(ext, e...)
	}
	b := fuseRequest(opcode, nodeid, unique, append(append([]byte{}, args...), ext...), 0)
	binary.LittleEndian.PutUint32(b[24:], uid)
	binary.LittleEndian.PutUint32(b[28:], gid)
	binary.LittleEndian.PutUint16(b[36:], uint16(len(ext)/8))
	return b
}

// rawStatus sends req on request queue 1 and returns the reply's errno.
func rawStatus(t *testing.T, c *fuseclient.Client, req []byte) syscall.Errno {
	t.Helper()
	out, err := c.Raw(1, req, 4096)
	must(t, "raw request", err)
	if len(out) < 16 {
		t.Fatalf("reply of %d bytes", len(out))
	}
	return syscall.Errno(-int32(binary.LittleEndian.Uint32(out[4:])))
}

// TestCreateExtensions sends node-creating requests with the extensions a
// Linux guest adds (SECURITY_CTX with --security-label, and
// CREATE_SUPP_GROUP) to both daemons: a security context becomes the
// named xattr of the new node, and the supplementary group lets a caller
// create in a directory it may write only as a member of that group.
func TestCreateExtensions(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creations switch to the caller's ids")
	}
	const uid, gid, dirGID = 1000, 1000, 2345
	for _, dc := range daemons {
		t.Run(dc.name, func(t *testing.T) {
			d := dc.get(t)
			share := t.TempDir()
			shared := filepath.Join(share, "shared")
			must(t, "mkdir", os.Mkdir(shared, 0o770))
			must(t, "chown", os.Chown(shared, 0, dirGID))
			must(t, "chmod", os.Chmod(shared, 0o770))
			fe, err := frontend.Start(d, daemon.Options{SharedDir: share, Extra: []string{"--security-label", "--xattrmap=:map::user.virtiofs.:"}}, frontend.Options{})
			must(t, "start", err)
			defer func() {
				if err := fe.Close(); err != nil {
					t.Errorf("close: %v\n%s", err, fe.Proc().Stderr())
				}
				if code := fe.Proc().ExitCode(); code != 0 {
					t.Errorf("%s exited with status %d after disconnect", d.Name, code)
				}
			}()
			c := fuseclient.New(fe, fuseclient.Options{})
			defer c.Close()
			out := mustInit(t, c)
			if want := uint64(fuse.CAP_SECURITY_CTX | fuse.CAP_CREATE_SUPP_GROUP); out.Flags64()&want != want {
				t.Fatalf("INIT flags %#x lack SECURITY_CTX or CREATE_SUPP_GROUP", out.Flags64())
			}
			dir, err := c.Lookup(fuseclient.RootID, "shared")
			must(t, "LOOKUP shared", err)
			mkdirIn := func(name string) []byte { return append(hle(uint32(0o755), uint32(0)), hcstr(name)...) }
			unique := uint64(1 << 40)
			next := func() uint64 { unique += 2; return unique }
			empty := extSecCtx("", nil)

			// CREATE_SUPP_GROUP.
			if e := rawStatus(t, c, extRequest(fuseclient.OpMkdir, dir.NodeId, next(), uid, gid, mkdirIn("nogroup"), empty)); e != syscall.EACCES {
				t.Errorf("MKDIR as %d:%d in a %d directory without the group: %v, want EACCES", uid, gid, dirGID, e)
			}
			if e := rawStatus(t, c, extRequest(fuseclient.OpMkdir, dir.NodeId, next(), uid, gid, mkdirIn("group"), empty, extGroup(dirGID))); e != 0 {
				t.Errorf("MKDIR with the directory's group: %v", e)
			} else {
				var st unix.Stat_t
				must(t, "stat", unix.Stat(filepath.Join(shared, "group"), &st))
				if st.Uid != uid || st.Gid != gid {
					t.Errorf("directory made with the group is owned by %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
				}
			}

			// SECURITY_CTX. A context is a security.* name, which the
			// host keeps (through the map) as a user.* one: the daemon
			// has no CAP_SYS_ADMIN for security.* without an LSM.
			const xname, label = "security.govirtiofsd", "unconfined_u:object_r:test_t:s0\x00"
			const hostName = "user.virtiofs." + xname
			ctx := extSecCtx(xname, []byte(label))
			mknodIn := append(hle(uint32(syscall.S_IFREG|0o644), uint32(0), uint32(0), uint32(0)), hcstr("labelled-file")...)
			for _, r := range []struct {
				what, path string
				req        []byte
			}{
				{"MKDIR", "labelled-dir", extRequest(fuseclient.OpMkdir, fuseclient.RootID, next(), 0, 0, mkdirIn("labelled-dir"), ctx)},
				{"MKNOD", "labelled-file", extRequest(fuseclient.OpMknod, fuseclient.RootID, next(), 0, 0, mknodIn, ctx)},
				{"MKDIR with a group", "shared/labelled-group", extRequest(fuseclient.OpMkdir, dir.NodeId, next(), uid, gid, mkdirIn("labelled-group"), ctx, extGroup(dirGID))},
			} {
				if e := rawStatus(t, c, r.req); e != 0 {
					t.Errorf("%s with a security context: %v", r.what, e)
					continue
				}
				v := make([]byte, 256)
				n, err := unix.Lgetxattr(filepath.Join(share, r.path), hostName, v)
				if err != nil || string(v[:n]) != label {
					t.Errorf("%s: host xattr %s = %q, %v; want %q", r.what, hostName, v[:max(n, 0)], err, label)
				}
			}
		})
	}
}
