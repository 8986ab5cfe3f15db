// Package openflow is one persistent OpenFlow 1.5 connection to an Open
// vSwitch bridge's management socket (<ovs run dir>/<bridge>.mgmt, where
// ovs-vswitchd listens as a "service controller"), so the node's daemons
// change flows without starting ovs-ofctl: atomic bundles of flow and
// group mods, flow and group dumps, barriers, packet-out and packet-in,
// echo keepalive, and reconnection after ovs-vswitchd restarts. Messages
// are encoded and decoded by antrea's libOpenflow (openflow15).
//
// One Client owns one connection. All its methods are safe for concurrent
// use; requests are matched to replies by transaction id, so dumps,
// barriers and packet-outs run concurrently while bundles are serialized.
//
// Building messages with libOpenflow v0.15.0 (its length fields are only
// right when built through its helpers):
//   - add match fields with Match.AddField (it maintains Match.Length),
//     actions with InstrActions.AddAction and Bucket.AddAction, and add a
//     bucket to a GroupMod with AddBucket only once its actions and
//     properties are in (AddBucket adds the bucket's length then);
//   - a FlowMod delete must have no instructions (its Len skips them, its
//     encoding does not); the client refuses such length mismatches;
//   - libOpenflow encodes OutPort into out_group too; the client fixes
//     that on the wire from FlowMod.OutGroup;
//   - NewActionCopyField sizes the action before its OXM ids are set: set
//     Length = Len() afterwards.
package openflow

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"antrea.io/libOpenflow/openflow15"
	"go.uber.org/zap"
)

// Options configure a Client.
type Options struct {
	Socket  string        // unix socket: <ovs run dir>/<bridge>.mgmt
	Timeout time.Duration // per request when ctx has no deadline (default 5s)
	// EchoInterval is the keepalive (default 2s): nothing received for 2
	// intervals = dead connection, reconnect. While a request waits for
	// the switch (which answers nothing while it commits a large bundle),
	// that request's deadline bounds the silence instead.
	EchoInterval time.Duration
	Log          *zap.Logger // go.uber.org/zap; nil = nop
	// OnReconnect is called after every successful connection except the
	// first (ovs-vswitchd restarted, or the connection dropped): the
	// switch may have lost its flows, the caller reinstalls them. Called
	// from the client's goroutine, never concurrently with itself; it may
	// call the client's methods (the new connection already serves them),
	// but not Close.
	OnReconnect func()
}

const (
	defaultTimeout      = 5 * time.Second
	defaultEchoInterval = 2 * time.Second
	// The switch is a local unix socket: a failed connect costs one
	// syscall, while each moment of delay after ovs-vswitchd restarted
	// without saved flows is a datapath without the caller's flows. A
	// 2 s cap made that outage last 1.5 s or 3.1 s by the luck of the
	// schedule (make chaos, OVS dataplane).
	minBackoff = 50 * time.Millisecond
	maxBackoff = 250 * time.Millisecond
	// maxMessage is OpenFlow's limit on one message: its length field
	// has 16 bits.
	maxMessage = 0xffff
	// packetInBuffer is how many packet-ins wait for the reader of
	// PacketIns before new ones are dropped.
	packetInBuffer = 256
)

// ErrClosed is returned by requests made after (or cut short by) Close.
var ErrClosed = errors.New("openflow: client closed")

// Client is one OpenFlow 1.5 connection to a bridge that reconnects by
// itself. Its methods are safe for concurrent use.
type Client struct {
	o   Options
	log *zap.Logger

	mu     sync.Mutex
	conn   *conn         // nil while disconnected
	up     chan struct{} // closed when conn is set; replaced when it drops
	closed bool
	wantPI bool // PacketIns was called: enable packet-ins on every connection

	ctx  context.Context // canceled by Close
	stop context.CancelFunc
	done chan struct{} // closed when the connection goroutine has ended

	bundles sync.Mutex // one bundle at a time on the connection

	xid        atomic.Uint32
	bundleID   atomic.Uint32
	reconnects atomic.Uint64
	roundTrips atomic.Uint64
	piDropped  atomic.Uint64
	packetIns  chan *openflow15.PacketIn
}

