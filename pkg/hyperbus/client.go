package hyperbus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Client is the hypervisor's side of one session (the fabric simulator
// plays it): it pushes configs and receives acks and pod statuses. Safe
// for concurrent use.
type Client struct {
	conn      net.Conn
	heartbeat time.Duration

	wmu sync.Mutex
	mu  sync.Mutex
	seq uint64
	// acks waiting by seq; the reader closes done when the session ends.
	acks     map[uint64]chan *Message
	statuses chan Message
	done     chan struct{}
	err      error
}

// AckError is an agent's refusal of one message.
type AckError struct {
	Type Type
	Seq  uint64
	Msg  string
}

func (e *AckError) Error() string {
	return fmt.Sprintf("hyperbus: agent refused %s #%d: %s", e.Type, e.Seq, e.Msg)
}

// Dial opens a session to the agent at addr for node. heartbeat is how
// often the client sends heartbeats (0: 5 s).
func Dial(ctx context.Context, addr, node string, heartbeat time.Duration) (*Client, error) {
	if heartbeat <= 0 {
		heartbeat = 5 * time.Second
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("hyperbus: dial %s: %w", addr, err)
	}
	c := &Client{conn: conn, heartbeat: heartbeat, acks: map[uint64]chan *Message{}, statuses: make(chan Message, 1024), done: make(chan struct{})}
	if err := c.write(&Message{Type: TypeHello, Versions: []int{Version}, Node: node}); err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(3 * heartbeat))
	m, err := ReadMessage(conn)
	if err == nil && (m.Type != TypeHello || m.Error != "") {
		err = fmt.Errorf("hyperbus: agent refused the session: %s", m.Error)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	go c.read()
	go c.heartbeats()
	return c, nil
}

func (c *Client) write(m *Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(3 * c.heartbeat))
	return WriteMessage(c.conn, m)
}

func (c *Client) read() {
	var err error
	defer func() {
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		close(c.done)
		close(c.statuses)
	}()
	for {
		_ = c.conn.SetReadDeadline(time.Now().Add(3 * c.heartbeat))
		var m *Message
		if m, err = ReadMessage(c.conn); err != nil {
			return
		}
		switch m.Type {
		case TypeAck:
			c.mu.Lock()
			ch := c.acks[m.Seq]
			delete(c.acks, m.Seq)
			c.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		case TypeStatus:
			select {
			case c.statuses <- *m:
			default: // nobody reads statuses: drop, the session goes on
			}
		}
	}
}

func (c *Client) heartbeats() {
	t := time.NewTicker(c.heartbeat)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			if c.write(&Message{Type: TypeHeartbeat}) != nil {
				c.conn.Close()
				return
			}
		}
	}
}

// Statuses delivers the agent's pod statuses; closed when the session ends.
func (c *Client) Statuses() <-chan Message { return c.statuses }

// Done is closed when the session has ended; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the session ended (nil while it runs).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the session.
func (c *Client) Close() error { return c.conn.Close() }

// request sends m with the next seq and waits for its ack.
func (c *Client) request(ctx context.Context, m *Message) error {
	ch := make(chan *Message, 1)
	c.mu.Lock()
	c.seq++
	m.Seq = c.seq
	c.acks[m.Seq] = ch
	c.mu.Unlock()
	if err := c.write(m); err != nil {
		return fmt.Errorf("hyperbus: send %s: %w", m.Type, err)
	}
	select {
	case a := <-ch:
		if a.Error != "" {
			return &AckError{Type: m.Type, Seq: m.Seq, Msg: a.Error}
		}
		return nil
	case <-c.done:
		return fmt.Errorf("hyperbus: session ended before the ack of %s #%d: %w", m.Type, m.Seq, errors.Join(c.Err(), net.ErrClosed))
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Snapshot replaces the agent's view with configs.
func (c *Client) Snapshot(ctx context.Context, configs []ContainerConfig) error {
	if configs == nil {
		configs = []ContainerConfig{}
	}
	return c.request(ctx, &Message{Type: TypeSnapshot, Configs: configs})
}

// Upsert adds or replaces one pod's config.
func (c *Client) Upsert(ctx context.Context, cfg ContainerConfig) error {
	return c.request(ctx, &Message{Type: TypeUpsert, Config: &cfg})
}

// Delete removes one pod's config.
func (c *Client) Delete(ctx context.Context, pod PodRef) error {
	return c.request(ctx, &Message{Type: TypeDelete, Pod: &pod})
}
