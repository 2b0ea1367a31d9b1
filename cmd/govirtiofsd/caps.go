package main

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"unsafe"

	"github.com/govirtiofsd/govirtiofsd/passthrough"
	"golang.org/x/sys/unix"
)

// capNames maps capability names (as --modcaps spells them) to numbers.
var capNames = map[string]int{
	"chown": unix.CAP_CHOWN, "dac_override": unix.CAP_DAC_OVERRIDE, "dac_read_search": unix.CAP_DAC_READ_SEARCH,
	"fowner": unix.CAP_FOWNER, "fsetid": unix.CAP_FSETID, "kill": unix.CAP_KILL, "setgid": unix.CAP_SETGID,
	"setuid": unix.CAP_SETUID, "setpcap": unix.CAP_SETPCAP, "linux_immutable": unix.CAP_LINUX_IMMUTABLE,
	"net_bind_service": unix.CAP_NET_BIND_SERVICE, "net_broadcast": unix.CAP_NET_BROADCAST,
	"net_admin": unix.CAP_NET_ADMIN, "net_raw": unix.CAP_NET_RAW, "ipc_lock": unix.CAP_IPC_LOCK,
	"ipc_owner": unix.CAP_IPC_OWNER, "sys_module": unix.CAP_SYS_MODULE, "sys_rawio": unix.CAP_SYS_RAWIO,
	"sys_chroot": unix.CAP_SYS_CHROOT, "sys_ptrace": unix.CAP_SYS_PTRACE, "sys_pacct": unix.CAP_SYS_PACCT,
	"sys_admin": unix.CAP_SYS_ADMIN, "sys_boot": unix.CAP_SYS_BOOT, "sys_nice": unix.CAP_SYS_NICE,
	"sys_resource": unix.CAP_SYS_RESOURCE, "sys_time": unix.CAP_SYS_TIME, "sys_tty_config": unix.CAP_SYS_TTY_CONFIG,
	"mknod": unix.CAP_MKNOD, "lease": unix.CAP_LEASE, "audit_write": unix.CAP_AUDIT_WRITE,
	"audit_control": unix.CAP_AUDIT_CONTROL, "setfcap": unix.CAP_SETFCAP, "mac_override": unix.CAP_MAC_OVERRIDE,
	"mac_admin": unix.CAP_MAC_ADMIN, "syslog": unix.CAP_SYSLOG, "wake_alarm": unix.CAP_WAKE_ALARM,
	"block_suspend": unix.CAP_BLOCK_SUSPEND, "audit_read": unix.CAP_AUDIT_READ, "perfmon": unix.CAP_PERFMON,
	"bpf": unix.CAP_BPF, "checkpoint_restore": unix.CAP_CHECKPOINT_RESTORE,
}

// baseCaps is what serving needs, as virtiofsd keeps: ownership and mode
// changes for the guest's root, per-request credentials and device nodes.
var baseCaps = []int{unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_FOWNER, unix.CAP_FSETID,
	unix.CAP_SETGID, unix.CAP_SETUID, unix.CAP_MKNOD, unix.CAP_SETFCAP}

// capSet computes the capabilities the serving process keeps, as
// virtiofsd's drop_capabilities: the base set, changed by --modcaps
// ("+sys_admin:-chown", names without cap_ in any case), plus
// dac_read_search whenever inodes may be file handles (any
// --inode-file-handles but never, or a file-handles migration). An error
// has virtiofsd's message; virtiofsd checks --modcaps only when it runs as
// root, where it drops capabilities, and so does serve.
func capSet(modcaps string, fileHandles passthrough.InodeFileHandles, migrateHandles bool) (uint64, error) {
	var set uint64
	for _, c := range baseCaps {
		set |= 1 << c
	}
	disabledDRS := false
	if modcaps != "" {
		for _, m := range strings.Split(modcaps, ":") {
			if m == "" {
				return 0, errors.New("empty modcap found: expected (+|-)capability:...")
			}
			action, name := m[:1], strings.ToUpper(m[1:])
			if action != "+" && action != "-" {
				return 0, fmt.Errorf("invalid modcap action: expecting '+'|'-' but found '%s'", action)
			}
			c, ok := capNames[strings.ToLower(name)]
			if !ok {
				return 0, fmt.Errorf("invalid capability '%s': failed to get the ID for the capability with name %s", name, name)
			}
			if action == "+" {
				set |= 1 << c
			} else {
				set &^= 1 << c
			}
			if name == "DAC_READ_SEARCH" {
				disabledDRS = action == "-"
			}
		}
	}
	if fileHandles != passthrough.FileHandlesNever {
		if disabledDRS {
			return 0, fmt.Errorf("can't disable DAC_READ_SEARCH when using --inode-file-handles=%s", capitalized(fileHandles.String()))
		}
		set |= 1 << unix.CAP_DAC_READ_SEARCH
	}
	if migrateHandles && !disabledDRS {
		// A destination opens the file handles a file-handles
		// migration sends.
		set |= 1 << unix.CAP_DAC_READ_SEARCH
	}
	return set, nil
}

type capHeader struct {
	version uint32
	pid     int32
}

type capData struct {
	effective, permitted, inheritable uint32
}

// dropCaps reduces every thread's bounding, permitted and effective sets
// to keep. Capabilities are per thread, so each call runs on all of them.
func dropCaps(keep uint64) error {
	last := 40
	for c := 0; c <= last; c++ {
		if keep&(1<<c) != 0 {
			continue
		}
		if _, _, e := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); e != 0 && e != unix.EINVAL {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, e)
		}
	}
	hdr := capHeader{version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]capData{
		{effective: uint32(keep), permitted: uint32(keep)},
		{effective: uint32(keep >> 32), permitted: uint32(keep >> 32)},
	}
	if _, _, e := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return fmt.Errorf("capset: %w", e)
	}
	return nil
}
