package openflow

import (
	"context"
	"encoding/binary"
	"fmt"

	"antrea.io/libOpenflow/openflow15"
	"antrea.io/libOpenflow/util"
	"go.uber.org/zap"
)

// bundleFlags are the flags of every bundle: all or nothing, in order.
const bundleFlags = openflow15.OFPBCT_ATOMIC | openflow15.OFPBCT_ORDERED

// writeChunk bounds one write of a large bundle.
const writeChunk = 256 << 10

// Bundle sends msgs (each a *openflow15.FlowMod or *openflow15.GroupMod;
// a *openflow15.PacketOut is accepted too) in one atomic, ordered
// OpenFlow bundle and waits for the commit reply: either all apply or
// none. Zero msgs: nil, nothing sent.
//
// Every message is encoded before anything is sent; one that cannot be
// (an encoding over 65535 bytes including the 16-byte bundle-add
// wrapper, or one whose libOpenflow encoding disagrees with its own
// length field) is refused with *MessageError{Index: i}. A message the
// switch refuses is reported as *MessageError with its Index, Type and
// Code; errors not attributable to one message have Index -1.
//
// On the wire: OPEN, one ADD per message and a BARRIER are written
// without waiting; the barrier's reply tells whether the switch refused
// an ADD (Open vSwitch drops an ADD it cannot decode, reports it, and
// would commit the others), then COMMIT (flags ATOMIC|ORDERED) or, after
// a refusal, DISCARD. Messages whose errors only show at commit (a flow
// naming a missing group) make the whole commit fail. So a Bundle costs
// two waits on the switch, and counts as one in RoundTrips.
//
// If ctx (bounded by Options.Timeout when it has no deadline) ends before
// the commit is sent, the bundle is discarded; if it ends while waiting
// for the commit's reply, the outcome is unknown but whole (the switch
// commits atomically) and an error is returned. Bundles are serialized;
// concurrent callers wait their turn. libOpenflow's encoding writes the
// messages' length fields, so a message must not be shared by concurrent
// calls; the xids of msgs are not used (the client sets its own on the
// wire) and msgs are not modified otherwise.
func (c *Client) Bundle(ctx context.Context, msgs []util.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	inner := make([][]byte, len(msgs))
	for i, m := range msgs {
		b, err := encodeBundled(m)
		if err != nil {
			err.Index = i
			return err
		}
		inner[i] = b
	}

	c.bundles.Lock()
	defer c.bundles.Unlock()
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	cn, err := c.current(ctx)
	if err != nil {
		return err
	}
	c.roundTrips.Add(1)
	id := c.bundleID.Add(1)
	openX := c.nextXid()
	addX := make([]uint32, len(msgs))
	index := make(map[uint32]int, len(msgs))
	for i := range msgs {
		addX[i] = c.nextXid()
		index[addX[i]] = i
	}
	barrierX := c.nextXid()

	// Phase 1: OPEN, ADDs, BARRIER; collect the refusals of the ADDs.
	var refused *MessageError
	p1 := newPending(func(xid uint32, raw []byte) bool {
		switch {
		case raw[1] == openflow15.Type_Error:
			if refused == nil {
				refused = errorFromRaw(raw)
				if i, ok := index[xid]; ok {
					refused.Index = i
				}
			}
			return xid == barrierX
		case xid == barrierX:
			return raw[1] == openflow15.Type_BarrierReply
		}
		return false // OPEN_REPLY
	})
	if err := cn.register(p1, append([]uint32{openX, barrierX}, addX...)...); err != nil {
		return err
	}
	bufs := [][]byte{bundleCtrl(openX, id, openflow15.OFPBCT_OPEN_REQUEST)}
	size := 0
	for i, b := range inner {
		bufs = append(bufs, bundleAddHeader(addX[i], id, len(b)), setXid(b, addX[i]))
		if size += 16 + len(b); size >= writeChunk {
			if err := cn.write(bufs...); err != nil {
				cn.abandon(p1)
				return err
			}
			bufs, size = bufs[:0], 0
		}
	}
	bufs = append(bufs, header(openflow15.Type_BarrierRequest, barrierX, 8))
	if err := cn.write(bufs...); err != nil {
		cn.abandon(p1)
		return err
	}
	if err := cn.await(ctx, p1); err != nil {
		c.discard(cn, id)
		return fmt.Errorf("bundle of %d messages not applied: %w", len(msgs), err)
	}
	if refused != nil {
		c.discard(cn, id)
		return refused
	}

	// Phase 2: COMMIT. A message failing now is reported with its ADD's
	// xid, then the commit fails with OFPBFC_MSG_FAILED.
	commitX := c.nextXid()
	var msgErr *MessageError
	var p2 *pending
	p2 = newPending(func(xid uint32, raw []byte) bool {
		if raw[1] == openflow15.Type_Error {
			e := errorFromRaw(raw)
			if i, ok := index[xid]; ok {
				if msgErr == nil {
					e.Index = i
					msgErr = e
				}
				return false
			}
			if msgErr != nil {
				p2.err = msgErr
			} else {
				p2.err = e
			}
			return true
		}
		return xid == commitX
	})
	if err := cn.register(p2, append([]uint32{commitX}, addX...)...); err != nil {
		return err
	}
	if err := cn.write(bundleCtrl(commitX, id, openflow15.OFPBCT_COMMIT_REQUEST)); err != nil {
		cn.abandon(p2)
		return fmt.Errorf("bundle commit (outcome unknown): %w", err)
	}
	if err := cn.await(ctx, p2); err != nil {
		if _, ok := err.(*MessageError); ok {
			return err
		}
		return fmt.Errorf("bundle commit (outcome unknown, all or nothing): %w", err)
	}
	return nil
}

