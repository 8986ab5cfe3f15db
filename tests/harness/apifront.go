package harness

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// FrontMode is how an APIFront answers.
type FrontMode int

const (
	// FrontPass forwards every request to kube-apiserver.
	FrontPass FrontMode = iota
	// FrontErrors answers every request with a 500 Status, as an API
	// server whose storage fails does.
	FrontErrors
)

func (m FrontMode) String() string {
	switch m {
	case FrontPass:
		return "pass"
	case FrontErrors:
		return "500s"
	}
	return fmt.Sprintf("FrontMode(%d)", int(m))
}

// APIFront is an HTTPS front of kube-apiserver whose answers a test can
// break (SetMode). A mode change cuts the requests in flight, watches
// included, so that clients meet the new mode at once, as behind a load
// balancer whose backends start failing.
type APIFront struct {
	URL        string // https://127.0.0.1:<port>
	Kubeconfig string // admin, through the front
	CAFile     string // the front's own self-signed certificate

	srv   *http.Server
	proxy *httputil.ReverseProxy

	mu     sync.Mutex
	mode   FrontMode
	gen    context.Context // ends at the next mode change
	endGen context.CancelFunc
}

// StartFront starts a front of s for one test; the cleanup stops it.
func (s *APIServer) StartFront(t testing.TB) *APIFront {
	t.Helper()
	f, err := s.startFront(t.TempDir())
	if err != nil {
		t.Fatalf("kube-apiserver front: %v", err)
	}
	t.Cleanup(func() { f.srv.Close() })
	return f
}

func (s *APIServer) startFront(dir string) (*APIFront, error) {
	upstream, err := url.Parse(s.URL)
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("no certificate in %s", s.CAFile)
	}
	cert, certPEM, err := selfSignedLoopback()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &APIFront{URL: "https://" + ln.Addr().String(), CAFile: filepath.Join(dir, "front-ca.crt"), Kubeconfig: filepath.Join(dir, "front.kubeconfig")}
	f.gen, f.endGen = context.WithCancel(context.Background())
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(upstream); r.Out.Host = upstream.Host },
		// Watches stream: every event goes through at once.
		FlushInterval: -1,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true},
	}
	if err := os.WriteFile(f.CAFile, certPEM, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["nsxt"] = &clientcmdapi.Cluster{Server: f.URL, CertificateAuthority: f.CAFile}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: s.Token}
	cfg.Contexts["nsxt"] = &clientcmdapi.Context{Cluster: "nsxt", AuthInfo: "admin"}
	cfg.CurrentContext = "nsxt"
	if err := clientcmd.WriteToFile(*cfg, f.Kubeconfig); err != nil {
		ln.Close()
		return nil, err
	}
	f.srv = &http.Server{Handler: f, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, ReadHeaderTimeout: 10 * time.Second}
	go f.srv.ServeTLS(ln, "", "")
	return f, nil
}

// SetMode switches how the front answers and cuts what is in flight.
func (f *APIFront) SetMode(m FrontMode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mode = m
	f.endGen()
	f.gen, f.endGen = context.WithCancel(context.Background())
}

// injectedError is the Status a failing kube-apiserver answers with.
const injectedError = `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"injected fault: the API server is failing","reason":"InternalError","code":500}`

func (f *APIFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	mode, gen := f.mode, f.gen
	f.mu.Unlock()
	if mode == FrontErrors {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, injectedError)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(gen, cancel)()
	f.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// selfSignedLoopback is a certificate for 127.0.0.1, its own CA.
func selfSignedLoopback() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nsx-ujo test apiserver front"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		return tls.Certificate{}, nil, errors.Join(errors.New("front certificate"), err)
	}
	return cert, certPEM, nil
}
