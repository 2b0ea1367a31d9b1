// Package workloads runs the vhostfs-bench program, built as make build
// builds it, against govirtiofsd and the reference virtiofsd of the lab,
// as a user would: its run and compare subcommands with short durations,
// their JSON output checked for every workload.
package workloads

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"
)

// referenceEnv is vhostfs-bench's override of the reference virtiofsd
// (its --daemon ref; compare's default --ref).
const referenceEnv = "GOVIRTIOFSD_REFERENCE"

// knownWorkloads are the workloads "--workload all" must at least run (it
// may run more; every one it reports is checked).
var knownWorkloads = []string{"getattr", "lookup", "read-4k", "read-1m", "write-1m", "create-unlink", "readdirplus"}

// Defaults of make bench (vhostfs-bench's defaultDepth and
// benchMultiQueues).
const (
	benchDepth       = 16
	benchMultiQueues = 4
)

var (
	setupOnce sync.Once
	setupDir  string
	benchBin  string // vhostfs-bench, with govirtiofsd next to it as in bin/
	refBin    string
	shareDir  string
	setupErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if setupDir != "" {
		os.RemoveAll(setupDir)
	}
	os.Exit(code)
}

// setup builds vhostfs-bench and govirtiofsd into one folder (vhostfs-bench
// finds the govirtiofsd next to it, as in bin/), finds the reference and
// makes the shared folder, once per test binary; a missing lab fails the
// test.
func setup(t *testing.T) {
	t.Helper()
	setupOnce.Do(func() {
		if refBin = os.Getenv(referenceEnv); refBin == "" {
			var dir string
			if dir, setupErr = daemon.LabDir(); setupErr != nil {
				return
			}
			refBin = filepath.Join(dir, "bin", "virtiofsd-ref")
		}
		if st, err := os.Stat(refBin); err != nil || st.Mode()&0o111 == 0 {
			setupErr = errors.New("the reference virtiofsd is missing: " + refBin + "; run test/lib/lab/fetch.sh (or set " + daemon.LabEnv + " or " + referenceEnv + ")")
			return
		}
		if setupDir, setupErr = os.MkdirTemp("", "vhostfs-bench-workloads-"); setupErr != nil {
			return
		}
		bin := filepath.Join(setupDir, "bin")
		benchBin = filepath.Join(bin, "vhostfs-bench")
		if setupErr = daemon.BuildStatic("./cmd/vhostfs-bench", benchBin, false); setupErr != nil {
			return
		}
		if setupErr = daemon.BuildOurs(filepath.Join(bin, "govirtiofsd")); setupErr != nil {
			return
		}
		// One shared folder for every run: vhostfs-bench prepares it
		// once and keeps what it made. Its 1 GiB file ("big-1g") is made
		// here, sparse: vhostfs-bench takes a file of that name and size
		// as it is, and writing a real one takes seconds (the figures of
		// reading holes are good enough here).
		shareDir = filepath.Join(setupDir, "share")
		if setupErr = os.Mkdir(shareDir, 0o755); setupErr != nil {
			return
		}
		f, err := os.Create(filepath.Join(shareDir, "big-1g"))
		if err == nil {
			err = f.Truncate(1 << 30)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		setupErr = err
	})
	if setupErr != nil {
		t.Fatal(setupErr)
	}
}

// bench runs vhostfs-bench with args (in a folder of the test's, with the
// reference in $GOVIRTIOFSD_REFERENCE) and returns its standard output.
// It fails the test, quoting both outputs, unless the program exits 0:
// it exits 1 when a workload fails, stalls, or a daemon does not exit
// cleanly after the run.
func bench(t *testing.T, args ...string) []byte {
	t.Helper()
	setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, benchBin, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), referenceEnv+"="+refBin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	if err != nil {
		t.Fatalf("vhostfs-bench %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	t.Logf("vhostfs-bench %s (%v):\n%s%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), stderr.String(), stdout.String())
	return stdout.Bytes()
}

