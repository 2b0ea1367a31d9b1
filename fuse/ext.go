package fuse

import (
	"encoding/binary"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Request extensions (FUSE 7.38 and later). A request whose header has a
// non-zero total_extlen ends with that many 8-byte units of extensions,
// after its arguments and names. Each extension starts with
//
//	struct fuse_ext_header { u32 size; u32 type; }
//
// where size counts the whole extension, header included, and is a
// multiple of 8. Linux sends two kinds, and only with node-creating
// requests (CREATE, MKDIR, MKNOD, SYMLINK):
//
//   - type 0..31, the security context (SECURITY_CTX): the header is
//     struct fuse_secctx_header { u32 size; u32 nr_secctx; }, the type
//     being the number of contexts. Linux sends one, or none when no
//     security module made one. A context is struct fuse_secctx { u32
//     size; u32 padding; }, the NUL-terminated xattr name, then size
//     bytes of value, padded with zeros to a multiple of 8.
//   - type 32, FUSE_EXT_GROUPS (CREATE_SUPP_GROUP): struct
//     fuse_supp_groups { u32 nr_groups; u32 groups[]; }, padded to 8.
//     Linux sends it, with one group (the parent directory's), when the
//     caller's fsgid is not that group but the caller is a member.
//
// Like virtiofsd and Linux, only one context and one group are accepted;
// anything else, a kind that was not negotiated, a second extension of a
// kind or a size that does not add up is EINVAL.

const (
	extHeaderSize = 8
	// extMaxNrSecCtx is the highest type that is a security-context
	// header (FUSE_MAX_NR_SECCTX).
	extMaxNrSecCtx = 31
	// extGroups is FUSE_EXT_GROUPS.
	extGroups = 32
	// secCtxSize is struct fuse_secctx.
	secCtxSize = 8
	// xattrNameMax is XATTR_NAME_MAX.
	xattrNameMax = 255
)

// extensions decodes the extensions of a node-creating request, whose
// names have been decoded, into w.ext. It returns nil when the request
// carried nothing for the FileSystem to act on (no extensions, or only an
// empty security context), so that the plain FileSystem method serves it.
func (w *Worker) extensions() (*Extensions, Status) {
	area := w.extArea
	if len(area) == 0 {
		return nil, OK
	}
	// Linux puts the extensions right after the names: anything in
	// between means the request is not framed as it claims.
	if w.s.ext == nil || w.namesEnd != len(w.args) {
		return nil, syscall.EINVAL
	}
	flags := w.s.flags.Load()
	e := &w.ext
	*e = Extensions{}
	secCtxSeen := false
	le := binary.LittleEndian
	for len(area) > 0 {
		if len(area) < extHeaderSize {
			return nil, syscall.EINVAL
		}
		size, typ := le.Uint32(area), le.Uint32(area[4:])
		if size < extHeaderSize || size%8 != 0 || uint64(size) > uint64(len(area)) {
			return nil, syscall.EINVAL
		}
		body := area[extHeaderSize:size]
		area = area[size:]
		switch {
		case typ <= extMaxNrSecCtx:
			if flags&fuse.CAP_SECURITY_CTX == 0 || secCtxSeen {
				return nil, syscall.EINVAL
			}
			secCtxSeen = true
			if st := decodeSecCtx(typ, body, e); st != OK {
				return nil, st
			}
		case typ == extGroups:
			if flags&fuse.CAP_CREATE_SUPP_GROUP == 0 || e.HasSuppGroup {
				return nil, syscall.EINVAL
			}
			// nr_groups and one group: exactly 8 bytes, no padding.
			if len(body) != 8 || le.Uint32(body) != 1 {
				return nil, syscall.EINVAL
			}
			e.SuppGroup, e.HasSuppGroup = le.Uint32(body[4:]), true
		default:
			return nil, syscall.EINVAL
		}
	}
	if e.SecCtxName == nil && !e.HasSuppGroup {
		return nil, OK
	}
	return e, OK
}

// decodeSecCtx decodes the body of a security-context extension holding
// nr contexts into e.
func decodeSecCtx(nr uint32, body []byte, e *Extensions) Status {
	switch {
	case nr == 0:
		if len(body) != 0 {
			return syscall.EINVAL
		}
		return OK
	case nr > 1:
		return syscall.EINVAL
	}
	if len(body) < secCtxSize {
		return syscall.EINVAL
	}
	valueSize := binary.LittleEndian.Uint32(body)
	rest := body[secCtxSize:]
	// The name: 1 to xattrNameMax bytes and its NUL.
	end := -1
	for i, c := range rest[:min(len(rest), xattrNameMax+1)] {
		if c == 0 {
			end = i
			break
		}
	}
	if end <= 0 {
		return syscall.EINVAL
	}
	value := rest[end+1:]
	// The value, then padding to the extension's 8-byte end and no more.
	if valueSize == 0 || uint64(valueSize) > uint64(len(value)) || len(value)-int(valueSize) >= 8 {
		return syscall.EINVAL
	}
	e.SecCtxName = Name(rest[:end])
	e.SecCtxValue = value[:valueSize]
	return OK
}
