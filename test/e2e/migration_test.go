package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
)

// migrationGuest is the guest's side of TestMigration. Before the
// migration it writes files, keeps one open for reading and one for
// appending, and says MIGRATE-NOW; while the host migrates it keeps the
// share busy (directory listings, and the big file read again after each
// drop of the page cache, so READ replies land in guest RAM while QEMU
// copies it) until the host creates /mnt/go. Then, on the destination, it
// reads the kept file, appends through the kept descriptor, stats, lists,
// checks the big file from the page cache and from the daemon, renames,
// unlinks, and writes and fsyncs new files.
//
// The page cache check does not prove the daemon's dirty logging: with the
// data logging switched off it still passed here (the guest kernel zeroes
// pages as it allocates them, which dirties them in QEMU's own log, and
// re-reads of the same file tend to refill pages with what they held).
// test/conformance's TestDirtyLog checks the log page by page.
const migrationGuest = `
r() { echo "GUEST RESULT $1 $2 $3"; }
mkdir /mnt/d || exit 1
i=0; while [ $i -lt 40 ]; do echo "file $i" > /mnt/d/f$i; i=$((i+1)); done
echo before > /mnt/d/kept
exec 3</mnt/d/kept
exec 4>>/mnt/d/log
echo "line before" >&4
dd if=/dev/urandom of=/mnt/d/big bs=64k count=32 2>/dev/null
sync
want=$(md5sum /mnt/d/big | cut -d' ' -f1)
echo MIGRATE-NOW
n=0
while [ ! -e /mnt/go ]; do
	echo 3 > /proc/sys/vm/drop_caches
	cat /mnt/d/big > /dev/null
	ls -l /mnt/d > /dev/null
	n=$((n+1))
done
r busy-loops PASS "$n"
got=$(cat <&3)
[ "$got" = before ] && r kept-read PASS || r kept-read FAIL "$got"
echo "line after" >&4 && r kept-append PASS || r kept-append FAIL
s=$(stat -c %s /mnt/d/kept)
[ "$s" = 7 ] && r stat PASS || r stat FAIL "$s"
c=$(ls /mnt/d | wc -l)
[ "$c" = 43 ] && r list PASS || r list FAIL "$c"
m=$(md5sum /mnt/d/big | cut -d' ' -f1)
[ "$m" = "$want" ] && r big-cached PASS || r big-cached FAIL "$m"
echo 3 > /proc/sys/vm/drop_caches
m=$(md5sum /mnt/d/big | cut -d' ' -f1)
[ "$m" = "$want" ] && r big-reread PASS || r big-reread FAIL "$m"
g=$(cat /mnt/go)
[ "$g" = "from the host" ] && r host-file PASS || r host-file FAIL "$g"
echo after > /mnt/d/new && dd if=/mnt/d/new of=/mnt/d/new2 conv=fsync 2>/dev/null && r write-fsync PASS || r write-fsync FAIL
mkdir /mnt/d/sub && mv /mnt/d/f0 /mnt/d/sub/f0 && rm /mnt/d/f1 && r rename-unlink PASS || r rename-unlink FAIL
exec 3<&- 4>&-
sync
echo "GUEST DONE"
`

// migrationOutcome is what one migration showed, for comparing daemons.
type migrationOutcome struct {
	results map[string]vm.Status
	host    map[string]string
}

