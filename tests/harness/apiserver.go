package harness

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// KubeVersion is the kube-apiserver the tests run; keep it equal to
// KUBE_VERSION in hack/build-tools.sh and the client-go version in go.mod.
const KubeVersion = "v1.37.2"

// ServiceCIDRs is the API server's --service-cluster-ip-range: IPv4 (the
// primary family) and IPv6. A kube-controller-manager beside it takes the
// same value.
const ServiceCIDRs = "10.96.0.0/16,fd00:10:96::/112"

const (
	etcdReadyTimeout      = 30 * time.Second
	apiserverReadyTimeout = 90 * time.Second
)

// APIServer is a real etcd + kube-apiserver pair on 127.0.0.1, private to
// one test or one test binary.
type APIServer struct {
	URL        string // https://127.0.0.1:<port>
	Kubeconfig string // admin kubeconfig (token auth, CA verified)
	Token      string // bearer token of a system:masters user
	CAFile     string // CA bundle of the self-signed serving certificate
	Dir        string // temp dir with data, certs and logs; removed on stop

	etcd      *daemon
	apiserver *daemon
	// etcd's client and peer URLs, for a restart on the same ports.
	etcdURL, etcdPeerURL string

	opts   APIServerOptions
	tokens map[string]string // user -> token, of opts.Users
	egress *egressProxy
}

// APIServerOptions shape a kube-apiserver for a cluster with real nodes
// (kubelets, controller-manager, scheduler). The zero value is the
// apiserver alone, as most tests use it.
type APIServerOptions struct {
	// RealNodes turns on what a cluster with real nodes has and the bare
	// apiserver must not: ServiceAccount admission (a controller-manager
	// creates the accounts), Node+RBAC authorization (kubelets), and an
	// egress proxy for the apiserver's connections to kubelets, pods and
	// Services (SetClusterDialer).
	RealNodes bool
	// Users are token users beyond admin, by name, with their groups (a
	// kubelet: "system:node:<node>" in "system:nodes"). UserKubeconfig
	// writes a kubeconfig for one.
	Users map[string][]string
	// AuditUsers: the requests of these users are written to the audit
	// log (metadata only), which AuditRequests reads.
	AuditUsers []string
}

// KubeAPIServerBinary returns $NSX_UJO_KUBE_APISERVER if set, else
// <repo root>/_output/tools/kube-apiserver-<KubeVersion>, building it with
// hack/build-tools.sh when it is missing.
func KubeAPIServerBinary() (string, error) {
	if p := os.Getenv("NSX_UJO_KUBE_APISERVER"); p != "" {
		return p, nil
	}
	return toolBinary("kube-apiserver")
}

// KubeProxyBinary returns <repo root>/_output/tools/kube-proxy-<KubeVersion>
// (the benchmarks' baseline), building it with hack/build-tools.sh when it
// is missing.
func KubeProxyBinary() (string, error) { return toolBinary("kube-proxy") }

// ContainerdVersion is the runtime of the real-node cluster; keep it equal
// to CONTAINERD_VERSION in hack/build-tools.sh and tools/containerd/go.mod.
const ContainerdVersion = "v2.4.2"

// CoreDNSVersion is the real-node cluster's DNS (tools/coredns/go.mod).
const CoreDNSVersion = "v1.13.2"

// ToolBinary returns <repo root>/_output/tools/<name>-<version> for a tool
// hack/build-tools.sh builds (kube-*, kubelet, e2e.test, agnhost at
// KubeVersion; containerd, containerd-shim-runc-v2, ctr at
// ContainerdVersion), building that one tool when it is missing.
func ToolBinary(name string) (string, error) { return toolBinary(name) }

func toolBinary(name string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	version := KubeVersion
	switch name {
	case "containerd", "containerd-shim-runc-v2", "ctr":
		version = ContainerdVersion
	case "coredns":
		version = CoreDNSVersion
	}
	bin := filepath.Join(root, "_output", "tools", name+"-"+version)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	// Straight to stderr rather than t.Log: the build is long and t.Log
	// output only shows once the test ends.
	fmt.Fprintf(os.Stderr, "harness: %s missing; building it with hack/build-tools.sh (minutes when cold; raise go test -timeout or run `make tools` first)\n", bin)
	cmd := exec.Command("bash", filepath.Join(root, "hack", "build-tools.sh"), name)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("hack/build-tools.sh %s: %w", name, err)
	}
	return bin, nil
}