// New starts the client; it connects in the background and reconnects
// with backoff (50 ms doubling to 250 ms) forever until Close. It never
// fails: operations wait for a connection until their ctx/Timeout ends.
func New(o Options) *Client {
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.EchoInterval <= 0 {
		o.EchoInterval = defaultEchoInterval
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	c := &Client{
		o:         o,
		log:       o.Log.With(zap.String("socket", o.Socket)),
		up:        make(chan struct{}),
		done:      make(chan struct{}),
		packetIns: make(chan *openflow15.PacketIn, packetInBuffer),
	}
	c.ctx, c.stop = context.WithCancel(context.Background())
	go c.run()
	return c
}

// Close stops reconnecting and closes the connection; requests waiting
// for a reply or a connection return errors. It waits for the client's
// goroutine, so it must not be called from OnReconnect. Idempotent; it
// always returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.done
		return nil
	}
	c.closed = true
	cn := c.conn
	c.mu.Unlock()
	c.stop()
	if cn != nil {
		cn.close(ErrClosed)
	}
	<-c.done
	return nil
}

// Connected says whether a connection to the switch is up now.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn != nil
}

// Reconnects counts successful connections after the first one.
func (c *Client) Reconnects() uint64 { return c.reconnects.Load() }

// RoundTrips counts requests that waited for a reply from the switch: a
// bundle, a dump (all its parts) or a barrier is one each.
func (c *Client) RoundTrips() uint64 { return c.roundTrips.Load() }

// DroppedPacketIns counts packet-ins dropped because the channel returned
// by PacketIns was full.
func (c *Client) DroppedPacketIns() uint64 { return c.piDropped.Load() }

// run connects, serves the connection until it dies, and reconnects,
// until Close.
func (c *Client) run() {
	defer close(c.done)
	delay := minBackoff
	first := true
	for failures := 0; ; {
		cn, err := c.dial()
		if err != nil {
			if c.isClosed() {
				return
			}
			// The first failure after a loss is worth a line; the retries
			// of a switch that stays away are not.
			if failures == 0 {
				c.log.Info("openflow: cannot connect to ovs-vswitchd; retrying", zap.Error(err))
			} else {
				c.log.Debug("openflow: connect failed; retrying", zap.Error(err), zap.Duration("backoff", delay))
			}
			failures++
			select {
			case <-c.ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, maxBackoff)
			continue
		}
		failures, delay = 0, minBackoff
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			cn.close(ErrClosed)
			return
		}
		c.conn = cn
		close(c.up)
		wantPI := c.wantPI
		c.mu.Unlock()
		if wantPI {
			if err := c.enablePacketIns(cn); err != nil {
				c.log.Warn("openflow: cannot enable packet-ins on the new connection", zap.Error(err))
			}
		}
		if first {
			c.log.Info("openflow: connected to ovs-vswitchd")
		} else {
			n := c.reconnects.Add(1)
			c.log.Info("openflow: reconnected to ovs-vswitchd", zap.Uint64("reconnects", n))
			if c.o.OnReconnect != nil {
				c.o.OnReconnect()
			}
		}
		first = false
		<-cn.dead
		// conn.close unpublishes cn, unless it died before run
		// published it.
		c.mu.Lock()
		if c.conn == cn {
			c.conn, c.up = nil, make(chan struct{})
		}
		c.mu.Unlock()
		if c.isClosed() {
			return
		}
		c.log.Warn("openflow: connection to ovs-vswitchd lost; reconnecting", zap.Error(cn.err))
	}
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// current returns the live connection, waiting for one until ctx ends.
func (c *Client) current(ctx context.Context) (*conn, error) {
	for {
		c.mu.Lock()
		cn, up, closed := c.conn, c.up, c.closed
		c.mu.Unlock()
		switch {
		case closed:
			return nil, ErrClosed
		case cn != nil:
			return cn, nil
		}
		select {
		case <-up:
		case <-c.ctx.Done():
		case <-ctx.Done():
			return nil, fmt.Errorf("openflow %s: not connected: %w", c.o.Socket, context.Cause(ctx))
		}
	}
}

// withTimeout bounds ctx by Options.Timeout unless it has a deadline.
func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.o.Timeout)
}

func (c *Client) nextXid() uint32 {
	for {
		if x := c.xid.Add(1); x != 0 {
			return x
		}
	}
}

// dial connects and exchanges HELLO; the switch must accept OpenFlow 1.5.
func (c *Client) dial() (*conn, error) {
	d := net.Dialer{Timeout: c.o.Timeout}
	nc, err := d.DialContext(c.ctx, "unix", c.o.Socket)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	if err := c.handshake(nc, br); err != nil {
		nc.Close()
		return nil, fmt.Errorf("openflow %s: %w", c.o.Socket, err)
	}
	cn := &conn{c: c, nc: nc, br: br, pending: map[uint32]*pending{}, dead: make(chan struct{})}
	cn.lastRecv.Store(time.Now().UnixNano())
	go cn.read()
	go cn.keepalive(c.o.EchoInterval)
	return cn, nil
}

