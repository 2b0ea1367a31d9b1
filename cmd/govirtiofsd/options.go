package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/govirtiofsd/govirtiofsd/passthrough"
	"github.com/spf13/pflag"
)

// options is the parsed command line, with virtiofsd's names and defaults.
type options struct {
	sharedDir      string
	tag            string
	socketPath     string // --socket-path, or else the deprecated --socket
	socketGroup    string
	fd             int
	threadPoolSize int
	xattr          bool
	posixACL       negotiationMode
	xattrmap       string // checked here, parsed by passthrough.New
	sandbox        sandboxMode
	readonly       bool
	seccomp        seccompMode
	announce       bool // --announce-submounts (the default), --no-announce-submounts
	fileHandles    passthrough.InodeFileHandles
	cache          passthrough.CachePolicy
	allowMmap      bool
	noReaddirplus  bool
	// localPosixLocks and localFlock (-o no_posix_lock, -o no_flock)
	// keep the guest's locks in the guest, as virtiofsd does; by
	// default they are taken on the host.
	localPosixLocks, localFlock bool
	writeback                   bool
	allowDirectIO               bool
	printCaps                   bool
	modcaps                     string // applied, and checked, by the serving process (caps.go)
	logLevel                    logLevel
	syslog                      bool
	rlimitNofile                string // applied by the parent (rlimit.go); parseArgv checked it
	killprivV2                  bool   // --killpriv-v2, --no-killpriv-v2 (the default): the last one given
	version                     bool
	help                        bool
	preserveNoatim              bool
	securityLabel               negotiationMode
	requestQueues               int
	configQueues                int
	daxTransport                daxTransport
	daxSize                     uint64
	migration                   passthrough.MigrationConfig // --migration-* (migrate.go)
	// --translate-uid/--translate-gid and --uid-map/--gid-map (idmap.go)
	uidRules, gidRules   []passthrough.IDMapping
	uidNSMaps, gidNSMaps []nsIDMap
	warnings             []string // virtiofsd's about -f, -d, -o, fallback; the parent logs them

	text optionText
}

// optionText holds the options as given that parseOptions parses into
// the typed fields of options (-o into the options it stands for, -d
// into the log level). Nothing after parseOptions reads it.
type optionText struct {
	sandbox, seccomp, inodeHandles, cache, logLevel string
	posixACL, securityLabel                         string
	socket, socketPath                              string
	daxWindow, daxTransport                         string
	migrationMode, migrationOnError                 string
	translateUID, translateGID, uidMap, gidMap      []string
	compat                                          []string
	debug, foreground                               bool
}

// usageError is a command-line mistake: exit status 2, like virtiofsd.
type usageError struct{ msg string }

// Error is the message, printed after "error: ".
func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// ignoredOptions are the options of virtiofsd that callers pass and that
// change nothing in this daemon, each with the reason. They are accepted,
// so that those command lines work, and their values are kept nowhere:
// newFlagSet registers the flags (with ignoredFlag, where --help lists
// them) and applyCompat takes the -o ones.
var ignoredOptions = map[string]string{}

// boolSwitch is a boolean that two flags set, one to true and one to
// false, the last one given winning (clap's overrides_with):
// --killpriv-v2 and --no-killpriv-v2, --announce-submounts and
// --no-announce-submounts.
type boolSwitch struct {
	p  *bool
	to bool
}

func (b boolSwitch) Set(string) error { *b.p = b.to; return nil }
func (b boolSwitch) String() string   { return "false" }
func (b boolSwitch) Type() string     { return "bool" }