// StartAPIServer starts etcd and kube-apiserver for one test and stops both
// in its cleanup, logging the apiserver's log tail if the test failed.
func StartAPIServer(tb testing.TB) *APIServer {
	return StartAPIServerWith(tb, APIServerOptions{})
}

// StartAPIServerWith is StartAPIServer with options.
func StartAPIServerWith(tb testing.TB, o APIServerOptions) *APIServer {
	tb.Helper()
	s, stop, err := startAPIServer(tb.Logf, o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Log(s.apiserver.logTail())
		}
		stop()
	})
	return s
}

// StartAPIServerMain is StartAPIServer for TestMain, shared by all tests of
// a package: call the returned stop func after m.Run.
func StartAPIServerMain() (*APIServer, func(), error) {
	return startAPIServer(func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
	}, APIServerOptions{})
}

func startAPIServer(logf func(string, ...any), o APIServerOptions) (*APIServer, func(), error) {
	sweepLeftovers(logf)
	bin, err := KubeAPIServerBinary()
	if err != nil {
		return nil, nil, err
	}
	dir, err := newTempDir()
	if err != nil {
		return nil, nil, err
	}
	s := &APIServer{Dir: dir, opts: o}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			s.apiserver.stop(stopGrace)
			s.egress.close()
			s.etcd.stop(stopGrace)
			os.RemoveAll(dir)
		})
	}
	if err := s.start(bin, logf); err != nil {
		stop()
		return nil, nil, err
	}
	return s, stop, nil
}

// start runs etcd and kube-apiserver with their files in s.Dir and waits
// until the apiserver is ready.
func (s *APIServer) start(bin string, logf func(string, ...any)) error {
	dir := s.Dir
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	s.etcdURL, s.etcdPeerURL = etcdURL, fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	if s.etcd, err = startEtcd(dir, s.etcdURL, s.etcdPeerURL); err != nil {
		return err
	}

	s.Token = rand.Text()
	tokens := filepath.Join(dir, "tokens.csv")
	csv := s.Token + ",admin,admin,system:masters\n"
	s.tokens = map[string]string{}
	users := make([]string, 0, len(s.opts.Users))
	for u := range s.opts.Users {
		users = append(users, u)
	}
	sort.Strings(users)
	for _, u := range users {
		s.tokens[u] = rand.Text()
		csv += fmt.Sprintf("%s,%s,%s,\"%s\"\n", s.tokens[u], u, u, strings.Join(s.opts.Users[u], ","))
	}
	if err := os.WriteFile(tokens, []byte(csv), 0o600); err != nil {
		return err
	}
	saKey := filepath.Join(dir, "sa.key")
	if err := writeRSAKey(saKey); err != nil {
		return err
	}
	certDir := filepath.Join(dir, "certs")
	s.CAFile = filepath.Join(certDir, "apiserver.crt")
	s.URL = fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", ports[2]),
		// Tests may run it in a netns without a default route, where no
		// address can be guessed. A loopback advertise address is refused
		// unless the endpoint reconciler (the "kubernetes" Service's
		// endpoints) is off, which no test needs.
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		// With no --tls-cert-file the apiserver writes a self-signed CA and
		// serving cert (for the advertise address) here: apiserver.crt holds
		// the chain, so it doubles as the client's CA bundle.
		"--cert-dir=" + certDir,
		"--token-auth-file=" + tokens,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
		// Dual-stack, so a test can ask for IPv6 and dual-stack Services;
		// a Service that asks for nothing stays SingleStack IPv4.
		"--service-cluster-ip-range=" + ServiceCIDRs,
		"--allow-privileged=true",
		"--profiling=false",
	}
	if s.opts.RealNodes {
		if s.egress, err = startEgressProxy(filepath.Join(dir, "egress.sock")); err != nil {
			return err
		}
		egressCfg := filepath.Join(dir, "egress.yaml")
		if err := os.WriteFile(egressCfg, []byte(fmt.Sprintf(egressSelectorConfig, s.egress.path)), 0o600); err != nil {
			return err
		}
		args = append(args,
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--egress-selector-config-file="+egressCfg,
			"--kubelet-preferred-address-types=InternalIP",
		)
	} else {
		args = append(args,
			"--authorization-mode=RBAC",
			// No controller-manager creates the "default" ServiceAccount,
			// which this plugin would require of every pod.
			"--disable-admission-plugins=ServiceAccount",
		)
	}
	if len(s.opts.AuditUsers) > 0 {
		policy := filepath.Join(dir, "audit-policy.yaml")
		users, _ := json.Marshal(s.opts.AuditUsers) // a YAML flow sequence
		if err := os.WriteFile(policy, []byte(fmt.Sprintf(auditPolicy, users)), 0o600); err != nil {
			return err
		}
		args = append(args, "--audit-policy-file="+policy, "--audit-log-path="+s.auditLog(), "--audit-log-format=json")
	}
	cmd := exec.Command(bin, args...)
	if s.apiserver, err = startDaemon("kube-apiserver", cmd, filepath.Join(dir, "kube-apiserver.log")); err != nil {
		return err
	}
	start := time.Now()
	if err := waitFor(apiserverReadyTimeout, s.apiserver, s.ready); err != nil {
		return err
	}
	logf("harness: kube-apiserver %s ready at %s after %s", KubeVersion, s.URL, time.Since(start).Round(time.Millisecond))

	s.Kubeconfig = filepath.Join(dir, "kubeconfig")
	return s.writeKubeconfig()
}

