package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/govirtiofsd/govirtiofsd/passthrough"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
)

// options is the parsed command line, with virtiofsd's names and defaults.
type options struct {
	sharedDir      string
	tag            string
	socketPath     string
	socketGroup    string
	fd             int
	threadPoolSize int
	xattr          bool
	posixACL       bool
	xattrmap       string // checked here, parsed by passthrough.New
	sandbox        sandboxMode
	readonly       bool
	seccomp        seccompMode
	noAnnounce     bool
	fileHandles    passthrough.InodeFileHandles
	cache          passthrough.CachePolicy
	allowMmap      bool
	noReaddirplus  bool
	writeback      bool
	allowDirectIO  bool
	printCaps      bool
	caps           uint64 // --modcaps applied to the base set (caps.go)
	logLevel       logLevel
	syslog         bool
	rlimitNofile   string // applied, and checked, by the parent (rlimit.go)
	killprivV2     bool
	noKillprivV2   bool
	version        bool
	help           bool
	preserveNoatim bool
	securityLabel  bool
	requestQueues  int
	configQueues   int
	daxTransport   daxTransport
	daxSize        uint64
	migration      passthrough.MigrationConfig // --migration-* (migrate.go)
	// --translate-uid/--translate-gid and --uid-map/--gid-map (idmap.go)
	uidRules, gidRules   []passthrough.IDMapping
	uidNSMaps, gidNSMaps []nsIDMap
	warnings             []string // about -o, for the parent to log

	text optionText
}

