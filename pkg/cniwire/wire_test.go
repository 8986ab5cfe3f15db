package cniwire

import (
	"strings"
	"testing"
)

func TestParseNetConf(t *testing.T) {
	good := `{"cniVersion":"1.1.0","name":"nsx","type":"nsx","socket":"/run/x.sock"}`
	nc, err := ParseNetConf([]byte(good))
	if err != nil || nc.SocketPath() != "/run/x.sock" || nc.CNIVersion != "1.1.0" {
		t.Fatalf("ParseNetConf = %+v, %v", nc, err)
	}
	if nc, _ := ParseNetConf([]byte(`{"cniVersion":"1.0.0","name":"n","type":"nsx"}`)); nc.SocketPath() != DefaultSocket {
		t.Fatal("default socket not used")
	}
	bad := []struct{ in, field string }{
		{``, "empty"},
		{`{`, "netconf"},
		{`{"name":"n","type":"nsx"}`, `"cniVersion"`},
		{`{"cniVersion":"1.1.0","type":"nsx"}`, `"name"`},
		{`{"cniVersion":"1.1.0","name":"n"}`, `"type"`},
		{`{"cniVersion":"1.1.0","name":"n","type":"nsx","socket":"rel.sock"}`, `"socket"`},
		{`{"cniVersion":"1.1.0","name":"n","type":"nsx","socket":5}`, `socket`},
		{`{"cniVersion":1,"name":"n","type":"nsx"}`, `cniVersion`},
	}
	for _, b := range bad {
		_, err := ParseNetConf([]byte(b.in))
		if err == nil || !strings.Contains(err.Error(), b.field) {
			t.Errorf("ParseNetConf(%q) = %v, want an error naming %s", b.in, err, b.field)
		}
	}
}

func TestParseCNIArgs(t *testing.T) {
	pa, err := ParseCNIArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1")
	if err != nil || pa != (PodArgs{Namespace: "default", Name: "web-0", UID: "u-1"}) {
		t.Fatalf("ParseCNIArgs = %+v, %v", pa, err)
	}
	if _, err := ParseCNIArgs("K8S_POD_NAME"); err == nil || !strings.Contains(err.Error(), "K8S_POD_NAME") {
		t.Fatalf("want error naming the pair, got %v", err)
	}
}

func TestRequestValidate(t *testing.T) {
	ok := Request{Command: CmdAdd, ContainerID: "c", Netns: "/var/run/netns/x", IfName: "eth0", PodNamespace: "ns", PodName: "p"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		mut  func(*Request)
		want string
	}{
		{func(r *Request) { r.PodName = "" }, "K8S_POD_NAME"},
		{func(r *Request) { r.Netns = "" }, "CNI_NETNS"},
		{func(r *Request) { r.ContainerID = "" }, "CNI_CONTAINERID"},
		{func(r *Request) { r.IfName = "" }, "CNI_IFNAME"},
		{func(r *Request) { r.IfName = "a-very-long-interface" }, "CNI_IFNAME"},
		{func(r *Request) { r.Command = "FOO" }, "FOO"},
	}
	for _, c := range cases {
		r := ok
		c.mut(&r)
		if err := r.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want it to name %s", r, err, c.want)
		}
	}
	del := Request{Command: CmdDel, ContainerID: "c", IfName: "eth0"}
	if err := del.Validate(); err != nil {
		t.Fatalf("DEL needs neither pod nor netns: %v", err)
	}
}

func FuzzParseNetConf(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"nsx","type":"nsx"}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"nsx","type":"nsx","socket":"/x","prevResult":{"cniVersion":"1.1.0"}}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"nsx","type":"nsx","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		nc, err := ParseNetConf(data)
		if err != nil {
			return
		}
		if nc.CNIVersion == "" || nc.Name == "" || nc.Type == "" || !strings.HasPrefix(nc.SocketPath(), "/") {
			t.Fatalf("accepted an incomplete netconf %+v", nc)
		}
	})
}
