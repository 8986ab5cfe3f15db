package ovs_test

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/nsx-ujo/nsx-ujo/dataplane/backends"
	ovsdp "github.com/nsx-ujo/nsx-ujo/dataplane/ovs"
	"github.com/nsx-ujo/nsx-ujo/pkg/nftables"
	"github.com/nsx-ujo/nsx-ujo/tests/conformance"
)

func TestConformance(t *testing.T) {
	conformance.Run(t, func(t *testing.T, e *conformance.Env) *conformance.Instance {
		b, err := ovsdp.New(ovsdp.Options{Bridge: "br-int", Uplink: conformance.Uplink, OVSRunDir: e.OVS.RunDir, NodeName: conformance.NodeName,
			Timeout: 5 * time.Second, Log: zaptest.NewLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return &conformance.Instance{
			Backend: backends.WithLocalNodePorts(b, nftables.New(nftables.Options{NetNS: e.Node.Path})),
			Close:   func() { b.Close() },
			Leftovers: func() []string {
				var left []string
				for _, l := range strings.Split(e.OVS.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-flows", "--no-stats"), "\n") {
					if strings.Contains(l, "cookie=0x5a") || strings.Contains(l, "cookie=0x5b") {
						left = append(left, "flow: "+strings.TrimSpace(l))
					}
				}
				for _, l := range strings.Split(e.OVS.Ofctl(t, "br-int", "-O", "OpenFlow15", "dump-groups"), "\n") {
					if strings.Contains(l, "group_id=") {
						left = append(left, "group: "+strings.TrimSpace(l))
					}
				}
				return left
			},
		}
	})
}
