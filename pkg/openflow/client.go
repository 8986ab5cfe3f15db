// Package openflow is one persistent OpenFlow 1.5 connection to an Open
// vSwitch bridge's management socket (ovs-vswitchd listens there as a
// "service controller"), so the node's daemons change flows without a
// process start: bundles of flow and group mods, dumps filtered by cookie,
// barriers, packet-in/packet-out, echo keepalive, and reconnection after
// ovs-vswitchd restarts. Messages are encoded by antrea's libOpenflow.
package openflow

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"antrea.io/libOpenflow/common"
	"antrea.io/libOpenflow/openflow15"
	"antrea.io/libOpenflow/util"
	"go.uber.org/zap"
)

// Options configure a Client.
type Options struct {
	Socket       string        // unix socket: <ovs run dir>/<bridge>.mgmt
	Timeout      time.Duration // per request when ctx has no deadline (default 5s)
	EchoInterval time.Duration // keepalive (default 2s); silence for 2 intervals = dead connection
	Log          *zap.Logger   // nil: no logs
	// OnReconnect is called after every successful connection except the
	// first (ovs-vswitchd restarted, or the connection dropped): the switch
	// may have lost its flows, the caller reinstalls them. It runs on the
	// client's connection goroutine, never concurrently with itself, while
	// the connection serves requests, so it may call the client.
	OnReconnect func()
}

// maxMessage is OpenFlow's limit: the length field is 16 bits.
const maxMessage = 65535

// ErrClosed is returned by requests after Close.
var ErrClosed = errors.New("openflow: client closed")

// Client is one OpenFlow connection that reconnects by itself. Its methods
// are safe for concurrent use; bundles are serialized.
type Client struct {
	o Options

	mu      sync.Mutex
	conn    *conn         // nil while disconnected
	up      chan struct{} // closed when conn is set; replaced when it drops
	closed  bool
	stop    chan struct{}
	done    chan struct{}
	bundles sync.Mutex // one bundle at a time

	xid        atomic.Uint32
	bundleID   atomic.Uint32
	reconnects atomic.Uint64
	roundTrips atomic.Uint64
	packetIns  chan *openflow15.PacketIn
	dropped    atomic.Uint64
	wantPI     atomic.Bool
}

// New starts the client: it connects in the background and reconnects with
// backoff (100 ms doubling to 2 s) until Close. It never fails: requests
// wait for a connection until their context or Timeout ends.
func New(o Options) *Client {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.EchoInterval <= 0 {
		o.EchoInterval = 2 * time.Second
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	o.Log = o.Log.With(zap.String("socket", o.Socket))
	c := &Client{o: o, up: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{}),
		packetIns: make(chan *openflow15.PacketIn, 256)}
	go c.loop()
	return c
}

// Close stops the client and its connection. Idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	cn := c.conn
	c.mu.Unlock()
	close(c.stop)
	if cn != nil {
		cn.close(ErrClosed)
	}
	<-c.done
	return nil
}

// Connected says whether a connection is up now.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn != nil
}

// Reconnects counts successful connections after the first.
func (c *Client) Reconnects() uint64 { return c.reconnects.Load() }

// RoundTrips counts requests that waited for the switch's reply (a bundle,
// a dump or a barrier is one).
func (c *Client) RoundTrips() uint64 { return c.roundTrips.Load() }

// PacketIns returns the packet-ins the switch sends on this connection
// (buffered; when full, new ones are dropped and counted in
// DroppedPacketIns). Calling it asks the switch for whole packets.
func (c *Client) PacketIns() <-chan *openflow15.PacketIn {
	if !c.wantPI.Swap(true) {
		c.mu.Lock()
		cn := c.conn
		c.mu.Unlock()
		if cn != nil {
			_ = cn.write(setConfig())
		}
	}
	return c.packetIns
}

// DroppedPacketIns counts packet-ins dropped because nobody read them.
func (c *Client) DroppedPacketIns() uint64 { return c.dropped.Load() }

