package vm

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestOursSmoke runs the smoke script against govirtiofsd.
func TestOursSmoke(t *testing.T) {
	lab := needLab(t)
	bin := filepath.Join(t.TempDir(), "govirtiofsd")
	if err := BuildDaemon(bin); err != nil {
		t.Fatal(err)
	}
	hello, helloTest := helloBinaries(t)
	share := t.TempDir()
	if err := os.WriteFile(filepath.Join(share, "hello.txt"), []byte("hello from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	d, err := Ours(bin).Start(DaemonOptions{SharedDir: share, Socket: sock, Log: NewLineLogger("govirtiofsd: ", t.Logf), Extra: []string{"--log-level", "debug"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	initrd := mustBuildInitramfs(t, InitramfsConfig{
		Busybox: lab.Busybox,
		Files: []GuestFile{
			{Path: "/smoke.sh", Data: readTestdata(t, "smoke.sh"), Mode: 0o755},
			{Path: "/hello", HostPath: hello},
			{Path: "/hello.test", HostPath: helloTest},
		},
		Mount:   &Mount{Tag: "myfs"},
		Command: "sh /smoke.sh",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	run, err := Boot(ctx, Config{Lab: lab, Initrd: initrd, Socket: sock, Tag: "myfs", Console: NewLineLogger("console: ", t.Logf)})
	if err != nil {
		t.Fatal(err)
	}
	res, err := run.Wait()
	if err != nil {
		t.Fatal(err)
	}
	checkResults(t, res, "cat-host-file", "readdir", "write-file", "mount-type", "go-guest", "go-test-binary")
	if err := d.WaitTimeout(15 * time.Second); err != nil {
		t.Errorf("daemon after poweroff: %v", err)
	}
	if c := d.ExitCode(); c != 0 {
		t.Errorf("exit code %d", c)
	}
}
