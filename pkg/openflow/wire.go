package openflow

import (
	"encoding/binary"
	"fmt"
	"reflect"

	"antrea.io/libOpenflow/openflow15"
	"antrea.io/libOpenflow/util"
)

// header returns an OpenFlow 1.5 message of n bytes with its header set.
func header(typ uint8, xid uint32, n int) []byte {
	b := make([]byte, n)
	b[0], b[1] = openflow15.VERSION, typ
	binary.BigEndian.PutUint16(b[2:], uint16(n))
	binary.BigEndian.PutUint32(b[4:], xid)
	return b
}

// setXid writes xid into the encoded message b and returns b.
func setXid(b []byte, xid uint32) []byte {
	binary.BigEndian.PutUint32(b[4:], xid)
	return b
}

// bundleCtrl is an OFPT_BUNDLE_CONTROL message.
func bundleCtrl(xid, id uint32, typ uint16) []byte {
	b := header(openflow15.Type_BundleControl, xid, 16)
	binary.BigEndian.PutUint32(b[8:], id)
	binary.BigEndian.PutUint16(b[12:], typ)
	binary.BigEndian.PutUint16(b[14:], bundleFlags)
	return b
}

// bundleAddHeader is the 16 bytes of an OFPT_BUNDLE_ADD_MESSAGE that
// precede the inner message of n bytes. The inner message must carry the
// same xid (Open vSwitch refuses others with OFPBFC_MSG_BAD_XID), which is
// why the switch's errors about it carry that xid too.
func bundleAddHeader(xid, id uint32, n int) []byte {
	b := header(openflow15.Type_BundleAddMessage, xid, 16)
	binary.BigEndian.PutUint16(b[2:], uint16(16+n))
	binary.BigEndian.PutUint32(b[8:], id)
	binary.BigEndian.PutUint16(b[14:], bundleFlags)
	return b
}

// encode marshals m with libOpenflow and checks the result: OpenFlow
// 1.5, at most 65535-overhead bytes, and a length field equal to the
// encoding's length (libOpenflow computes lengths in uint16 and wraps
// silently, and some of its types' Len disagree with their encoding).
// Any error has Index -1.
func encode(m util.Message) (b []byte, me *MessageError) {
	return encodeWith(m, 0)
}

func encodeWith(m util.Message, overhead int) (b []byte, me *MessageError) {
	if m == nil || reflect.ValueOf(m).Kind() == reflect.Pointer && reflect.ValueOf(m).IsNil() {
		return nil, &MessageError{Index: -1, Text: "nil message"}
	}
	defer func() {
		if r := recover(); r != nil {
			b, me = nil, &MessageError{Index: -1, Text: fmt.Sprintf("libOpenflow cannot encode %T: %v", m, r)}
		}
	}()
	b, err := m.MarshalBinary()
	if fm, ok := m.(*openflow15.FlowMod); ok && err == nil && len(b) >= 44 {
		// libOpenflow writes OutPort in the out_group field too; a
		// delete filtered by group (or by port) would match nothing.
		binary.BigEndian.PutUint32(b[40:], fm.OutGroup)
	}
	switch {
	case err != nil:
		return nil, &MessageError{Index: -1, Text: fmt.Sprintf("libOpenflow cannot encode %T: %v", m, err)}
	case len(b)+overhead > maxMessage:
		what := ""
		if overhead > 0 {
			what = fmt.Sprintf(", %d with the bundle-add wrapper", len(b)+overhead)
		}
		return nil, &MessageError{Index: -1, Text: fmt.Sprintf("%T encodes to %d bytes%s: over OpenFlow's %d-byte limit", m, len(b), what, maxMessage)}
	case len(b) < 8:
		return nil, &MessageError{Index: -1, Text: fmt.Sprintf("%T encodes to %d bytes: no OpenFlow header", m, len(b))}
	case int(binary.BigEndian.Uint16(b[2:])) != len(b):
		return nil, &MessageError{Index: -1, Text: fmt.Sprintf("%T encodes to %d bytes but its length field says %d (libOpenflow length bug?)", m, len(b), binary.BigEndian.Uint16(b[2:]))}
	case b[0] != openflow15.VERSION:
		return nil, &MessageError{Index: -1, Text: fmt.Sprintf("%T is OpenFlow version %d, not 1.5 (6): build it with openflow15", m, b[0])}
	}
	return b, nil
}

// encodeBundled encodes a message to be added to a bundle.
func encodeBundled(m util.Message) ([]byte, *MessageError) {
	b, me := encodeWith(m, 16)
	if me != nil {
		return nil, me
	}
	switch b[1] {
	case openflow15.Type_FlowMod, openflow15.Type_GroupMod, openflow15.Type_PacketOut:
		return b, nil
	}
	return nil, &MessageError{Index: -1, Text: fmt.Sprintf("%T (%s) cannot be bundled: flow mods, group mods and packet-outs only", m, msgTypeName(b[1]))}
}

// parse decodes one message with libOpenflow, turning its panics (it
// indexes without bounds checks and dereferences nil decoders for some
// fields) into errors.
func parse(raw []byte) (msg util.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			msg, err = nil, fmt.Errorf("libOpenflow panicked decoding message type %d: %v", raw[1], r)
		}
	}()
	return openflow15.Parse(raw)
}