func (c *Client) loop() {
	defer close(c.done)
	delay := 100 * time.Millisecond
	first := true
	for {
		cn, err := c.dial()
		if err != nil {
			if c.isClosed() {
				return
			}
			c.o.Log.Debug("openflow: connect failed; retrying", zap.Error(err), zap.Duration("in", delay))
			select {
			case <-c.stop:
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, 2*time.Second)
			continue
		}
		delay = 100 * time.Millisecond
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			cn.close(ErrClosed)
			return
		}
		c.conn = cn
		close(c.up)
		c.mu.Unlock()
		if !first {
			c.reconnects.Add(1)
			c.o.Log.Info("openflow: reconnected to ovs-vswitchd")
			if c.o.OnReconnect != nil {
				c.o.OnReconnect()
			}
		}
		first = false
		<-cn.dead
		c.mu.Lock()
		c.conn = nil
		c.up = make(chan struct{})
		closed := c.closed
		c.mu.Unlock()
		if closed {
			return
		}
		c.o.Log.Warn("openflow: connection to ovs-vswitchd lost; reconnecting", zap.Error(cn.err))
	}
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// current waits for a connection.
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
		case <-ctx.Done():
			return nil, fmt.Errorf("openflow %s: not connected: %w", c.o.Socket, ctx.Err())
		}
	}
}

func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.o.Timeout)
}

func (c *Client) nextXid() uint32 { return c.xid.Add(1) }

func setConfig() util.Message {
	m := openflow15.NewSetConfig()
	m.MissSendLen = 0xffff
	return m
}

// dial connects and exchanges HELLO; the switch must speak OpenFlow 1.5.
func (c *Client) dial() (*conn, error) {
	nc, err := net.DialTimeout("unix", c.o.Socket, c.o.Timeout)
	if err != nil {
		return nil, err
	}
	hello, err := common.NewHello(openflow15.VERSION)
	if err == nil {
		err = writeMsg(nc, hello)
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("openflow %s: hello: %w", c.o.Socket, err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(c.o.Timeout))
	raw, err := readMsg(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("openflow %s: hello: %w", c.o.Socket, err)
	}
	if raw[1] != openflow15.Type_Hello || raw[0] < openflow15.VERSION {
		nc.Close()
		return nil, fmt.Errorf("openflow %s: the switch answered version %d type %d, want OpenFlow 1.5 HELLO (is OpenFlow15 in the bridge's protocols?)", c.o.Socket, raw[0], raw[1])
	}
	_ = nc.SetReadDeadline(time.Time{})
	cn := &conn{c: c, nc: nc, pending: map[uint32]*pending{}, dead: make(chan struct{})}
	cn.lastRecv.Store(time.Now().UnixNano())
	if c.wantPI.Load() {
		if err := cn.write(setConfig()); err != nil {
			nc.Close()
			return nil, err
		}
	}
	go cn.read()
	go cn.keepalive(c.o.EchoInterval)
	return cn, nil
}

func writeMsg(w io.Writer, m util.Message) error {
	b, err := m.MarshalBinary()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func readMsg(r io.Reader) ([]byte, error) {
	hdr := make([]byte, 8)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[2:]))
	if n < 8 {
		return nil, fmt.Errorf("openflow: bad message length %d", n)
	}
	b := make([]byte, n)
	copy(b, hdr)
	if _, err := io.ReadFull(r, b[8:]); err != nil {
		return nil, err
	}
	return b, nil
}

// conn is one live connection.
type conn struct {
	c        *Client
	nc       net.Conn
	wmu      sync.Mutex
	mu       sync.Mutex
	pending  map[uint32]*pending
	lastRecv atomic.Int64
	once     sync.Once
	err      error
	dead     chan struct{}
}

// pending is a request waiting for its reply; a bundle also collects the
// errors of its messages.
type pending struct {
	done    chan struct{}
	err     error
	replies []util.Message // multipart parts, or the one reply
	// bundle: index of each added message's xid, and the first error
	// naming one of them.
	index  map[uint32]int
	msgErr *MessageError
	// raw: keep the undecoded replies (for bodies libOpenflow cannot
	// decode).
	raw  bool
	raws [][]byte
}

func (cn *conn) close(err error) {
	cn.once.Do(func() {
		cn.err = err
		cn.nc.Close()
		cn.mu.Lock()
		for _, p := range cn.pending {
			if p.err == nil {
				p.err = fmt.Errorf("openflow %s: connection lost: %w", cn.c.o.Socket, err)
			}
			close(p.done)
		}
		cn.pending = map[uint32]*pending{}
		cn.mu.Unlock()
		close(cn.dead)
	})
}

