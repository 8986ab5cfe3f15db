package ovs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// rejecter answers new connections to a frontend without endpoints: the
// frontend's SvcLB flow sends them to the controller, and this responder,
// connected to the bridge's management socket, sends back a TCP RST or an
// ICMP port unreachable out of the port the packet came from. OpenFlow
// cannot build those packets itself. It speaks just enough OpenFlow 1.3:
// HELLO, ECHO, SET_CONFIG (a service connection receives packet-ins only
// after asking for them with a miss_send_len) and PACKET_IN/PACKET_OUT.
type rejecter struct {
	sock string
	log  *zap.Logger

	once   sync.Once
	cancel context.CancelFunc
	done   chan struct{}
}

func newRejecter(sock string, log *zap.Logger) *rejecter {
	return &rejecter{sock: sock, log: log, done: make(chan struct{})}
}

// ensure starts the responder once.
func (r *rejecter) ensure() {
	r.once.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		r.cancel = cancel
		go r.run(ctx)
	})
}

func (r *rejecter) stop() {
	if r.cancel != nil {
		r.cancel()
		<-r.done
	}
}

func (r *rejecter) run(ctx context.Context) {
	defer close(r.done)
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := r.serve(ctx)
		if ctx.Err() != nil {
			return
		}
		r.log.Info("reject responder reconnecting", zap.String("socket", r.sock), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		if delay < 5*time.Second {
			delay *= 2
		}
	}
}

const (
	ofVersion     = 0x04
	ofptHello     = 0
	ofptEchoReq   = 2
	ofptEchoReply = 3
	ofptSetConfig = 9
	ofptPacketIn  = 10
	ofptPacketOut = 13
	ofppInPort    = 0xfffffff8
)

func ofMsg(typ uint8, xid uint32, body []byte) []byte {
	b := make([]byte, 8+len(body))
	b[0], b[1] = ofVersion, typ
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint32(b[4:], xid)
	copy(b[8:], body)
	return b
}

