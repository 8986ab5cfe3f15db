package openflow

import (
	"testing"

	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// testOVS is the shared test OVS of tests/harness (ovsdb-server and
// ovs-vswitchd private to the test, in their own network namespace) with
// one bridge br0; it needs root, like every test against real OVS.
type testOVS struct {
	t testing.TB
	*harness.OVS
}

func startOVS(t testing.TB) *testOVS {
	t.Helper()
	return &testOVS{t: t, OVS: harness.StartOVS(t, harness.OVSOptions{Bridges: []string{"br0"}})}
}

// Mgmt is br0's management socket.
func (o *testOVS) Mgmt() string { return o.MgmtSocket("br0") }

// ofctl runs ovs-ofctl -O OpenFlow15 cmd on br0.
func (o *testOVS) ofctl(cmd string, args ...string) string {
	o.t.Helper()
	return o.Ofctl(o.t, "br0", append([]string{"-O", "OpenFlow15", cmd}, args...)...)
}
