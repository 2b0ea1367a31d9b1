// Command govirtiofsd is a vhost-user virtio-fs back-end: it shares a host
// directory with a guest through QEMU, as a drop-in replacement for
// virtiofsd.
//
// It wires the packages together: the command line and logging here, the
// socket and vhost-user protocol in vhostuser, the rings in virtqueue, FUSE
// in fuse and the host directory in passthrough.
package main

import (
	"errors"
	"fmt"
	"io"
	"log/syslog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/govirtiofsd/govirtiofsd/dax"
	"github.com/govirtiofsd/govirtiofsd/fuse"
	"github.com/govirtiofsd/govirtiofsd/passthrough"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	"github.com/sirupsen/logrus"
	lsyslog "github.com/sirupsen/logrus/hooks/syslog"
	"golang.org/x/sys/unix"
)

// version is the daemon's version, set at build time with -ldflags.
var version = "0.1.0"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// logFormat writes virtiofsd's line format:
// "[2026-11-26T15:07:12Z INFO  virtiofsd] message".
type logFormat struct{}

func (logFormat) Format(e *logrus.Entry) ([]byte, error) {
	level := strings.ToUpper(e.Level.String())
	if level == "WARNING" {
		level = "WARN"
	}
	return fmt.Appendf(nil, "[%s %-5s virtiofsd] %s\n", e.Time.UTC().Format("2006-01-02T15:04:05Z"), level, e.Message), nil
}

func run(args []string, stdout, stderr io.Writer) int {
	log := logrus.StandardLogger()
	log.SetOutput(stderr)
	log.SetFormatter(logFormat{})
	o, err := parseOptions(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n\nFor more information, try '--help'.\n", err)
		return 2
	}
	switch {
	case o.help:
		fmt.Fprintln(stdout, "Launch a govirtiofsd (virtio-fs vhost-user) backend.\n\nUsage: govirtiofsd --shared-dir <SHARED_DIR> --socket-path <SOCKET_PATH> [OPTIONS]\n\nOptions:")
		newFlagSet(&options{}, stdout).PrintDefaults()
		return 0
	case o.version:
		fmt.Fprintf(stdout, "govirtiofsd %s\n", version)
		return 0
	case o.printCaps:
		fmt.Fprintln(stdout, capabilities)
		return 0
	}
	log.SetLevel(o.level)
	if o.logOff {
		log.SetOutput(io.Discard)
	} else if o.syslog {
		hook, err := lsyslog.NewSyslogHook("", "", syslog.LOG_DAEMON|syslog.LOG_INFO, "virtiofsd")
		if err != nil {
			log.Warnf("cannot reach syslog (%v); logging to stderr", err)
		} else {
			log.AddHook(hook)
			log.SetOutput(io.Discard)
		}
	}
	// Descriptors a careless caller leaked to us must not reach the
	// sandboxed child (or anything else): mark them close-on-exec, all
	// but the listening socket.
	markCloexec(o.fd)
	child := os.Getenv(sandboxChildEnv)
	if child == "" {
		// The sandbox child parses the same arguments; warn once.
		for _, w := range o.warnings {
			log.Warn(w)
		}
	}
	if child != "" {
		if err := waitForUserNS(log); err != nil {
			log.Error(err)
			return 1
		}
		// The re-executed sandbox child: the parent made the socket.
		fd, err := strconv.Atoi(child)
		if err != nil {
			log.Errorf("bad %s=%q", sandboxChildEnv, child)
			return 1
		}
		o.fd, o.socketPath = fd, ""
	}
	if child == "" {
		if err := setRlimitNofile(o.rlimitNofile, log); err != nil {
			log.Error(err)
			return 1
		}
	}
	l, cleanup, err := listen(o)
	if err != nil {
		log.Error(err)
		return 1
	}
	defer cleanup()
	if child == "" {
		if err := nsMapsError(o, os.Geteuid()); err != nil {
			log.Error(err)
			return 1
		}
	}
	if o.sandbox == "namespace" && child == "" {
		return runSandboxParent(o, l, log)
	}
	if err := serve(o, l, log); err != nil {
		log.Error(err)
		return 1
	}
	return 0
}

// setSocketGroup gives the socket to group and opens it to the group
// (mode 0770), as virtiofsd's --socket-group does.
func setSocketGroup(path, group string) error {
	g, err := user.LookupGroup(group)
	if err != nil {
		if gid, perr := strconv.Atoi(group); perr == nil {
			g = &user.Group{Gid: strconv.Itoa(gid)}
		} else {
			return fmt.Errorf("--socket-group %s: %w", group, err)
		}
	}
	gid, _ := strconv.Atoi(g.Gid)
	if err := os.Chown(path, -1, gid); err != nil {
		return fmt.Errorf("--socket-group %s: %w", group, err)
	}
	return os.Chmod(path, 0o770)
}