// discard sends DISCARD for bundle id without waiting: the switch
// handles it after the ADDs, so nothing of the bundle applies.
func (c *Client) discard(cn *conn, id uint32) {
	_ = cn.write(bundleCtrl(c.nextXid(), id, openflow15.OFPBCT_DISCARD_REQUEST))
}

// Barrier waits until the switch has processed everything sent before on
// this connection.
func (c *Client) Barrier(ctx context.Context) error {
	_, err := c.request(ctx, header(openflow15.Type_BarrierRequest, 0, 8))
	if err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	return nil
}

// Send writes one message without waiting for a reply (a packet-out, for
// instance); it waits for a connection until ctx (or Timeout) ends. The
// message gets a fresh xid on the wire; an error the switch answers with
// is only logged (debug). Messages are never interleaved with those of
// concurrent calls.
func (c *Client) Send(ctx context.Context, msg util.Message) error {
	b, me := encode(msg)
	if me != nil {
		return me
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	cn, err := c.current(ctx)
	if err != nil {
		return err
	}
	return cn.write(setXid(b, c.nextXid()))
}

// request sends msg (encoded, its xid set here) and returns the raw
// replies: one, or all the parts of a multipart reply. An OpenFlow error
// reply is a *MessageError with Index -1.
func (c *Client) request(ctx context.Context, msg []byte) ([][]byte, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	cn, err := c.current(ctx)
	if err != nil {
		return nil, err
	}
	c.roundTrips.Add(1)
	return c.requestOn(ctx, cn, msg)
}

func (c *Client) requestOn(ctx context.Context, cn *conn, msg []byte) ([][]byte, error) {
	xid := c.nextXid()
	var parts [][]byte
	var p *pending
	p = newPending(func(_ uint32, raw []byte) bool {
		if raw[1] == openflow15.Type_Error {
			p.err = errorFromRaw(raw)
			return true
		}
		parts = append(parts, raw)
		// OFPMPF_REPLY_MORE: more parts follow.
		return raw[1] != openflow15.Type_MultiPartReply || len(raw) < 12 ||
			binary.BigEndian.Uint16(raw[10:])&openflow15.OFPMPF_REPLY_MORE == 0
	})
	if err := cn.register(p, xid); err != nil {
		return nil, err
	}
	if err := cn.write(setXid(msg, xid)); err != nil {
		cn.abandon(p)
		return nil, err
	}
	if err := cn.await(ctx, p); err != nil {
		return nil, err
	}
	return parts, nil
}

// DumpFlows returns the flows of table (openflow15.OFPTT_ALL for all)
// whose cookie&cookieMask == cookie&cookieMask, from all the parts of the
// multipart reply (OFPMP_FLOW_DESC: match, instructions, cookie,
// priority, timeouts and counters of each flow). A flow libOpenflow
// cannot decode fails the dump with an error naming it.
func (c *Client) DumpFlows(ctx context.Context, table uint8, cookie, cookieMask uint64) ([]*openflow15.FlowDesc, error) {
	req := openflow15.NewFlowStatsRequest()
	req.TableId, req.Cookie, req.CookieMask = table, cookie, cookieMask
	mp := openflow15.NewMpRequest(openflow15.MultipartType_FlowDesc)
	mp.Body = append(mp.Body, req)
	b, me := encode(mp)
	if me != nil {
		return nil, fmt.Errorf("dump flows: %w", me)
	}
	parts, err := c.request(ctx, b)
	if err != nil {
		return nil, fmt.Errorf("dump flows: %w", err)
	}
	var out []*openflow15.FlowDesc
	for _, raw := range parts {
		fs, err := decodeFlowDescs(raw)
		if err != nil {
			return nil, fmt.Errorf("openflow %s: dump flows: %w", c.o.Socket, err)
		}
		out = append(out, fs...)
	}
	return out, nil
}

// DumpGroups returns every group's description (OFPMP_GROUP_DESC), from
// all the parts of the multipart reply: id, type, buckets (id, actions,
// weight and watch properties) and properties (Open vSwitch's selection
// method as *openflow15.NTRSelectionMethod, others as *util.Buffer). The
// descriptions are decoded here, not by libOpenflow's GroupDesc, which
// misreads the selection method property.
func (c *Client) DumpGroups(ctx context.Context) ([]*openflow15.GroupDesc, error) {
	mp := openflow15.NewMpRequest(openflow15.MultipartType_GroupDesc)
	mp.Body = append(mp.Body, openflow15.NewGroupMultipartRequest(openflow15.OFPG_ALL))
	b, me := encode(mp)
	if me != nil {
		return nil, fmt.Errorf("dump groups: %w", me)
	}
	parts, err := c.request(ctx, b)
	if err != nil {
		return nil, fmt.Errorf("dump groups: %w", err)
	}
	var out []*openflow15.GroupDesc
	for _, raw := range parts {
		gs, err := decodeGroupDescs(raw)
		if err != nil {
			return nil, fmt.Errorf("openflow %s: dump groups: %w", c.o.Socket, err)
		}
		out = append(out, gs...)
	}
	return out, nil
}

// PacketIns returns a channel of packet-ins (buffered; when full, new
// ones are dropped and counted in DroppedPacketIns). The first call
// enables packet-in delivery on this service connection (Open vSwitch
// sends none to a service connection until it sets a miss_send_len) and
// waits, up to Timeout, until the switch has applied it; every
// reconnection enables it again before OnReconnect. The same channel is
// returned every time; it is never closed.
func (c *Client) PacketIns() <-chan *openflow15.PacketIn {
	c.mu.Lock()
	first := !c.wantPI
	c.wantPI = true
	cn := c.conn
	c.mu.Unlock()
	if first && cn != nil {
		if err := c.enablePacketIns(cn); err != nil {
			c.log.Warn("openflow: cannot enable packet-ins; the next connection retries", zap.Error(err))
		}
	}
	return c.packetIns
}

// enablePacketIns sets miss_send_len to OFPCML_NO_BUFFER (whole packets),
// keeping the switch's fragment handling (SET_CONFIG sets both), and
// waits for a barrier so packets sent afterwards are delivered.
func (c *Client) enablePacketIns(cn *conn) error {
	ctx, cancel := context.WithTimeout(c.ctx, c.o.Timeout)
	defer cancel()
	replies, err := c.requestOn(ctx, cn, header(openflow15.Type_GetConfigRequest, 0, 8))
	if err != nil {
		return fmt.Errorf("get config: %w", err)
	}
	var flags uint16
	if r := replies[0]; r[1] == openflow15.Type_GetConfigReply && len(r) >= 12 {
		flags = binary.BigEndian.Uint16(r[8:])
	}
	set := header(openflow15.Type_SetConfig, c.nextXid(), 12)
	binary.BigEndian.PutUint16(set[8:], flags)
	binary.BigEndian.PutUint16(set[10:], openflow15.OFPCML_NO_BUFFER)
	if err := cn.write(set); err != nil {
		return err
	}
	if _, err := c.requestOn(ctx, cn, header(openflow15.Type_BarrierRequest, 0, 8)); err != nil {
		return fmt.Errorf("barrier after set config: %w", err)
	}
	return nil
}
