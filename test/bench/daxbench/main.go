// Command daxbench measures what the DAX window buys a guest reading files
// that the host holds in its page cache. It boots TCG guests on QEMU 11.1
// with the generic vhost-user-test-device-pci as a virtio-fs device (the
// one that can carry a window) and runs test/bench/daxbench/guest in three
// configurations, rotating their order each round:
//
//   - dax: govirtiofsd --tag myfs --dax-window-size W, mounted -o dax=always;
//   - nodax: the same daemon, mounted -o dax=never (plain FUSE reads);
//   - ref: the reference virtiofsd (the lab's, 1.14.0) --tag myfs (it has no window),
//     mounted the same way as nodax.
//
// The share holds two files of --file-mib MiB (a multiple of 4 KiB: on QEMU
// 11.1 the daemon cannot map a partial last page), which the host reads
// before each boot so that they are in its page cache. The guest times
// sequential reads and 4 KiB random reads (also with O_DIRECT) with its
// page cache dropped before each pass, and again with its inodes dropped
// too (-evict: under DAX that unmaps the file from the window).
// daxbench prints the median rate of each configuration per workload,
// the ratios dax/nodax and dax/ref with their geometric means, and the
// daemons' CPU seconds per boot.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/harness/benchstat"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"golang.org/x/sys/unix"

	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
)

const mib = 1 << 20

func main() {
	o := options{}
	flag.IntVar(&o.rounds, "rounds", 2, "rounds; each boots one guest per configuration, in a rotated order")
	flag.StringVar(&o.window, "dax-window-size", "512M", "our daemon's --dax-window-size (in dax and nodax); should hold both files")
	flag.IntVar(&o.fileMiB, "file-mib", 64, "size of each file in MiB")
	flag.Float64Var(&o.minSecs, "min-seconds", 2, "each guest workload repeats until it has read for this long")
	flag.IntVar(&o.randOps, "rand-ops", 4000, "4 KiB random reads per batch (caches dropped before each batch)")
	flag.StringVar(&o.oursArgs, "ours-args", "", "extra arguments for our daemon, space-separated")
	flag.BoolVar(&o.verbose, "v", false, "copy the guests' consoles to stderr")
	flag.BoolVar(&o.keep, "keep", false, "keep the work folder (daemon logs CONFIG-ROUND.log) and print its path")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "daxbench:", err)
		os.Exit(1)
	}
}

type options struct {
	rounds   int
	window   string
	fileMiB  int
	minSecs  float64
	randOps  int
	oursArgs string
	verbose  bool
	keep     bool
}

// config is one of the three set-ups being compared.
type config struct {
	name   string
	d      daemon.Daemon
	extra  []string
	initrd string
	mount  string // the mount options the guest reported
	rates  map[string][]float64
	cpu    []float64 // daemon CPU seconds per boot
	qemu   []float64 // QEMU CPU seconds per boot
	load   []float64 // the host's 1-minute load average after each boot
}

// workloads are the guest's results, in the order printed, with their unit.
var workloads = []struct{ name, unit string }{
	{"seq-read", "MiB/s"},
	{"seq-read-evict", "MiB/s"},
	{"rand-4k", "ops/s"},
	{"rand-4k-direct", "ops/s"},
	{"rand-4k-evict", "ops/s"},
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q (want e.g. 512M or 1G)", s)
	}
	return n * mult, nil
}