// TestMigration live-migrates a TCG guest on QEMU 10.0 from one QEMU
// process to another, each with its own daemon on the same share: ours in
// both migration modes, and the reference virtiofsd to itself. It fails
// unless QEMU reports the migration completed, the destination runs, the
// guest's checks pass on the destination and the host sees its writes;
// ours and the reference must agree check by check.
func TestMigration(t *testing.T) {
	lab := needLab(t)
	cases := []struct {
		name string
		d    daemon.Daemon
		args []string
	}{
		{"ours-find-paths", ours(t), []string{"--migration-verify-handles"}},
		{"ours-file-handles", ours(t), []string{"--migration-mode=file-handles"}},
		{"reference", daemon.Reference(lab.VirtiofsdRef), nil},
	}
	initrd := initramfs(t, vm.InitramfsConfig{
		Busybox: lab.Busybox,
		Mount:   &vm.Mount{Tag: "myfs"},
		Command: migrationGuest,
	})
	outcomes := map[string]migrationOutcome{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			outcomes[tc.name] = migrateOnce(t, lab, tc.d, tc.args, initrd)
		})
	}
	ref, ok := outcomes["reference"]
	if !ok || len(ref.results) == 0 {
		return
	}
	for _, name := range []string{"ours-find-paths", "ours-file-handles"} {
		o, ok := outcomes[name]
		if !ok || len(o.results) == 0 {
			continue
		}
		for k, v := range ref.results {
			if k != "busy-loops" && o.results[k] != v {
				t.Errorf("%s: guest check %s is %s, the reference's %s", name, k, o.results[k], v)
			}
		}
		for k, v := range ref.host {
			if o.host[k] != v {
				t.Errorf("%s: host sees %s = %q, with the reference %q", name, k, o.host[k], v)
			}
		}
	}
}

