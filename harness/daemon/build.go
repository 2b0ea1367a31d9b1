package daemon

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// goTool returns the go command: the one on PATH, else the one of the
// toolchain that built this program.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// BuildStatic builds the Go package pkg of this repository (an import path
// or a path relative to the repository root, e.g. "./test/e2e/guest/share")
// into a static linux/amd64 binary at out, with CGO_ENABLED=0: a program
// that runs on the host or, with nothing but a kernel, inside a test guest. With testBinary it
// compiles the package's tests instead ("go test -c"), so a package's tests
// can run inside the guest. tags are build tags.
func BuildStatic(pkg, out string, testBinary bool, tags ...string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	if out, err = filepath.Abs(out); err != nil {
		return err
	}
	args := []string{"build"}
	if testBinary {
		args = []string{"test", "-c"}
	}
	args = append(args, "-o", out, "-trimpath")
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	args = append(args, pkg)
	cmd := exec.Command(goTool(), args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	var outBuf bytes.Buffer
	cmd.Stdout = &outBuf
	cmd.Stderr = &outBuf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("daemon: building %s (go %s): %v\n%s", pkg, strings.Join(args, " "), err, outBuf.String())
	}
	if _, err := os.Stat(out); err != nil {
		return fmt.Errorf("daemon: building %s left no %s (a test binary of a package without tests?): %v", pkg, out, err)
	}
	return nil
}

// DaemonPackage is the package of the govirtiofsd command.
const DaemonPackage = "./cmd/govirtiofsd"

// BuildOurs builds govirtiofsd (DaemonPackage, CGO_ENABLED=0) at out, for
// use with Ours.
func BuildOurs(out string, tags ...string) error {
	return BuildStatic(DaemonPackage, out, false, tags...)
}
