package harness

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
)

// ExposeIn makes the API server reachable inside n at the very URL it has
// in the host namespace (https://127.0.0.1:<port>), so one kubeconfig (and
// its certificate's 127.0.0.1 SAN) serves the test and the daemons it runs
// in node namespaces. It relays loopback to loopback: the listener is
// created inside n, the upstream connection from the host namespace. No
// traffic leaves the machine or reaches any other address.
func (s *APIServer) ExposeIn(t testing.TB, n *NetNS) {
	t.Helper()
	exposeIn(t, n, s.URL)
}

// ExposeIn makes the front reachable inside n at its URL, as
// APIServer.ExposeIn does for the API server.
func (f *APIFront) ExposeIn(t testing.TB, n *NetNS) {
	t.Helper()
	exposeIn(t, n, f.URL)
}

func exposeIn(t testing.TB, n *NetNS, rawURL string) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := listenIn(n, u.Host)
	if err != nil {
		t.Fatalf("expose %s in netns %s: %v", rawURL, n.Name, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go relay(c, u.Host)
		}
	}()
}

// listenIn opens a TCP listener whose socket belongs to n: a socket keeps
// the namespace it was created in after the thread leaves it.
func listenIn(n *NetNS, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

func relay(c net.Conn, upstream string) {
	defer c.Close()
	u, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	defer u.Close()
	var once sync.Once
	done := make(chan struct{})
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		once.Do(func() { close(done) })
	}
	go cp(u, c)
	go cp(c, u)
	<-done
}