// result is the part of vhostfs-bench's JSON result of one workload run
// that is checked.
type result struct {
	Workload    string  `json:"workload"`
	Daemon      string  `json:"daemon"`
	Queues      int     `json:"queues"`
	Depth       int     `json:"depth"`
	Ops         uint64  `json:"ops"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	P50us       float64 `json:"p50_us"`
	AllocsPerOp float64 `json:"harness_allocs_per_op"`
	HarnessCPU  float64 `json:"harness_cpu_cores"`
}

// results decodes the JSON objects "run --json" prints, one per workload.
func results(t *testing.T, out []byte) []result {
	t.Helper()
	var rs []result
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var r result
		if err := dec.Decode(&r); err == io.EOF {
			return rs
		} else if err != nil {
			t.Fatalf("decoding vhostfs-bench's JSON output: %v\n%s", err, out)
		}
		rs = append(rs, r)
	}
}

// checkResult checks one run: daemon and queues as asked, operations
// completed, and no allocation by the harness per request.
func checkResult(t *testing.T, r result, daemonName string, queues int) {
	t.Helper()
	if r.Daemon != daemonName || r.Queues != queues {
		t.Errorf("%s: run on %q with %d queues, want %q with %d", r.Workload, r.Daemon, r.Queues, daemonName, queues)
	}
	if r.Ops == 0 || r.OpsPerSec <= 0 {
		t.Errorf("%s on %s: %d operations (%.0f/s)", r.Workload, r.Daemon, r.Ops, r.OpsPerSec)
	}
	// A few allocations of the runtime itself may land in the window;
	// per request there must be none.
	if allocs := r.AllocsPerOp * float64(r.Ops); allocs > 20 && r.AllocsPerOp > 0.01 {
		t.Errorf("%s on %s: the harness allocated %.0f times in %d operations", r.Workload, r.Daemon, allocs, r.Ops)
	}
}

// short are the flags of a brief run.
var short = []string{"--depth", "4", "--duration", "300ms", "--warmup", "100ms", "--stall", "20s"}

// TestWorkloads runs every workload briefly against both daemons, in one
// session per daemon ("run --workload all"): each must complete
// operations without errors, the harness must not allocate per request,
// and each daemon must exit cleanly once disconnected.
func TestWorkloads(t *testing.T) {
	setup(t)
	for _, d := range []string{"ours", "ref"} {
		t.Run(d, func(t *testing.T) {
			args := append([]string{"run", "--daemon", d, "--shared-dir", shareDir, "--workload", "all", "--queues", "1", "--json"}, short...)
			rs := results(t, bench(t, args...))
			var ran []string
			for _, r := range rs {
				checkResult(t, r, d, 1)
				if slices.Contains(ran, r.Workload) {
					t.Errorf("%s reported twice", r.Workload)
				}
				ran = append(ran, r.Workload)
			}
			for _, w := range knownWorkloads {
				if !slices.Contains(ran, w) {
					t.Errorf("--workload all did not run %s (ran %q)", w, ran)
				}
			}
		})
	}
	// The queues of a session can be driven again after a run: two
	// workloads in a row on 2 queues.
	t.Run("ours-2q", func(t *testing.T) {
		names := []string{"getattr", "create-unlink", "getattr"}
		args := append([]string{"run", "--daemon", "ours", "--shared-dir", shareDir, "--workload", strings.Join(names, ","), "--queues", "2", "--json"}, short...)
		rs := results(t, bench(t, args...))
		if len(rs) != len(names) {
			t.Fatalf("%d results, want %d (%q)", len(rs), len(names), names)
		}
		for i, r := range rs {
			if r.Workload != names[i] {
				t.Errorf("result %d is %s, want %s", i, r.Workload, names[i])
			}
			checkResult(t, r, "ours", 2)
		}
	})
}

// sample and line are the part of a bench.json workload line that is
// checked.
type sample struct {
	OpsPerSec       []float64 `json:"ops_per_sec"`
	MedianOpsPerSec float64   `json:"median_ops_per_sec"`
}

type line struct {
	Name   string  `json:"name"`
	Queues int     `json:"queues"`
	Ours   sample  `json:"ours"`
	Ref    sample  `json:"ref"`
	Ratio  float64 `json:"ratio"`
}

// TestCompare runs make bench's driver, "vhostfs-bench compare", for one
// short round and checks the bench.json it writes: every workload on both
// daemons, the multi-queue and one-thread-pool lines, the harness
// ceiling; and that it drew its chart.
func TestCompare(t *testing.T) {
	setup(t)
	out := t.TempDir()
	args := append([]string{"compare", "--rounds", "1", "--workload", "all", "--shared-dir", shareDir, "--out", out,
		"--multi-queues", "2", "--multi-queue-workloads", "getattr", "--pool-workloads", "getattr"}, short...)
	bench(t, args...)
	b, err := os.ReadFile(filepath.Join(out, "bench.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Workloads  []line `json:"workloads"`
		MultiQueue []line `json:"multi_queue"`
		Pool       []line `json:"thread_pool_1"`
		Runs       []struct {
			Round int `json:"round"`
			result
		} `json:"runs"`
		Ceiling []result `json:"harness_ceiling"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("bench.json: %v\n%s", err, b)
	}
	checkLine := func(l line, both bool) {
		t.Helper()
		if len(l.Ours.OpsPerSec) != 1 || l.Ours.MedianOpsPerSec <= 0 {
			t.Errorf("%s: ours %v ops/s (median %.0f), want one positive round", l.Name, l.Ours.OpsPerSec, l.Ours.MedianOpsPerSec)
		}
		if both && (len(l.Ref.OpsPerSec) != 1 || l.Ref.MedianOpsPerSec <= 0 || l.Ratio <= 0) {
			t.Errorf("%s: ref %v ops/s (median %.0f), ratio %.2f, want one positive round", l.Name, l.Ref.OpsPerSec, l.Ref.MedianOpsPerSec, l.Ratio)
		}
	}
	var lines []string
	for _, l := range rec.Workloads {
		lines = append(lines, l.Name)
		checkLine(l, true)
	}
	for _, w := range knownWorkloads {
		if !slices.Contains(lines, w) {
			t.Errorf("bench.json has no line for %s (has %q)", w, lines)
		}
	}
	// Every run of every line, on the daemon it names.
	perDaemon := map[string][]string{}
	for _, r := range rec.Runs {
		if r.Round != 1 {
			t.Errorf("%s on %s: round %d of 1", r.Workload, r.Daemon, r.Round)
		}
		checkResult(t, r.result, r.Daemon, r.Queues)
		perDaemon[r.Daemon] = append(perDaemon[r.Daemon], r.Workload+"/"+strconv.Itoa(r.Queues))
	}
	for _, l := range rec.Workloads {
		for _, d := range []string{"ours", "ref"} {
			if !slices.Contains(perDaemon[d], l.Name+"/1") {
				t.Errorf("no run of %s on %s (runs %q)", l.Name, d, perDaemon[d])
			}
		}
	}
	if len(rec.MultiQueue) != 1 || rec.MultiQueue[0].Name != "getattr-2q" || rec.MultiQueue[0].Queues != 2 {
		t.Errorf("multi-queue lines %+v, want getattr-2q", rec.MultiQueue)
	}
	for _, l := range rec.MultiQueue {
		checkLine(l, false)
	}
	if len(rec.Pool) != 1 || rec.Pool[0].Name != "getattr-pool1" {
		t.Errorf("thread-pool lines %+v, want getattr-pool1", rec.Pool)
	}
	for _, l := range rec.Pool {
		checkLine(l, true)
	}
	if len(rec.Ceiling) == 0 {
		t.Error("no harness ceiling runs")
	}
	for _, r := range rec.Ceiling {
		checkResult(t, r, "trivial", r.Queues)
	}
	if st, err := os.Stat(filepath.Join(out, "bench.png")); err != nil || st.Size() == 0 {
		t.Errorf("no chart: %v", err)
	}
}

