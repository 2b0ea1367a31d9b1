package vhostuser

import (
	"runtime"
	"testing"
	"time"
)

// TestRawWait: ring workers wait for kicks holding their P, so each one
// running adds a P; the runtime must still stop the world (a collection)
// while they wait, and the Ps go when the workers do.
func TestRawWait(t *testing.T) {
	guestFd, guest, err := fuzzGuest()
	if err != nil {
		t.Fatal(err)
	}
	fillGuest(guest, nil)
	procs := runtime.GOMAXPROCS(0)
	s := newTestSession(t)
	s.startRings(guestFd, 2)
	if got := runtime.GOMAXPROCS(0); got != procs+2 {
		t.Errorf("GOMAXPROCS with 2 rings running is %d, want %d", got, procs+2)
	}
	time.Sleep(50 * time.Millisecond) // let both workers settle in ppoll
	done := make(chan struct{})
	start := time.Now()
	go func() { runtime.GC(); close(done) }()
	select {
	case <-done:
		t.Logf("a collection with 2 workers waiting took %v", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("a collection did not finish while the ring workers waited")
	}
	// The control connection keeps being served meanwhile.
	if st := s.request(SetVringEnable, u32le(1, 1), true); st != 0 {
		t.Errorf("SET_VRING_ENABLE while workers wait: status %d", st)
	}
	s.hangUp()
	if got := runtime.GOMAXPROCS(0); got != procs {
		t.Errorf("GOMAXPROCS after the rings stopped is %d, want %d", got, procs)
	}
}
