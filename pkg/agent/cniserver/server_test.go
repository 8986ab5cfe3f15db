package cniserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/nsx-ujo/nsx-ujo/pkg/cniwire"
)

type echoHandler struct{ got chan *cniwire.Request }

func (h echoHandler) Handle(_ context.Context, r *cniwire.Request) *cniwire.Response {
	h.got <- r
	if r.Command == cniwire.CmdCheck {
		return &cniwire.Response{Error: types.NewError(types.ErrInternal, "check failed", "details")}
	}
	return &cniwire.Response{Result: json.RawMessage(`{"cniVersion":"1.1.0"}`)}
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "cni.sock")
	// A stale socket file from a crashed run is replaced.
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	if old, err := Listen(sock, echoHandler{}); err != nil {
		t.Fatal(err)
	} else {
		old.ln.Close() // leave the file behind, as a crash would
	}
	h := echoHandler{got: make(chan *cniwire.Request, 2)}
	srv, err := Listen(sock, h)
	if err != nil {
		t.Fatal(err)
	}
	srv.peerUID = os.Getuid() // root in production; whoever runs the test here
	go srv.Serve()
	defer srv.Shutdown(context.Background())
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v", fi.Mode(), err)
	}

	c := cniwire.NewClient(sock)
	req := &cniwire.Request{Command: cniwire.CmdAdd, ContainerID: "c1", Netns: "/n", IfName: "eth0",
		PodNamespace: "ns", PodName: "p", PodUID: "u", Config: json.RawMessage(`{"cniVersion":"1.1.0","name":"n","type":"nsx"}`)}
	resp, err := c.Do(context.Background(), req)
	if err != nil || string(resp.Result) != `{"cniVersion":"1.1.0"}` || resp.Error != nil {
		t.Fatalf("Do = %+v, %v", resp, err)
	}
	got := <-h.got
	gotJSON, _ := json.Marshal(got)
	wantJSON, _ := json.Marshal(req)
	if string(gotJSON) != string(wantJSON) {
		t.Fatalf("agent got %s, plugin sent %s", gotJSON, wantJSON)
	}
	req.Command = cniwire.CmdCheck
	resp, err = c.Do(context.Background(), req)
	if err != nil || resp.Error == nil || resp.Error.Code != types.ErrInternal || resp.Error.Details != "details" {
		t.Fatalf("error response = %+v, %v", resp, err)
	}
	<-h.got
}

func TestUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := cniwire.NewClient(sock).Do(ctx, &cniwire.Request{Command: cniwire.CmdStatus})
	var ue *cniwire.UnreachableError
	if !errors.As(err, &ue) || ue.Socket != sock {
		t.Fatalf("err = %v, want UnreachableError naming %s", err, sock)
	}
}

func TestRefusesNonSocket(t *testing.T) {
	p := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(p, echoHandler{}); err == nil {
		t.Fatal("replaced a regular file")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal("the regular file is gone")
	}
}

type refuseHandler struct{ t *testing.T }

func (h refuseHandler) Handle(context.Context, *cniwire.Request) *cniwire.Response {
	h.t.Error("the handler ran for a peer the server must refuse")
	return &cniwire.Response{}
}

// The agent serves the user the runtime runs as (root) only, checked by
// the kernel's account of the peer (SO_PEERCRED), even when the socket's
// mode lets others connect.
func TestRefusesOtherUsers(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cni.sock")
	srv, err := Listen(sock, refuseHandler{t})
	if err != nil {
		t.Fatal(err)
	}
	if srv.peerUID != 0 {
		t.Fatalf("the server serves uid %d by default, want root", srv.peerUID)
	}
	srv.peerUID = os.Getuid() + 1 // anyone but us
	go srv.Serve()
	defer srv.Shutdown(context.Background())
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	resp, err := cniwire.NewClient(sock).Do(context.Background(), &cniwire.Request{Command: cniwire.CmdAdd, ContainerID: "c1"})
	if err != nil || resp.Error == nil || !strings.Contains(resp.Error.Details, fmt.Sprintf("came from uid %d", os.Getuid())) {
		t.Fatalf("Do = %+v, %v; want a refusal naming our uid", resp, err)
	}
}

// TestBadClients: an oversized request is refused naming the limit, and a
// client that connects and never finishes its request holds only its own
// connection: others are served meanwhile.
func TestBadClients(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cni.sock")
	h := echoHandler{got: make(chan *cniwire.Request, 4)}
	srv, err := Listen(sock, h)
	if err != nil {
		t.Fatal(err)
	}
	srv.peerUID = os.Getuid()
	go srv.Serve()
	defer srv.Shutdown(context.Background())

	// Stalled: headers promising a body that never comes.
	stalled, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	fmt.Fprintf(stalled, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{", cniwire.RequestPath)

	c := cniwire.NewClient(sock)
	req := &cniwire.Request{Command: cniwire.CmdAdd, ContainerID: "c1", Netns: "/n", IfName: "eth0",
		PodNamespace: "ns", PodName: "p", PodUID: "u", Config: json.RawMessage(`{"cniVersion":"1.1.0","name":"n","type":"nsx"}`)}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if resp, err := c.Do(ctx, req); err != nil || resp.Error != nil {
		t.Fatalf("a request beside a stalled client: %+v, %v", resp, err)
	}
	<-h.got

	big := *req
	big.Config = json.RawMessage(`{"cniVersion":"1.1.0","name":"n","type":"nsx","pad":"` + strings.Repeat("x", MaxRequest) + `"}`)
	resp, err := c.Do(ctx, &big)
	if err != nil || resp.Error == nil || resp.Error.Code != types.ErrDecodingFailure || !strings.Contains(resp.Error.Details, "larger than") {
		t.Fatalf("oversized request: %+v, %v; want a decoding failure naming the size limit", resp, err)
	}
	select {
	case r := <-h.got:
		t.Fatalf("the handler got an oversized request: %s", r.ContainerID)
	default:
	}
}
