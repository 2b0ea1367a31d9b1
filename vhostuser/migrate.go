package vhostuser

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Device state transfer for live migration (DEVICE_STATE).
//
// With the rings stopped, the front-end hands the back-end one end of a
// pipe with SET_DEVICE_STATE_FD: on the source the back-end writes its
// state there and closes it, on the destination it reads the state until
// end of file. The transfer runs on its own goroutine, so that the control
// connection keeps being served (the front-end reads the pipe only after
// the reply, and a state larger than the pipe would otherwise never get
// through). CHECK_DEVICE_STATE then waits for the transfer, at most
// checkStateTimeout (after which it ends the transfer), and reports
// whether it worked. The state itself is the device's business (Migrator);
// this file only moves it. While a transfer runs the device is left alone:
// no ring starts, and a reset or a disconnect first ends the transfer
// (endTransfer).

// Migrator is a Device whose state can move to another back-end. A Device
// that implements it is offered with LOG_ALL, LOG_SHMFD and DEVICE_STATE,
// the features a front-end needs to migrate it. Its methods run on a
// goroutine of their own, one transfer at a time, while the control
// goroutine serves other messages; no ring runs or starts until the
// transfer is over, but Reset may come while one of them still runs, when
// it did not end within 10 s of its pipe being closed.
type Migrator interface {
	// SaveState writes the device's state to w. The rings are stopped.
	SaveState(w io.Writer) error
	// LoadState reads a state SaveState wrote, up to end of file, and
	// makes it the device's own. It must validate everything it reads:
	// a corrupt or hostile stream is an error, never a crash. The rings
	// are stopped.
	LoadState(r io.Reader) error
}

// Transfer directions and phases of SET_DEVICE_STATE_FD.
const (
	StateSave          = 0
	StateLoad          = 1
	StatePhaseStopped  = 0
	stateReplyNoFd     = 0x100 // the back-end sends no fd of its own
	stateReplyRefused  = 1
	migrationProtocols = ProtocolLogShmfd | ProtocolDeviceState
)

// transfer is one state transfer in progress or finished.
type transfer struct {
	dir   uint32
	start time.Time
	f     *os.File // the pipe, non-blocking: closing it fails a read or write waiting on it
	done  chan struct{}
	err   error
	bytes int64
}

// transferRunning reports whether a state transfer is still running.
func (b *Backend) transferRunning() bool {
	if t := b.xfer; t != nil {
		select {
		case <-t.done:
		default:
			return true
		}
	}
	return false
}

// endTransfer ends a transfer still running, before the device is reset
// under it: its pipe is closed, so that the device's SaveState or LoadState
// fails at its next read or write (the front-end may never drain or close
// the pipe), and it is waited for a while.
func (b *Backend) endTransfer() {
	if !b.transferRunning() {
		return
	}
	t := b.xfer
	t.f.Close()
	select {
	case <-t.done:
	case <-time.After(10 * time.Second):
		b.log.Warn("Migration: a device state transfer is still running at reset")
	}
}

// migrator returns the device as a Migrator, or nil.
func (b *Backend) migrator() Migrator {
	m, _ := b.dev.(Migrator)
	return m
}

// offerMigration adds the migration features when the device can migrate.
func (b *Backend) offerMigration() {
	if b.migrator() != nil {
		b.offered |= FeatureLogAll
		b.offeredProtocol |= migrationProtocols
	}
}

// handleMigration serves the migration requests; ok is false for any
// other request.
func (b *Backend) handleMigration(m *Message) (ok, replied bool, err error) {
	if b.migrator() == nil {
		return false, false, nil
	}
	switch m.Request {
	case SetLogBase:
		l, fd, err := decodeWithFd[LogArea](m)
		if err == nil {
			err = b.setLogBase(l, fd)
		}
		return true, true, b.setLogBaseReply(err)
	case SetDeviceStateFd:
		err := b.transferNegotiated()
		var t DeviceStateTransfer
		fd := -1
		if err == nil {
			t, fd, err = decodeWithFd[DeviceStateTransfer](m)
		}
		if err == nil {
			err = b.startTransfer(t, fd)
		}
		return true, true, b.setDeviceStateFdReply(err)
	case CheckDeviceState:
		return true, true, b.checkDeviceState()
	}
	return false, false, nil
}

