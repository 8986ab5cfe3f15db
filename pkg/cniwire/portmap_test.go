package cniwire

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestPortMappings(t *testing.T) {
	got, err := PortMappings([]byte(`{"cniVersion":"1.1.0","name":"n","type":"nsx","runtimeConfig":{"portMappings":[
		{"hostPort":8080,"containerPort":80,"protocol":"TCP"},
		{"hostPort":8080,"containerPort":80,"protocol":"udp","hostIP":"10.0.100.2"},
		{"hostPort":53,"containerPort":5353,"hostIP":"0.0.0.0"},
		{"hostPort":54323,"containerPort":8080,"protocol":"tcp","hostIP":"127.0.0.1"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"},
		{HostIP: netip.MustParseAddr("10.0.100.2"), HostPort: 8080, ContainerPort: 80, Protocol: "udp"},
		{HostPort: 53, ContainerPort: 5353, Protocol: "tcp"},
		{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 54323, ContainerPort: 8080, Protocol: "tcp"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if got, err := PortMappings([]byte(`{"cniVersion":"1.1.0","name":"n","type":"nsx"}`)); err != nil || got != nil {
		t.Fatalf("no runtimeConfig: %v, %v", got, err)
	}
	for _, tc := range []struct{ in, want string }{
		{`[{"hostPort":0,"containerPort":80}]`, "runtimeConfig.portMappings[0].hostPort = 0"},
		{`[{"hostPort":80,"containerPort":70000}]`, "runtimeConfig.portMappings[0].containerPort = 70000"},
		{`[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]`, `runtimeConfig.portMappings[0].protocol = "icmp"`},
		{`[{"hostPort":80,"containerPort":80,"hostIP":"node"}]`, `runtimeConfig.portMappings[0].hostIP = "node"`},
		{`[{"hostPort":80,"containerPort":80},{"hostPort":80,"containerPort":81,"protocol":"TCP"}]`, "runtimeConfig.portMappings[1]: the same host address"},
		{`{"hostPort":80}`, "runtimeConfig.portMappings"},
		{`[{"hostPort":"80","containerPort":80}]`, `"hostPort"`},
	} {
		_, err := PortMappings([]byte(`{"cniVersion":"1.1.0","name":"n","type":"nsx","runtimeConfig":{"portMappings":` + tc.in + `}}`))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s", tc.in, err, tc.want)
		}
	}
}