// ceilingEnv enables TestHarnessCeiling, a timing test that needs the
// machine to itself.
const ceilingEnv = "VHOSTFS_BENCH_CEILING"

// TestHarnessCeiling is the evidence that the harness is not what limits
// the figures make bench reports. GETATTR runs against both daemons in the
// configurations make bench measures it in (benchDepth requests in flight
// per queue; one request queue, and benchMultiQueues for ours), and
// against the trivial back-end (no file system, fixed replies; in a
// process of its own as the daemons run, and in vhostfs-bench's) over a
// sweep of queues and depths, since what is asked is what the harness can
// sustain. The harness's best rate must be at least three times the best
// rate of either daemon. Rounds alternate between the back-ends so that
// load from elsewhere hits them alike; the best of the rounds counts.
func TestHarnessCeiling(t *testing.T) {
	if os.Getenv(ceilingEnv) == "" {
		t.Skipf("timing test: set %s=1 and run it alone on a quiet machine (make ceiling)", ceilingEnv)
	}
	setup(t)
	const want = 3.0
	rounds := 3
	type config struct{ queues, depth int }
	sweep := []config{{1, 16}, {1, 64}, {benchMultiQueues, 16}, {benchMultiQueues, 64}}
	measure := func(backend string, c config) result {
		t.Helper()
		args := []string{"run", "--daemon", backend, "--workload", "getattr", "--json",
			"--queues", strconv.Itoa(c.queues), "--depth", strconv.Itoa(c.depth),
			"--duration", "1s", "--warmup", "300ms", "--stall", "20s"}
		if !strings.HasPrefix(backend, "trivial") {
			args = append(args, "--shared-dir", shareDir)
		}
		rs := results(t, bench(t, args...))
		if len(rs) != 1 {
			t.Fatalf("%s: %d results, want 1", backend, len(rs))
		}
		return rs[0]
	}
	backends := []struct {
		name    string
		harness bool
	}{
		{"trivial", true},
		{"trivial-inproc", true},
		{"ours", false},
		{"ref", false},
	}
	var harness, best result
	for r := 0; r < rounds; r++ {
		for _, c := range sweep {
			for _, b := range backends {
				if !b.harness && c.depth != benchDepth {
					continue // not a configuration make bench measures
				}
				if b.name == "ref" && c.queues > 1 {
					continue // the reference serves one request queue
				}
				res := measure(b.name, c)
				res.Daemon = b.name
				// CPU the harness spends per operation, and the rate
				// that would allow on one core (meaningful against a
				// back-end in another process only).
				perOp := res.HarnessCPU / res.OpsPerSec * 1e9
				t.Logf("round %d %-14s %d queue(s), depth %3d: %9.0f getattr/s, p50 %6.1f us, harness CPU %.2f cores = %4.0f ns/op",
					r+1, b.name, c.queues, c.depth, res.OpsPerSec, res.P50us, res.HarnessCPU, perOp)
				top := &best
				if b.harness {
					top = &harness
				}
				if res.OpsPerSec > top.OpsPerSec {
					*top = res
				}
			}
		}
	}
	t.Logf("harness ceiling %.0f getattr/s (%s, %d queues, depth %d); best daemon %.0f getattr/s (%s, %d queues, depth %d): %.2fx (want at least %.0fx)",
		harness.OpsPerSec, harness.Daemon, harness.Queues, harness.Depth,
		best.OpsPerSec, best.Daemon, best.Queues, best.Depth, harness.OpsPerSec/best.OpsPerSec, want)
	if harness.OpsPerSec < want*best.OpsPerSec {
		t.Errorf("the harness reaches only %.2fx the best daemon's getattr rate (%.0f vs %.0f): it may be what limits the daemon figures",
			harness.OpsPerSec/best.OpsPerSec, harness.OpsPerSec, best.OpsPerSec)
	}
}