func newFlagSet(o *options, out io.Writer) *pflag.FlagSet {
	f := pflag.NewFlagSet("govirtiofsd", pflag.ContinueOnError)
	f.SetOutput(out)
	f.SortFlags = false
	o.announce = true
	f.StringVar(&o.sharedDir, "shared-dir", "", "Shared directory path")
	f.StringVar(&o.tag, "tag", "", "The tag that the virtio device advertises")
	f.StringVar(&o.text.socket, "socket", "", "vhost-user socket path [deprecated]")
	f.StringVar(&o.text.socketPath, "socket-path", "", "vhost-user socket path")
	f.StringVar(&o.socketGroup, "socket-group", "", "Name of group for the vhost-user socket")
	f.IntVar(&o.fd, "fd", -1, "File descriptor for the listening (not yet connected) socket")
	f.IntVar(&o.threadPoolSize, "thread-pool-size", 0, "Maximum thread pool size. A value of \"0\" disables the pool")
	f.BoolVar(&o.xattr, "xattr", false, "Enable support for extended attributes")
	f.StringVar(&o.text.posixACL, "posix-acl", "never", "Enable support for posix ACLs (implies --xattr): never, auto (when the guest supports them) or always (the guest must); alone: always")
	f.StringVar(&o.xattrmap, "xattrmap", "", "Add custom rules for translating extended attributes between host and guest")
	f.StringVar(&o.text.sandbox, "sandbox", "namespace", "Sandbox mechanism to isolate the daemon process (namespace, chroot, none)")
	f.BoolVar(&o.readonly, "readonly", false, "Prevent the guest from making modifications to the filesystem")
	f.StringVar(&o.text.seccomp, "seccomp", "kill", "Action to take when seccomp finds a not allowed syscall (none, kill, log, trap)")
	f.Var(boolSwitch{&o.announce, true}, "announce-submounts", "Tell the guest which directories are mount points [default]")
	f.Var(boolSwitch{&o.announce, false}, "no-announce-submounts", "Do not tell the guest which directories are mount points")
	f.StringVar(&o.text.inodeHandles, "inode-file-handles", "prefer", "When to use file handles to reference inodes (never, prefer, mandatory), given with '='")
	f.StringVar(&o.text.cache, "cache", "auto", "The caching policy the file system should use (auto, always, never, metadata)")
	f.BoolVar(&o.allowMmap, "allow-mmap", false, "With --cache metadata or never, allow shared files to be mmap'd")
	f.BoolVar(&o.noReaddirplus, "no-readdirplus", false, "Disable support for READDIRPLUS operations")
	f.BoolVar(&o.writeback, "writeback", false, "Enable writeback cache")
	f.BoolVar(&o.allowDirectIO, "allow-direct-io", false, "Honor the O_DIRECT flag passed down by guest applications")
	f.BoolVar(&o.preserveNoatim, "preserve-noatime", false, "Honor the O_NOATIME flag passed down by guest applications")
	f.StringVar(&o.text.securityLabel, "security-label", "never", "Enable security label support (implies --xattr): never, auto or always; alone: always. Expects SELinux xattr on file creation from client and stores it in the newly created file")
	f.StringArrayVar(&o.text.uidMap, "uid-map", nil, "Map a range of UIDs from the host into the namespace, given as :namespace_uid:host_uid:count: (unprivileged, --sandbox namespace)")
	f.StringArrayVar(&o.text.gidMap, "gid-map", nil, "Map a range of GIDs from the host into the namespace, given as :namespace_gid:host_gid:count: (unprivileged, --sandbox namespace)")
	f.StringArrayVar(&o.text.translateUID, "translate-uid", nil, "Describe how to translate UIDs between guest and host, given as '<type>:<source base>:<target base>:<count>' (guest, host, squash-guest, squash-host, map; forbid-guest:<guest base>:<count>); not with --posix-acl=always|auto")
	f.StringArrayVar(&o.text.translateGID, "translate-gid", nil, "Same as '--translate-uid', but for GIDs")
	f.StringVar(&o.text.migrationMode, "migration-mode", "find-paths", "How the source describes inodes to the destination: find-paths (paths relative to the shared directory) or file-handles (same filesystem on both sides; needs dac_read_search). The destination must run with the source's mode: only a file-handles destination opens file handles")
	f.StringVar(&o.text.migrationOnError, "migration-on-error", "abort", "What the destination does with inodes it cannot restore: abort (fail the migration) or guest-error (the guest gets errors for them). Ignored on the source")
	f.BoolVar(&o.migration.VerifyHandles, "migration-verify-handles", false, "With find-paths, also send file handles so that the destination checks it opened the very same inodes (same filesystem on both sides). Ignored on the destination")
	f.BoolVar(&o.migration.ConfirmPaths, "migration-confirm-paths", false, "With find-paths, check every path right before switching over and search the shared directory for those that moved. Ignored on the destination")
	f.BoolVar(&o.printCaps, "print-capabilities", false, "Print vhost-user.json backend program capabilities and exit")
	f.StringVar(&o.modcaps, "modcaps", "", "Modify the list of capabilities, e.g., --modcaps=+sys_admin:-chown")
	f.StringVar(&o.text.logLevel, "log-level", "info", "Log level (error, warn, info, debug, trace, off)")
	f.BoolVar(&o.syslog, "syslog", false, "Log to syslog [default: stderr]")
	f.StringVar(&o.rlimitNofile, "rlimit-nofile", "", "Set maximum number of file descriptors (0 leaves rlimit unchanged) [default: min(1000000, '/proc/sys/fs/nr_open')]")
	f.StringArrayVarP(&o.text.compat, "compat-options", "o", nil, "-o: Options in a format compatible with the legacy implementation [deprecated]")
	f.BoolVarP(&o.text.debug, "debug", "d", false, "-d: Set log level to \"debug\" [deprecated]")
	f.Var(boolSwitch{&o.killprivV2, false}, "no-killpriv-v2", "Disable KILLPRIV V2 support [default]")
	f.Var(boolSwitch{&o.killprivV2, true}, "killpriv-v2", "Enable KILLPRIV V2 support")
	f.BoolVarP(&o.text.foreground, "foreground", "f", false, "-f: Compatibility option that has no effect [deprecated]")
	f.IntVar(&o.requestQueues, "request-queues", 64, "Request queues served (virtiofsd serves 1); with --tag also the count announced in the config space")
	f.StringVar(&o.text.daxWindow, "dax-window-size", "", "Size of the DAX window (e.g. 1G); enables FUSE_SETUPMAPPING through the VMM")
	f.StringVar(&o.text.daxTransport, "dax-transport", "shmem", "How to ask the VMM for DAX mappings: shmem (SHMEM_MAP, QEMU 11.1) or legacy (FS_MAP, Kata/Cloud Hypervisor/Dragonball)")
	f.BoolVarP(&o.version, "version", "V", false, "Print version information")
	f.BoolVarP(&o.help, "help", "h", false, "Print help")
	return f
}

