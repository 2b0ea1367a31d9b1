// Command vhostfs-bench measures a virtio-fs vhost-user back-end from the
// front-end side, without a guest: it drives the device with the Go
// front-end of harness/frontend (guest RAM in a memfd, split virtqueues,
// eventfd kicks and calls) and its FUSE client, as a guest kernel would,
// and reports operations per second, MB/s and p50/p99 latency.
//
// It connects to a back-end's socket (--socket, with --shared-dir naming
// the folder that back-end shares) or starts one (--daemon ours, ref, or a
// command line; "trivial" is an in-process back-end that answers every
// request with a fixed GETATTR reply, the harness's own ceiling). It
// prepares the shared folder from the host side (a 1 GiB file read into
// the host page cache, a folder of 10,000 entries) and runs the workloads
// getattr, lookup, read-4k, read-1m, write-1m, create-unlink and
// readdirplus with --depth requests in flight on each of --queues request
// queues.
//
// The harness is meant to cost as little as possible per request: one
// goroutine per in-flight slot, every buffer in guest memory allocated
// once, no timer per request (a watchdog catches a back-end that stops
// answering), no copies of read or written data. Each result reports the
// harness's allocations per operation as evidence.
//
// "vhostfs-bench compare" is the driver of make bench: every workload
// against govirtiofsd and the reference virtiofsd, alternating, for
// several rounds, then the medians, their ratios, a chart and a JSON
// record.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

func main() {
	if os.Getenv(serveTrivialEnv) != "" {
		serveTrivialAndExit(os.Args[1:])
	}
	args := os.Args[1:]
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = runMain(args, os.Stdout)
	case "compare":
		err = compareMain(args, os.Stdout)
	case "help":
		usage(os.Stdout)
	default:
		err = fmt.Errorf("unknown subcommand %q (run, compare)", cmd)
	}
	if errors.Is(err, pflag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vhostfs-bench:", err)
		os.Exit(1)
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  vhostfs-bench [run] (--socket PATH --shared-dir DIR | --daemon ours|ref|trivial|CMD) [flags]
      run workloads against one back-end
  vhostfs-bench compare [flags]
      make bench: both daemons, alternating rounds, medians, ratios, chart
  vhostfs-bench <subcommand> --help
`)
}

// Defaults of make bench.
const (
	defaultDepth     = 16 // requests in flight per queue
	benchMultiQueues = 4  // request queues of the extra runs of ours
)

// runFlags are the options of the run subcommand.
type runFlags struct {
	target     targetSpec
	workloads  string
	cfg        runConfig
	json       bool
	cpuProfile string
}

func runMain(args []string, out io.Writer) error {
	var rf runFlags
	f := pflag.NewFlagSet("vhostfs-bench run", pflag.ContinueOnError)
	f.SortFlags = false
	f.StringVar(&rf.target.socket, "socket", "", "connect to the back-end listening on this vhost-user socket")
	f.DurationVar(&rf.target.poll, "trivial-poll", 0, "the trivial back-end's ring workers poll an empty ring this long before they sleep")
	f.StringVar(&rf.target.daemon, "daemon", "", `start a back-end: "ours" (govirtiofsd next to this program or bin/govirtiofsd), "ref" (the lab's virtiofsd-ref, or $GOVIRTIOFSD_REFERENCE), "trivial" (fixed GETATTR replies, no file system: the harness's ceiling; in a process of its own, or "trivial-inproc" in this one) or a command line, run with --shared-dir DIR --socket-path SOCK appended unless it holds {shared} and {socket}`)
	f.StringArrayVar(&rf.target.extra, "daemon-arg", nil, "extra argument for the started back-end (repeatable)")
	f.StringVar(&rf.target.ours, "ours", "", "govirtiofsd binary for --daemon ours")
	f.StringVar(&rf.target.sharedDir, "shared-dir", "", "the shared folder (prepared from the host side); a temporary one when a daemon is started and this is empty")
	f.StringVar(&rf.workloads, "workload", "getattr", "comma-separated workloads, or all: "+strings.Join(workloadNames(), ", "))
	f.IntVar(&rf.cfg.queues, "queues", 1, "request queues used (the reference serves 1)")
	f.IntVar(&rf.cfg.depth, "depth", defaultDepth, "requests in flight per queue")
	f.DurationVar(&rf.cfg.duration, "duration", 3*time.Second, "measured time per workload")
	f.DurationVar(&rf.cfg.warmup, "warmup", 500*time.Millisecond, "unmeasured time before it")
	f.IntVar(&rf.cfg.readdirSize, "readdir-size", 4096, "bytes asked per READDIRPLUS (Linux asks one page)")
	f.DurationVar(&rf.cfg.spin, "spin", 0, "poll the used ring this long before sleeping on the call eventfd (0: sleep at once, as a guest does)")
	f.DurationVar(&rf.cfg.stall, "stall", 30*time.Second, "give up when no request completes for this long")
	f.BoolVar(&rf.json, "json", false, "print one JSON object per workload instead of text")
	f.StringVar(&rf.cpuProfile, "cpuprofile", "", "write a CPU profile of the harness to this file")
	if err := f.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return err
	}
	if f.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", f.Args())
	}
	names, err := parseWorkloads(rf.workloads)
	if err != nil {
		return err
	}
	if err := rf.cfg.check(); err != nil {
		return err
	}
	if rf.cpuProfile != "" {
		pf, err := os.Create(rf.cpuProfile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	tg, err := openTarget(rf.target, rf.cfg, names)
	if err != nil {
		return err
	}
	var errs []error
	enc := json.NewEncoder(out)
	if !rf.json {
		fmt.Fprintln(out, resultHeader())
	}
	for _, name := range names {
		res, err := runWorkload(tg, name, rf.cfg)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			break
		}
		if rf.json {
			enc.Encode(res)
		} else {
			fmt.Fprintln(out, res.line())
		}
	}
	if err := tg.close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
