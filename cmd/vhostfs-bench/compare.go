package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/benchstat"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"
	"github.com/spf13/pflag"
)

// compareFlags are the options of the compare subcommand (make bench).
type compareFlags struct {
	rounds    int
	cfg       runConfig
	mq        int
	mqLoads   string
	poolLoads string
	workloads string
	outDir    string
	sharedDir string
	ours, ref string
	noCeiling bool
}

// daemonSample is one daemon's figures for one workload over the rounds.
type daemonSample struct {
	OpsPerSec       []float64 `json:"ops_per_sec"`
	MedianOpsPerSec float64   `json:"median_ops_per_sec"`
	BestOpsPerSec   float64   `json:"best_ops_per_sec"`
	MedianMBPerSec  float64   `json:"median_mb_per_sec"`
	MedianP50us     float64   `json:"median_p50_us"`
	MedianP99us     float64   `json:"median_p99_us"`
	MedianAllocsOp  float64   `json:"median_harness_allocs_per_op"`
	MedianCPU       float64   `json:"median_harness_cpu_cores"`
	MedianDaemonCPU float64   `json:"median_daemon_cpu_cores"`
}

func summarize(rs []result) daemonSample {
	var s daemonSample
	pick := func(f func(result) float64) []float64 {
		out := make([]float64, len(rs))
		for i, r := range rs {
			out[i] = f(r)
		}
		return out
	}
	s.OpsPerSec = pick(func(r result) float64 { return r.OpsPerSec })
	s.MedianOpsPerSec = benchstat.Median(s.OpsPerSec)
	s.BestOpsPerSec = slices.Max(s.OpsPerSec)
	s.MedianMBPerSec = benchstat.Median(pick(func(r result) float64 { return r.MBPerSec }))
	s.MedianP50us = benchstat.Median(pick(func(r result) float64 { return r.P50us }))
	s.MedianP99us = benchstat.Median(pick(func(r result) float64 { return r.P99us }))
	s.MedianAllocsOp = benchstat.Median(pick(func(r result) float64 { return r.AllocsPerOp }))
	s.MedianCPU = benchstat.Median(pick(func(r result) float64 { return r.HarnessCPU }))
	s.MedianDaemonCPU = benchstat.Median(pick(func(r result) float64 { return r.DaemonCPU }))
	return s
}

// workloadLine is one line of the summary.
type workloadLine struct {
	Name     string       `json:"name"`
	What     string       `json:"what"`
	Queues   int          `json:"queues"`
	Ours     daemonSample `json:"ours"`
	Ref      daemonSample `json:"ref"`
	RefLabel string       `json:"ref_label"`
	// RefOpsPerSec is what the ratio divides by: the reference's median,
	// or for multi-queue lines its best single-queue round.
	RefOpsPerSec float64 `json:"ref_ops_per_sec"`
	Ratio        float64 `json:"ratio"`
}

type compareRecord struct {
	Date string `json:"date"`
	Host struct {
		CPUs      int    `json:"cpus"`
		Kernel    string `json:"kernel"`
		GoVersion string `json:"go_version"`
		// The 1-minute load average before and after the runs: other
		// work on the machine makes the figures noisy.
		LoadBefore string `json:"load_before"`
		LoadAfter  string `json:"load_after"`
	} `json:"host"`
	Config struct {
		Rounds          int     `json:"rounds"`
		DurationSeconds float64 `json:"duration_seconds"`
		WarmupSeconds   float64 `json:"warmup_seconds"`
		Depth           int     `json:"depth"`
		SpinSeconds     float64 `json:"spin_seconds"`
		MultiQueues     int     `json:"multi_queues"`
		ReaddirSize     int     `json:"readdir_size"`
		Ours            string  `json:"ours"`
		OursArgs        string  `json:"ours_args"`
		Ref             string  `json:"ref"`
		RefArgs         string  `json:"ref_args"`
		SharedDir       string  `json:"shared_dir"`
	} `json:"config"`
	Workloads  []workloadLine `json:"workloads"`
	MultiQueue []workloadLine `json:"multi_queue"`
	// Pool is both daemons with Kata's --thread-pool-size=1.
	Pool         []workloadLine `json:"thread_pool_1"`
	GeomeanRatio float64        `json:"geomean_ratio"`
	Runs         []compareRun   `json:"runs"`
	// Ceiling is getattr against the trivial back-end, in the same
	// configurations; CeilingHeadroom is its best over the best daemon
	// getattr round.
	Ceiling         []result `json:"harness_ceiling"`
	CeilingHeadroom float64  `json:"harness_ceiling_headroom"`
}

type compareRun struct {
	Round int `json:"round"`
	result
}