func (cn *conn) write(msgs ...util.Message) error {
	var buf []byte
	for _, m := range msgs {
		b, err := m.MarshalBinary()
		if err != nil {
			return fmt.Errorf("openflow: encode %T: %w", m, err)
		}
		buf = append(buf, b...)
	}
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	_ = cn.nc.SetWriteDeadline(time.Now().Add(cn.c.o.Timeout))
	if _, err := cn.nc.Write(buf); err != nil {
		cn.close(err)
		return fmt.Errorf("openflow %s: write: %w", cn.c.o.Socket, err)
	}
	return nil
}

func (cn *conn) register(xid uint32, p *pending) {
	cn.mu.Lock()
	cn.pending[xid] = p
	cn.mu.Unlock()
}

func (cn *conn) unregister(xids ...uint32) {
	cn.mu.Lock()
	for _, x := range xids {
		delete(cn.pending, x)
	}
	cn.mu.Unlock()
}

func (cn *conn) keepalive(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-cn.dead:
			return
		case <-t.C:
		}
		if time.Since(time.Unix(0, cn.lastRecv.Load())) > 2*every+every/2 {
			cn.close(errors.New("no echo reply from the switch"))
			return
		}
		echo := openflow15.NewEchoRequest()
		echo.Xid = cn.c.nextXid()
		_ = cn.write(echo)
	}
}

func (cn *conn) read() {
	for {
		raw, err := readMsg(cn.nc)
		if err != nil {
			cn.close(err)
			return
		}
		cn.lastRecv.Store(time.Now().UnixNano())
		xid := binary.BigEndian.Uint32(raw[4:])
		typ := raw[1]
		switch typ {
		case openflow15.Type_EchoRequest:
			rep := openflow15.NewEchoReply()
			rep.Xid = xid
			rep.Length = uint16(len(raw))
			b, _ := rep.MarshalBinary()
			b = append(b[:8], raw[8:]...)
			cn.wmu.Lock()
			_, _ = cn.nc.Write(b)
			cn.wmu.Unlock()
			continue
		case openflow15.Type_EchoReply, openflow15.Type_Hello, openflow15.Type_PortStatus, openflow15.Type_FlowRemoved:
			continue
		}
		if cn.wantsRaw(xid) {
			cn.dispatch(xid, typ, nil, nil, raw)
			continue
		}
		msg, perr := openflow15.Parse(raw)
		if typ == openflow15.Type_PacketIn {
			if pi, ok := msg.(*openflow15.PacketIn); ok && perr == nil && cn.c.wantPI.Load() {
				select {
				case cn.c.packetIns <- pi:
				default:
					cn.c.dropped.Add(1)
				}
			}
			continue
		}
		cn.dispatch(xid, typ, msg, perr, raw)
	}
}

// wantsRaw says whether the request waiting for xid reads replies itself.
func (cn *conn) wantsRaw(xid uint32) bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	p := cn.pending[xid]
	return p != nil && p.raw
}

// dispatch hands a reply or an error to the request waiting for xid.
func (cn *conn) dispatch(xid uint32, typ uint8, msg util.Message, perr error, raw []byte) {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	p := cn.pending[xid]
	if p == nil {
		if typ == openflow15.Type_Error {
			cn.c.o.Log.Debug("openflow: error for no pending request", zap.Uint32("xid", xid), zap.String("error", errorText(msg, raw)))
		}
		return
	}
	if typ == openflow15.Type_Error {
		if msg == nil {
			msg, _ = openflow15.Parse(raw)
		}
		e := &MessageError{Index: -1, Text: errorText(msg, raw)}
		if em, ok := errorOf(msg); ok {
			e.Type, e.Code = em.Type, em.Code
		}
		if i, ok := p.index[xid]; ok {
			// An error of a message inside a bundle: the commit (or
			// its failure) follows and completes the request.
			e.Index = i
			if p.msgErr == nil {
				p.msgErr = e
			}
			return
		}
		if p.msgErr != nil && e.Index < 0 {
			p.err = p.msgErr
		} else {
			p.err = e
		}
		cn.finish(xid, p)
		return
	}
	if p.raw {
		p.raws = append(p.raws, raw)
		if typ == openflow15.Type_MultiPartReply && len(raw) >= 12 && binary.BigEndian.Uint16(raw[10:])&1 != 0 {
			return
		}
		cn.finish(xid, p)
		return
	}
	if perr != nil {
		p.err = fmt.Errorf("openflow: decode reply type %d: %w", typ, perr)
		cn.finish(xid, p)
		return
	}
	p.replies = append(p.replies, msg)
	if mp, ok := msg.(*openflow15.MultipartReply); ok && mp.Flags&1 != 0 {
		return // OFPMPF_REPLY_MORE: more parts follow
	}
	if p.msgErr != nil {
		p.err = p.msgErr
	}
	cn.finish(xid, p)
}

