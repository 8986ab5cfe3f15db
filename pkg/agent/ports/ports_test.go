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
