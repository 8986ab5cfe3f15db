package cniplugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"slices"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/nsx-ujo/nsx-ujo/pkg/config"
)

// agentResult is what nsx-node-agent answers an ADD with (CNI 1.1).
func agentResult(t *testing.T) []byte {
	t.Helper()
	idx := 1
	_, ipn, _ := net.ParseCIDR("10.0.1.0/24")
	ipn.IP = net.ParseIP("10.0.1.5").To4()
	res := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{{Name: "nsx0123456789ab", Mac: "02:00:00:00:00:01"},
			{Name: "eth0", Mac: "02:50:56:00:00:05", Mtu: 1450, Sandbox: "/var/run/netns/p"}},
		IPs:    []*types100.IPConfig{{Interface: &idx, Address: *ipn, Gateway: net.ParseIP("10.0.1.1").To4()}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: net.ParseIP("10.0.1.1").To4()}},
	}
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVersionsAreTheConfigurableOnes(t *testing.T) {
	if got := VersionInfo().SupportedVersions(); !slices.Equal(got, config.CNIVersions) {
		t.Errorf("VERSION answers %v, ncp.ini cni_version accepts %v", got, config.CNIVersions)
	}
}

// Every version the plugin announces: the printed result is decoded by
// libcni as that version, has that version's shape, and converts back to
// the agent's result without loss.
func TestResultInEveryAnnouncedVersion(t *testing.T) {
	in := agentResult(t)
	for _, v := range VersionInfo().SupportedVersions() {
		t.Run(v, func(t *testing.T) {
			var want types100.Result
			if err := json.Unmarshal(in, &want); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := printResult(&out, in, v); err != nil {
				t.Fatal(err)
			}
			var shape struct {
				CNIVersion string `json:"cniVersion"`
				IPs        []map[string]any
				Interfaces []map[string]any
			}
			if err := json.Unmarshal(out.Bytes(), &shape); err != nil {
				t.Fatal(err)
			}
			if shape.CNIVersion != v || len(shape.IPs) != 1 || len(shape.Interfaces) != 2 {
				t.Fatalf("printed %s", out.Bytes())
			}
			// 0.3.x and 0.4.0 name each IP's family; 1.x dropped the field.
			_, hasFamily := shape.IPs[0]["version"]
			isV1, _ := version.GreaterThanOrEqualTo(v, "1.0.0")
			if hasFamily == isV1 {
				t.Errorf("ips[0] %v: \"version\" present = %v in %s", shape.IPs[0], hasFamily, v)
			}
			res, err := version.NewResult(v, out.Bytes())
			if err != nil {
				t.Fatalf("libcni cannot decode its own version: %v", err)
			}
			back, err := types100.GetResult(res)
			if err != nil {
				t.Fatal(err)
			}
			// 0.x interfaces have no mtu: compare what every version carries.
			if !isV1 {
				for _, i := range want.Interfaces {
					i.Mtu = 0
				}
			}
			same := func(a, b any) bool { x, _ := json.Marshal(a); y, _ := json.Marshal(b); return bytes.Equal(x, y) }
			if !same(back.Interfaces, want.Interfaces) || !same(back.IPs, want.IPs) || !same(back.Routes, want.Routes) {
				t.Errorf("round trip through %s lost data:\n got %+v\nwant %+v", v, back, want)
			}
		})
	}
}

func TestResultInUnknownVersionNamesIt(t *testing.T) {
	err := printResult(&bytes.Buffer{}, agentResult(t), "9.9.9")
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrIncompatibleCNIVersion || !bytes.Contains([]byte(e.Msg), []byte("9.9.9")) {
		t.Errorf("printResult(9.9.9) = %v", err)
	}
}

// A dual-stack pod's result (one IP per family, each with its gateway)
// keeps both in every announced version; 0.x versions name each family.
func TestDualStackResultInEveryAnnouncedVersion(t *testing.T) {
	idx := 1
	ip4 := net.IPNet{IP: net.ParseIP("10.0.1.5").To4(), Mask: net.CIDRMask(24, 32)}
	ip6 := net.IPNet{IP: net.ParseIP("fd00:10:0:1::5"), Mask: net.CIDRMask(64, 128)}
	in, err := json.Marshal(&types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{{Name: "nsx0123456789ab"}, {Name: "eth0", Mac: "02:50:56:00:00:05", Sandbox: "/var/run/netns/p"}},
		IPs: []*types100.IPConfig{{Interface: &idx, Address: ip4, Gateway: net.ParseIP("10.0.1.1").To4()},
			{Interface: &idx, Address: ip6, Gateway: net.ParseIP("fd00:10:0:1::1")}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: net.ParseIP("10.0.1.1").To4()},
			{Dst: net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, GW: net.ParseIP("fd00:10:0:1::1")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range VersionInfo().SupportedVersions() {
		t.Run(v, func(t *testing.T) {
			var out bytes.Buffer
			if err := printResult(&out, in, v); err != nil {
				t.Fatal(err)
			}
			var shape struct {
				IPs []struct {
					Version string `json:"version"`
					Address string `json:"address"`
					Gateway string `json:"gateway"`
				} `json:"ips"`
				Routes []map[string]any `json:"routes"`
			}
			if err := json.Unmarshal(out.Bytes(), &shape); err != nil {
				t.Fatal(err)
			}
			isV1, _ := version.GreaterThanOrEqualTo(v, "1.0.0")
			want4, want6 := "4", "6"
			if isV1 {
				want4, want6 = "", ""
			}
			if len(shape.IPs) != 2 || len(shape.Routes) != 2 ||
				shape.IPs[0].Address != "10.0.1.5/24" || shape.IPs[0].Gateway != "10.0.1.1" || shape.IPs[0].Version != want4 ||
				shape.IPs[1].Address != "fd00:10:0:1::5/64" || shape.IPs[1].Gateway != "fd00:10:0:1::1" || shape.IPs[1].Version != want6 {
				t.Fatalf("printed %s", out.Bytes())
			}
		})
	}
}
