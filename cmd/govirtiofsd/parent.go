// The process the caller starts: it checks the shared directory and the
// option combinations virtiofsd refuses once running, makes (or takes) the
// listening socket and its pid file, raises the open-file limit and checks
// the id map options; then, with the namespace sandbox, it re-executes itself as the
// sandboxed child, forwards the end signals to it as a kill and exits with
// its status. With --sandbox chroot or none it serves itself (serve.go).
//
// The namespace sandbox needs a fresh process: Go cannot fork, so the
// daemon re-executes itself in new mount, pid and network namespaces (and
// a user namespace when not root). The first process keeps the pid the
// caller knows, creates the socket, waits for the child and mirrors its
// exit status; the child dies with it (PDEATHSIG) and it with the child.

package main

import (
	"errors"
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

// runParent is the role of the process the caller started. It returns
// the exit status: 1, logged, for a failure of its own; otherwise the
// sandboxed child's, or serving's with --sandbox chroot or none.
func runParent(o *options, log *logrus.Logger) int {
	// virtiofsd's order: the shared directory, the warnings (here only:
	// the sandbox child parses the same arguments), the combinations it
	// refuses, the socket, the open-file limit.
	if err := o.sharedDirError(); err != nil {
		log.Error(err)
		return 1
	}
	for _, w := range o.warnings {
		log.Warn(w)
	}
	if msgs := o.optionErrors(); len(msgs) > 0 {
		for _, m := range msgs {
			log.Error(m)
		}
		return 1
	}
	if o.fd < 0 && o.text.socketPath == "" {
		log.Warn("use of deprecated parameter '--socket': Please use the '--socket-path' option instead")
	}
	l, cleanup, err := listen(o)
	if err != nil {
		log.Error(err)
		return 1
	}
	defer cleanup()
	limit, err := setRlimitNofile(o.rlimitNofile, log)
	if err != nil {
		log.Errorf("Error increasing number of open files: %v", err)
		return 1
	}
	if err := checkFdLimit(limit, o.threadPoolSize, log); err != nil {
		log.Error(err)
		return 1
	}
	if err := nsMapsError(o, os.Geteuid()); err != nil {
		log.Error(err)
		return 1
	}
	if o.sandbox == sandboxNamespace {
		return runSandboxParent(o, l, log)
	}
	return serveStatus(o, l, log)
}

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
