package config

import (
	"fmt"
	"net"
	"os"
	"strconv"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RESTConfig builds the API server client configuration from [k8s], in
// NCP's order of preference: a kubeconfig file, else apiserver_host_ip
// (with port, ca_file, client_token_file, insecure), else the in-cluster
// service account. Errors name the source that was tried.
func (c *Config) RESTConfig() (*rest.Config, error) {
	k := c.K8s
	switch {
	case k.Kubeconfig != "":
		rc, err := clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", k.Kubeconfig, err)
		}
		return rc, nil
	case k.APIServerHostIP != "":
		port := k.APIServerHostPort
		if port == 0 {
			port = 443
		}
		rc := &rest.Config{
			Host:            "https://" + net.JoinHostPort(k.APIServerHostIP, strconv.Itoa(port)),
			BearerTokenFile: k.ClientTokenFile,
			// client-go rejects a CA file together with insecure.
			TLSClientConfig: rest.TLSClientConfig{Insecure: k.Insecure},
		}
		if !k.Insecure {
			rc.CAFile = k.CAFile
		}
		// client-go reads these lazily; check now so a typo fails at start.
		for _, f := range []struct{ key, path string }{{"ca_file", rc.CAFile}, {"client_token_file", k.ClientTokenFile}} {
			if f.path == "" {
				continue
			}
			if _, err := os.Stat(f.path); err != nil {
				return nil, fmt.Errorf("ncp.ini [k8s] %s: %w", f.key, err)
			}
		}
		return rc, nil
	default:
		rc, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config (no --kubeconfig, [k8s] kubeconfig or apiserver_host_ip): %w", err)
		}
		return rc, nil
	}
}
