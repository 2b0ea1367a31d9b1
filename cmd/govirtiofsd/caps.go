package main

import (
	"fmt"
	"strings"
	"syscall"
	"unsafe"

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

// capSet computes the capabilities to keep from the base set and
// --modcaps ("+sys_admin:-chown").
func capSet(modcaps string, fileHandles bool) (uint64, error) {
	var set uint64
	for _, c := range baseCaps {
		set |= 1 << c
	}
	if fileHandles {
		set |= 1 << unix.CAP_DAC_READ_SEARCH
	}
	if modcaps == "" {
		return set, nil
	}
	for _, m := range strings.Split(modcaps, ":") {
		if len(m) < 2 || (m[0] != '+' && m[0] != '-') {
			return 0, fmt.Errorf("invalid --modcaps entry %q: want +name or -name", m)
		}
		c, ok := capNames[strings.TrimPrefix(strings.ToLower(m[1:]), "cap_")]
		if !ok {
			return 0, fmt.Errorf("invalid --modcaps entry %q: unknown capability", m)
		}
		if m[0] == '+' {
			set |= 1 << c
		} else {
			set &^= 1 << c
		}
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
