package dataplane

import (
	"errors"
	"fmt"
)

// ErrUnservable marks a refusal every later Sync would repeat: the model
// asks for what neither dataplane does. The proxy reports it once and
// does not count it as a failed sync.
var ErrUnservable = errors.New("not served by nsx-ujo")

// ErrSCTPPortRewrite is Unservable's answer for an SCTP frontend whose
// endpoints listen on another port.
var ErrSCTPPortRewrite = fmt.Errorf("%w: SCTP with a targetPort other than the port (rewriting an SCTP port needs the packet's CRC32c recomputed, which the eBPF dataplane cannot do; both dataplanes refuse it, to stay equal); give the Service targetPort = port", ErrUnservable)

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

// SplitUnservable separates the refusals marked ErrUnservable from what a
// Sync returned: the rest of err (nil when nothing else failed), and those
// refusals. A hard error joined with refusals is returned as it is.
func SplitUnservable(err error) (error, []FrontendError) {
	fe, ok := err.(*FrontendErrors)
	if !ok {
		return err, nil
	}
	var rest, unservable []FrontendError
	for _, f := range fe.Failed {
		if errors.Is(f.Err, ErrUnservable) {
			unservable = append(unservable, f)
		} else {
			rest = append(rest, f)
		}
	}
	if len(rest) == 0 {
		return nil, unservable
	}
	return &FrontendErrors{Failed: rest}, unservable
}