func run(o options) error {
	if o.rounds < 1 || o.fileMiB < 1 || o.randOps < 1 {
		return errors.New("--rounds, --file-mib and --rand-ops must be positive")
	}
	window, err := parseSize(o.window)
	if err != nil {
		return fmt.Errorf("--dax-window-size: %w", err)
	}
	if need := int64(2 * o.fileMiB * mib); window < need {
		return fmt.Errorf("--dax-window-size %s cannot hold both files (%d MiB): the guest would reclaim ranges during the reads", o.window, need/mib)
	}
	lab, err := vm.FindLab()
	if err != nil {
		return err
	}
	start := time.Now()
	work, err := os.MkdirTemp("", "daxbench-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Fprintln(os.Stderr, "work folder (kept):", work)
	} else {
		defer os.RemoveAll(work)
	}
	ours := filepath.Join(work, "govirtiofsd")
	if err := daemon.BuildOurs(ours); err != nil {
		return err
	}
	guest := filepath.Join(work, "guest")
	if err := daemon.BuildStatic("./test/bench/daxbench/guest", guest, false); err != nil {
		return err
	}
	guestArgs := fmt.Sprintf("-min-seconds %g -rand-ops %d", o.minSecs, o.randOps)
	initrd := func(name, args string) (string, error) {
		p := filepath.Join(work, "initrd-"+name+".gz")
		return p, vm.BuildInitramfs(p, vm.InitramfsConfig{
			Busybox: lab.Busybox,
			Files:   []vm.GuestFile{{Path: "/guest", HostPath: guest, Mode: 0o755}},
			Command: "/guest " + args,
		})
	}
	daxInitrd, err := initrd("dax", "-dax "+guestArgs)
	if err != nil {
		return err
	}
	plainInitrd, err := initrd("plain", guestArgs)
	if err != nil {
		return err
	}

	// One share for every boot: the guests only read it. A fresh folder
	// on the host's filesystem, so no file carries FS_XFLAG_DAX (the guest
	// checks that only dax=always makes them DAX).
	share := filepath.Join(work, "share")
	if err := os.Mkdir(share, 0o755); err != nil {
		return err
	}
	files := []struct {
		name string
		seed byte
	}{{"seq.bin", 1}, {"rand.bin", 2}}
	var paths []string
	for _, f := range files {
		p := filepath.Join(share, f.name)
		if err := writePattern(p, f.seed, int64(o.fileMiB)*mib); err != nil {
			return err
		}
		paths = append(paths, p)
	}

	oursExtra := append([]string{"--tag", "myfs", "--dax-window-size", o.window}, strings.Fields(o.oursArgs)...)
	configs := []*config{
		{name: "dax", d: daemon.Ours(ours), extra: oursExtra, initrd: daxInitrd},
		{name: "nodax", d: daemon.Ours(ours), extra: oursExtra, initrd: plainInitrd},
		{name: "ref", d: daemon.Reference(lab.VirtiofsdRef), extra: []string{"--tag", "myfs"}, initrd: plainInitrd},
	}
	notes := map[string]string{}
	for r := 0; r < o.rounds; r++ {
		for k := range configs {
			c := configs[(k+r)%len(configs)]
			resident, err := warm(paths)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "round %d: %s (host page cache holds %.0f%% of the files)\n", r+1, c.name, resident*100)
			if err := boot(lab, c, o, share, notes, filepath.Join(work, fmt.Sprintf("%s-%d", c.name, r))); err != nil {
				return fmt.Errorf("%s round %d: %w", c.name, r+1, err)
			}
		}
	}

	fmt.Printf("# daxbench: reads of files in the host page cache, TCG guest on QEMU %s (%s), Linux %s, %d rounds (order rotated)\n",
		vm.QEMUSidVersion, vm.DAXDeviceName, lab.KernelVersion, o.rounds)
	fmt.Printf("# files: 2 x %d MiB, sizes multiples of 4 KiB (QEMU %s cannot map a file's partial last page into the window)\n", o.fileMiB, vm.QEMUSidVersion)
	oursLine := strings.Join(oursExtra, " ")
	fmt.Printf("# dax   = govirtiofsd %s, mount %s\n", oursLine, configs[0].mount)
	fmt.Printf("# nodax = govirtiofsd %s, mount %s\n", oursLine, configs[1].mount)
	fmt.Printf("# ref   = virtiofsd %s --tag myfs --sandbox none --seccomp none (no window), mount %s\n", vm.VirtiofsdVersion, configs[2].mount)
	fmt.Printf("# seq-read: the whole file in 1 MiB reads, pass after pass; rand-4k: batches of %d preads at random 4 KiB offsets; each repeats for >= %gs\n", o.randOps, o.minSecs)
	fmt.Printf("# before each pass/batch the guest runs drop_caches: 1 (page cache only; after an untimed warm-up read, so dax reads through mappings already made)\n")
	fmt.Printf("#   or 3 for -evict (inodes too: under dax the evicted inode's window mappings go, and each pass maps the file again)\n")
	fmt.Printf("# -direct opens O_DIRECT; under dax the kernel accepts it but reads through the window anyway\n")
	fmt.Printf("# median over rounds; ratio above 1: dax faster\n")
	fmt.Printf("%-16s %-6s %10s %10s %10s %10s %10s\n", "workload", "unit", "dax", "nodax", "ref", "dax/nodax", "dax/ref")
	var logN, logR float64
	var n int
	for _, w := range workloads {
		d, p, ref := benchstat.Median(configs[0].rates[w.name]), benchstat.Median(configs[1].rates[w.name]), benchstat.Median(configs[2].rates[w.name])
		fmt.Printf("%-16s %-6s %10.1f %10.1f %10.1f %10.2f %10.2f\n", w.name, w.unit, d, p, ref, d/p, d/ref)
		if d > 0 && p > 0 && ref > 0 {
			logN += math.Log(d / p)
			logR += math.Log(d / ref)
			n++
		}
	}
	fmt.Printf("%-16s %-6s %10s %10s %10s %10.2f %10.2f\n", "geomean", "", "", "", "", math.Exp(logN/float64(n)), math.Exp(logR/float64(n)))
	fmt.Printf("# daemon CPU seconds per boot (median): dax %.2f nodax %.2f ref %.2f; QEMU CPU seconds per boot (median, boot included): dax %.1f nodax %.1f ref %.1f\n",
		benchstat.Median(configs[0].cpu), benchstat.Median(configs[1].cpu), benchstat.Median(configs[2].cpu),
		benchstat.Median(configs[0].qemu), benchstat.Median(configs[1].qemu), benchstat.Median(configs[2].qemu))
	for _, w := range workloads {
		for _, c := range configs {
			fmt.Printf("# runs %s %s: %s\n", w.name, c.name, join(c.rates[w.name]))
		}
	}
	for _, c := range configs {
		fmt.Printf("# runs daemon-cpu-s %s: %s\n", c.name, join(c.cpu))
	}
	for _, c := range configs {
		fmt.Printf("# host loadavg-1m after each boot %s: %s (%d CPUs; other work on the host skews the rates)\n", c.name, join(c.load), runtime.NumCPU())
	}
	keys := make([]string, 0, len(notes))
	for k := range notes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("# %s: %s\n", k, notes[k])
	}
	fmt.Printf("# wall time %v\n", time.Since(start).Round(time.Second))
	return nil
}