// setDeviceStateFdReply answers SET_DEVICE_STATE_FD, whose outcome is err.
// The front-end always reads a reply: u64 0 | 0x100 (accepted, no back-end
// fd) or non-zero in the low byte.
func (b *Backend) setDeviceStateFdReply(err error) error {
	status := uint64(stateReplyNoFd)
	if err != nil {
		status |= stateReplyRefused
	}
	if werr := b.conn.ReplyU64(SetDeviceStateFd, status); werr != nil {
		return errors.Join(err, werr)
	}
	return err
}

// transferNegotiated fails unless the device can migrate and the
// front-end acked DEVICE_STATE.
func (b *Backend) transferNegotiated() error {
	if b.migrator() == nil || b.ackedProtocol&ProtocolDeviceState == 0 {
		return errors.New("device state transfer was not negotiated")
	}
	return nil
}

// startTransfer starts the transfer t asks for through the pipe fd, which
// it owns from here on.
func (b *Backend) startTransfer(t DeviceStateTransfer, fd int) error {
	mig := b.migrator()
	dir, phase := t.Direction, t.Phase
	if dir != StateSave && dir != StateLoad {
		unix.Close(fd)
		return fmt.Errorf("SET_DEVICE_STATE_FD: unknown direction %d", dir)
	}
	if phase != StatePhaseStopped {
		unix.Close(fd)
		return fmt.Errorf("SET_DEVICE_STATE_FD: unsupported phase %d (only 0, stopped)", phase)
	}
	if b.transferRunning() {
		unix.Close(fd)
		return errors.New("SET_DEVICE_STATE_FD while a transfer is still running")
	}
	for _, v := range b.rings {
		if v.running {
			unix.Close(fd)
			return fmt.Errorf("SET_DEVICE_STATE_FD with queue %d running", v.index)
		}
	}
	// Non-blocking, the pipe goes through the runtime's poller, so
	// endTransfer's close wakes a read or write waiting on it. Should
	// that fail, endTransfer's wait is bounded all the same.
	unix.SetNonblock(fd, true)
	f := os.NewFile(uintptr(fd), "device-state")
	x := &transfer{dir: dir, start: time.Now(), f: f, done: make(chan struct{})}
	b.xfer = x
	go func() {
		defer close(x.done)
		if dir == StateSave {
			cw := &countingWriter{w: f}
			w := bufio.NewWriterSize(cw, 64<<10)
			x.err = mig.SaveState(w)
			if x.err == nil {
				x.err = w.Flush()
			}
			x.bytes = cw.n
		} else {
			cr := &countingReader{r: f}
			x.err = mig.LoadState(bufio.NewReaderSize(cr, 64<<10))
			x.bytes = cr.n
		}
		if cerr := f.Close(); x.err == nil && cerr != nil {
			x.err = cerr
		}
	}()
	return nil
}

// checkStateTimeout bounds CHECK_DEVICE_STATE's wait for a transfer: the
// control goroutine serves nothing else meanwhile, so a front-end that
// never reads the pipe would otherwise stop it for good.
var checkStateTimeout = 30 * time.Second

// checkDeviceState waits for the last transfer, for up to
// checkStateTimeout, and answers u64 0 when it worked.
func (b *Backend) checkDeviceState() error {
	t := b.xfer
	var err error
	if t == nil {
		err = errors.New("CHECK_DEVICE_STATE without a state transfer")
	} else {
		select {
		case <-t.done:
		case <-time.After(checkStateTimeout):
			// The front-end does not drain (or fill) the pipe: end
			// the transfer, which fails it.
			b.log.Errorf("Migration: the device state transfer is still running after %v; ending it", checkStateTimeout)
			b.endTransfer()
			if b.transferRunning() {
				// Still running: it keeps the rings stopped.
				err = errors.New("the device state transfer does not end")
				break
			}
		}
	}
	if t != nil && err == nil {
		b.xfer = nil
		what := "saving"
		if t.dir == StateLoad {
			what = "loading"
		}
		if t.err != nil {
			err = fmt.Errorf("%s the device state failed after %d bytes: %w", what, t.bytes, t.err)
		} else {
			b.log.Infof("Migration: %s the device state (%d bytes) took %v", what, t.bytes, time.Since(t.start).Round(time.Millisecond))
		}
	}
	status := uint64(0)
	if err != nil {
		status = 1
		b.log.Errorf("Migration: %v", err)
	}
	if werr := b.conn.ReplyU64(CheckDeviceState, status); werr != nil {
		return werr
	}
	return nil
}

// stopMigration drops the log and ends a transfer still running, so that
// the device does not change under it.
func (b *Backend) stopMigration() {
	b.endTransfer()
	b.xfer = nil
	b.dirty.on.Store(false)
	b.dirty.replace(nil)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
