package ovs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"antrea.io/libOpenflow/openflow15"
	"antrea.io/libOpenflow/util"
	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
	"github.com/nsx-ujo/nsx-ujo/pkg/openflow"
)

// rejecter answers new connections to a frontend without endpoints: the
// frontend's SvcLB flow sends them to the controller, and this responder,
// on its own OpenFlow connection to the bridge (the same client code as
// the backend's, so it reconnects after ovs-vswitchd restarts), sends back
// a TCP RST or an ICMP port unreachable out of the port the packet came
// from. OpenFlow cannot build those packets itself.
type rejecter struct {
	sock string
	log  *zap.Logger

	once   sync.Once
	client *openflow.Client
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
		r.client = openflow.New(openflow.Options{Socket: r.sock, Log: r.log})
		go r.run(ctx, r.client.PacketIns())
	})
}

func (r *rejecter) stop() {
	if r.cancel != nil {
		r.cancel()
		r.client.Close()
		<-r.done
	}
}

func (r *rejecter) run(ctx context.Context, in <-chan *openflow15.PacketIn) {
	defer close(r.done)
	for {
		select {
		case <-ctx.Done():
			return
		case pi := <-in:
			out := r.answer(pi)
			if out == nil {
				continue
			}
			if err := r.client.Send(ctx, out); err != nil && ctx.Err() == nil {
				r.log.Debug("sending a reject failed", zap.Error(err))
			}
		}
	}
}

// answer returns the PACKET_OUT answering a packet-in of one of our reject
// flows, or nil.
func (r *rejecter) answer(pi *openflow15.PacketIn) *openflow15.PacketOut {
	if byte(pi.Cookie>>56) != compCompiled || pi.TableId != tLB {
		return nil // not one of our reject flows
	}
	var inPort uint32
	found := false
	for _, f := range pi.Match.Fields {
		if v, ok := f.Value.(*openflow15.InPortField); ok && f.Class == openflow15.OXM_CLASS_OPENFLOW_BASIC {
			inPort, found = v.InPort, true
		}
	}
	if !found || pi.Data == nil {
		return nil
	}
	frame, err := pi.Data.MarshalBinary()
	if err != nil {
		return nil
	}
	reply, err := rejectFrame(frame)
	if err != nil {
		r.log.Debug("no reject for packet", zap.Error(err))
		return nil
	}
	po := openflow15.NewPacketOut()
	po.Match.AddField(*openflow15.NewInPortField(inPort))
	po.AddAction(openflow15.NewActionOutput(openflow15.P_IN_PORT))
	po.Data = util.NewBuffer(reply)
	return po
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
		binary.BigEndian.PutUint16(l4[16:], dataplane.Checksum(l4, dataplane.PseudoHeaderSum(dst, src, 6, len(l4))))
	} else {
		quote := p[:min(total, ihl+8)]
		l4 = make([]byte, 8+len(quote))
		l4[0], l4[1] = 3, 3 // destination unreachable, port unreachable
		copy(l4[8:], quote)
		binary.BigEndian.PutUint16(l4[2:], dataplane.Checksum(l4, 0))
		proto = 1
	}
	h := make([]byte, 20, 20+len(l4))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
	h[8], h[9] = 64, proto
	copy(h[12:16], dst)
	copy(h[16:20], src)
	binary.BigEndian.PutUint16(h[10:], dataplane.Checksum(h, 0))
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
		binary.BigEndian.PutUint16(l4[16:], dataplane.Checksum(l4, dataplane.PseudoHeaderSum(dst, src, 6, len(l4))))
	} else {
		quote := p[:min(40+plen, 1232)]
		l4 = make([]byte, 8+len(quote))
		l4[0], l4[1] = 1, 4 // destination unreachable, port unreachable
		copy(l4[8:], quote)
		binary.BigEndian.PutUint16(l4[2:], dataplane.Checksum(l4, dataplane.PseudoHeaderSum(dst, src, 58, len(l4))))
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