// optionText holds the options as given that parseOptions parses into
// the typed fields of options (-o into the options it stands for, --debug
// into the log level). Nothing after parseOptions reads it.
type optionText struct {
	sandbox, seccomp, inodeHandles, cache, logLevel string
	modcaps, daxWindow, daxTransport                string
	migrationMode, migrationOnError                 string
	translateUID, translateGID, uidMap, gidMap      []string
	compat                                          []string
	debug                                           bool
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
var ignoredOptions = map[string]string{
	"--announce-submounts":  "the default: submounts are announced unless --no-announce-submounts",
	"--foreground":          "the daemon always runs in the foreground; virtiofsd ignores it too",
	"-o no_xattr":           "the default: extended attributes are off without xattr",
	"-o no_posix_acl":       "the default: ACLs are off without posix_acl",
	"-o no_security_label":  "the default: security labels are off without security_label",
	"-o readdirplus":        "the default: READDIRPLUS is on without no_readdirplus",
	"-o no_writeback":       "the default: the writeback cache is off without writeback",
	"-o no_allow_direct_io": "the default: O_DIRECT is dropped without allow_direct_io",
	"-o no_killpriv_v2":     "the default: KILLPRIV_V2 is off without killpriv_v2",
	"-o no_posix_lock":      "POSIX locks are not offered to the guest",
	"-o no_flock":           "flock locks are not offered to the guest",
}

// ignoredFlag registers --name (and -short) as a boolean flag whose value
// goes nowhere. It must be one of ignoredOptions, which says why.
func ignoredFlag(f *pflag.FlagSet, name, short, usage string) {
	if _, ok := ignoredOptions["--"+name]; !ok {
		panic("--" + name + " is ignored without a reason in ignoredOptions")
	}
	f.BoolP(name, short, false, usage)
}

func newFlagSet(o *options, out io.Writer) *pflag.FlagSet {
	f := pflag.NewFlagSet("govirtiofsd", pflag.ContinueOnError)
	f.SetOutput(out)
	f.SortFlags = false
	f.StringVar(&o.sharedDir, "shared-dir", "", "Shared directory path")
	f.StringVar(&o.tag, "tag", "", "The tag that the virtio device advertises")
	f.StringVar(&o.socketPath, "socket", "", "vhost-user socket path [deprecated]")
	f.StringVar(&o.socketPath, "socket-path", "", "vhost-user socket path")
	f.StringVar(&o.socketGroup, "socket-group", "", "Name of group for the vhost-user socket")
	f.IntVar(&o.fd, "fd", -1, "File descriptor for the listening (not yet connected) socket")
	f.IntVar(&o.threadPoolSize, "thread-pool-size", 0, "Maximum thread pool size. A value of \"0\" disables the pool")
	f.BoolVar(&o.xattr, "xattr", false, "Enable support for extended attributes")
	f.BoolVar(&o.posixACL, "posix-acl", false, "Enable support for posix ACLs (implies --xattr)")
	f.StringVar(&o.xattrmap, "xattrmap", "", "Add custom rules for translating extended attributes between host and guest")
	f.StringVar(&o.text.sandbox, "sandbox", "namespace", "Sandbox mechanism to isolate the daemon process (namespace, chroot, none)")
	f.BoolVar(&o.readonly, "readonly", false, "Prevent the guest from making modifications to the filesystem")
	f.StringVar(&o.text.seccomp, "seccomp", "kill", "Action to take when seccomp finds a not allowed syscall (none, kill, log, trap)")
	ignoredFlag(f, "announce-submounts", "", "Tell the guest which directories are mount points [default]")
	f.BoolVar(&o.noAnnounce, "no-announce-submounts", false, "Do not tell the guest which directories are mount points")
	f.StringVar(&o.text.inodeHandles, "inode-file-handles", "prefer", "When to use file handles to reference inodes (never, prefer, mandatory)")
	f.StringVar(&o.text.cache, "cache", "auto", "The caching policy the file system should use (auto, always, never, metadata)")
	f.BoolVar(&o.allowMmap, "allow-mmap", false, "With --cache metadata or never, allow shared files to be mmap'd")
	f.BoolVar(&o.noReaddirplus, "no-readdirplus", false, "Disable support for READDIRPLUS operations")
	f.BoolVar(&o.writeback, "writeback", false, "Enable writeback cache")
	f.BoolVar(&o.allowDirectIO, "allow-direct-io", false, "Honor the O_DIRECT flag passed down by guest applications")
	f.BoolVar(&o.preserveNoatim, "preserve-noatime", false, "Honor the O_NOATIME flag passed down by guest applications")
	f.BoolVar(&o.securityLabel, "security-label", false, "Enable security label support (implies --xattr). Expects SELinux xattr on file creation from client and stores it in the newly created file")
	f.StringArrayVar(&o.text.uidMap, "uid-map", nil, "Map a range of UIDs from the host into the namespace, given as :namespace_uid:host_uid:count: (unprivileged, --sandbox namespace)")
	f.StringArrayVar(&o.text.gidMap, "gid-map", nil, "Map a range of GIDs from the host into the namespace, given as :namespace_gid:host_gid:count: (unprivileged, --sandbox namespace)")
	f.StringArrayVar(&o.text.translateUID, "translate-uid", nil, "Describe how to translate UIDs between guest and host, given as '<type>:<source base>:<target base>:<count>' (guest, host, squash-guest, squash-host, map; forbid-guest:<guest base>:<count>)")
	f.StringArrayVar(&o.text.translateGID, "translate-gid", nil, "Same as '--translate-uid', but for GIDs")
	f.StringVar(&o.text.migrationMode, "migration-mode", "find-paths", "How the source describes inodes to the destination: find-paths (paths relative to the shared directory) or file-handles (same filesystem on both sides; needs dac_read_search). The destination must run with the source's mode: only a file-handles destination opens file handles")
	f.StringVar(&o.text.migrationOnError, "migration-on-error", "abort", "What the destination does with inodes it cannot restore: abort (fail the migration) or guest-error (the guest gets errors for them). Ignored on the source")
	f.BoolVar(&o.migration.VerifyHandles, "migration-verify-handles", false, "With find-paths, also send file handles so that the destination checks it opened the very same inodes (same filesystem on both sides). Ignored on the destination")
	f.BoolVar(&o.migration.ConfirmPaths, "migration-confirm-paths", false, "With find-paths, check every path right before switching over and search the shared directory for those that moved. Ignored on the destination")
	f.BoolVar(&o.printCaps, "print-capabilities", false, "Print vhost-user.json backend program capabilities and exit")
	f.StringVar(&o.text.modcaps, "modcaps", "", "Modify the list of capabilities, e.g., --modcaps=+sys_admin:-chown")
	f.StringVar(&o.text.logLevel, "log-level", "info", "Log level (error, warn, info, debug, trace, off)")
	f.BoolVar(&o.syslog, "syslog", false, "Log to syslog [default: stderr]")
	f.StringVar(&o.rlimitNofile, "rlimit-nofile", "", "Set maximum number of file descriptors (0 leaves rlimit unchanged)")
	f.StringArrayVarP(&o.text.compat, "compat-options", "o", nil, "Options in a format compatible with the legacy implementation [deprecated]")
	f.BoolVarP(&o.text.debug, "debug", "d", false, "Set log level to \"debug\" [deprecated]")
	f.BoolVar(&o.noKillprivV2, "no-killpriv-v2", false, "Disable KILLPRIV V2 support [default]")
	f.BoolVar(&o.killprivV2, "killpriv-v2", false, "Enable KILLPRIV V2 support")
	ignoredFlag(f, "foreground", "f", "Compatibility option that has no effect [deprecated]")
	f.IntVar(&o.requestQueues, "request-queues", 64, "Request queues served (virtiofsd serves 1); with --tag also the count announced in the config space")
	f.StringVar(&o.text.daxWindow, "dax-window-size", "", "Size of the DAX window (e.g. 1G); enables FUSE_SETUPMAPPING through the VMM")
	f.StringVar(&o.text.daxTransport, "dax-transport", "shmem", "How to ask the VMM for DAX mappings: shmem (SHMEM_MAP, QEMU 11.1) or legacy (FS_MAP, Kata/Cloud Hypervisor/Dragonball)")
	f.BoolVarP(&o.version, "version", "V", false, "Print version information")
	f.BoolVarP(&o.help, "help", "h", false, "Print help")
	return f
}

// parseOptions parses argv (without the program name).
func parseOptions(args []string, out io.Writer) (*options, error) {
	o := &options{}
	f := newFlagSet(o, out)
	if err := f.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			o.help = true
			return o, nil
		}
		return nil, usageError{err.Error()}
	}
	if f.NArg() > 0 {
		return nil, usagef("unexpected argument %q", f.Arg(0))
	}
	if o.help || o.version || o.printCaps {
		return o, nil
	}
	if err := o.parseIDMaps(f, args); err != nil {
		return nil, err
	}
	for _, c := range o.text.compat {
		for _, opt := range strings.Split(c, ",") {
			if err := o.applyCompat(f, opt); err != nil {
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
	var err error
	if o.logLevel, err = parseLogLevel(o.text.logLevel); err != nil {
		return nil, err
	}
	if o.cache, err = passthrough.ParseCachePolicy(o.text.cache); err != nil {
		return nil, usageError{err.Error()}
	}
	if o.sandbox, err = parseSandboxMode(o.text.sandbox); err != nil {
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
	if o.xattrmap != "" {
		if _, err := passthrough.ParseXattrMap(o.xattrmap); err != nil {
			return nil, usagef("--xattrmap: %v", err)
		}
	}
	if err := o.parseMigration(); err != nil {
		return nil, err
	}
	if o.fileHandles, err = passthrough.ParseInodeFileHandles(o.text.inodeHandles); err != nil {
		return nil, usagef("--inode-file-handles: %v", err)
	}
	// A destination opens the file handles a file-handles migration
	// sends: keep dac_read_search for that too.
	if o.caps, err = capSet(o.text.modcaps, o.fileHandles != passthrough.FileHandlesNever || o.migration.Mode == passthrough.MigrateFileHandles); err != nil {
		return nil, usageError{err.Error()}
	}
	if o.caps&(1<<unix.CAP_DAC_READ_SEARCH) == 0 {
		// File handles need CAP_DAC_READ_SEARCH; --modcaps took it away.
		switch o.fileHandles {
		case passthrough.FileHandlesMandatory:
			return nil, usagef("--inode-file-handles=mandatory needs the dac_read_search capability that --modcaps removes")
		case passthrough.FileHandlesPrefer:
			o.fileHandles = passthrough.FileHandlesNever
		}
	}
	if o.sharedDir == "" {
		return nil, usagef("the following required arguments were not provided: --shared-dir <SHARED_DIR>")
	}
	if (o.socketPath == "") == (o.fd < 0) {
		return nil, usagef("exactly one of --socket-path and --fd is required")
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
	return o, nil
}

// applyCompat applies one legacy -o option.
func (o *options) applyCompat(f *pflag.FlagSet, opt string) error {
	key, val, hasVal := strings.Cut(opt, "=")
	set := func(name, value string) error {
		if err := f.Set(name, value); err != nil {
			return usagef("invalid compat argument %q: %v", opt, err)
		}
		o.warnings = append(o.warnings, fmt.Sprintf("Use of deprecated option format '-o': Please specify options without it (e.g., '--%s' instead of '-o %s')", name, opt))
		return nil
	}
	if _, ok := ignoredOptions["-o "+key]; ok {
		return nil
	}
	switch {
	case key == "source" && hasVal:
		return set("shared-dir", val)
	case key == "cache" && hasVal:
		return set("cache", val)
	case key == "loglevel" && hasVal:
		return set("log-level", val)
	case key == "sandbox" && hasVal:
		return set("sandbox", val)
	case key == "xattr", key == "posix_acl", key == "security_label", key == "killpriv_v2":
		return set(strings.ReplaceAll(key, "_", "-"), "true")
	case key == "no_readdirplus":
		return set("no-readdirplus", "true")
	case key == "writeback":
		return set("writeback", "true")
	case key == "allow_direct_io":
		return set("allow-direct-io", "true")
	case key == "announce_submounts":
		return set("announce-submounts", "true")
	case key == "modcaps" && hasVal:
		return set("modcaps", val)
	case key == "xattrmap" && hasVal:
		return set("xattrmap", val)
	}
	return usagef("Invalid compat argument '%s' specified with -o", opt)
}
