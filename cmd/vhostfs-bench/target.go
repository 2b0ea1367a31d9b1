package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/harness/fuseclient"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// ReferenceEnv overrides the reference virtiofsd binary (as it does for
// the test/conformance tests).
const ReferenceEnv = "GOVIRTIOFSD_REFERENCE"

// targetSpec says which back-end to measure.
type targetSpec struct {
	socket    string   // connect here
	daemon    string   // or start this: ours, ref, trivial, a command line
	extra     []string // extra daemon arguments
	ours      string   // govirtiofsd binary for "ours"
	ref       string   // reference binary for "ref"
	sharedDir string
	poll      time.Duration // the trivial back-end's ring polling (vhostuser.Options.Poll)
}

// target is one connected back-end with an initialised FUSE session.
type target struct {
	name      string
	fe        *frontend.Frontend
	client    *fuseclient.Client
	init      *fuse.InitOut // nil for the trivial back-end (no INIT)
	trivial   bool          // the trivial back-end: getattr only, no INIT
	inProc    *trivialServer
	sharedDir string
	tmpShare  string // removed at close
	queues    int
}

// oursBinary finds govirtiofsd: next to this program, else <repo>/bin.
func oursBinary() (string, error) {
	var tried []string
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "govirtiofsd")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
		tried = append(tried, p)
	}
	if root, err := daemon.RepoRoot(); err == nil {
		p := filepath.Join(root, "bin", "govirtiofsd")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("no govirtiofsd binary (tried %s); run make build or pass --ours", strings.Join(tried, ", "))
}

