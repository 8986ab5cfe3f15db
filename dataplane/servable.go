package dataplane

import (
	"errors"
	"fmt"
)

// ErrSCTPPortRewrite is Unservable's answer for an SCTP frontend whose
// endpoints listen on another port.
var ErrSCTPPortRewrite = errors.New("SCTP with a targetPort other than the port is not served: rewriting an SCTP port needs the packet's CRC32c recomputed, which the eBPF dataplane cannot do (both dataplanes refuse it, to stay equal); give the Service targetPort = port")

// Unservable says why neither dataplane serves f, or nil. SCTP's checksum
// is a CRC32c over the SCTP packet, ports included but not the IP
// addresses: a DNAT that only changes the address leaves it valid, one
// that changes the port does not. The eBPF programs have no helper for a
// CRC32c, so such frontends are refused, by the OVS dataplane too (whose
// kernel datapath could) so that a Service behaves the same on both.
func Unservable(f *Frontend) error {
	if f.Key.Protocol != SCTP {
		return nil
	}
	for _, e := range f.Endpoints {
		if e.Port != f.Key.Port {
			return fmt.Errorf("frontend port %d, endpoint %s: %w", f.Key.Port, e.AddrPort(), ErrSCTPPortRewrite)
		}
	}
	return nil
}

// Servable is m without the frontends Unservable refuses, and the refusals.
// Where a refused frontend had an earlier version installed (installed(k),
// nil for none), that version stays in the returned model: a refused
// frontend keeps what it had, as the Sync contract says. It returns m
// itself when nothing is refused, so the common case copies nothing.
func Servable(m *Model, installed func(FrontendKey) *Frontend) (*Model, []FrontendError) {
	var refused []FrontendError
	for k, f := range m.Frontends {
		if k.Protocol != SCTP {
			continue
		}
		if err := Unservable(f); err != nil {
			refused = append(refused, FrontendError{Key: k, Name: f.Name, Err: err})
		}
	}
	if len(refused) == 0 {
		return m, nil
	}
	out := &Model{Frontends: make(map[FrontendKey]*Frontend, len(m.Frontends))}
	for k, f := range m.Frontends {
		out.Frontends[k] = f
	}
	for _, r := range refused {
		delete(out.Frontends, r.Key)
		if prev := installed(r.Key); prev != nil {
			out.Frontends[r.Key] = prev
		}
	}
	return out, refused
}

// WithRefused adds refusals made before a Sync to what the Sync returned:
// a *FrontendErrors holding both, or err joined with them.
func WithRefused(err error, refused []FrontendError) error {
	if len(refused) == 0 {
		return err
	}
	if err == nil {
		return &FrontendErrors{Failed: refused}
	}
	var fe *FrontendErrors
	if errors.As(err, &fe) {
		fe.Failed = append(fe.Failed, refused...)
		return err
	}
	return errors.Join(err, &FrontendErrors{Failed: refused})
}
