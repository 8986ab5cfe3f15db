package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

func TestServable(t *testing.T) {
	fe := func(proto Protocol, port uint16, epPorts ...uint16) *Frontend {
		f := &Frontend{Key: FrontendKey{IP: netip.MustParseAddr("10.96.0.10"), Port: port, Protocol: proto}}
		for i, p := range epPorts {
			f.Endpoints = append(f.Endpoints, Endpoint{IP: netip.AddrFrom4([4]byte{10, 0, 1, byte(i + 1)}), Port: p})
		}
		return f
	}
	tcp := fe(TCP, 80, 8080)
	sctpSame := fe(SCTP, 3868, 3868, 3868)
	sctpEmpty := fe(SCTP, 3869)
	sctpRewrite := fe(SCTP, 80, 80, 8080)
	prevRewrite := fe(SCTP, 80, 80)
	prevRewrite.Key = sctpRewrite.Key

	m := &Model{Frontends: map[FrontendKey]*Frontend{tcp.Key: tcp, sctpSame.Key: sctpSame, sctpEmpty.Key: sctpEmpty}}
	if got, refused := Servable(m, func(FrontendKey) *Frontend { return nil }); got != m || refused != nil {
		t.Fatalf("nothing to refuse: got a copy (%v) or refusals %v", got != m, refused)
	}

	m.Frontends[sctpRewrite.Key] = sctpRewrite
	for _, tc := range []struct {
		name      string
		installed *Frontend
	}{{"new frontend: absent", nil}, {"changed frontend: keeps the installed one", prevRewrite}} {
		t.Run(tc.name, func(t *testing.T) {
			got, refused := Servable(m, func(k FrontendKey) *Frontend {
				if k == sctpRewrite.Key {
					return tc.installed
				}
				return nil
			})
			if len(refused) != 1 || refused[0].Key != sctpRewrite.Key || !errors.Is(refused[0].Err, ErrSCTPPortRewrite) {
				t.Fatalf("refused %v", refused)
			}
			if len(got.Frontends) != 3+btoi(tc.installed != nil) || got.Frontends[sctpRewrite.Key] != tc.installed || got.Frontends[tcp.Key] != tcp {
				t.Fatalf("served model %v", got.Frontends)
			}
			if m.Frontends[sctpRewrite.Key] != sctpRewrite {
				t.Fatal("Servable changed its input")
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestWithRefused(t *testing.T) {
	r := []FrontendError{{Err: ErrSCTPPortRewrite}}
	if err := WithRefused(nil, nil); err != nil {
		t.Fatal(err)
	}
	var fe *FrontendErrors
	if err := WithRefused(nil, r); !errors.As(err, &fe) || len(fe.Failed) != 1 {
		t.Fatalf("%v", err)
	}
	if err := WithRefused(&FrontendErrors{Failed: []FrontendError{{}}}, r); !errors.As(err, &fe) || len(fe.Failed) != 2 {
		t.Fatalf("%v", err)
	}
	hard := errors.New("bridge gone")
	if err := WithRefused(hard, r); !errors.Is(err, hard) || !errors.As(err, &fe) || len(fe.Failed) != 1 {
		t.Fatalf("%v", err)
	}
}

func TestSplitUnservable(t *testing.T) {
	u := FrontendError{Err: fmt.Errorf("frontend x: %w", ErrSCTPPortRewrite)}
	o := FrontendError{Err: errors.New("switch said no")}
	if err, un := SplitUnservable(&FrontendErrors{Failed: []FrontendError{u}}); err != nil || len(un) != 1 {
		t.Errorf("only unservable: %v, %v", err, un)
	}
	var fe *FrontendErrors
	if err, un := SplitUnservable(&FrontendErrors{Failed: []FrontendError{u, o}}); !errors.As(err, &fe) || len(fe.Failed) != 1 || fe.Failed[0].Err != o.Err || len(un) != 1 {
		t.Errorf("mixed: %v, %v", err, un)
	}
	hard := errors.New("bridge gone")
	if err, un := SplitUnservable(hard); err != hard || un != nil {
		t.Errorf("hard: %v, %v", err, un)
	}
	if err, un := SplitUnservable(nil); err != nil || un != nil {
		t.Errorf("nil: %v, %v", err, un)
	}
}