// parseOptions parses argv (without the program name) as virtiofsd does:
// clap's reading (parseArgv), then the -o options applied over it.
func parseOptions(args []string, out io.Writer) (*options, error) {
	o := &options{}
	f := newFlagSet(o, out)
	if err := parseArgv(f, args); err != nil {
		if o.help || o.version {
			// clap answers --help and --version as it meets them.
			return o, nil
		}
		return nil, err
	}
	if o.help || o.version || o.printCaps {
		return o, nil
	}
	if err := o.parseIDMaps(); err != nil {
		return nil, err
	}
	o.posixACL, _ = parseEnum[negotiationMode](negotiationNames, o.text.posixACL)
	o.securityLabel, _ = parseEnum[negotiationMode](negotiationNames, o.text.securityLabel)
	for _, c := range o.text.compat {
		for _, opt := range strings.Split(c, ",") {
			if err := o.applyCompat(opt); err != nil {
				return nil, err
			}
		}
	}
	if o.text.debug {
		o.text.logLevel = "debug"
	}
	if env := os.Getenv("RUST_LOG"); env != "" {
		// virtiofsd honours RUST_LOG over --log-level; its directives
		// look like "debug" or "virtiofsd=debug,vhost=info": take the
		// level of the last one that parses.
		for _, d := range strings.Split(env, ",") {
			_, lvl, _ := strings.Cut(d, "=")
			if lvl == "" {
				lvl = d
			}
			if _, err := parseLogLevel(lvl); err == nil {
				o.text.logLevel = lvl
			}
		}
	}
	o.socketPath = o.text.socketPath
	if o.socketPath == "" {
		o.socketPath = o.text.socket
	}
	var err error
	if o.logLevel, err = parseLogLevel(o.text.logLevel); err != nil {
		return nil, err
	}
	if o.cache, err = passthrough.ParseCachePolicy(strings.ToLower(o.text.cache)); err != nil {
		return nil, usageError{err.Error()}
	}
	if o.sandbox, err = parseSandboxMode(strings.ToLower(o.text.sandbox)); err != nil {
		return nil, err
	}
	if o.seccomp, err = parseSeccompMode(o.text.seccomp); err != nil {
		return nil, err
	}
	if o.text.daxWindow != "" {
		if o.daxSize, err = parseSize(o.text.daxWindow); err != nil || o.daxSize%(2<<20) != 0 {
			return nil, usagef("--dax-window-size %s: want a multiple of 2M", o.text.daxWindow)
		}
	}
	if o.daxTransport, err = parseDAXTransport(o.text.daxTransport); err != nil {
		return nil, err
	}
	if err := o.parseMigration(); err != nil {
		return nil, err
	}
	if o.text.inodeHandles == "fallback" {
		o.text.inodeHandles = "prefer"
	}
	if o.fileHandles, err = passthrough.ParseInodeFileHandles(o.text.inodeHandles); err != nil {
		return nil, usagef("--inode-file-handles: %v", err)
	}
	if o.threadPoolSize < 0 {
		return nil, usagef("--thread-pool-size must not be negative")
	}
	if o.requestQueues < 1 || o.requestQueues > 254 {
		return nil, usagef("--request-queues must be between 1 and 254")
	}
	// The config space (offered with --tag) tells the guest how many
	// request queues to use; it must not promise more than the
	// front-end creates, so it says 1 unless the count was given.
	o.configQueues = 1
	if f.Changed("request-queues") {
		o.configQueues = o.requestQueues
	}
	// virtiofsd's warnings, in its order; the parent logs them once the
	// shared directory is found.
	if o.text.foreground {
		o.warnings = append(o.warnings, "Use of deprecated flag '-f': This flag has no effect, please remove it")
	}
	if o.text.debug {
		o.warnings = append(o.warnings, "Use of deprecated flag '-d': Please use the '--log-level debug' option instead")
	}
	if f.Changed("compat-options") {
		o.warnings = append(o.warnings, "Use of deprecated option format '-o': Please specify options without it (e.g., '--cache auto' instead of '-o cache=auto')")
	}
	if f.Changed("inode-file-handles") && o.text.inodeHandles == "prefer" && argHas(args, "--inode-file-handles=fallback") {
		o.warnings = append(o.warnings, "Use of deprecated value 'fallback' for '--inode-file-handles': Please use 'prefer' instead")
	}
	return o, nil
}