// hello is our HELLO: version 6 and a version bitmap offering only
// OpenFlow 1.5, so the switch never settles on an older version.
// (libOpenflow's common.NewHello also offers 1.0.)
var hello = []byte{
	openflow15.VERSION, openflow15.Type_Hello, 0, 16, 0, 0, 0, 0,
	0, 1, 0, 8, // element VERSIONBITMAP, length 8
	0, 0, 0, 1 << openflow15.VERSION,
}

func (c *Client) handshake(nc net.Conn, br *bufio.Reader) error {
	_ = nc.SetDeadline(time.Now().Add(c.o.Timeout))
	defer nc.SetDeadline(time.Time{})
	// Close cuts a handshake short.
	unwatch := context.AfterFunc(c.ctx, func() { _ = nc.SetDeadline(time.Now()) })
	defer unwatch()
	if _, err := nc.Write(hello); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	raw, err := readMsg(br)
	if err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	switch raw[1] {
	case openflow15.Type_Hello:
	case openflow15.Type_Error:
		return fmt.Errorf("the switch refused the connection: %s", errorFromRaw(raw).Text)
	default:
		return fmt.Errorf("the switch sent message type %d before HELLO", raw[1])
	}
	if !speaks15(raw) {
		return fmt.Errorf("the switch does not speak OpenFlow 1.5 (its HELLO has version %d); add OpenFlow15 to the bridge's protocols", raw[0])
	}
	return nil
}

// speaks15 reads a HELLO: with a version bitmap element, version 6 must be
// in it; without, the switch's highest version must be 6 or more.
func speaks15(raw []byte) bool {
	for b := raw[8:]; len(b) >= 4; {
		typ, n := binary.BigEndian.Uint16(b), int(binary.BigEndian.Uint16(b[2:]))
		if n < 4 || n > len(b) {
			break
		}
		if typ == 1 { // OFPHET_VERSIONBITMAP
			bm := b[4:n]
			if len(bm) < 4 {
				return false
			}
			return binary.BigEndian.Uint32(bm)&(1<<openflow15.VERSION) != 0
		}
		b = b[min((n+7)/8*8, len(b)):]
	}
	return raw[0] >= openflow15.VERSION
}

// readMsg reads one OpenFlow message, header included.
func readMsg(r io.Reader) ([]byte, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[2:]))
	if n < 8 {
		return nil, fmt.Errorf("bad OpenFlow message length %d", n)
	}
	b := make([]byte, n)
	copy(b, hdr[:])
	if _, err := io.ReadFull(r, b[8:]); err != nil {
		return nil, err
	}
	return b, nil
}

// conn is one live connection: a reader goroutine dispatches what the
// switch sends to the requests waiting for it, by xid; a keepalive
// goroutine sends echo requests.
type conn struct {
	c  *Client
	nc net.Conn
	br *bufio.Reader

	wmu sync.Mutex // one writer at a time: messages are never interleaved

	mu      sync.Mutex
	pending map[uint32]*pending // nil once the connection is dead

	lastRecv atomic.Int64 // unix nanoseconds of the last message received

	closeOnce sync.Once
	err       error         // why the connection died; set before dead is closed
	dead      chan struct{} // closed when the connection is closed
}

// pending is a request waiting for the switch. handle runs on the reader
// goroutine, under conn.mu, for each message carrying one of the
// request's xids; it returns true when the request is complete (after
// setting err if it failed).
type pending struct {
	xids     []uint32
	handle   func(xid uint32, raw []byte) bool
	err      error
	finished bool
	done     chan struct{}
}

func newPending(handle func(xid uint32, raw []byte) bool) *pending {
	return &pending{handle: handle, done: make(chan struct{})}
}

// close kills the connection (idempotent): every waiting request fails
// with err, and the client starts reconnecting.
func (cn *conn) close(err error) {
	cn.closeOnce.Do(func() {
		cn.err = err
		cn.nc.Close()
		cn.mu.Lock()
		for _, p := range cn.pending {
			if !p.finished {
				p.finished = true
				p.err = cn.lostErr()
				close(p.done)
			}
		}
		cn.pending = nil
		cn.mu.Unlock()
		c := cn.c
		c.mu.Lock()
		if c.conn == cn {
			c.conn = nil
			c.up = make(chan struct{})
		}
		c.mu.Unlock()
		close(cn.dead)
	})
}

