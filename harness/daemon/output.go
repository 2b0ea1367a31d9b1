package daemon

import (
	"bytes"
	"io"
	"strings"
	"sync"
)

// Output is a goroutine-safe buffer that tees to an optional writer
// and wakes waiters on every write.
type Output struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	tee    io.Writer
	notify chan struct{}
}

// NewOutput returns an empty Output that copies every write to tee (when
// not nil); a failing tee does not fail the write.
func NewOutput(tee io.Writer) *Output {
	return &Output{tee: tee, notify: make(chan struct{})}
}

// Write appends p, copies it to the tee and wakes the waiters.
func (b *Output) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if b.tee != nil {
		_, _ = b.tee.Write(p) // a failing log must not stop the guest
	}
	close(b.notify)
	b.notify = make(chan struct{})
	return len(p), nil
}

// String returns everything written so far.
func (b *Output) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Changed returns a channel closed at the next write.
func (b *Output) Changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.notify
}

// LastLines returns the last n lines of s.
func LastLines(s string, n int) string {
	s = strings.ReplaceAll(s, "\r", "")
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