func (cn *conn) finish(xid uint32, p *pending) {
	for x := range p.index {
		delete(cn.pending, x)
	}
	delete(cn.pending, xid)
	close(p.done)
}

func errorOf(msg util.Message) (*openflow15.ErrorMsg, bool) {
	switch m := msg.(type) {
	case *openflow15.ErrorMsg:
		return m, true
	case *openflow15.VendorError:
		return m.ErrorMsg, true
	}
	return nil, false
}

func errorText(msg util.Message, raw []byte) string {
	em, ok := errorOf(msg)
	if !ok {
		return fmt.Sprintf("undecodable error message %x", raw)
	}
	s := fmt.Sprintf("OpenFlow error type %d code %d", em.Type, em.Code)
	if name, ok := errorNames[[2]uint16{em.Type, em.Code}]; ok {
		s = name
	}
	return s
}

// errorNames are the errors a flow or group mod most often gets.
var errorNames = map[[2]uint16]string{
	{1, 1}: "OFPET_BAD_REQUEST/OFPBRC_BAD_TYPE", {1, 6}: "OFPET_BAD_REQUEST/OFPBRC_BAD_LEN",
	{2, 1}: "OFPET_BAD_ACTION/OFPBAC_BAD_LEN", {2, 4}: "OFPET_BAD_ACTION/OFPBAC_BAD_OUT_PORT",
	{2, 9}: "OFPET_BAD_ACTION/OFPBAC_BAD_OUT_GROUP", {4, 3}: "OFPET_BAD_MATCH/OFPBMC_BAD_FIELD",
	{4, 9}: "OFPET_BAD_MATCH/OFPBMC_BAD_PREREQ", {5, 0}: "OFPET_FLOW_MOD_FAILED/OFPFMFC_UNKNOWN",
	{5, 1}: "OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL", {6, 0}: "OFPET_GROUP_MOD_FAILED/OFPGMFC_GROUP_EXISTS",
	{6, 8}: "OFPET_GROUP_MOD_FAILED/OFPGMFC_UNKNOWN_GROUP", {6, 7}: "OFPET_GROUP_MOD_FAILED/OFPGMFC_BAD_TYPE",
	{6, 12}: "OFPET_GROUP_MOD_FAILED/OFPGMFC_BAD_BUCKET", {17, 14}: "OFPET_BUNDLE_FAILED/OFPBFC_MSG_FAILED",
	{17, 15}: "OFPET_BUNDLE_FAILED/OFPBFC_TIMEOUT", {17, 6}: "OFPET_BUNDLE_FAILED/OFPBFC_MSG_BAD_LEN",
}

// MessageError is an OpenFlow error from the switch, or a message refused
// before sending. Index is the position of the refused message in the
// Bundle's msgs, or -1 when no single message is to blame.
type MessageError struct {
	Index      int
	Type, Code uint16
	Text       string
}

func (e *MessageError) Error() string {
	if e.Index >= 0 {
		return fmt.Sprintf("openflow: message %d refused: %s", e.Index, e.Text)
	}
	return "openflow: " + e.Text
}

// header is the OpenFlow header of a libOpenflow message: the message
// itself or its embedded common.Header field. (The field shadows the
// promoted Header method, so no interface finds it.)
func header(m util.Message) (*common.Header, bool) {
	if h, ok := m.(*common.Header); ok {
		return h, true
	}
	v := reflect.ValueOf(m)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return nil, false
	}
	f := v.Elem().FieldByName("Header")
	if !f.IsValid() || !f.CanAddr() {
		return nil, false
	}
	h, ok := f.Addr().Interface().(*common.Header)
	return h, ok
}

