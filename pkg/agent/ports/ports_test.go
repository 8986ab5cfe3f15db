package ports

import (
	"encoding/json"
	"maps"
	"testing"

	"github.com/nsx-ujo/nsx-ujo/pkg/ovsdb"
)

// FuzzFromOVS reads OVSDB rows someone else may have written or mangled
// (a foreign port carrying our owner key, a hand-edited record): never a
// panic; a record that is not ours is not read as ours; what is read back
// is written again unchanged (a repeated ADD compares the two).
func FuzzFromOVS(f *testing.F) {
	seed := func(ids map[string]string) {
		b, _ := json.Marshal(ids)
		f.Add("veth1", 101, 3, b)
	}
	good := (&PodPort{Name: "veth1", VLAN: 101, ContainerID: "c", PodNamespace: "ns", PodName: "p", PodUID: "u", Netns: "/n",
		IfName: "eth0", MAC: "02:00:00:00:00:01", IP: "10.0.1.5/24", Gateway: "10.0.1.1", MTU: 1500}).externalIDs()
	seed(good)
	dual := maps.Clone(good)
	dual[KeyIP6], dual[KeyGateway6] = "fd00:10:0:1::5/64", "fd00:10:0:1::1"
	seed(dual)
	bad := map[string]string{}
	for k, v := range good {
		bad[k] = v
	}
	bad[KeyMTU], bad[KeyHostPorts], bad[KeyAttachedAt] = "-1e9", `[{"hostPort":"x"}]`, "yesterday"
	seed(bad)
	seed(map[string]string{OwnerKey: "someone-else", KeyPodName: "p"})
	f.Fuzz(func(t *testing.T, name string, tag, ofport int, idsJSON []byte) {
		var ids map[string]string
		if json.Unmarshal(idsJSON, &ids) != nil {
			return
		}
		pp, ok := fromOVS(&ovsdb.Port{Name: name, Tag: tag, OFPort: ofport, ExternalIDs: ids})
		if ok != (ids[OwnerKey] == OwnerValue) {
			t.Fatalf("owner %q read as ours: %v", ids[OwnerKey], ok)
		}
		if !ok {
			return
		}
		again, ok := fromOVS(&ovsdb.Port{Name: name, Tag: tag, OFPort: ofport, ExternalIDs: pp.externalIDs()})
		if !ok || !maps.Equal(pp.externalIDs(), again.externalIDs()) {
			t.Fatalf("read %+v, written back and read again %+v", pp, again)
		}
	})
}

// A dual-stack pod's IPv6 address and gateway are written under their own
// keys and read back; a single-stack pod's record has neither key, so a
// config that drops IPv6 leaves no stale address in the record.
func TestDualStackRoundTrip(t *testing.T) {
	p := &PodPort{Name: "veth1", VLAN: 101, ContainerID: "c", PodNamespace: "ns", PodName: "p", PodUID: "u", Netns: "/n",
		IfName: "eth0", MAC: "02:00:00:00:00:01", IP: "10.0.1.5/24", Gateway: "10.0.1.1",
		IP6: "fd00:10:0:1::5/64", Gateway6: "fd00:10:0:1::1", MTU: 1500}
	ids := p.externalIDs()
	if ids[KeyIP6] != "fd00:10:0:1::5/64" || ids[KeyGateway6] != "fd00:10:0:1::1" || ids[KeyIP] != "10.0.1.5/24" {
		t.Fatalf("external_ids %v", ids)
	}
	got, ok := fromOVS(&ovsdb.Port{Name: p.Name, Tag: p.VLAN, ExternalIDs: ids})
	if !ok || got.IP6 != p.IP6 || got.Gateway6 != p.Gateway6 || got.IP != p.IP || got.Gateway != p.Gateway {
		t.Fatalf("read back %+v", got)
	}
	p.IP6, p.Gateway6 = "", ""
	ids = p.externalIDs()
	if _, has := ids[KeyIP6]; has {
		t.Fatalf("single-stack record has %s: %v", KeyIP6, ids)
	}
	if _, has := ids[KeyGateway6]; has {
		t.Fatalf("single-stack record has %s: %v", KeyGateway6, ids)
	}
	if got, _ := fromOVS(&ovsdb.Port{Name: p.Name, ExternalIDs: ids}); got.IP6 != "" || got.Gateway6 != "" {
		t.Fatalf("single-stack record read back with IPv6: %+v", got)
	}
}