// auditPolicy logs the metadata of the requests of some users (%s: a
// YAML sequence). ResponseStarted stays: a watch completes only when it
// ends, which may be after the test.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: %s
  - level: None
`

func (s *APIServer) auditLog() string { return filepath.Join(s.Dir, "audit.log") }

// AuditRequest is one request of the audit log.
type AuditRequest struct {
	User                            string
	Verb                            string // get, list, watch, create, ...
	APIGroup, Resource, Subresource string // "" group: core
	Namespace, Name                 string
	Code                            int // the response's status code (0: a watch still open)
}

// AuditRequests reads the audit log (APIServerOptions.AuditUsers): each
// request once, in order.
func (s *APIServer) AuditRequests() ([]AuditRequest, error) {
	data, err := os.ReadFile(s.auditLog())
	if err != nil {
		return nil, err
	}
	var out []AuditRequest
	index := map[string]int{}
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue
		}
		var e struct {
			AuditID string `json:"auditID"`
			User    struct {
				Username string `json:"username"`
			} `json:"user"`
			Verb      string `json:"verb"`
			ObjectRef *struct {
				APIGroup    string `json:"apiGroup"`
				Resource    string `json:"resource"`
				Subresource string `json:"subresource"`
				Namespace   string `json:"namespace"`
				Name        string `json:"name"`
			} `json:"objectRef"`
			ResponseStatus *struct {
				Code int `json:"code"`
			} `json:"responseStatus"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			return nil, fmt.Errorf("%s: %w", s.auditLog(), err)
		}
		r := AuditRequest{User: e.User.Username, Verb: e.Verb}
		if e.ObjectRef != nil {
			r.APIGroup, r.Resource, r.Subresource, r.Namespace, r.Name = e.ObjectRef.APIGroup, e.ObjectRef.Resource, e.ObjectRef.Subresource, e.ObjectRef.Namespace, e.ObjectRef.Name
		}
		if e.ResponseStatus != nil {
			r.Code = e.ResponseStatus.Code
		}
		if i, ok := index[e.AuditID]; ok { // a later stage of one request
			out[i] = r
			continue
		}
		index[e.AuditID] = len(out)
		out = append(out, r)
	}
	return out, nil
}