func (r *rejecter) serve(ctx context.Context) error {
	conn, err := net.Dial("unix", r.sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	go func() { <-ctx.Done(); conn.Close() }()
	cfg := make([]byte, 4)
	binary.BigEndian.PutUint16(cfg[2:], 0xffff) // miss_send_len: full packets
	if _, err := conn.Write(append(ofMsg(ofptHello, 1, nil), ofMsg(ofptSetConfig, 2, cfg)...)); err != nil {
		return err
	}
	hdr := make([]byte, 8)
	for {
		if _, err := io.ReadFull(conn, hdr); err != nil {
			return err
		}
		n := int(binary.BigEndian.Uint16(hdr[2:]))
		if n < 8 {
			return fmt.Errorf("openflow: bad message length %d", n)
		}
		body := make([]byte, n-8)
		if _, err := io.ReadFull(conn, body); err != nil {
			return err
		}
		xid := binary.BigEndian.Uint32(hdr[4:])
		switch hdr[1] {
		case ofptEchoReq:
			if _, err := conn.Write(ofMsg(ofptEchoReply, xid, body)); err != nil {
				return err
			}
		case ofptPacketIn:
			if out := r.handlePacketIn(body); out != nil {
				if _, err := conn.Write(ofMsg(ofptPacketOut, xid, out)); err != nil {
					return err
				}
			}
		}
	}
}

// handlePacketIn returns the PACKET_OUT body answering it, or nil.
func (r *rejecter) handlePacketIn(b []byte) []byte {
	// buffer_id(4) total_len(2) reason(1) table_id(1) cookie(8) match...
	if len(b) < 24 {
		return nil
	}
	cookie := binary.BigEndian.Uint64(b[8:])
	if byte(cookie>>56) != compCompiled || b[7] != tLB {
		return nil // not one of our reject flows
	}
	mlen := int(binary.BigEndian.Uint16(b[18:]))
	padded := (mlen + 7) / 8 * 8
	if 16+padded+2 > len(b) {
		return nil
	}
	inPort, ok := oxmInPort(b[20 : 16+mlen])
	if !ok {
		return nil
	}
	frame := b[16+padded+2:]
	reply, err := rejectFrame(frame)
	if err != nil {
		r.log.Debug("no reject for packet", zap.Error(err))
		return nil
	}
	// buffer_id, in_port, actions_len, pad(6), OUTPUT(IN_PORT), data
	out := make([]byte, 16+16, 32+len(reply))
	binary.BigEndian.PutUint32(out[0:], 0xffffffff)
	binary.BigEndian.PutUint32(out[4:], inPort)
	binary.BigEndian.PutUint16(out[8:], 16)
	binary.BigEndian.PutUint16(out[16:], 0)  // OFPAT_OUTPUT
	binary.BigEndian.PutUint16(out[18:], 16) // len
	binary.BigEndian.PutUint32(out[20:], ofppInPort)
	return append(out, reply...)
}

func oxmInPort(oxms []byte) (uint32, bool) {
	for len(oxms) >= 4 {
		class := binary.BigEndian.Uint16(oxms)
		field := oxms[2] >> 1
		l := int(oxms[3])
		if len(oxms) < 4+l {
			return 0, false
		}
		if class == 0x8000 && field == 0 && l == 4 {
			return binary.BigEndian.Uint32(oxms[4:]), true
		}
		oxms = oxms[4+l:]
	}
	return 0, false
}

// rejectFrame builds the answer to frame: TCP RST for TCP (nothing for a
// RST), ICMP(v6) port unreachable otherwise. MACs are swapped so the
// answer looks like it comes from the gateway the pod sent to.
func rejectFrame(frame []byte) ([]byte, error) {
	if len(frame) < 14 {
		return nil, errors.New("short frame")
	}
	l2 := 14
	etype := binary.BigEndian.Uint16(frame[12:])
	if etype == 0x8100 && len(frame) >= 18 {
		etype, l2 = binary.BigEndian.Uint16(frame[16:]), 18
	}
	eth := make([]byte, l2)
	copy(eth, frame[:l2])
	copy(eth[0:6], frame[6:12])
	copy(eth[6:12], frame[0:6])
	pkt := frame[l2:]
	var ip []byte
	var err error
	switch etype {
	case 0x0800:
		ip, err = reject4(pkt)
	case 0x86dd:
		ip, err = reject6(pkt)
	default:
		return nil, fmt.Errorf("ethertype 0x%04x", etype)
	}
	if err != nil {
		return nil, err
	}
	return append(eth, ip...), nil
}

func csum(data []byte, initial uint32) uint16 {
	s := initial
	for i := 0; i+1 < len(data); i += 2 {
		s += uint32(binary.BigEndian.Uint16(data[i:]))
	}
	if len(data)%2 == 1 {
		s += uint32(data[len(data)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func pseudoSum(src, dst []byte, proto uint8, length int) uint32 {
	var s uint32
	for _, a := range [][]byte{src, dst} {
		for i := 0; i+1 < len(a); i += 2 {
			s += uint32(binary.BigEndian.Uint16(a[i:]))
		}
	}
	return s + uint32(proto) + uint32(length)
}

// tcpRST answers the TCP segment seg (RFC 9293 3.10.7.1).
func tcpRST(seg []byte, payloadLen int) []byte {
	flags := seg[13]
	rst := make([]byte, 20)
	copy(rst[0:2], seg[2:4]) // ports swapped
	copy(rst[2:4], seg[0:2])
	rst[12] = 5 << 4
	if flags&0x10 != 0 { // ACK set: RST with seq = their ack
		copy(rst[4:8], seg[8:12])
		rst[13] = 0x04
	} else {
		n := uint32(payloadLen)
		if flags&0x02 != 0 {
			n++
		}
		if flags&0x01 != 0 {
			n++
		}
		binary.BigEndian.PutUint32(rst[8:], binary.BigEndian.Uint32(seg[4:])+n)
		rst[13] = 0x14 // RST|ACK
	}
	return rst
}

func reject4(p []byte) ([]byte, error) {
	if len(p) < 20 || p[0]>>4 != 4 {
		return nil, errors.New("bad IPv4 header")
	}
	ihl := int(p[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(p[2:]))
	if ihl < 20 || len(p) < ihl || total < ihl || total > len(p) {
		return nil, errors.New("bad IPv4 lengths")
	}
	src, dst := p[12:16], p[16:20]
	var proto uint8
	var l4 []byte
	if p[9] == 6 {
		seg := p[ihl:total]
		if len(seg) < 20 || seg[13]&0x04 != 0 {
			return nil, errors.New("short TCP segment or RST")
		}
		proto, l4 = 6, tcpRST(seg, len(seg)-int(seg[12]>>4)*4)
		binary.BigEndian.PutUint16(l4[16:], csum(l4, pseudoSum(dst, src, 6, len(l4))))
	} else {
		quote := p[:min(total, ihl+8)]
		l4 = make([]byte, 8+len(quote))
		l4[0], l4[1] = 3, 3 // destination unreachable, port unreachable
		copy(l4[8:], quote)
		binary.BigEndian.PutUint16(l4[2:], csum(l4, 0))
		proto = 1
	}
	h := make([]byte, 20, 20+len(l4))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
	h[8], h[9] = 64, proto
	copy(h[12:16], dst)
	copy(h[16:20], src)
	binary.BigEndian.PutUint16(h[10:], csum(h, 0))
	return append(h, l4...), nil
}

func reject6(p []byte) ([]byte, error) {
	if len(p) < 40 || p[0]>>4 != 6 {
		return nil, errors.New("bad IPv6 header")
	}
	plen := int(binary.BigEndian.Uint16(p[4:]))
	if 40+plen > len(p) {
		return nil, errors.New("bad IPv6 length")
	}
	src, dst := p[8:24], p[24:40]
	var next uint8
	var l4 []byte
	if p[6] == 6 {
		seg := p[40 : 40+plen]
		if len(seg) < 20 || seg[13]&0x04 != 0 {
			return nil, errors.New("short TCP segment or RST")
		}
		next, l4 = 6, tcpRST(seg, len(seg)-int(seg[12]>>4)*4)
		binary.BigEndian.PutUint16(l4[16:], csum(l4, pseudoSum(dst, src, 6, len(l4))))
	} else {
		quote := p[:min(40+plen, 1232)]
		l4 = make([]byte, 8+len(quote))
		l4[0], l4[1] = 1, 4 // destination unreachable, port unreachable
		copy(l4[8:], quote)
		binary.BigEndian.PutUint16(l4[2:], csum(l4, pseudoSum(dst, src, 58, len(l4))))
		next = 58
	}
	h := make([]byte, 40, 40+len(l4))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
	h[6], h[7] = next, 64
	copy(h[8:24], dst)
	copy(h[24:40], src)
	return append(h, l4...), nil
}