// unmarshal is UnmarshalBinary with libOpenflow's panics as errors.
func unmarshal(m util.Message, b []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("libOpenflow panicked decoding %T: %v", m, r)
		}
	}()
	return m.UnmarshalBinary(b)
}

// multipartBody checks that raw is a multipart reply of type mp and
// returns its body.
func multipartBody(raw []byte, mp uint16) ([]byte, error) {
	if raw[1] != openflow15.Type_MultiPartReply || len(raw) < 16 {
		return nil, fmt.Errorf("unexpected reply: %s, %d bytes", msgTypeName(raw[1]), len(raw))
	}
	if t := binary.BigEndian.Uint16(raw[8:]); t != mp {
		return nil, fmt.Errorf("unexpected multipart reply type %d, want %d", t, mp)
	}
	return raw[16:], nil
}

// decodeFlowDescs decodes the ofp_flow_desc entries of one part of a
// flow dump, each on its own (an entry libOpenflow misreads cannot shift
// the next ones).
func decodeFlowDescs(raw []byte) ([]*openflow15.FlowDesc, error) {
	body, err := multipartBody(raw, openflow15.MultipartType_FlowDesc)
	if err != nil {
		return nil, err
	}
	var out []*openflow15.FlowDesc
	for len(body) > 0 {
		if len(body) < 24 {
			return nil, fmt.Errorf("truncated flow description (%d bytes)", len(body))
		}
		n := int(binary.BigEndian.Uint16(body))
		if n < 24 || n > len(body) {
			return nil, fmt.Errorf("bad flow description length %d (%d bytes left)", n, len(body))
		}
		fd := openflow15.NewFlowDesc()
		if err := unmarshal(fd, body[:n]); err != nil {
			return nil, fmt.Errorf("cannot decode the flow in table %d, priority %d, cookie %#x: %w",
				body[4], binary.BigEndian.Uint16(body[6:]), binary.BigEndian.Uint64(body[16:]), err)
		}
		out = append(out, fd)
		body = body[n:]
	}
	return out, nil
}

// decodeGroupDescs decodes the ofp_group_desc entries of one part of a
// group dump: length, type, pad, group_id, bucket_array_len, pad(6),
// buckets, properties. libOpenflow decodes each bucket; the properties
// are read here because libOpenflow's PropExperimenter reads past the
// end of Open vSwitch's selection method property.
func decodeGroupDescs(raw []byte) ([]*openflow15.GroupDesc, error) {
	body, err := multipartBody(raw, openflow15.MultipartType_GroupDesc)
	if err != nil {
		return nil, err
	}
	var out []*openflow15.GroupDesc
	for len(body) > 0 {
		if len(body) < 16 {
			return nil, fmt.Errorf("truncated group description (%d bytes)", len(body))
		}
		n := int(binary.BigEndian.Uint16(body))
		blen := int(binary.BigEndian.Uint16(body[8:]))
		if n < 16 || n > len(body) || 16+blen > n {
			return nil, fmt.Errorf("bad group description lengths %d/%d (%d bytes left)", n, blen, len(body))
		}
		g := &openflow15.GroupDesc{Length: uint16(n), Type: body[2], GroupId: binary.BigEndian.Uint32(body[4:]),
			BucketArrayLen: uint16(blen), Pad2: make([]byte, 6)}
		for bk := body[16 : 16+blen]; len(bk) > 0; {
			l := 0
			if len(bk) >= 8 {
				l = int(binary.BigEndian.Uint16(bk))
			}
			if l < 8 || l > len(bk) {
				return nil, fmt.Errorf("group %d: bad bucket length %d (%d bytes left)", g.GroupId, l, len(bk))
			}
			var b openflow15.Bucket
			if err := unmarshal(&b, bk[:l]); err != nil {
				return nil, fmt.Errorf("group %d: cannot decode bucket %d: %w", g.GroupId, binary.BigEndian.Uint32(bk[4:]), err)
			}
			g.Buckets = append(g.Buckets, b)
			bk = bk[l:]
		}
		for props := body[16+blen : n]; len(props) > 0; {
			l := 0
			if len(props) >= 4 {
				l = int(binary.BigEndian.Uint16(props[2:]))
			}
			padded := (l + 7) / 8 * 8
			if l < 4 || l > len(props) {
				return nil, fmt.Errorf("group %d: bad property length %d (%d bytes left)", g.GroupId, l, len(props))
			}
			p := props[:l]
			if binary.BigEndian.Uint16(p) == openflow15.OFPGPT_EXPERIMENTER && l >= 40 &&
				binary.BigEndian.Uint32(p[4:]) == openflow15.NTR_VENDOR_ID &&
				binary.BigEndian.Uint32(p[8:]) == openflow15.NTRT_SELECTION_METHOD {
				sm := new(openflow15.NTRSelectionMethod)
				if err := unmarshal(sm, p); err != nil {
					return nil, fmt.Errorf("group %d: cannot decode the selection method: %w", g.GroupId, err)
				}
				g.Properties = append(g.Properties, sm)
			} else {
				g.Properties = append(g.Properties, util.NewBuffer(append([]byte(nil), p...)))
			}
			props = props[min(padded, len(props)):]
		}
		out = append(out, g)
		body = body[n:]
	}
	return out, nil
}
