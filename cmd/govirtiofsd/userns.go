package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// The user namespace of an unprivileged daemon's namespace sandbox, with
// the ranges --uid-map and --gid-map give, as virtiofsd makes it. Without
// them the namespace maps the daemon's own uid and gid to 0 (sandbox.go).
// With them, each side maps what it says (a side not given maps the
// daemon's own id to 0): a single range of one id, the daemon's own, is
// written to /proc/PID/{uid,gid}_map directly, as the kernel lets the
// namespace's owner do; anything more is left to the setuid helpers
// newuidmap and newgidmap (shadow's uidmap package), which check it
// against /etc/subuid and /etc/subgid.
//
// The maps can only be written once the child exists, so the child starts
// in its namespace with nothing mapped and waits (userNSWaitEnv) until the
// parent has written them; it keeps its capabilities across the exec as
// ambient ones, since an unmapped process is not root in the namespace.
// Once released it makes itself root there (setresuid/setresgid 0), which
// fails with a warning, as in virtiofsd, when the maps leave 0 out.

// userNSWaitEnv, in the sandbox child's environment, is the descriptor it
// waits on for its id maps.
const userNSWaitEnv = "GOVIRTIOFSD_USERNS_WAIT"

// userNS is the parent's side of a user namespace with given maps.
type userNS struct {
	uids, gids []nsIDMap
	uid, gid   uint32 // the daemon's own
	wait, done *os.File
}

// prepareUserNS sets cmd up to start in a user namespace whose maps the
// parent writes (see mapAndRelease); the caller adds CLONE_NEWUSER. It
// returns nil when neither --uid-map nor --gid-map was given.
func prepareUserNS(o *options, cmd *exec.Cmd, attr *syscall.SysProcAttr) (*userNS, error) {
	if len(o.uidNSMaps) == 0 && len(o.gidNSMaps) == 0 {
		return nil, nil
	}
	ns := &userNS{uids: o.uidNSMaps, gids: o.gidNSMaps, uid: uint32(os.Geteuid()), gid: uint32(os.Getegid())}
	if len(ns.uids) == 0 {
		ns.uids = []nsIDMap{{inside: 0, outside: ns.uid, count: 1}}
	}
	if len(ns.gids) == 0 {
		ns.gids = []nsIDMap{{inside: 0, outside: ns.gid, count: 1}}
	}
	var err error
	if ns.wait, ns.done, err = os.Pipe(); err != nil {
		return nil, err
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, ns.wait)
	cmd.Env = append(cmd.Env, userNSWaitEnv+"="+strconv.Itoa(2+len(cmd.ExtraFiles)))
	attr.AmbientCaps = boundingCaps()
	return ns, nil
}

// boundingCaps lists the capabilities in this thread's bounding set: what
// the child may keep as ambient capabilities.
func boundingCaps() []uintptr {
	var caps []uintptr
	for c := 0; c < 64; c++ {
		r, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0)
		if err != nil {
			break
		}
		if r == 1 {
			caps = append(caps, uintptr(c))
		}
	}
	return caps
}

// mapAndRelease writes the maps of the started child pid and lets it go
// on. On failure the child, still waiting, sees its pipe close and exits.
func (ns *userNS) mapAndRelease(pid int) error {
	ns.wait.Close()
	defer ns.done.Close()
	if err := writeNSMap(pid, "uid", "newuidmap", ns.uids, ns.uid); err != nil {
		return err
	}
	if err := writeNSMap(pid, "gid", "newgidmap", ns.gids, ns.gid); err != nil {
		return err
	}
	_, err := ns.done.Write([]byte{1})
	return err
}

// writeNSMap writes one side's map for pid: directly when it is the one
// range the kernel allows the namespace's owner (its own id, once),
// otherwise through helper.
func writeNSMap(pid int, kind, helper string, maps []nsIDMap, own uint32) error {
	if len(maps) == 1 && maps[0].outside == own && maps[0].count <= 1 {
		if kind == "gid" {
			if err := os.WriteFile(fmt.Sprintf("/proc/%d/setgroups", pid), []byte("deny"), 0); err != nil {
				return fmt.Errorf("write to gid map failed: %w", err)
			}
		}
		line := fmt.Sprintf("%d %d 1", maps[0].inside, maps[0].outside)
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/%s_map", pid, kind), []byte(line), 0); err != nil {
			return fmt.Errorf("write to %s map failed: %w", kind, err)
		}
		return nil
	}
	args := []string{strconv.Itoa(pid)}
	for _, m := range maps {
		args = append(args, strconv.FormatUint(uint64(m.inside), 10), strconv.FormatUint(uint64(m.outside), 10), strconv.FormatUint(uint64(m.count), 10))
	}
	_, err := exec.Command(helper, args...).Output()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		msg := strings.TrimSpace(string(ee.Stderr))
		if msg == "" {
			msg = ee.Error()
		}
		return fmt.Errorf("write to %s map failed: %s", kind, msg)
	case err != nil:
		return fmt.Errorf("write to %s map failed: failed to execute %s: %w", kind, helper, err)
	}
	return nil
}

// waitForUserNS is the child's side: when the parent writes this process's
// id maps, it waits for them and then becomes root in its namespace.
func waitForUserNS(log *logrus.Logger) error {
	v := os.Getenv(userNSWaitEnv)
	if v == "" {
		return nil
	}
	fd, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("bad %s=%q", userNSWaitEnv, v)
	}
	f := os.NewFile(uintptr(fd), "userns-wait")
	var b [1]byte
	n, _ := f.Read(b[:])
	f.Close()
	if n != 1 {
		return fmt.Errorf("sandbox: the id maps of the user namespace were not set up")
	}
	// syscall.Setres[ug]id change every thread of the process.
	if err := syscall.Setresuid(0, 0, 0); err != nil {
		log.Warnf("Couldn't set the process uid as root: %v", err)
	}
	if err := syscall.Setresgid(0, 0, 0); err != nil {
		log.Warnf("Couldn't set the process gid as root: %v", err)
	}
	return nil
}