// referenceBinary finds the reference virtiofsd: $GOVIRTIOFSD_REFERENCE,
// else the lab's virtiofsd-ref.
// Outside the repository, the lab is looked for next to this program's
// folder (bin/../.cache/lab).
func referenceBinary() (string, error) {
	if p := os.Getenv(ReferenceEnv); p != "" {
		return p, nil
	}
	var tried []string
	if dir, err := daemon.LabDir(); err == nil {
		tried = append(tried, filepath.Join(dir, "bin", "virtiofsd-ref"))
	}
	if exe, err := os.Executable(); err == nil {
		tried = append(tried, filepath.Join(filepath.Dir(exe), "..", ".cache", "lab", "bin", "virtiofsd-ref"))
	}
	for _, p := range tried {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no reference virtiofsd (tried %s); run make lab, or set %s", strings.Join(tried, ", "), ReferenceEnv)
}

// daemonFor turns --daemon into a daemon.Daemon.
func daemonFor(spec targetSpec) (daemon.Daemon, error) {
	switch spec.daemon {
	case "ours":
		bin := spec.ours
		if bin == "" {
			var err error
			if bin, err = oursBinary(); err != nil {
				return daemon.Daemon{}, err
			}
		}
		d := daemon.Ours(bin)
		d.Name = "ours"
		return d, nil
	case "ref":
		bin := spec.ref
		if bin == "" {
			var err error
			if bin, err = referenceBinary(); err != nil {
				return daemon.Daemon{}, err
			}
		}
		d := daemon.Reference(bin)
		d.Name = "ref"
		return d, nil
	}
	words := strings.Fields(spec.daemon)
	if len(words) == 0 {
		return daemon.Daemon{}, errors.New("empty --daemon")
	}
	return daemon.Daemon{
		Name: filepath.Base(words[0]),
		Argv: func(sharedDir, socket string, extra []string) []string {
			var argv []string
			placeholders := false
			for _, w := range words {
				if strings.Contains(w, "{shared}") || strings.Contains(w, "{socket}") {
					placeholders = true
				}
				argv = append(argv, strings.NewReplacer("{shared}", sharedDir, "{socket}", socket).Replace(w))
			}
			if !placeholders {
				argv = append(argv, "--shared-dir", sharedDir, "--socket-path", socket)
			}
			return append(argv, extra...)
		},
	}, nil
}

// frontendOptions sizes the front-end for the workloads about to run.
func frontendOptions(cfg runConfig, names []string) frontend.Options {
	slots := uint64(cfg.queues * cfg.depth)
	var data uint64 = 4096
	for _, n := range names {
		if w := workloads[n]; w != nil {
			data = max(data, w.dataSize(cfg))
		}
	}
	// Per slot: the client's 8 KiB request and 4 KiB reply buffers, an
	// indirect table, the data buffer; plus the rings.
	perSlot := 8<<10 + 4<<10 + 1<<10 + frontend.ClassSize(data)
	size := uint64(32<<20) + slots*perSlot + slots*perSlot/4
	qs := uint16(128)
	for int(qs) < cfg.depth {
		qs *= 2
	}
	return frontend.Options{
		RequestQueues: cfg.queues,
		QueueSize:     qs,
		Memory:        frontend.MemoryLayout{Size: size},
		// No timer per request: the watchdog catches a silent back-end.
		Timeout: -1,
	}
}

// openTarget connects to or starts the back-end and runs INIT.
func openTarget(spec targetSpec, cfg runConfig, names []string) (*target, error) {
	opts := frontendOptions(cfg, names)
	t := &target{sharedDir: spec.sharedDir, queues: cfg.queues}
	stop := startWatchdog(cfg.stall, "connecting", nil, nil)
	defer stop()
	var err error
	switch {
	case spec.socket != "" && spec.daemon != "":
		return nil, errors.New("--socket and --daemon exclude each other")
	case spec.socket != "":
		if spec.sharedDir == "" {
			return nil, errors.New("--socket needs --shared-dir: the folder that back-end shares, which the workloads prepare")
		}
		t.name = "socket"
		if t.fe, err = frontend.Dial(spec.socket, opts); err != nil {
			return nil, err
		}
	case spec.daemon == "trivial-inproc":
		t.name, t.trivial = "trivial", true
		if t.inProc, err = startTrivial(cfg.queues, spec.poll); err != nil {
			return nil, err
		}
		if t.fe, err = frontend.Dial(t.inProc.socket, opts); err != nil {
			t.inProc.close()
			return nil, err
		}
	case spec.daemon == "trivial":
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		t.name, t.trivial = "trivial", true
		d := daemon.Daemon{Name: "trivial", Env: []string{serveTrivialEnv + "=1"},
			Argv: func(_, socket string, extra []string) []string {
				return append([]string{exe, "serve-trivial", "--socket-path", socket, "--poll", spec.poll.String()}, extra...)
			}}
		if t.fe, err = frontend.Start(d, daemon.Options{}, opts); err != nil {
			return nil, err
		}
	case spec.daemon != "":
		d, err := daemonFor(spec)
		if err != nil {
			return nil, err
		}
		t.name = d.Name
		if t.sharedDir == "" {
			if t.tmpShare, err = os.MkdirTemp("", "vhostfs-bench-share-"); err != nil {
				return nil, err
			}
			t.sharedDir = t.tmpShare
		}
		if t.fe, err = frontend.Start(d, daemon.Options{SharedDir: t.sharedDir, Extra: spec.extra}, opts); err != nil {
			t.removeShare()
			return nil, err
		}
	default:
		return nil, errors.New("say which back-end: --socket PATH or --daemon ours|ref|trivial|CMD")
	}
	if t.fe.NumQueues() < 1+cfg.queues {
		t.close()
		return nil, fmt.Errorf("%s: %d request queues started, %d wanted", t.name, t.fe.NumQueues()-1, cfg.queues)
	}
	t.client = fuseclient.New(t.fe, fuseclient.Options{})
	if !t.trivial {
		if t.init, err = t.client.Init(); err != nil {
			t.close()
			return nil, fmt.Errorf("%s: INIT: %w", t.name, err)
		}
	}
	if t.sharedDir != "" {
		if t.sharedDir, err = filepath.Abs(t.sharedDir); err != nil {
			t.close()
			return nil, err
		}
	}
	return t, nil
}

func (t *target) removeShare() {
	if t.tmpShare != "" {
		os.RemoveAll(t.tmpShare)
		t.tmpShare = ""
	}
}

// close disconnects; a daemon that was started must then exit with
// status 0.
func (t *target) close() error {
	var errs []error
	if t.client != nil {
		t.client.Close()
	}
	if t.fe != nil {
		proc := t.fe.Proc()
		if err := t.fe.Close(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.name, err))
			if proc != nil {
				errs = append(errs, fmt.Errorf("%s output:\n%s", t.name, lastLines(proc.Stderr(), 20)))
			}
		}
	}
	if t.inProc != nil {
		if err := t.inProc.close(); err != nil {
			errs = append(errs, err)
		}
	}
	t.removeShare()
	return errors.Join(errs...)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
