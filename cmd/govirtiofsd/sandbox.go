package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// The namespace sandbox needs a fresh process: Go cannot fork, so the
// daemon re-executes itself in new mount, pid and network namespaces (and
// a user namespace when not root). The first process keeps the pid the
// caller knows, creates the socket, waits for the child and mirrors its
// exit status; the child dies with it (PDEATHSIG) and it with the child.

// sandboxChildEnv marks the re-executed child; its value is the fd number
// of the inherited listening socket.
const sandboxChildEnv = "GOVIRTIOFSD_SANDBOX_CHILD"

// childListenFd is where the child finds the listening socket.
const childListenFd = 3

// runSandboxParent starts the sandboxed child with the listener and waits
// for it. It returns the exit status to use.
func runSandboxParent(o *options, l *net.UnixListener, log *logrus.Logger) int {
	// PDEATHSIG follows the thread that started the child: keep this
	// goroutine on it for the parent's whole life.
	runtime.LockOSThread()
	lf, err := l.File()
	if err != nil {
		log.Errorf("sandbox: %v", err)
		return 1
	}
	// /proc/self/exe still works when the binary was replaced on disk
	// (a package upgrade) after this process started.
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{lf}
	cmd.Env = append(os.Environ(), sandboxChildEnv+"="+strconv.Itoa(childListenFd))
	attr := &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWNET,
		Pdeathsig:  syscall.SIGKILL,
	}
	var ns *userNS // --uid-map, --gid-map (userns.go)
	if uid, gid := os.Geteuid(), os.Getegid(); uid != 0 {
		attr.Cloneflags |= unix.CLONE_NEWUSER
		if ns, err = prepareUserNS(o, cmd, attr); err != nil {
			log.Errorf("sandbox: %v", err)
			return 1
		}
		if ns == nil {
			attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
			attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}}
			attr.GidMappingsEnableSetgroups = false
		}
	}
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		log.Errorf("sandbox: cannot start the sandboxed daemon (namespaces need root or user namespaces): %v", err)
		return 1
	}
	if ns != nil {
		if err := ns.mapAndRelease(cmd.Process.Pid); err != nil {
			log.Errorf("sandbox: couldn't setup id mappings: %v", err)
			cmd.Process.Kill()
			cmd.Wait()
			return 1
		}
	}
	lf.Close()
	l.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGINT)
	go func() {
		<-sigs
		cmd.Process.Kill()
	}()
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ee.Exited() {
			return ee.ExitCode()
		}
		return 1
	}
	if err != nil {
		log.Errorf("sandbox: %v", err)
		return 1
	}
	return 0
}

// enterNamespaceSandbox runs in the child: it makes the shared directory
// the root of a private mount namespace and returns an fd of
// /proc/self/fd opened beforehand.
func enterNamespaceSandbox(shared string) (int, error) {
	// Slave, not private: mounts the host adds under the share later
	// (container volumes) must still propagate in.
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return -1, fmt.Errorf("make / a slave mount: %w", err)
	}
	// A proc of our own pid namespace, so that /proc/self is this process.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_NOSUID|unix.MS_RELATIME, ""); err != nil {
		return -1, fmt.Errorf("mount a fresh /proc: %w", err)
	}
	procFd, err := unix.Open("/proc/self/fd", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /proc/self/fd: %w", err)
	}
	if err := unix.Mount(shared, shared, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return -1, fmt.Errorf("bind-mount %s: %w", shared, err)
	}
	if err := unix.Chdir(shared); err != nil {
		return -1, err
	}
	// pivot_root with the same new and old root stacks the old root on
	// top of the new one; detaching it leaves only the share.
	if err := unix.PivotRoot(".", "."); err != nil {
		return -1, fmt.Errorf("pivot_root into %s: %w", shared, err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return -1, fmt.Errorf("detach the old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return -1, err
	}
	return procFd, nil
}

// enterChrootSandbox confines the process to the shared directory with
// chroot, as virtiofsd's chroot mode does.
func enterChrootSandbox(shared string) (int, error) {
	procFd, err := unix.Open("/proc/self/fd", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /proc/self/fd: %w", err)
	}
	if err := unix.Chroot(shared); err != nil {
		return -1, fmt.Errorf("chroot %s: %w", shared, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return -1, err
	}
	return procFd, nil
}
