package main

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// freePort returns a port that was free on 127.0.0.1 for TCP and UDP.
func freePort(t *testing.T) int {
	t.Helper()
	for range 10 {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp4", ln.Addr().String())
		ln.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no free TCP+UDP port")
	return 0
}

type proc struct {
	out, errOut harness.SyncBuffer
	cancel      context.CancelFunc
	done        chan int
}

// start runs the command in the background; cancel plays SIGTERM.
func start(t *testing.T, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &proc{cancel: cancel, done: make(chan int, 1)}
	go func() { p.done <- run(ctx, args, &p.out, &p.errOut) }()
	t.Cleanup(func() { cancel(); <-p.done })
	return p
}

// serveOn starts a server on 127.0.0.1 and waits for its ready line.
func serveOn(t *testing.T, name string, args ...string) (*proc, string) {
	t.Helper()
	port := strconv.Itoa(freePort(t))
	p := start(t, append([]string{"serve", "--name", name, "--bind", "127.0.0.1", "--port", port}, args...)...)
	deadline := time.Now().Add(5 * time.Second)
	for p.out.String() != "ready\n" {
		select {
		case code := <-p.done:
			t.Fatalf("serve exited with %d: %s", code, p.errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("serve not ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p, "127.0.0.1:" + port
}

func runSync(args ...string) (code int, stdout, stderr string) {
	var out, errOut harness.SyncBuffer
	code = run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestServeGet(t *testing.T) {
	udpPort := strconv.Itoa(freePort(t))
	srv, addr := serveOn(t, "srv-a", "--udp-port", udpPort)

	if code, out, errOut := runSync("get", "--addr", addr, "--count", "3"); code != 0 || out != "srv-a\nsrv-a\nsrv-a\n" {
		t.Fatalf("get TCP: %d %q %q", code, out, errOut)
	}
	for _, a := range []string{addr, "127.0.0.1:" + udpPort} {
		if code, out, errOut := runSync("get", "--addr", a, "--count", "2", "--udp"); code != 0 || out != "srv-a\nsrv-a\n" {
			t.Fatalf("get UDP %s: %d %q %q", a, code, out, errOut)
		}
	}

	// The greeting carries the client's address; lines echo.
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "srv-a 127.0.0.1\n" {
		t.Fatalf("greeting %q, %v", buf[:n], err)
	}
	if _, err := c.Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	if n, err = c.Read(buf); err != nil || string(buf[:n]) != "one\n" {
		t.Fatalf("echo %q, %v", buf[:n], err)
	}

	// SIGTERM ends serve cleanly, open connection and all.
	srv.cancel()
	if code := <-srv.done; code != 0 {
		t.Fatalf("serve exited with %d: %s", code, srv.errOut.String())
	}
	srv.done <- 0 // for the cleanup
	code, out, errOut := runSync("get", "--addr", addr, "--count", "2", "--timeout", "500ms")
	if code != 1 || out != "" || !strings.Contains(errOut, "request 1 of 2") {
		t.Fatalf("get from a stopped server: %d %q %q", code, out, errOut)
	}
}

func TestHold(t *testing.T) {
	srv, addr := serveOn(t, "srv-h")
	h := start(t, "hold", "--addr", addr, "--interval", "20ms")
	// A few echoes, then SIGTERM: exit 0.
	time.Sleep(200 * time.Millisecond)
	h.cancel()
	if code := <-h.done; code != 0 || h.out.String() != "srv-h\n" {
		t.Fatalf("hold: %d %q %q", code, h.out.String(), h.errOut.String())
	}
	h.done <- 0

	// The server goes away under a held connection: hold fails by itself.
	h = start(t, "hold", "--addr", addr, "--interval", "20ms")
	for deadline := time.Now().Add(5 * time.Second); h.out.String() == ""; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("hold printed no greeting: %q", h.errOut.String())
		}
	}
	srv.cancel()
	select {
	case code := <-h.done:
		if code != 1 || !strings.Contains(h.errOut.String(), "echo") {
			t.Fatalf("hold after the server stopped: %d %q", code, h.errOut.String())
		}
		h.done <- code
	case <-time.After(10 * time.Second):
		t.Fatal("hold did not notice the server stopped")
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"nope"}, {"serve", "--port", "1"}, {"get"}, {"hold", "--addr", "x:1", "--interval", "0s"}} {
		if code, _, _ := runSync(args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
}