// Size is a message's encoded length, computed without the 16-bit
// wrap-around of libOpenflow's Len for messages over the limit.
func Size(m util.Message) int {
	switch g := m.(type) {
	case *openflow15.GroupMod:
		n := 8 + 16
		for i := range g.Buckets {
			n += int(g.Buckets[i].Len())
		}
		for _, p := range g.Properties {
			n += int(p.Len())
		}
		return n
	}
	return int(m.Len())
}

// request sends msg and waits for its reply (all parts of a multipart).
func (c *Client) request(ctx context.Context, msg util.Message) ([]util.Message, error) {
	p, err := c.requestP(ctx, msg, false)
	if err != nil {
		return nil, err
	}
	return p.replies, nil
}

// requestP sends msg and waits for its reply; raw keeps the replies
// undecoded.
func (c *Client) requestP(ctx context.Context, msg util.Message, raw bool) (*pending, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	cn, err := c.current(ctx)
	if err != nil {
		return nil, err
	}
	h, ok := header(msg)
	if !ok {
		return nil, fmt.Errorf("openflow: %T has no OpenFlow header", msg)
	}
	h.Xid = c.nextXid()
	p := &pending{done: make(chan struct{}), raw: raw}
	cn.register(h.Xid, p)
	if err := cn.write(msg); err != nil {
		cn.unregister(h.Xid)
		return nil, err
	}
	c.roundTrips.Add(1)
	select {
	case <-p.done:
		return p, p.err
	case <-ctx.Done():
		cn.unregister(h.Xid)
		return nil, fmt.Errorf("openflow %s: no reply: %w", c.o.Socket, ctx.Err())
	}
}

// Barrier waits until the switch has processed everything sent before.
func (c *Client) Barrier(ctx context.Context) error {
	_, err := c.request(ctx, openflow15.NewBarrierRequest())
	return err
}

// Send writes one message without waiting for a reply (packet-out).
func (c *Client) Send(ctx context.Context, msg util.Message) error {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	cn, err := c.current(ctx)
	if err != nil {
		return err
	}
	if h, ok := header(msg); ok {
		h.Xid = c.nextXid()
	}
	return cn.write(msg)
}

// Bundle applies msgs (*openflow15.FlowMod, *openflow15.GroupMod) in one
// atomic, ordered bundle: either all apply or none. A message over
// OpenFlow's size limit is refused before anything is sent; a message the
// switch refuses is named by a *MessageError with its Index. Zero msgs send
// nothing. On a timeout the connection is reset, so the switch discards
// the open bundle.
func (c *Client) Bundle(ctx context.Context, msgs []util.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	for i, m := range msgs {
		if n := Size(m) + 16; n > maxMessage {
			return &MessageError{Index: i, Text: fmt.Sprintf("%d bytes: over OpenFlow's %d byte limit", n, maxMessage)}
		}
	}
	c.bundles.Lock()
	defer c.bundles.Unlock()
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	cn, err := c.current(ctx)
	if err != nil {
		return err
	}
	id := c.bundleID.Add(1)
	const flags = openflow15.OFPBCT_ATOMIC | openflow15.OFPBCT_ORDERED
	p := &pending{done: make(chan struct{}), index: make(map[uint32]int, len(msgs))}
	out := make([]util.Message, 0, len(msgs)+2)
	open := openflow15.NewBundleCtrl(id, openflow15.OFPBCT_OPEN_REQUEST, flags)
	open.Xid = c.nextXid()
	out = append(out, open)
	for i, m := range msgs {
		add := openflow15.NewBndleAdd(id, flags)
		add.Xid = c.nextXid()
		if h, ok := header(m); ok {
			h.Xid = add.Xid // the switch names errors of bundled messages by this xid
		}
		add.Message = m
		p.index[add.Xid] = i
		out = append(out, add)
	}
	commit := openflow15.NewBundleCtrl(id, openflow15.OFPBCT_COMMIT_REQUEST, flags)
	commit.Xid = c.nextXid()
	out = append(out, commit)
	// The open reply is not waited for: a failed open is reported with
	// its xid, which is indexed as -1 below, and fails the request.
	cn.mu.Lock()
	for x := range p.index {
		cn.pending[x] = p
	}
	cn.pending[open.Xid] = &pending{done: make(chan struct{})}
	cn.pending[commit.Xid] = p
	cn.mu.Unlock()
	defer cn.unregister(open.Xid)
	// Write in chunks so a large bundle does not build one huge buffer.
	for start := 0; start < len(out); start += 512 {
		if err := cn.write(out[start:min(start+512, len(out))]...); err != nil {
			return err
		}
	}
	c.roundTrips.Add(1)
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		cn.close(fmt.Errorf("bundle not committed in time: %w", ctx.Err()))
		return fmt.Errorf("openflow %s: bundle of %d messages: %w", c.o.Socket, len(msgs), ctx.Err())
	}
}