// argHas says whether the last --inode-file-handles= of args is want.
func argHas(args []string, want string) bool {
	last := ""
	for _, a := range args {
		if strings.HasPrefix(a, "--inode-file-handles=") {
			last = a
		}
	}
	return last == want
}

// sharedDirError is virtiofsd's first refusal once it runs (exit status
// 1, logged): no shared directory, or none there.
func (o *options) sharedDirError() error {
	if o.sharedDir == "" {
		return errors.New(`missing "--shared-dir" or "-o source" option`)
	}
	if _, err := os.Stat(o.sharedDir); err != nil {
		return fmt.Errorf("%s does not exist", o.sharedDir)
	}
	return nil
}

// optionErrors are the combinations virtiofsd refuses after its warnings
// (exit status 1, each message logged).
func (o *options) optionErrors() []string {
	var msgs []string
	if o.migration.Mode == passthrough.MigrateFileHandles {
		if o.migration.ConfirmPaths {
			msgs = append(msgs, "Cannot use --migration-confirm-paths with --migration-mode=file-handles (because it is unnecessary)")
		}
		if o.migration.VerifyHandles {
			msgs = append(msgs, "Cannot use --migration-verify-handles with --migration-mode=file-handles (because it is unnecessary)")
		}
		if len(msgs) > 0 {
			return msgs
		}
	}
	if o.posixACL != negotiateNever && (len(o.uidRules) > 0 || len(o.gidRules) > 0) {
		msgs = append(msgs, fmt.Sprintf("Cannot use --translate-uid or --translate-gid with --posix-acl=%s, translating UIDs/GIDs would break posix ACLs", o.posixACL))
	}
	return msgs
}

