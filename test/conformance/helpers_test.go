package frontend_test

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/govirtiofsd/govirtiofsd/harness/daemon"

	"github.com/govirtiofsd/govirtiofsd/harness/frontend"
	"github.com/govirtiofsd/govirtiofsd/test/lib/vm"
)

// TestMain removes the daemon build once every test ran.
func TestMain(m *testing.M) {
	code := m.Run()
	if buildBin != "" {
		os.RemoveAll(filepath.Dir(buildBin))
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// ours builds govirtiofsd once per test binary.
func ours(t *testing.T) daemon.Daemon {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "frontend-test-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildBin = filepath.Join(dir, "govirtiofsd")
		buildErr = daemon.BuildOurs(buildBin)
	})
	if buildErr != nil {
		t.Fatalf("building govirtiofsd: %v", buildErr)
	}
	return daemon.Ours(buildBin)
}

// ReferenceEnv names a virtiofsd-compatible binary to run as the
// reference instead of the lab's virtiofsd 1.14.0 (make conformance
// REFERENCE=...). It is started the same way: --shared-dir D
// --socket-path S --sandbox none --seccomp none.
const ReferenceEnv = "GOVIRTIOFSD_REFERENCE"

// reference returns the reference virtiofsd: $GOVIRTIOFSD_REFERENCE, or
// the lab's; a missing lab fails the test.
func reference(t *testing.T) daemon.Daemon {
	t.Helper()
	if p := os.Getenv(ReferenceEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %v", ReferenceEnv, err)
		}
		return daemon.Reference(p)
	}
	lab, err := vm.FindLab()
	if err != nil {
		t.Fatal(err)
	}
	return daemon.Reference(lab.VirtiofsdRef)
}

// daemonCase is one back-end the same test body runs against.
type daemonCase struct {
	name string
	get  func(t *testing.T) daemon.Daemon
	// requestQueues is how many request queues the back-end serves.
	requestQueues int
}

var daemons = []daemonCase{
	{name: "ours", get: ours, requestQueues: 64},
	{name: "reference", get: reference, requestQueues: 1},
}

// oursPool is ours with a thread pool of two, whose workers take the
// request queues' chains off the rings in turn.
var oursPool = daemonCase{name: "ours-pool2", get: func(t *testing.T) daemon.Daemon {
	d := ours(t)
	argv := d.Argv
	d.Argv = func(sharedDir, socket string, extra []string) []string {
		return argv(sharedDir, socket, append([]string{"--thread-pool-size=2"}, extra...))
	}
	return d
}, requestQueues: 64}

// start starts d on a fresh share and connects; the cleanup closes the
// front-end and fails the test unless the back-end exits with status 0.
func start(t *testing.T, d daemon.Daemon, opts frontend.Options) (*frontend.Frontend, string) {
	t.Helper()
	share := t.TempDir()
	fe, err := frontend.Start(d, daemon.Options{SharedDir: share}, opts)
	if err != nil {
		t.Fatalf("starting %s: %v", d.Name, err)
	}
	t.Cleanup(func() {
		err := fe.Close()
		if err != nil {
			t.Errorf("closing the front-end of %s: %v", d.Name, err)
		}
		if code := fe.Proc().ExitCode(); code != 0 {
			t.Errorf("%s exited with status %d after disconnect", d.Name, code)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", d.Name, fe.Proc().Stderr())
		}
	})
	return fe, share
}
