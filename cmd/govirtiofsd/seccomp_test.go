package main

import (
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// seccompChildEnv makes the test binary, re-executed, install the filter
// in the given mode and then make a system call outside the list.
const seccompChildEnv = "GOVIRTIOFSD_SECCOMP_TEST_MODE"

func TestMain(m *testing.M) {
	if mode := os.Getenv(seccompChildEnv); mode != "" {
		if err := installSeccomp(mode); err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(3)
		}
		// getppid is not on the list.
		syscall.Syscall(unix.SYS_GETPPID, 0, 0, 0)
		os.Stdout.WriteString("survived")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runSeccompChild(t *testing.T, mode string) (string, *os.ProcessState) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), seccompChildEnv+"="+mode)
	out, _ := cmd.Output()
	return string(out), cmd.ProcessState
}

func TestSeccompKillsDisallowedSyscall(t *testing.T) {
	out, st := runSeccompChild(t, "kill")
	ws := st.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled(), "process was not killed (output %q, status %v)", out, st)
	require.Equal(t, syscall.SIGSYS, ws.Signal())
	require.NotContains(t, out, "survived")
}

func TestSeccompLogAllowsDisallowedSyscall(t *testing.T) {
	out, st := runSeccompChild(t, "log")
	require.Equal(t, 0, st.ExitCode())
	require.Equal(t, "survived", out)
}

func TestCapSet(t *testing.T) {
	set, err := capSet("", false)
	require.NoError(t, err)
	require.NotZero(t, set&(1<<unix.CAP_CHOWN))
	require.Zero(t, set&(1<<unix.CAP_SYS_ADMIN))
	set, err = capSet("+sys_admin:-chown", true)
	require.NoError(t, err)
	require.NotZero(t, set&(1<<unix.CAP_SYS_ADMIN))
	require.Zero(t, set&(1<<unix.CAP_CHOWN))
	require.NotZero(t, set&(1<<unix.CAP_DAC_READ_SEARCH))
	for _, bad := range []string{"sys_admin", "+nonsense", "+", "-"} {
		_, err := capSet(bad, false)
		require.Error(t, err, bad)
	}
}
