package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
)

// footprintFiles is the size of the tree the guest walks.
const footprintFiles = 100_000

// footprintScript walks the tree with find (busybox find stats every
// entry: a LOOKUP for each), reports the count and holds the mount, with
// every walked inode still known to the daemon, until the host creates
// /mnt/go. For the first 8 s it leaves the share alone (the host measures
// an idle daemon then); after that it looks for /mnt/go every 0.2 s.
const footprintScript = `
n=$(find /mnt/tree | wc -l)
echo "GUEST WALKED $n"
sleep 8
i=0
while [ ! -e /mnt/go ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done
echo "GUEST RESULT walk PASS $n entries"
echo GUEST DONE
`

// footprint is what the serving process holds after the walk.
type footprint struct {
	rssKiB, fds int
	walked      string
	took        time.Duration
	// idle is the serving process's context switches per second while
	// the guest holds the mount and sends nothing.
	idle float64
}

// idleBound is the most context switches per second ours may make while
// its guest is idle. Workers that kept their scheduler slot while waiting
// were interrupted every 10 ms: 300 and more a second.
const idleBound = 20

// TestFootprint has the guest walk a tree of 100,000 files and then reads
// the serving process's resident memory and open descriptors, for our
// daemon with its defaults (--inode-file-handles=prefer) and for the
// reference in the same run, with the same inode mode. Ours must hold at
// most 100 descriptors and no more memory than the reference, and wake
// little while the guest is nearly idle.
func TestFootprint(t *testing.T) {
	lab := needLab(t)
	share := t.TempDir()
	makeTree(t, filepath.Join(share, "tree"), footprintFiles, 1000)
	ref := daemon.Reference(lab.VirtiofsdRef)
	results := map[string]footprint{}
	for _, dm := range []daemon.Daemon{ours(t), ref} {
		var extra []string
		if dm.Name == ref.Name {
			// Its default (never) holds an O_PATH descriptor per inode,
			// more than the hard limit here allows for this tree: it
			// runs with file handles as ours does.
			extra = []string{"--inode-file-handles=prefer"}
		}
		fp := walkFootprint(t, lab, dm, share, extra)
		results[dm.Name] = fp
		t.Logf("%s: walked %s in %v; serving process holds %d fds, VmRSS %d KiB; %.0f context switches a second while idle",
			dm.Name, fp.walked, fp.took.Round(time.Millisecond), fp.fds, fp.rssKiB, fp.idle)
		os.Remove(filepath.Join(share, "go"))
	}
	o, r := results["govirtiofsd"], results[ref.Name]
	want := strconv.Itoa(footprintFiles + 1 + footprintFiles/1000)
	for name, fp := range results {
		if fp.walked != want {
			t.Errorf("%s: the guest found %s entries, want %s", name, fp.walked, want)
		}
	}
	if o.fds > 100 {
		t.Errorf("govirtiofsd holds %d descriptors after the walk, want at most 100", o.fds)
	}
	if o.idle > idleBound {
		t.Errorf("govirtiofsd made %.0f context switches a second with its guest idle (the reference %.0f), want at most %d", o.idle, r.idle, idleBound)
	}
	if o.rssKiB > r.rssKiB {
		t.Errorf("govirtiofsd VmRSS %d KiB, more than the reference's %d KiB", o.rssKiB, r.rssKiB)
	}
	t.Logf("footprint after walking %d files: ours %d fds, %.1f MiB; reference %d fds, %.1f MiB (RSS ratio ours/ref %.2f)",
		footprintFiles, o.fds, float64(o.rssKiB)/1024, r.fds, float64(r.rssKiB)/1024, float64(o.rssKiB)/float64(r.rssKiB))
}

// makeTree creates files empty files in dir, perDir to a folder.
func makeTree(t *testing.T, dir string, files, perDir int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, files/perDir)
	for d := 0; d < files/perDir; d++ {
		wg.Add(1)
		go func(d int) {
			defer wg.Done()
			sub := filepath.Join(dir, fmt.Sprintf("d%03d", d))
			if err := os.MkdirAll(sub, 0o755); err != nil {
				errs <- err
				return
			}
			for i := 0; i < perDir; i++ {
				f, err := os.OpenFile(filepath.Join(sub, fmt.Sprintf("f%04d", i)), os.O_CREATE|os.O_WRONLY, 0o644)
				if err != nil {
					errs <- err
					return
				}
				f.Close()
			}
		}(d)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func walkFootprint(t *testing.T, lab *vm.Lab, dm daemon.Daemon, share string, extra []string) footprint {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	d, restart := startDaemon(t, dm, daemon.Options{SharedDir: share, Socket: sock, Extra: extra})
	initrd := initramfs(t, vm.InitramfsConfig{
		Busybox: lab.Busybox,
		Files:   []vm.GuestFile{{Path: "/t.sh", Data: []byte(footprintScript), Mode: 0o755}},
		Mount:   &vm.Mount{Tag: "myfs"},
		Command: "sh /t.sh",
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	run := boot(t, ctx, vm.Config{Lab: lab, Initrd: initrd, Socket: sock, Tag: "myfs", Memory: "2G",
		Console: vm.NewLineLogger("console: ", t.Logf)}, d, restart)
	defer func() { _ = run.Kill(); <-run.Exited() }()
	d = run.Daemon()
	defer d.Stop()
	if err := run.WaitConsole(ctx, "GUEST WALKED"); err != nil {
		t.Fatalf("%s: %v", dm.Name, err)
	}
	took := time.Since(start)
	pid, err := faultServing(d)
	if err != nil {
		t.Fatal(err)
	}
	fp := footprint{rssKiB: vmRSS(t, pid), fds: faultFdCount(pid), took: took}
	// The guest sleeps for 8 s after the walk: give the daemon 1 s to
	// settle, then count for 3 s.
	time.Sleep(time.Second)
	before := ctxSwitches(pid)
	time.Sleep(3 * time.Second)
	fp.idle = float64(ctxSwitches(pid)-before) / 3
	if err := os.WriteFile(filepath.Join(share, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := run.Wait()
	if err != nil {
		t.Fatalf("%s: %v", dm.Name, err)
	}
	// Read the count once the guest is done: the console may have shown
	// "GUEST WALKED" before the number that follows it.
	for _, line := range strings.Split(run.Console(), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "GUEST WALKED "); ok {
			fp.walked = strings.TrimSpace(rest)
		}
	}
	if r, ok := res.Get("walk"); !ok || r.Status != vm.Pass {
		t.Errorf("%s: guest walk %+v", dm.Name, r)
	}
	return fp
}

// ctxSwitches sums the context switches of pid's threads.
func ctxSwitches(pid int) int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	n := 0
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
				c, _ := strconv.Atoi(strings.TrimSpace(v))
				n += c
			}
		}
	}
	return n
}

// vmRSS reads VmRSS (KiB) from /proc/PID/status.
func vmRSS(t *testing.T, pid int) int {
	t.Helper()
	v := statusField(t, pid, "VmRSS")
	n, err := strconv.Atoi(strings.Fields(v)[0])
	if err != nil {
		t.Fatalf("VmRSS %q: %v", v, err)
	}
	return n
}