func compareMain(args []string, out io.Writer) error {
	var cf compareFlags
	f := pflag.NewFlagSet("vhostfs-bench compare", pflag.ContinueOnError)
	f.SortFlags = false
	f.IntVar(&cf.rounds, "rounds", 3, "rounds; each runs every workload on both daemons, alternating which goes first")
	f.DurationVar(&cf.cfg.duration, "duration", 3*time.Second, "measured time per workload, daemon and round")
	f.DurationVar(&cf.cfg.warmup, "warmup", 500*time.Millisecond, "unmeasured time before it")
	f.IntVar(&cf.cfg.depth, "depth", defaultDepth, "requests in flight per queue")
	f.IntVar(&cf.mq, "multi-queues", benchMultiQueues, "request queues for the extra runs of ours (0: none)")
	f.StringVar(&cf.mqLoads, "multi-queue-workloads", "getattr,read-4k", "workloads run again on ours with --multi-queues queues")
	f.StringVar(&cf.poolLoads, "pool-workloads", "getattr,read-4k,write-1m", "workloads run again on both daemons with --thread-pool-size=1, as Kata starts them (empty: none)")
	f.StringVar(&cf.workloads, "workload", "all", "comma-separated workloads, or all")
	f.IntVar(&cf.cfg.readdirSize, "readdir-size", 4096, "bytes asked per READDIRPLUS")
	f.DurationVar(&cf.cfg.stall, "stall", 30*time.Second, "give up when no request completes for this long")
	f.DurationVar(&cf.cfg.spin, "spin", 0, "poll the used ring this long before sleeping on the call eventfd (0: sleep at once, as a guest does)")
	f.BoolVar(&cf.noCeiling, "no-ceiling", false, "skip the getattr runs against the trivial back-end (the harness's own ceiling)")
	f.StringVar(&cf.outDir, "out", "results", "folder for bench.json and bench.png")
	f.StringVar(&cf.sharedDir, "shared-dir", "", "shared folder for both daemons (default <repo>/.cache/bench/share, kept: the 1 GiB file is made once)")
	f.StringVar(&cf.ours, "ours", "", "govirtiofsd binary (default: next to this program, or bin/govirtiofsd)")
	f.StringVar(&cf.ref, "ref", "", "reference virtiofsd (default: $"+ReferenceEnv+", or the lab's virtiofsd-ref)")
	if err := f.Parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", f.Args())
	}
	if cf.rounds < 1 {
		return errors.New("--rounds must be at least 1")
	}
	cf.cfg.queues = 1
	if err := cf.cfg.check(); err != nil {
		return err
	}
	names, err := parseWorkloads(cf.workloads)
	if err != nil {
		return err
	}
	var mqNames, poolNames []string
	if cf.poolLoads != "" {
		if poolNames, err = parseWorkloads(cf.poolLoads); err != nil {
			return err
		}
	}
	if cf.mq > 1 && cf.mqLoads != "" {
		if mqNames, err = parseWorkloads(cf.mqLoads); err != nil {
			return err
		}
	}
	if cf.ours == "" {
		if cf.ours, err = oursBinary(); err != nil {
			return err
		}
	}
	if cf.ref == "" {
		if cf.ref, err = referenceBinary(); err != nil {
			return err
		}
	}
	if cf.sharedDir == "" {
		root, err := daemon.RepoRoot()
		if err != nil {
			return fmt.Errorf("no --shared-dir and no repository to keep one in: %w", err)
		}
		cf.sharedDir = filepath.Join(root, ".cache", "bench", "share")
	}
	if err := os.MkdirAll(cf.sharedDir, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(cf.outDir, 0o755); err != nil {
		return err
	}

	pool1 := []string{"--thread-pool-size=1"}
	specs := map[string]targetSpec{
		"ours":       {daemon: "ours", ours: cf.ours, sharedDir: cf.sharedDir},
		"ref":        {daemon: "ref", ref: cf.ref, sharedDir: cf.sharedDir},
		"ours-pool1": {daemon: "ours", ours: cf.ours, sharedDir: cf.sharedDir, extra: pool1},
		"ref-pool1":  {daemon: "ref", ref: cf.ref, sharedDir: cf.sharedDir, extra: pool1},
	}
	runs := (2*len(names) + len(mqNames) + 2*len(poolNames)) * cf.rounds
	est := time.Duration(runs) * (cf.cfg.duration + cf.cfg.warmup + 700*time.Millisecond)
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) }
	logf("vhostfs-bench compare: %d rounds of %s per workload and daemon, depth %d, spin %v, %d runs, about %v",
		cf.rounds, cf.cfg.duration, cf.cfg.depth, cf.cfg.spin, runs, est.Round(time.Second))
	logf("  ours: %s (its defaults: namespace sandbox, seccomp kill)", cf.ours)
	logf("  ref:  %s (--sandbox none --seccomp none)", cf.ref)
	logf("  shared folder: %s", cf.sharedDir)

	var rec compareRecord
	rec.Host.LoadBefore = loadAverage()
	one := func(round int, daemon, name string, queues int) error {
		cfg := cf.cfg
		cfg.queues = queues
		tg, err := openTarget(specs[daemon], cfg, []string{name})
		if err != nil {
			return fmt.Errorf("round %d, %s on %s: %w", round+1, name, daemon, err)
		}
		res, err := runWorkload(tg, name, cfg)
		if cerr := tg.close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("round %d, %s on %s with %d queues: %w", round+1, name, daemon, queues, err)
		}
		res.Daemon = daemon
		rec.Runs = append(rec.Runs, compareRun{Round: round + 1, result: res})
		logf("  round %d  %s", round+1, res.line())
		return nil
	}
	// both runs name on daemons a and b, a first in even rounds.
	both := func(round int, name, a, b string) error {
		if round%2 == 1 {
			a, b = b, a
		}
		if err := one(round, a, name, 1); err != nil {
			return err
		}
		return one(round, b, name, 1)
	}
	begin := time.Now()
	logf("  %s", resultHeader())
	for round := 0; round < cf.rounds; round++ {
		for _, name := range names {
			if err := both(round, name, "ours", "ref"); err != nil {
				return err
			}
			if slices.Contains(mqNames, name) {
				if err := one(round, "ours", name, cf.mq); err != nil {
					return err
				}
			}
		}
	}
	// Multi-queue workloads not among the single-queue ones still run.
	for round := 0; round < cf.rounds; round++ {
		for _, name := range mqNames {
			if !slices.Contains(names, name) {
				if err := one(round, "ours", name, cf.mq); err != nil {
					return err
				}
			}
		}
	}
	// Both daemons again with a pool of one worker thread, as both Kata
	// runtimes start them.
	for round := 0; round < cf.rounds; round++ {
		for _, name := range poolNames {
			if err := both(round, name, "ours-pool1", "ref-pool1"); err != nil {
				return err
			}
		}
	}
	// The harness's own ceiling: getattr against the trivial back-end
	// (fixed replies, no file system) with the queue counts used above, at
	// the depth used above and at 4 times it (how much the harness can
	// sustain is the question; see TestHarnessCeiling).
	type ceilingConfig struct{ queues, depth int }
	var ceilings []ceilingConfig
	for _, q := range []int{1, cf.mq} {
		if q < 1 || (q == cf.mq && q == 1) {
			continue
		}
		for _, d := range []int{cf.cfg.depth, min(4*cf.cfg.depth, 1024)} {
			ceilings = append(ceilings, ceilingConfig{q, d})
		}
	}
	if !cf.noCeiling && slices.Contains(names, "getattr") {
		for _, cc := range ceilings {
			q := cc.queues
			cfg := cf.cfg
			cfg.queues, cfg.depth = q, cc.depth
			tg, err := openTarget(targetSpec{daemon: "trivial"}, cfg, []string{"getattr"})
			if err != nil {
				return fmt.Errorf("harness ceiling: %w", err)
			}
			res, err := runWorkload(tg, "getattr", cfg)
			if cerr := tg.close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("harness ceiling with %d queues: %w", q, err)
			}
			rec.Ceiling = append(rec.Ceiling, res)
			logf("  ceiling  %s", res.line())
		}
	}
	logf("vhostfs-bench compare: done in %v", time.Since(begin).Round(time.Second))
	rec.Host.LoadAfter = loadAverage()

	pickRuns := func(daemon, name string, queues int) []result {
		var rs []result
		for _, r := range rec.Runs {
			if r.Daemon == daemon && r.Workload == name && r.Queues == queues {
				rs = append(rs, r.result)
			}
		}
		return rs
	}
	var ratios []float64
	for _, name := range names {
		l := workloadLine{Name: name, What: workloads[name].what, Queues: 1,
			Ours: summarize(pickRuns("ours", name, 1)), Ref: summarize(pickRuns("ref", name, 1)), RefLabel: "ref"}
		l.RefOpsPerSec = l.Ref.MedianOpsPerSec
		l.Ratio = l.Ours.MedianOpsPerSec / l.RefOpsPerSec
		ratios = append(ratios, l.Ratio)
		rec.Workloads = append(rec.Workloads, l)
	}
	for _, name := range mqNames {
		l := workloadLine{Name: fmt.Sprintf("%s-%dq", name, cf.mq), What: workloads[name].what, Queues: cf.mq,
			Ours: summarize(pickRuns("ours", name, cf.mq)), RefLabel: "ref-best-1q"}
		if refRuns := pickRuns("ref", name, 1); len(refRuns) > 0 {
			l.Ref = summarize(refRuns)
			l.RefOpsPerSec = l.Ref.BestOpsPerSec
			l.Ratio = l.Ours.MedianOpsPerSec / l.RefOpsPerSec
		}
		rec.MultiQueue = append(rec.MultiQueue, l)
	}
	for _, name := range poolNames {
		l := workloadLine{Name: name + "-pool1", What: workloads[name].what, Queues: 1,
			Ours: summarize(pickRuns("ours-pool1", name, 1)), Ref: summarize(pickRuns("ref-pool1", name, 1)), RefLabel: "ref-pool1"}
		l.RefOpsPerSec = l.Ref.MedianOpsPerSec
		l.Ratio = l.Ours.MedianOpsPerSec / l.RefOpsPerSec
		rec.Pool = append(rec.Pool, l)
	}
	rec.GeomeanRatio = benchstat.Geomean(ratios)

	fmt.Fprintf(out, "# median ops/s over %d rounds, depth %d, spin %v; ratio = ours/ref; %s; load average %s before, %s after\n",
		cf.rounds, cf.cfg.depth, cf.cfg.spin, "ref-best-1q = the reference's best single-queue round", rec.Host.LoadBefore, rec.Host.LoadAfter)
	for _, l := range rec.Workloads {
		fmt.Fprintf(out, "%s ours %.0f ref %.0f ratio %.2f\n", l.Name, l.Ours.MedianOpsPerSec, l.RefOpsPerSec, l.Ratio)
	}
	fmt.Fprintf(out, "geomean ratio %.2f\n", rec.GeomeanRatio)
	for _, l := range rec.MultiQueue {
		if l.RefOpsPerSec == 0 {
			fmt.Fprintf(out, "%s ours %.0f\n", l.Name, l.Ours.MedianOpsPerSec)
			continue
		}
		fmt.Fprintf(out, "%s ours %.0f ref-best-1q %.0f ratio %.2f\n", l.Name, l.Ours.MedianOpsPerSec, l.RefOpsPerSec, l.Ratio)
	}
	for _, l := range rec.Pool {
		fmt.Fprintf(out, "%s ours %.0f ref %.0f ratio %.2f (both --thread-pool-size=1)\n", l.Name, l.Ours.MedianOpsPerSec, l.RefOpsPerSec, l.Ratio)
	}
	if len(rec.Ceiling) > 0 {
		var best, ceiling float64
		for _, r := range rec.Runs {
			if r.Workload == "getattr" {
				best = max(best, r.OpsPerSec)
			}
		}
		var parts []string
		for _, r := range rec.Ceiling {
			ceiling = max(ceiling, r.OpsPerSec)
			parts = append(parts, fmt.Sprintf("%dq/depth %d %.0f", r.Queues, r.Depth, r.OpsPerSec))
		}
		rec.CeilingHeadroom = ceiling / best
		fmt.Fprintf(out, "# harness ceiling: getattr against a trivial back-end %s, %.2fx the best daemon getattr round (%.0f)\n",
			strings.Join(parts, ", "), rec.CeilingHeadroom, best)
	}

	rec.Date = time.Now().UTC().Format(time.RFC3339)
	rec.Host.CPUs = runtime.NumCPU()
	rec.Host.GoVersion = runtime.Version()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		rec.Host.Kernel = strings.TrimSpace(string(b))
	}
	c := &rec.Config
	c.Rounds, c.Depth, c.MultiQueues, c.ReaddirSize = cf.rounds, cf.cfg.depth, cf.mq, cf.cfg.readdirSize
	c.DurationSeconds, c.WarmupSeconds = cf.cfg.duration.Seconds(), cf.cfg.warmup.Seconds()
	c.SpinSeconds = cf.cfg.spin.Seconds()
	c.Ours, c.OursArgs = cf.ours, "--shared-dir D --socket-path S (defaults: namespace sandbox, seccomp kill)"
	c.Ref, c.RefArgs = cf.ref, "--shared-dir D --socket-path S --sandbox none --seccomp none"
	c.SharedDir = cf.sharedDir
	var errs []error
	js, err := json.MarshalIndent(&rec, "", "  ")
	if err == nil {
		jsonPath := filepath.Join(cf.outDir, "bench.json")
		if err = os.WriteFile(jsonPath, append(js, '\n'), 0o644); err == nil {
			fmt.Fprintf(out, "wrote %s\n", jsonPath)
		}
	}
	errs = append(errs, err)
	pngPath := filepath.Join(cf.outDir, "bench.png")
	if err := drawChart(pngPath, &rec); err != nil {
		errs = append(errs, fmt.Errorf("chart: %w", err))
	} else {
		fmt.Fprintf(out, "wrote %s\n", pngPath)
	}
	return errors.Join(errs...)
}

// loadAverage returns the 1-minute load average, or "?".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}