// writePattern writes size bytes of the guest's pattern: byte seed + 7p +
// p>>12 at offset p.
func writePattern(path string, seed byte, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, mib)
	for off := int64(0); off < size; off += mib {
		for i := range buf {
			p := off + int64(i)
			buf[i] = seed + byte(p*7) + byte(p>>12)
		}
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// warm reads the files on the host so that they are in its page cache,
// and returns the share of their pages that mincore then finds resident.
func warm(paths []string) (float64, error) {
	var in, all int
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return 0, err
		}
		_, err = io.Copy(io.Discard, f)
		if err == nil {
			var st os.FileInfo
			if st, err = f.Stat(); err == nil && st.Size() > 0 {
				var m []byte
				if m, err = unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED); err == nil {
					vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
					if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
						err = fmt.Errorf("mincore: %w", e)
					}
					for _, v := range vec {
						all++
						if v&1 != 0 {
							in++
						}
					}
					unix.Munmap(m)
				}
			}
		}
		f.Close()
		if err != nil {
			return 0, fmt.Errorf("warming %s: %w", p, err)
		}
	}
	if all == 0 {
		return 1, nil
	}
	return float64(in) / float64(all), nil
}

func boot(lab *vm.Lab, c *config, o options, share string, notes map[string]string, base string) error {
	sock := base + ".sock"
	p, err := c.d.Start(daemon.Options{SharedDir: share, Socket: sock, Extra: c.extra, LogFile: base + ".log"})
	if err != nil {
		return err
	}
	defer p.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	cfg := vm.Config{Lab: lab, Initrd: c.initrd, Socket: sock, DAXDevice: true, Timeout: 10 * time.Minute}
	if o.verbose {
		cfg.Console = vm.NewLineLogger("console: ", func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) })
	}
	r, err := vm.Boot(ctx, cfg)
	if err != nil {
		return err
	}
	res, err := r.Wait()
	daemonTail := func() string {
		return "\ndaemon output:\n" + daemon.LastLines(p.Stderr(), 20)
	}
	if err != nil {
		return fmt.Errorf("%w%s", err, daemonTail())
	}
	if st := r.Cmd.ProcessState; st != nil {
		c.qemu = append(c.qemu, (st.UserTime() + st.SystemTime()).Seconds())
	}
	if c.rates == nil {
		c.rates = map[string][]float64{}
	}
	for _, x := range res.List {
		switch {
		case x.Name == "mount":
			opts, _, _ := strings.Cut(x.Detail, " ")
			c.mount = "-o " + strings.TrimPrefix(opts, "opts=")
			if strings.TrimPrefix(opts, "opts=") == "(none)" {
				c.mount = "(no options)"
			}
			fmt.Fprintf(os.Stderr, "  mount: %s\n", x.Detail)
		case x.Status == vm.Skip && strings.HasPrefix(x.Name, "bench-"):
			// O_DIRECT refused: no rate, say why.
			notes[c.name+" "+strings.TrimPrefix(x.Name, "bench-")] = x.Detail
			fmt.Fprintf(os.Stderr, "  %s SKIP %s\n", x.Name, x.Detail)
			continue
		}
		if x.Status != vm.Pass {
			return fmt.Errorf("guest %s%s", x, daemonTail())
		}
		if !strings.HasPrefix(x.Name, "bench-") {
			continue
		}
		fmt.Fprintf(os.Stderr, "  %s %s\n", x.Name, x.Detail)
		f := strings.Fields(x.Detail)
		rate, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return fmt.Errorf("guest %s: bad rate in %q", x.Name, x.Detail)
		}
		name := strings.TrimPrefix(x.Name, "bench-")
		c.rates[name] = append(c.rates[name], rate)
		if name == "rand-4k-direct" {
			for _, kv := range f {
				if strings.HasPrefix(kv, "o_direct_kept=") {
					notes[c.name+" rand-4k-direct"] = "open(O_DIRECT) ok, F_GETFL " + kv
				}
			}
		}
	}
	for _, w := range workloads {
		if _, skipped := notes[c.name+" "+w.name]; len(c.rates[w.name]) == 0 && !skipped {
			return fmt.Errorf("guest reported no %s%s", w.name, daemonTail())
		}
	}
	if err := p.WaitTimeout(15 * time.Second); err != nil {
		return err
	}
	if p.ExitCode() != 0 {
		return fmt.Errorf("%s exited with %d%s", c.d.Name, p.ExitCode(), daemonTail())
	}
	c.cpu = append(c.cpu, p.CPU().Seconds())
	c.load = append(c.load, loadavg())
	return nil
}

// loadavg returns the host's 1-minute load average, or NaN.
func loadavg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return math.NaN()
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return math.NaN()
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

func join(xs []float64) string {
	var b []string
	for _, x := range xs {
		b = append(b, strconv.FormatFloat(x, 'f', 2, 64))
	}
	return strings.Join(b, " ")
}