// DumpFlows returns the flows of table (openflow15.OFPTT_ALL: every
// table) whose cookie matches cookie under cookieMask.
func (c *Client) DumpFlows(ctx context.Context, table uint8, cookie, cookieMask uint64) ([]*openflow15.FlowDesc, error) {
	req := openflow15.NewFlowStatsRequest()
	req.TableId, req.Cookie, req.CookieMask = table, cookie, cookieMask
	mp := openflow15.NewMpRequest(openflow15.MultipartType_FlowDesc)
	mp.Body = append(mp.Body, req)
	replies, err := c.request(ctx, mp)
	if err != nil {
		return nil, fmt.Errorf("dump flows: %w", err)
	}
	var out []*openflow15.FlowDesc
	for _, r := range replies {
		if mp, ok := r.(*openflow15.MultipartReply); ok {
			for _, b := range mp.Body {
				if f, ok := b.(*openflow15.FlowDesc); ok {
					out = append(out, f)
				}
			}
		}
	}
	return out, nil
}

// DumpGroups returns every group's id, type and buckets (ids only: the
// reply is read here, because libOpenflow cannot decode OVS's selection
// method property).
func (c *Client) DumpGroups(ctx context.Context) ([]*openflow15.GroupDesc, error) {
	mp := openflow15.NewMpRequest(openflow15.MultipartType_GroupDesc)
	mp.Body = append(mp.Body, openflow15.NewGroupMultipartRequest(openflow15.OFPG_ALL))
	p, err := c.requestP(ctx, mp, true)
	if err != nil {
		return nil, fmt.Errorf("dump groups: %w", err)
	}
	var out []*openflow15.GroupDesc
	for _, raw := range p.raws {
		if raw[1] != openflow15.Type_MultiPartReply {
			continue
		}
		gs, err := parseGroupDescs(raw[16:])
		if err != nil {
			return nil, fmt.Errorf("dump groups of %s: %w", c.o.Socket, err)
		}
		out = append(out, gs...)
	}
	return out, nil
}

// parseGroupDescs reads OpenFlow 1.5 ofp_group_desc entries: length,
// type, pad, group_id, bucket_array_len, pad(6), buckets, properties.
func parseGroupDescs(b []byte) ([]*openflow15.GroupDesc, error) {
	var out []*openflow15.GroupDesc
	for len(b) > 0 {
		if len(b) < 16 {
			return nil, fmt.Errorf("short group description (%d bytes)", len(b))
		}
		n := int(binary.BigEndian.Uint16(b))
		blen := int(binary.BigEndian.Uint16(b[8:]))
		if n < 16 || n > len(b) || 16+blen > n {
			return nil, fmt.Errorf("bad group description lengths %d/%d", n, blen)
		}
		g := &openflow15.GroupDesc{Length: uint16(n), Type: b[2], GroupId: binary.BigEndian.Uint32(b[4:]), BucketArrayLen: uint16(blen)}
		for bk := b[16 : 16+blen]; len(bk) >= 8; {
			l := int(binary.BigEndian.Uint16(bk))
			if l < 8 || l > len(bk) {
				return nil, fmt.Errorf("group %d: bad bucket length %d", g.GroupId, l)
			}
			g.Buckets = append(g.Buckets, openflow15.Bucket{BucketId: binary.BigEndian.Uint32(bk[4:])})
			bk = bk[l:]
		}
		out = append(out, g)
		b = b[n:]
	}
	return out, nil
}