// startEtcd starts a single-member etcd with its data in dir and waits for
// /health. etcd 3.4 has no --unsafe-no-fsync; the data set is small.
func startEtcd(dir, clientURL, peerURL string) (*daemon, error) {
	cmd := exec.Command("etcd",
		"--name=nsxt",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=nsxt="+peerURL,
		"--logger=zap",
		"--log-outputs=stderr",
	)
	d, err := startDaemon("etcd", cmd, filepath.Join(dir, "etcd.log"))
	if err != nil {
		return nil, err
	}
	c := &http.Client{Timeout: 2 * time.Second}
	err = waitFor(etcdReadyTimeout, d, func() error {
		body, err := httpGet(c, clientURL+"/health", "")
		if err == nil && !strings.Contains(body, `"health":"true"`) {
			err = fmt.Errorf("unhealthy: %s", body)
		}
		return err
	})
	if err != nil {
		d.stop(stopGrace)
		return nil, err
	}
	return d, nil
}

// ready checks /readyz over TLS verified against the generated CA, which
// exists only once the apiserver has started serving.
func (s *APIServer) ready() error {
	pem, err := os.ReadFile(s.CAFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("no certificate in %s yet", s.CAFile)
	}
	c := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	defer c.CloseIdleConnections()
	body, err := httpGet(c, s.URL+"/readyz", s.Token)
	if err == nil && body != "ok" {
		err = fmt.Errorf("readyz: %s", body)
	}
	return err
}

func (s *APIServer) writeKubeconfig() error {
	return s.writeKubeconfigFor(s.Kubeconfig, "admin", s.Token)
}

func (s *APIServer) writeKubeconfigFor(path, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["nsxt"] = &clientcmdapi.Cluster{Server: s.URL, CertificateAuthority: s.CAFile}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["nsxt"] = &clientcmdapi.Context{Cluster: "nsxt", AuthInfo: user}
	cfg.CurrentContext = "nsxt"
	return clientcmd.WriteToFile(*cfg, path)
}

// UserKubeconfig writes a kubeconfig for one of APIServerOptions.Users
// to path.
func (s *APIServer) UserKubeconfig(user, path string) error {
	token, ok := s.tokens[user]
	if !ok {
		return fmt.Errorf("kubeconfig for %s: not a user of this apiserver (APIServerOptions.Users)", user)
	}
	return s.writeKubeconfigFor(path, user, token)
}

// SAKeyFile is the service-account signing key (the controller-manager's
// token controller signs with it).
func (s *APIServer) SAKeyFile() string { return filepath.Join(s.Dir, "sa.key") }

// RESTConfig returns the admin client config.
func (s *APIServer) RESTConfig() (*rest.Config, error) {
	return clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
}

// Client returns an admin clientset; it fails the test on error.
func (s *APIServer) Client(t testing.TB) kubernetes.Interface {
	t.Helper()
	cfg, err := s.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// httpGet returns the body of a 200 answer, else an error with the body.
func httpGet(c *http.Client, url, token string) (string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return string(body), nil
}

// writeRSAKey writes a fresh PKCS#1 RSA key, which kube-apiserver accepts
// both as the service-account signing key and as the verification key.
func writeRSAKey(path string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	block := &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}
	return os.WriteFile(path, pem.EncodeToMemory(block), 0o600)
}

// Freeze stops kube-apiserver in its tracks (SIGSTOP) until Thaw: clients
// meet an API server that accepts nothing and answers nothing, as when it
// is down behind a load balancer, without losing its state. The cleanup
// thaws it.
func (s *APIServer) Freeze(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(s.apiserver.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("freeze kube-apiserver: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(s.apiserver.cmd.Process.Pid, syscall.SIGCONT) })
}

// RestartEtcd kills etcd (-9: a crash, not a shutdown) and starts it again
// on the same data and ports, as a control plane's supervisor does;
// kube-apiserver reconnects by itself. It returns once etcd is healthy.
func (s *APIServer) RestartEtcd(t testing.TB) {
	t.Helper()
	_ = syscall.Kill(-s.etcd.cmd.Process.Pid, syscall.SIGKILL)
	<-s.etcd.done
	d, err := startEtcd(s.Dir, s.etcdURL, s.etcdPeerURL)
	if err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	s.etcd = d
}

// Thaw lets a frozen kube-apiserver run again.
func (s *APIServer) Thaw(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(s.apiserver.cmd.Process.Pid, syscall.SIGCONT); err != nil {
		t.Fatalf("thaw kube-apiserver: %v", err)
	}
}