func (cn *conn) lostErr() error {
	if errors.Is(cn.err, ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("openflow %s: connection lost: %w", cn.c.o.Socket, cn.err)
}

// register makes p wait for messages with xids.
func (cn *conn) register(p *pending, xids ...uint32) error {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.pending == nil {
		return cn.lostErr()
	}
	for _, x := range xids {
		cn.pending[x] = p
	}
	p.xids = append(p.xids, xids...)
	return nil
}

// finish completes p; conn.mu is held.
func (cn *conn) finish(p *pending) {
	if p.finished {
		return
	}
	p.finished = true
	for _, x := range p.xids {
		if cn.pending[x] == p {
			delete(cn.pending, x)
		}
	}
	close(p.done)
}

// abandon gives up on p; false if it completed meanwhile.
func (cn *conn) abandon(p *pending) bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if p.finished {
		return false
	}
	cn.finish(p)
	return true
}

// await waits until p completes or ctx ends.
func (cn *conn) await(ctx context.Context, p *pending) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		if cn.abandon(p) {
			return fmt.Errorf("openflow %s: no reply: %w", cn.c.o.Socket, context.Cause(ctx))
		}
		<-p.done
		return p.err
	}
}

// write sends whole messages; a failed write kills the connection (the
// stream may hold a partial message).
func (cn *conn) write(bufs ...[]byte) error {
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	select {
	case <-cn.dead:
		return cn.lostErr()
	default:
	}
	_ = cn.nc.SetWriteDeadline(time.Now().Add(cn.c.o.Timeout))
	nb := net.Buffers(bufs)
	if _, err := nb.WriteTo(cn.nc); err != nil {
		cn.close(fmt.Errorf("write: %w", err))
		return fmt.Errorf("openflow %s: write: %w", cn.c.o.Socket, err)
	}
	return nil
}

// busy says whether a request waits for the switch.
func (cn *conn) busy() bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return len(cn.pending) > 0
}

// keepalive sends an echo request every interval and kills the connection
// when nothing came back for two intervals. While a request waits, the
// switch may be busy on it (committing a large bundle blocks its main
// loop), so that request's own deadline bounds the silence instead.
func (cn *conn) keepalive(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-cn.dead:
			return
		case <-t.C:
		}
		silent := time.Since(time.Unix(0, cn.lastRecv.Load()))
		if silent > 2*every && !cn.busy() {
			cn.close(fmt.Errorf("no reply to echo requests for %v", silent.Round(time.Millisecond)))
			return
		}
		echo := make([]byte, 8)
		echo[0], echo[1] = openflow15.VERSION, openflow15.Type_EchoRequest
		binary.BigEndian.PutUint16(echo[2:], 8)
		binary.BigEndian.PutUint32(echo[4:], cn.c.nextXid())
		_ = cn.write(echo)
	}
}

// read dispatches what the switch sends until the connection dies.
func (cn *conn) read() {
	for {
		raw, err := readMsg(cn.br)
		if err != nil {
			cn.close(fmt.Errorf("read: %w", err))
			return
		}
		cn.lastRecv.Store(time.Now().UnixNano())
		xid := binary.BigEndian.Uint32(raw[4:])
		switch raw[1] {
		case openflow15.Type_EchoRequest:
			raw[1] = openflow15.Type_EchoReply
			// Not inline: the reader must never wait behind a large
			// write, or a switch waiting for us to read would deadlock.
			go cn.write(raw)
			continue
		case openflow15.Type_EchoReply, openflow15.Type_Hello:
			continue
		case openflow15.Type_PacketIn:
			cn.packetIn(raw)
			continue
		}
		cn.mu.Lock()
		p := cn.pending[xid]
		if p != nil && !p.finished && p.handle(xid, raw) {
			cn.finish(p)
		}
		cn.mu.Unlock()
		if p == nil {
			cn.unsolicited(xid, raw)
		}
	}
}

// unsolicited logs what no request waits for (errors of packet-outs, late
// replies of abandoned requests, port status...).
func (cn *conn) unsolicited(xid uint32, raw []byte) {
	if raw[1] == openflow15.Type_Error {
		cn.c.log.Debug("openflow: error for no waiting request", zap.Uint32("xid", xid), zap.String("error", errorFromRaw(raw).Text))
		return
	}
	if ce := cn.c.log.Check(zap.DebugLevel, "openflow: message for no waiting request"); ce != nil {
		ce.Write(zap.Uint32("xid", xid), zap.Uint8("type", raw[1]), zap.Int("bytes", len(raw)))
	}
}

func (cn *conn) packetIn(raw []byte) {
	c := cn.c
	c.mu.Lock()
	want := c.wantPI
	c.mu.Unlock()
	if !want {
		return
	}
	msg, err := parse(raw)
	pi, ok := msg.(*openflow15.PacketIn)
	if err != nil || !ok {
		c.log.Debug("openflow: cannot decode a packet-in; dropped", zap.Error(err), zap.Int("bytes", len(raw)))
		return
	}
	select {
	case c.packetIns <- pi:
	default:
		c.piDropped.Add(1)
	}
}
