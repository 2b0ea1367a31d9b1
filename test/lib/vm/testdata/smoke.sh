#!/bin/sh
# Guest side of TestReferenceSmoke: /init runs it after mounting the share
# on /mnt. It reports in the GUEST RESULT protocol.
result() { echo "GUEST RESULT $1 $2 $3"; }

want="hello from the host"
got=$(cat /mnt/hello.txt 2>&1)
if [ "$got" = "$want" ]; then
	result cat-host-file PASS "read $(wc -c </mnt/hello.txt) bytes"
else
	result cat-host-file FAIL "got: $got"
fi

if ls /mnt | grep -qx hello.txt; then
	result readdir PASS "$(ls /mnt | tr '\n' ' ')"
else
	result readdir FAIL "$(ls -la /mnt 2>&1 | tr '\n' ' ')"
fi

if echo "written by the guest" >/mnt/from-guest.txt && sync; then
	result write-file PASS "wrote /mnt/from-guest.txt"
else
	result write-file FAIL "writing /mnt/from-guest.txt failed"
fi

line=$(grep ' /mnt ' /proc/mounts)
case "$line" in
*" virtiofs "*) result mount-type PASS "$line" ;;
*) result mount-type FAIL "/proc/mounts: $line" ;;
esac

/hello /mnt/hello.txt || result go-guest-exit FAIL "exit $?"

if HELLO_FILE=/mnt/hello.txt /hello.test -test.v >/tmp/hello-test.out 2>&1; then
	result go-test-binary PASS "$(grep -c '^--- PASS' /tmp/hello-test.out) test(s) passed"
else
	result go-test-binary FAIL "$(tail -n 5 /tmp/hello-test.out | tr '\n' ' ')"
fi

echo "GUEST DONE"
