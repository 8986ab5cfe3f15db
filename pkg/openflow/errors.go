package openflow

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// MessageError is a message refused: by the switch (an OpenFlow error
// reply: Type and Code are set) or by the client before sending it (Type
// and Code are 0). Index is the position of the refused message in the
// msgs given to Bundle, or -1 when no single message is to blame (a
// failed barrier, a dump, a bundle control error).
type MessageError struct {
	Index      int    // index into msgs, or -1
	Type, Code uint16 // OpenFlow error type and code (0 when not from the switch)
	Text       string // human readable, e.g. "OFPET_BAD_ACTION/OFPBAC_BAD_OUT_GROUP" plus any data text
}

func (e *MessageError) Error() string {
	if e.Index >= 0 {
		return fmt.Sprintf("openflow: message %d refused: %s", e.Index, e.Text)
	}
	return "openflow: " + e.Text
}

const (
	errTypeExperimenter = 0xffff
	nxVendorID          = 0x00002320
	onfVendorID         = 0x4f4e4600
)

// errorFromRaw reads an OFPT_ERROR message (not with libOpenflow: its
// ErrorMsg keeps no experimenter id, and nothing here needs more than the
// header fields) into a MessageError with Index -1.
func errorFromRaw(raw []byte) *MessageError {
	if len(raw) < 12 {
		return &MessageError{Index: -1, Text: fmt.Sprintf("short error message (%d bytes)", len(raw))}
	}
	e := &MessageError{Index: -1, Type: binary.BigEndian.Uint16(raw[8:]), Code: binary.BigEndian.Uint16(raw[10:])}
	data := raw[12:]
	var name string
	if e.Type == errTypeExperimenter {
		var vendor uint32
		if len(data) >= 4 {
			vendor, data = binary.BigEndian.Uint32(data), data[4:]
		}
		switch {
		case vendor == nxVendorID && nxErrorNames[e.Code] != "":
			name = "OFPET_EXPERIMENTER/" + nxErrorNames[e.Code]
		case vendor == onfVendorID:
			name = fmt.Sprintf("OFPET_EXPERIMENTER/ONF code %d", e.Code)
		default:
			name = fmt.Sprintf("OFPET_EXPERIMENTER/vendor %#x code %d", vendor, e.Code)
		}
	} else {
		tn := fmt.Sprintf("OFPET type %d", e.Type)
		if int(e.Type) < len(errorTypeNames) {
			tn = errorTypeNames[e.Type]
		}
		cn, ok := errorCodeNames[[2]uint16{e.Type, e.Code}]
		if !ok {
			cn = fmt.Sprintf("code %d", e.Code)
		}
		name = tn + "/" + cn
	}
	e.Text = name + dataText(data)
	return e
}

// dataText describes an error's data: text as is (HELLO_FAILED and
// Open vSwitch's extended errors carry text), or the type of the
// message the error answers.
func dataText(d []byte) string {
	if len(d) == 0 {
		return ""
	}
	printable := true
	for _, b := range d {
		if b == 0 && printable {
			continue
		}
		if b < 0x20 && b != '\n' && b != '\t' || b > 0x7e {
			printable = false
			break
		}
	}
	if printable {
		if s := strings.TrimSpace(strings.TrimRight(string(d), "\x00")); s != "" {
			return ": " + s
		}
		return ""
	}
	if len(d) >= 8 {
		return fmt.Sprintf(" (in reply to %s)", msgTypeName(d[1]))
	}
	return ""
}

func msgTypeName(t uint8) string {
	if n, ok := msgTypeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("message type %d", t)
}

var msgTypeNames = map[uint8]string{
	0: "HELLO", 2: "ECHO_REQUEST", 4: "EXPERIMENTER", 5: "FEATURES_REQUEST",
	7: "GET_CONFIG_REQUEST", 9: "SET_CONFIG", 13: "PACKET_OUT", 14: "FLOW_MOD",
	15: "GROUP_MOD", 16: "PORT_MOD", 17: "TABLE_MOD", 18: "MULTIPART_REQUEST",
	20: "BARRIER_REQUEST", 24: "ROLE_REQUEST", 26: "GET_ASYNC_REQUEST", 28: "SET_ASYNC",
	29: "METER_MOD", 33: "BUNDLE_CONTROL", 34: "BUNDLE_ADD_MESSAGE",
}