// markCloexec sets close-on-exec on every descriptor above stderr except
// keep.
func markCloexec(keep int) {
	const all = ^uint(0)
	if keep < 3 {
		unix.CloseRange(3, all, unix.CLOSE_RANGE_CLOEXEC)
		return
	}
	if keep > 3 {
		unix.CloseRange(3, uint(keep-1), unix.CLOSE_RANGE_CLOEXEC)
	}
	unix.CloseRange(uint(keep+1), all, unix.CLOSE_RANGE_CLOEXEC)
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
	pidPath := o.socketPath + ".pid"
	pidFile, err := os.OpenFile(pidPath, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("create pid file %s: %w", pidPath, err)
	}
	if err := unix.Flock(int(pidFile.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		pidFile.Close()
		return nil, nil, fmt.Errorf("another daemon holds %s (is one already serving %s?)", pidPath, o.socketPath)
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

func serve(o *options, l *net.UnixListener, log *logrus.Logger) error {
	root, err := filepath.Abs(o.sharedDir)
	if err != nil {
		return err
	}
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		return fmt.Errorf("shared directory %s is not a directory", o.sharedDir)
	}
	procFd := 0
	switch o.sandbox {
	case "namespace":
		procFd, err = enterNamespaceSandbox(root)
		root = "/"
	case "chroot":
		procFd, err = enterChrootSandbox(root)
		root = "/"
	}
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	if o.sandbox != "namespace" {
		// Only a mount namespace of its own lets the daemon make the share
		// nodev,nosuid (sandbox.go); say so where it has none.
		log.Debugf("--sandbox %s: the shared directory is not remounted nodev,nosuid: device nodes and setuid files on it are as restricted as the host's mount of it", o.sandbox)
	}
	uids, gids, err := buildIDMaps(o)
	if err != nil {
		return err
	}
	fs, err := passthrough.New(passthrough.Config{
		Root:              root,
		Cache:             o.cachePolicy,
		Readdirplus:       !o.noReaddirplus,
		Writeback:         o.writeback,
		AllowDirectIO:     o.allowDirectIO,
		AnnounceSubmounts: !o.noAnnounce,
		Readonly:          o.readonly,
		ProcSelfFd:        procFd,
		Xattr:             o.xattr,
		PosixACL:          o.posixACL,
		XattrMap:          o.xattrmap,
		SecurityLabel:     o.securityLabel,
		KillprivV2:        o.killprivV2 && !o.noKillprivV2,
		PreserveNoatime:   o.preserveNoatim,
		AllowMmap:         o.allowMmap,
		InodeFileHandles:  o.fileHandles,
		UIDMap:            uids,
		GIDMap:            gids,
		Logf:              log.Warnf,
	})
	if err != nil {
		return err
	}
	if mode, note := fs.FileHandles(); note != "" {
		log.Warnf("--inode-file-handles: using %v: %s", mode, note)
	}
	if os.Geteuid() == 0 {
		if err := dropCaps(o.caps); err != nil {
			return err
		}
	}
	if err := installSeccomp(o.seccomp, o.syslog); err != nil {
		return err
	}
	cfg := fuse.Config{Capabilities: fs.Capabilities(), Log: log, Migration: newMigration(fs, o, log)}
	// Long copies (large WRITEs) get assistants, one per request queue up
	// to one fewer than the CPUs, with or without a thread pool.
	bopts := vhostuser.Options{ThreadPoolSize: o.threadPoolSize, Assistants: min(o.requestQueues, runtime.GOMAXPROCS(0)-1), Log: log}
	ch := &daxChannel{legacy: o.daxTransport == "legacy"}
	if o.daxSize > 0 {
		w, err := dax.NewWindow(o.daxSize, daxAlignment, ch, fs)
		if err != nil {
			return err
		}
		w.SetLog(log)
		cfg.DAX = w
		if !ch.legacy {
			bopts.ShmemSizes = []uint64{o.daxSize}
		}
	}
	srv := fuse.NewServer(fs, cfg)
	dev := newVirtioFS(srv, o.requestQueues, o.configQueues, o.tag)

	log.Info("Waiting for vhost-user socket connection...")
	conn, err := l.AcceptUnix()
	l.Close()
	if err != nil {
		return fmt.Errorf("accept vhost-user connection: %w", err)
	}
	log.Info("Client connected, servicing requests")
	if path := os.Getenv("GOVIRTIOFSD_CPUPROFILE"); path != "" {
		// For measuring: a CPU profile of the whole connection (with
		// --sandbox none, the path is the host's).
		if f, err := os.Create(path); err == nil {
			pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		} else {
			log.Warnf("GOVIRTIOFSD_CPUPROFILE: %v", err)
		}
	}
	start := time.Now()
	b := vhostuser.NewBackend(dev, bopts)
	ch.b = b
	if err := b.Serve(conn); err != nil {
		return fmt.Errorf("vhost-user connection: %w", err)
	}
	log.Debugf("served for %v", time.Since(start).Round(time.Millisecond))
	log.Info("Client disconnected, shutting down")
	return nil
}
