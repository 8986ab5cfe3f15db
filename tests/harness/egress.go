package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// egressSelectorConfig sends the apiserver's "cluster" traffic (kubelet
// logs/exec/port-forward, the pods/services proxy) through an HTTP CONNECT
// proxy on a unix socket: the apiserver runs on the host's loopback while
// kubelets and pods live in network namespaces it has no route to, and a
// route from the host into the test's fabric would touch the machine's
// own routing table. The proxy dials from inside a namespace that routes
// to the nodes (SetClusterDialer).
const egressSelectorConfig = `apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: %s
`

// egressProxy is a minimal HTTP CONNECT proxy: one CONNECT per
// connection, then bytes both ways.
type egressProxy struct {
	path string
	ln   net.Listener

	mu   sync.Mutex
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func startEgressProxy(path string) (*egressProxy, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("egress proxy: %w", err)
	}
	p := &egressProxy{path: path, ln: ln}
	// The accept loop ends when close closes ln; each tunnel ends with
	// its connections.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p, nil
}

// SetClusterDialer sets how the apiserver reaches kubelets, pods and
// Services (APIServerOptions.RealNodes): e.g. a dial from inside the
// namespace that routes between the nodes. Until set, those connections
// fail with 503.
func (s *APIServer) SetClusterDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) {
	if s.egress == nil {
		panic("SetClusterDialer: the apiserver was not started with RealNodes")
	}
	s.egress.mu.Lock()
	s.egress.dial = dial
	s.egress.mu.Unlock()
}

func (p *egressProxy) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	if req.Method != http.MethodConnect {
		fmt.Fprintf(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		return
	}
	p.mu.Lock()
	dial := p.dial
	p.mu.Unlock()
	if dial == nil {
		fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\n\r\nno cluster dialer yet\n")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	up, err := dial(ctx, "tcp", req.Host)
	cancel()
	if err != nil {
		fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n%v\n", err)
		return
	}
	defer up.Close()
	if _, err := fmt.Fprintf(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	// Bytes the apiserver sent after the CONNECT are in br already.
	go func() { _, _ = br.WriteTo(up); closeWrite(up); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
	<-done
	<-done
}

// closeWrite half-closes a TCP or unix connection, so the peer sees EOF
// while the other direction still flows.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

func (p *egressProxy) close() {
	if p == nil {
		return
	}
	p.ln.Close()
}
