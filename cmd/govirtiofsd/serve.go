// The process that serves the device: the sandboxed child (runSandboxChild),
// or with --sandbox chroot or none the process the caller started. serve
// enters the sandbox, builds the filesystem, drops capabilities, installs
// the seccomp filter and serves one vhost-user connection.

package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/govirtiofsd/govirtiofsd/dax"
	"github.com/govirtiofsd/govirtiofsd/fuse"
	"github.com/govirtiofsd/govirtiofsd/passthrough"
	"github.com/govirtiofsd/govirtiofsd/vhostuser"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
)

// runSandboxChild is the sandboxed child's role: the parent re-executed
// this binary in the sandbox's namespaces with the listening socket at
// descriptor listenFd (sandboxChildEnv's value). It waits for its user
// namespace's id maps when the parent writes them, then serves. It returns
// the exit status, which the parent passes on.
func runSandboxChild(o *options, listenFd string, log *logrus.Logger) int {
	if err := waitForUserNS(log); err != nil {
		log.Error(err)
		return 1
	}
	// The parent made the socket.
	fd, err := strconv.Atoi(listenFd)
	if err != nil {
		log.Errorf("bad %s=%q", sandboxChildEnv, listenFd)
		return 1
	}
	o.fd, o.socketPath = fd, ""
	l, cleanup, err := listen(o)
	if err != nil {
		log.Error(err)
		return 1
	}
	defer cleanup()
	return serveStatus(o, l, log)
}

// serveStatus serves on l and returns the exit status: 1, logged, when
// serving fails, 0 once the front-end has disconnected.
func serveStatus(o *options, l *net.UnixListener, log *logrus.Logger) int {
	if err := serve(o, l, log); err != nil {
		log.Error(err)
		return 1
	}
	return 0
}

// serve sets this process up to serve the shared directory (the sandbox
// of --sandbox, capabilities, the seccomp filter), waits for the
// front-end on l and serves its connection until it disconnects.
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
	case sandboxNamespace:
		procFd, err = enterNamespaceSandbox(root)
		root = "/"
	case sandboxChroot:
		procFd, err = enterChrootSandbox(root)
		root = "/"
	}
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	if o.sandbox != sandboxNamespace {
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
		Cache:             o.cache,
		Readdirplus:       !o.noReaddirplus,
		Writeback:         o.writeback,
		AllowDirectIO:     o.allowDirectIO,
		AnnounceSubmounts: o.announce,
		Readonly:          o.readonly,
		ProcSelfFd:        procFd,
		Xattr:             o.xattr,
		PosixACL:          o.posixACL != negotiateNever,
		XattrMap:          o.xattrmap,
		SecurityLabel:     o.securityLabel != negotiateNever,
		KillprivV2:        o.killprivV2,
		PreserveNoatime:   o.preserveNoatim,
		AllowMmap:         o.allowMmap,
		InodeFileHandles:  o.fileHandles,
		LocalPosixLocks:   o.localPosixLocks,
		LocalFlock:        o.localFlock,
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
		// As virtiofsd: capabilities, and --modcaps, only matter to a
		// daemon run as root.
		caps, err := capSet(o.modcaps, o.fileHandles, o.migration.Mode == passthrough.MigrateFileHandles)
		if err != nil {
			return err
		}
		if err := dropCaps(caps); err != nil {
			return err
		}
	}
	if err := installSeccomp(o.seccomp, o.syslog); err != nil {
		return err
	}
	cfg := fuse.Config{Capabilities: fs.Capabilities(), Log: log, Migration: newMigration(fs, o, log),
		InitCheck: negotiationCheck(o, log)}
	// Long copies (large WRITEs) get assistants, one per request queue up
	// to one fewer than the CPUs, with or without a thread pool.
	bopts := vhostuser.Options{ThreadPoolSize: o.threadPoolSize, Assistants: min(o.requestQueues, runtime.GOMAXPROCS(0)-1), Log: log}
	ch := &daxChannel{legacy: o.daxTransport == daxLegacy}
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

// negotiationCheck is what virtiofsd 1.14 does at INIT with --posix-acl
// and --security-label: with always, a guest that cannot take the feature
// fails INIT (EPROTO, an error logged); with auto it is warned about and
// the session goes on without (passthrough then serves as without the
// option: it looks at what INIT agreed on).
func negotiationCheck(o *options, log logrus.FieldLogger) func(offered uint64) error {
	if o.posixACL == negotiateNever && o.securityLabel == negotiateNever {
		return nil
	}
	const acl = gofuse.CAP_POSIX_ACL | gofuse.CAP_DONT_MASK | gofuse.CAP_SETXATTR_EXT
	return func(offered uint64) error {
		if o.posixACL != negotiateNever && offered&acl != acl {
			if o.posixACL == negotiateAlways {
				log.Error("Cannot enable posix ACLs, client does not support it")
				return errors.New("posix ACLs")
			}
			log.Warn("posix ACLs requested but client does not support it, continuing without")
		}
		if o.securityLabel != negotiateNever && offered&gofuse.CAP_SECURITY_CTX == 0 {
			if o.securityLabel == negotiateAlways {
				log.Error("Cannot enable security label. kernel does not support FUSE_SECURITY_CTX capability")
				return errors.New("security label")
			}
			log.Warn("security label requested but kernel does not support it, continuing without")
		}
		return nil
	}
}
