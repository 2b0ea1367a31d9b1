package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// QMP is a minimal client of QEMU's machine protocol on a unix socket:
// one command at a time, events kept aside.
type QMP struct {
	mu     sync.Mutex
	conn   net.Conn
	r      *bufio.Reader
	nextID int
	// Greeting is the server's greeting (its "QMP" object).
	Greeting json.RawMessage
	events   []QMPEvent
	// AnswerWindow bounds the wait for the answer to a command whose ctx
	// has no deadline: QEMU that answers nothing for so long is wedged.
	// DialQMP sets DefaultQMPAnswerWindow, Run.DialQMP that scaled by
	// the run's slowdown.
	AnswerWindow time.Duration
}

// DefaultQMPAnswerWindow is the default QMP.AnswerWindow.
const DefaultQMPAnswerWindow = time.Minute

// QMPEvent is an asynchronous event QEMU sent.
type QMPEvent struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// QMPError is an error answer to a command.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// qmpMessage is any message from the server.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *QMPError       `json:"error"`
	Event  string          `json:"event"`
	ID     json.RawMessage `json:"id"`
}

// DialQMP connects to QEMU's QMP socket at path, retrying until the socket
// accepts or ctx ends, reads the greeting and negotiates capabilities.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var conn net.Conn
	var err error
	for {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "unix", path)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("vm: connecting to QMP at %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	q := &QMP{conn: conn, r: bufio.NewReader(conn), AnswerWindow: DefaultQMPAnswerWindow}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	msg, err := q.read()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("vm: reading the QMP greeting: %w", err)
	}
	if msg.QMP == nil {
		conn.Close()
		return nil, errors.New("vm: QMP server sent no greeting")
	}
	q.Greeting = msg.QMP
	if _, err := q.execute("qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

// DialQMP connects to the run's Config.QMPSocket (see the function
// DialQMP); it fails when QEMU exits first, and the connection's
// AnswerWindow is DefaultQMPAnswerWindow scaled by the run's slowdown.
func (r *Run) DialQMP(ctx context.Context) (*QMP, error) {
	if r.cfg.QMPSocket == "" {
		return nil, errors.New("vm: the run has no QMPSocket")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-r.exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	q, err := DialQMP(ctx, r.cfg.QMPSocket)
	if err != nil {
		select {
		case <-r.exited:
			return nil, fmt.Errorf("vm: QEMU exited before its QMP socket answered: %w%s", err, r.stderrNote())
		default:
		}
		return nil, err
	}
	q.AnswerWindow = r.Scale(DefaultQMPAnswerWindow)
	return q, nil
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }

func (q *QMP) read() (*qmpMessage, error) {
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	var m qmpMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return nil, fmt.Errorf("vm: bad QMP message %q: %w", line, err)
	}
	if m.Event != "" {
		var ev QMPEvent
		if err := json.Unmarshal(line, &ev); err == nil {
			q.events = append(q.events, ev)
		}
	}
	return &m, nil
}

// Execute runs a QMP command with arguments (nil for none; anything that
// marshals to a JSON object) and returns its "return" value.
func (q *QMP) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := ctx.Deadline(); !ok && q.AnswerWindow > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, q.AnswerWindow,
			fmt.Errorf("QEMU did not answer %s within %v (QMP.AnswerWindow)", command, q.AnswerWindow))
		defer cancel()
	}
	stop := context.AfterFunc(ctx, func() { _ = q.conn.SetDeadline(time.Now()) })
	defer stop()
	ret, err := q.execute(command, args)
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("vm: qmp %s: %w (%v)", command, context.Cause(ctx), err)
	}
	return ret, err
}

func (q *QMP) execute(command string, args any) (json.RawMessage, error) {
	q.nextID++
	id := fmt.Sprintf("govirtiofsd-%d", q.nextID)
	req := map[string]any{"execute": command, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("vm: qmp %s: %w", command, err)
	}
	for {
		m, err := q.read()
		if err != nil {
			return nil, fmt.Errorf("vm: qmp %s: %w", command, err)
		}
		if m.Event != "" {
			continue // kept by read
		}
		var gotID string
		if m.ID != nil {
			_ = json.Unmarshal(m.ID, &gotID)
		}
		if gotID != id {
			continue // an answer to something else; not ours
		}
		if m.Error != nil {
			m.Error.Command = command
			return nil, m.Error
		}
		return m.Return, nil
	}
}

// Events returns and forgets the events received so far (only while
// commands were running; the client does not read in the background).
func (q *QMP) Events() []QMPEvent {
	q.mu.Lock()
	defer q.mu.Unlock()
	ev := q.events
	q.events = nil
	return ev
}

// HotplugMemory adds size bytes of guest RAM: a shared memfd memory
// backend with the given id ("<id>-mem") plugged in as a pc-dimm ("<id>").
// The guest must have been booted with Config.Slots and MaxMem. QEMU then
// sends the vhost-user back-end a new memory table.
func (q *QMP) HotplugMemory(ctx context.Context, id string, size uint64) error {
	memID := id + "-mem"
	if _, err := q.Execute(ctx, "object-add", map[string]any{
		"qom-type": "memory-backend-memfd",
		"id":       memID,
		"size":     size,
		"share":    true,
	}); err != nil {
		return err
	}
	if _, err := q.Execute(ctx, "device_add", map[string]any{
		"driver": "pc-dimm",
		"id":     id,
		"memdev": memID,
	}); err != nil {
		return err
	}
	return nil
}
