#!/bin/sh
# Guest side of TestMemoryHotplugQMP: /init runs it after mounting the share
# on /mnt. The host hot-adds memory once it sees GUEST READY, then creates
# /mnt/go; the guest checks that its memory grew and that the share still
# works across the back-end's new memory table.
result() { echo "GUEST RESULT $1 $2 $3"; }
memtotal() { awk '/^MemTotal:/ {print $2}' /proc/meminfo; }

before=$(memtotal)
echo "GUEST READY"
i=0
while [ ! -e /mnt/go ] && [ $i -lt 600 ]; do
	sleep 0.1
	i=$((i + 1))
done
if [ -e /mnt/go ]; then
	result host-signal PASS "saw /mnt/go after $i polls"
else
	result host-signal FAIL "no /mnt/go after 60 s"
fi

# Memory onlining is asynchronous; give it a moment.
i=0
after=$(memtotal)
while [ "$after" -le "$before" ] && [ $i -lt 100 ]; do
	sleep 0.1
	after=$(memtotal)
	i=$((i + 1))
done
if [ "$after" -gt "$before" ]; then
	result memory-grew PASS "MemTotal $before kB -> $after kB"
else
	result memory-grew FAIL "MemTotal stayed $before kB"
fi

if dd if=/dev/urandom of=/tmp/blob bs=64k count=64 2>/dev/null &&
	cp /tmp/blob /mnt/blob && sync && echo 3 >/proc/sys/vm/drop_caches &&
	cmp /tmp/blob /mnt/blob; then
	result io-after-hotplug PASS "4 MiB written and read back: $(md5sum </tmp/blob | cut -d' ' -f1)"
else
	result io-after-hotplug FAIL "4 MiB copy to /mnt differs or failed"
fi
echo "GUEST DONE"
