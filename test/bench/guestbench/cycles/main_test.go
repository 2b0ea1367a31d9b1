package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// A trace in perf script's format: thread 42 ("exe") serves three kicks,
// then, after a gap, one more; another thread's write and an unnamed
// thread's wake-up must not count.
const trace = `
 qemu-system-x86  7 [001]   100.000000:  sched:sched_wakeup: comm=exe pid=42 prio=120 target_cpu=000
 qemu-system-x86  7 [000]   100.000002:  sched:sched_switch: prev_comm=qemu-system-x86 prev_pid=7 prev_prio=120 prev_state=S ==> next_comm=exe next_pid=42 next_prio=120
             exe 42 [000]   100.000010:  syscalls:sys_enter_write: fd: 0x00000006, buf: 0x00c000010000, count: 0x00000008
 qemu-system-x86  7 [001]   100.000200:  sched:sched_wakeup: comm=exe pid=42 prio=120 target_cpu=000
 qemu-system-x86  7 [001]   100.000201:  sched:sched_wakeup: comm=other pid=43 prio=120 target_cpu=000
 qemu-system-x86  7 [000]   100.000204:  sched:sched_switch: prev_comm=qemu-system-x86 prev_pid=7 prev_prio=120 prev_state=S ==> next_comm=exe next_pid=42 next_prio=120
             exe 42 [000]   100.000205:  syscalls:sys_enter_write: fd: 0x00000002, buf: 0x00c000020000, count: 0x00000040
             exe 42 [000]   100.000220:  syscalls:sys_enter_write: fd: 0x00000006, buf: 0x00c000010000, count: 0x00000008
           other 43 [000]   100.000221:  syscalls:sys_enter_write: fd: 0x00000006, buf: 0x00c000010000, count: 0x00000008
 qemu-system-x86  7 [001]   100.000400:  sched:sched_wakeup: comm=exe pid=42 prio=120 target_cpu=000
 qemu-system-x86  7 [000]   100.000401:  sched:sched_switch: prev_comm=qemu-system-x86 prev_pid=7 prev_prio=120 prev_state=S ==> next_comm=exe next_pid=42 next_prio=120
             exe 42 [000]   100.000430:  syscalls:sys_enter_write: fd: 0x00000006, buf: 0x00c000010000, count: 0x00000008
 qemu-system-x86  7 [001]   101.000000:  sched:sched_wakeup: comm=exe pid=42 prio=120 target_cpu=000
 qemu-system-x86  7 [000]   101.000001:  sched:sched_switch: prev_comm=qemu-system-x86 prev_pid=7 prev_prio=120 prev_state=S ==> next_comm=exe next_pid=42 next_prio=120
             exe 42 [000]   101.000011:  syscalls:sys_enter_write: fd: 0x00000006, buf: 0x00c000010000, count: 0x00000008
`

func TestCycles(t *testing.T) {
	cs, err := parse(strings.NewReader(trace), []string{"exe"})
	require.NoError(t, err)
	require.Len(t, cs, 4)
	c := cs[1]
	require.Equal(t, 42, c.tid)
	require.InDelta(t, 100.000200, c.wake, 1e-9)
	require.InDelta(t, 100.000204, c.run, 1e-9)
	require.InDelta(t, 100.000220, c.reply, 1e-9, "the 64-byte write is not the reply")

	var out bytes.Buffer
	report(&out, cs, 0.3, 2)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	// The run after the gap has one cycle, under -min 2.
	require.Len(t, lines, 3, out.String())
	f := strings.Fields(lines[2])
	// 3 cycles over 430 µs; to-run 2, 4, 1 µs; to-reply 10, 20, 30 µs;
	// guest 190, 180 µs (median 185); daemon 60 of 430 µs.
	require.Equal(t, []string{"exe/42", "3", "100.000", "0.000", "2", "20", "185", "14.0%"}, f)
}
