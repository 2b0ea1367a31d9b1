// The listening vhost-user socket: the one inherited (--fd, or the one the
// sandboxed child gets from its parent), or one made at --socket-path with
// its pid file and --socket-group.

package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// setSocketGroup gives the socket to group and opens it to the group
// (mode 0770), as virtiofsd's --socket-group does.
func setSocketGroup(path, group string) error {
	// virtiofsd resolves the name with getgrnam: a name, never a number.
	g, err := user.LookupGroup(group)
	if err != nil {
		return errors.New("Couldn't resolve the group name specified for the socket path")
	}
	gid, _ := strconv.Atoi(g.Gid)
	if err := os.Chown(path, -1, gid); err != nil {
		return fmt.Errorf("Couldn't set up the group for the socket path: %s", rustIOError(err))
	}
	return os.Chmod(path, 0o770)
}

// listen returns the listening socket: the inherited one (--fd) or a new
// one at --socket-path, with a pid file that keeps a second daemon away.
func listen(o *options) (*net.UnixListener, func(), error) {
	if o.fd >= 0 {
		f := os.NewFile(uintptr(o.fd), "listen-fd")
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("--fd=%d is not a listening socket: %w", o.fd, err)
		}
		ul, ok := l.(*net.UnixListener)
		if !ok {
			l.Close()
			return nil, nil, fmt.Errorf("--fd=%d is not a unix socket", o.fd)
		}
		return ul, func() {}, nil
	}
	if dir := filepath.Dir(o.socketPath); dir != "." || strings.HasPrefix(o.socketPath, "./") {
		if _, err := os.Stat(dir); err != nil {
			return nil, nil, fmt.Errorf("%s does not exist or is not a directory", dir)
		}
	}
	pidPath := o.socketPath + ".pid"
	pidFile, err := os.OpenFile(pidPath, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("Error creating pid file '%s': %s", pidPath, rustIOError(err))
	}
	if err := unix.Flock(int(pidFile.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		pidFile.Close()
		// Another daemon serves the socket; virtiofsd's words.
		return nil, nil, fmt.Errorf("Error creating pid file '%s': %s", pidPath, rustIOError(err))
	}
	pidFile.Truncate(0)
	fmt.Fprintf(pidFile, "%d\n", os.Getpid())
	if err := os.Remove(o.socketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		pidFile.Close()
		return nil, nil, fmt.Errorf("remove stale socket %s: %w", o.socketPath, err)
	}
	old := unix.Umask(0o077)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: o.socketPath, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		pidFile.Close()
		return nil, nil, fmt.Errorf("listen on %s: %w", o.socketPath, err)
	}
	l.SetUnlinkOnClose(false)
	if o.socketGroup != "" {
		if err := setSocketGroup(o.socketPath, o.socketGroup); err != nil {
			l.Close()
			pidFile.Close()
			return nil, nil, err
		}
	}
	cleanup := func() {
		os.Remove(pidPath)
		pidFile.Close()
	}
	return l, cleanup, nil
}
