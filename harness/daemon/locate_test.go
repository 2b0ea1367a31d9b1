package daemon

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestLabDirMatchesFetchScript runs the lab's fetch script with --where
// from another folder and checks that it names the folder LabDir looks in,
// with and without GOVIRTIOFSD_LAB: a script that fetches into one place
// while the tests look in another leaves every real-guest test without its
// lab on a fresh checkout.
func TestLabDirMatchesFetchScript(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "test", "lib", "lab", "fetch.sh")
	for _, env := range []string{"", t.TempDir()} {
		t.Setenv(LabEnv, env)
		if env == "" {
			os.Unsetenv(LabEnv)
		}
		want, err := LabDir()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("bash", script, "--where")
		cmd.Dir = os.TempDir()
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s --where: %v", script, err)
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("%s=%q: fetch.sh fetches into %s, LabDir looks in %s", LabEnv, env, got, want)
		}
	}
}
