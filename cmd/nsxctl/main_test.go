package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTraceRequestNamesTheBadFlag(t *testing.T) {
	for _, c := range []struct {
		from, to, proto string
		port            uint
		want            string // "" = valid
	}{
		{"default/client", "10.96.0.10:80", "tcp", 0, ""},
		{"default/client", "10.96.0.10:53", "UDP", 40000, ""},
		{"client", "10.96.0.10:80", "tcp", 0, "--from"},
		{"default/", "10.96.0.10:80", "tcp", 0, "--from"},
		{"default/client", "10.96.0.10", "tcp", 0, "--to"},
		{"default/client", "svc:80", "tcp", 0, "--to"},
		{"default/client", "10.96.0.10:80", "icmp", 0, "--proto"},
		{"default/client", "10.96.0.10:80", "tcp", 70000, "--src-port"},
	} {
		_, err := traceRequest(c.from, c.to, c.proto, c.port)
		if (err == nil) != (c.want == "") || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("traceRequest(%q, %q, %q, %d) = %v, want an error naming %q", c.from, c.to, c.proto, c.port, err, c.want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	ini := filepath.Join(t.TempDir(), "ncp.ini")
	if err := os.WriteFile(ini, []byte("[nsx_kube_proxy]\ndataplane = ovs\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{}, exitUsage, "Commands:"},
		{[]string{"-o", "xml", "services"}, exitUsage, "-o \"xml\""},
		{[]string{"--config-file", ini, "--no-api", "frobnicate"}, exitUsage, "unknown command"},
		{[]string{"--config-file", ini, "--no-api", "services", "web"}, exitUsage, "NAMESPACE/NAME"},
		{[]string{"--config-file", ini, "--no-api", "services", "default/web"}, exitUsage, "drop --no-api"},
		{[]string{"--config-file", ini, "--no-api", "trace", "--from", "x", "--to", "10.96.0.10:80"}, exitUsage, "--from"},
		{[]string{"--config-file", ini, "--no-api", "--dataplane", "vpp", "services"}, exitUsage, "--dataplane \"vpp\""},
		{[]string{"--config-file", filepath.Join(t.TempDir(), "none.ini"), "status"}, exitErr, "none.ini"},
	} {
		var out, errOut bytes.Buffer
		code := run(c.args, &out, &errOut)
		if code != c.code || !strings.Contains(errOut.String(), c.msg) {
			t.Errorf("nsxctl %v: exit %d, stderr %q; want exit %d and %q", c.args, code, errOut.String(), c.code, c.msg)
		}
	}
}
