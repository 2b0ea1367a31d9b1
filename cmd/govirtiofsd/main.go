// Command govirtiofsd is a vhost-user virtio-fs back-end: it shares a host
// directory with a guest through QEMU, as a drop-in replacement for
// virtiofsd.
//
// It wires the packages together: the command line and logging here, the
// socket and vhost-user protocol in vhostuser, the rings in virtqueue, FUSE
// in fuse and the host directory in passthrough.
//
// One binary plays two roles, and run picks one: the process the caller
// starts (parent.go), which makes the socket and, with the namespace
// sandbox, re-executes itself as the sandboxed child and mirrors its exit
// status; and the sandboxed child, which serves the device (serve.go).
// With --sandbox chroot or none the process the caller starts serves
// itself.
package main

import (
	"fmt"
	"io"
	"log/syslog"
	"os"
	"strings"

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

// Format renders one entry as a line of virtiofsd's format.
func (logFormat) Format(e *logrus.Entry) ([]byte, error) {
	level := strings.ToUpper(e.Level.String())
	if level == "WARNING" {
		level = "WARN"
	}
	return fmt.Appendf(nil, "[%s %-5s virtiofsd] %s\n", e.Time.UTC().Format("2006-01-02T15:04:05Z"), level, e.Message), nil
}

// run parses args, answers --help, --version and --print-capabilities,
// sets up logging and plays this process's role: the sandboxed child's
// when sandboxChildEnv is set, the parent's otherwise. It returns the exit
// status: 2 for a command-line mistake, 1 for a failure, 0 otherwise.
func run(args []string, stdout, stderr io.Writer) int {
	log := logrus.StandardLogger()
	log.SetOutput(stderr)
	log.SetFormatter(logFormat{})
	if len(args) == 0 {
		// clap's arg_required_else_help: the help, on stderr, exit 2.
		printHelp(stderr)
		return 2
	}
	o, err := parseOptions(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n\nFor more information, try '--help'.\n", err)
		return 2
	}
	switch {
	case o.help:
		printHelp(stdout)
		return 0
	case o.version:
		fmt.Fprintf(stdout, "govirtiofsd %s\n", version)
		return 0
	case o.printCaps:
		fmt.Fprintln(stdout, capabilities)
		return 0
	}
	log.SetLevel(o.logLevel.logrusLevel())
	if o.logLevel == logOff {
		log.SetOutput(io.Discard)
	} else if o.syslog {
		// virtiofsd logs to the local syslog socket as LOG_USER and,
		// without one, to 127.0.0.1 (tcp 601, else udp 514), never to
		// stderr. Without a local socket this daemon logs nowhere: the
		// same on a host with no syslog daemon, and no network socket
		// for the seccomp filter to allow.
		if hook, err := lsyslog.NewSyslogHook("", "", syslog.LOG_USER|syslog.LOG_INFO, "virtiofsd"); err == nil {
			log.AddHook(hook)
		}
		log.SetOutput(io.Discard)
	}
	// Descriptors a careless caller leaked to us must not reach the
	// sandboxed child (or anything else): mark them close-on-exec, all
	// but the listening socket.
	markCloexec(o.fd)
	if child := os.Getenv(sandboxChildEnv); child != "" {
		return runSandboxChild(o, child, log)
	}
	return runParent(o, log)
}

// printHelp writes the --help text.
func printHelp(w io.Writer) {
	fmt.Fprintln(w, "Launch a govirtiofsd (virtio-fs vhost-user) backend.\n\nUsage: govirtiofsd --shared-dir <SHARED_DIR> --socket-path <SOCKET_PATH> [OPTIONS]\n\nOptions:")
	newFlagSet(&options{}, w).PrintDefaults()
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