// applyCompat applies one legacy -o option over the command line's, as
// virtiofsd's parse_compat: each of its keys, and "key=value" for
// source, cache, loglevel, sandbox, modcaps and xattrmap, with the values
// it takes; virtiofsd's message (exit status 2) for anything else.
func (o *options) applyCompat(opt string) error {
	parts := strings.Split(opt, "=")
	badValue := func() error {
		return usagef("Invalid compat value '%s' for '-o %s'", parts[1], parts[0])
	}
	oneOf := func(set *string, m map[string]string) error {
		v, ok := m[parts[1]]
		if !ok {
			return badValue()
		}
		*set = v
		return nil
	}
	switch len(parts) {
	case 1:
		switch opt {
		case "xattr", "no_xattr":
			o.xattr = opt == "xattr"
		case "readdirplus", "no_readdirplus":
			o.noReaddirplus = opt == "no_readdirplus"
		case "writeback", "no_writeback":
			o.writeback = opt == "writeback"
		case "allow_direct_io", "no_allow_direct_io":
			o.allowDirectIO = opt == "allow_direct_io"
		case "killpriv_v2", "no_killpriv_v2":
			o.killprivV2 = opt == "killpriv_v2"
		case "posix_acl", "no_posix_acl":
			o.posixACL = negotiateAlways
			if opt == "no_posix_acl" {
				o.posixACL = negotiateNever
			}
		case "security_label", "no_security_label":
			o.securityLabel = negotiateAlways
			if opt == "no_security_label" {
				o.securityLabel = negotiateNever
			}
		case "posix_lock", "no_posix_lock":
			// virtiofsd 1.13 and 1.14 refuse the positive spellings;
			// the C virtiofsd took both, and so do we (the last wins).
			o.localPosixLocks = opt == "no_posix_lock"
		case "flock", "no_flock":
			o.localFlock = opt == "no_flock"
		case "announce_submounts":
			// virtiofsd sets a field nothing reads: submounts are
			// announced unless --no-announce-submounts, -o or not.
		default:
			if _, ok := ignoredOptions["-o "+opt]; !ok {
				return usagef("Invalid compat argument '-o %s'", opt)
			}
		}
		return nil
	case 2:
		switch parts[0] {
		case "source":
			o.sharedDir = parts[1]
			return nil
		case "modcaps":
			o.modcaps = parts[1]
			return nil
		case "xattrmap":
			if checkXattrMap(parts[1]) != "" {
				return badValue()
			}
			o.xattrmap = parts[1]
			return nil
		case "cache":
			return oneOf(&o.text.cache, map[string]string{"auto": "auto", "always": "always", "none": "never", "metadata": "metadata"})
		case "loglevel":
			return oneOf(&o.text.logLevel, map[string]string{"debug": "debug", "info": "info", "warn": "warn", "err": "error"})
		case "sandbox":
			return oneOf(&o.text.sandbox, map[string]string{"namespace": "namespace", "chroot": "chroot"})
		}
	}
	return usagef("Invalid compat argument '-o %s'", opt)
}

// checkXattrMap is parseArgv's check of --xattrmap (and -o xattrmap's):
// virtiofsd's message is its parser's error, printed as Rust debug-prints
// it.
func checkXattrMap(v string) string {
	_, err := passthrough.ParseXattrMap(v)
	var xe *passthrough.XattrMapError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &xe) && xe.Cause != "":
		rule := "None"
		if xe.Rule > 0 {
			rule = fmt.Sprintf("Some(%d)", xe.Rule)
		}
		return fmt.Sprintf("Error { cause: %s, rule: %s }", xe.Cause, rule)
	}
	return err.Error()
}
