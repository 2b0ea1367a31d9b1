package daemon

import (
	"errors"
	"os"
	"path/filepath"
)

// LabEnv is the environment variable naming the lab folder. When it is
// unset the lab is <repo>/.cache/lab.
const LabEnv = "GOVIRTIOFSD_LAB"

// RepoRoot returns the folder holding the repository's go.mod, found by
// walking up from the current directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("daemon: no go.mod found above the current directory")
		}
		dir = parent
	}
}

// LabDir returns the lab folder: $GOVIRTIOFSD_LAB, or <repo>/.cache/lab.
func LabDir() (string, error) {
	if d := os.Getenv(LabEnv); d != "" {
		return filepath.Abs(d)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".cache", "lab"), nil
}