func migrateOnce(t *testing.T, lab *vm.Lab, d daemon.Daemon, args []string, initrd string) migrationOutcome {
	out := migrationOutcome{results: map[string]vm.Status{}, host: map[string]string{}}
	share := t.TempDir()
	tmp := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	opts := func(side string) daemon.Options {
		return daemon.Options{SharedDir: share, Socket: filepath.Join(tmp, side+".sock"), Extra: args,
			Log: vm.NewLineLogger(side+" daemon: ", t.Logf)}
	}
	bootSide := func(side string, p *daemon.Proc, restart func() (*daemon.Proc, error), extra ...string) (*vm.Run, *vm.QMP) {
		cfg := vm.Config{Lab: lab, Initrd: initrd, Socket: filepath.Join(tmp, side+".sock"), Tag: "myfs",
			Memory: "512M", QMPSocket: filepath.Join(tmp, side+".qmp"), ExtraArgs: extra,
			Console: vm.NewLineLogger(side+" guest: ", t.Logf)}
		run := boot(t, ctx, cfg, p, restart)
		q, err := run.DialQMP(ctx)
		if err != nil {
			t.Fatalf("%s QMP: %v", side, err)
		}
		t.Cleanup(func() { q.Close() })
		return run, q
	}

	srcDaemon, restart := startDaemon(t, d, opts("source"))
	src, srcQMP := bootSide("source", srcDaemon, restart)
	srcDaemon = src.Daemon()
	if err := src.WaitConsole(ctx, "MIGRATE-NOW"); err != nil {
		t.Fatalf("source guest never got ready: %v\n%s", err, src.Stderr())
	}
	// The destination waits for the migration: Boot returns at once, and
	// its run takes the source's slowdown.
	dstDaemon, _ := startDaemon(t, d, opts("destination"))
	migSock := filepath.Join(tmp, "migration.sock")
	dst, dstQMP := bootSide("destination", dstDaemon, nil, "-incoming", "unix:"+migSock)

	begin := time.Now()
	if _, err := srcQMP.Execute(ctx, "migrate", map[string]any{"uri": "unix:" + migSock}); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	var st struct {
		Status    string `json:"status"`
		TotalTime int64  `json:"total-time"`
		Downtime  int64  `json:"downtime"`
		ErrorDesc string `json:"error-desc"`
		RAM       struct {
			Transferred int64 `json:"transferred"`
			DirtySync   int64 `json:"dirty-sync-count"`
		} `json:"ram"`
	}
	// The migration may take its time, as long as it moves: its status
	// or the RAM sent changes at least once a (scaled) minute.
	var moved time.Time
	var last string
	for window := src.Scale(time.Minute); ; {
		raw, err := srcQMP.Execute(ctx, "query-migrate", nil)
		if err != nil {
			t.Fatalf("query-migrate: %v", err)
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			t.Fatal(err)
		}
		if st.Status == "completed" || st.Status == "failed" || st.Status == "cancelled" {
			break
		}
		if now := fmt.Sprintf("%s %d", st.Status, st.RAM.Transferred); now != last {
			last, moved = now, time.Now()
		} else if time.Since(moved) > window {
			t.Fatalf("the migration made no progress for %v: %s, %d bytes sent\nsource QEMU: %s", window, st.Status, st.RAM.Transferred, src.Stderr())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st.Status != "completed" {
		t.Fatalf("migration %s: %s\nsource QEMU: %s\ndestination QEMU: %s", st.Status, st.ErrorDesc, src.Stderr(), dst.Stderr())
	}
	t.Logf("migration completed in %v (QEMU: total %d ms, downtime %d ms, %d MiB, %d dirty syncs)",
		time.Since(begin).Round(time.Millisecond), st.TotalTime, st.Downtime, st.RAM.Transferred>>20, st.RAM.DirtySync)
	var status struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	for deadline := time.Now().Add(dst.Scale(5 * time.Second)); ; {
		raw, err := dstQMP.Execute(ctx, "query-status", nil)
		if err != nil {
			t.Fatalf("destination query-status: %v", err)
		}
		json.Unmarshal(raw, &status)
		if status.Running || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !status.Running {
		t.Fatalf("destination not running after the migration: %s", status.Status)
	}
	// The source is done: QEMU leaves it paused; quitting it ends its
	// daemon's connection.
	srcQMP.Execute(ctx, "quit", nil)
	<-src.Exited()
	if err := srcDaemon.WaitTimeout(src.Scale(10 * time.Second)); err != nil {
		t.Errorf("source daemon after its QEMU quit: %v", err)
	}

	if err := os.WriteFile(filepath.Join(share, "go"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := dst.Wait()
	if err != nil {
		t.Fatalf("destination guest: %v\n%s", err, dst.Stderr())
	}
	if !res.Done || res.ExitCode != 0 {
		t.Errorf("destination guest: done %v, exit %d", res.Done, res.ExitCode)
	}
	for _, r := range res.List {
		out.results[r.Name] = r.Status
		if r.Status != vm.Pass {
			t.Errorf("guest check %s", r)
		}
	}
	for _, want := range []string{"busy-loops", "kept-read", "kept-append", "stat", "list", "big-cached", "big-reread", "host-file", "write-fsync", "rename-unlink"} {
		if _, ok := out.results[want]; !ok {
			t.Errorf("the guest never reported %s", want)
		}
	}
	if err := dstDaemon.WaitTimeout(dst.Scale(10 * time.Second)); err != nil {
		t.Errorf("destination daemon after the guest powered off: %v", err)
	}
	for _, p := range []*daemon.Proc{srcDaemon, dstDaemon} {
		if c := p.ExitCode(); c != 0 {
			t.Errorf("%s exited with %d", p.Name, c)
		}
	}

	// What the host sees.
	for _, name := range []string{"d/kept", "d/log", "d/new", "d/new2", "d/sub/f0", "d/f2"} {
		b, err := os.ReadFile(filepath.Join(share, name))
		if err != nil {
			out.host[name] = "error: " + err.Error()
		} else {
			out.host[name] = string(b)
		}
	}
	_, err = os.Stat(filepath.Join(share, "d/f1"))
	out.host["d/f1 exists"] = fmt.Sprint(err == nil)
	want := map[string]string{"d/kept": "before\n", "d/log": "line before\nline after\n", "d/new": "after\n",
		"d/new2": "after\n", "d/sub/f0": "file 0\n", "d/f2": "file 2\n", "d/f1 exists": "false"}
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if out.host[k] != want[k] {
			t.Errorf("host: %s = %q, want %q", k, out.host[k], want[k])
		}
	}
	if d.Name == "govirtiofsd" {
		for _, s := range []string{"Migration: sending", "saving the device state"} {
			if !strings.Contains(srcDaemon.Stderr(), s) {
				t.Errorf("the source daemon's log does not say %q", s)
			}
		}
		if !strings.Contains(dstDaemon.Stderr(), "Migration: restored") {
			t.Errorf("the destination daemon's log does not say it restored the tables")
		}
	}
	return out
}
