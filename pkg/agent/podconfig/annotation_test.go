package podconfig

import (
	"errors"
	"strings"
	"testing"
)

const uid = "6f1c0a52-4e4b-4a0e-9d6a-0a1b2c3d4e5f"

func TestParseValid(t *testing.T) {
	v := `{"version":1,"pod_uid":"` + uid + `","ip_address":"10.0.1.5/24","mac_address":"02:50:56:00:00:05","gateway_ip":"10.0.1.1","vlan_id":101,"mtu":1450}`
	cfg, err := Parse(v, uid)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.IP.String() != "10.0.1.5/24" || cfg.MAC.String() != "02:50:56:00:00:05" || cfg.Gateway.String() != "10.0.1.1" ||
		cfg.VLAN != 101 || cfg.MTU != 1450 || cfg.PodUID != uid {
		t.Fatalf("got %+v", cfg)
	}
	// Round trip through Marshal.
	again, err := Parse(Marshal(cfg), uid)
	if err != nil || again.IP.String() != cfg.IP.String() || again.VLAN != cfg.VLAN || again.MTU != cfg.MTU {
		t.Fatalf("round trip: %+v, %v", again, err)
	}
	// IPv6.
	v6 := `{"version":1,"pod_uid":"u","ip_address":"fd00::5/64","mac_address":"02:00:00:00:00:05","gateway_ip":"fd00::1","vlan_id":7}`
	if cfg, err := Parse(v6, ""); err != nil || cfg.IP.String() != "fd00::5/64" || cfg.MTU != 0 {
		t.Fatalf("v6: %+v %v", cfg, err)
	}
}

func TestParseDualStack(t *testing.T) {
	v := `{"version":1,"pod_uid":"u","ip_address":"10.0.1.5/24","mac_address":"02:00:00:00:00:05","gateway_ip":"10.0.1.1",` +
		`"ipv6_address":"fd00:10:0:1::5/64","ipv6_gateway_ip":"fd00:10:0:1::1","vlan_id":7}`
	cfg, err := Parse(v, "u")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.IP.String() != "10.0.1.5/24" || cfg.Gateway.String() != "10.0.1.1" ||
		cfg.IP6.String() != "fd00:10:0:1::5/64" || cfg.Gateway6.String() != "fd00:10:0:1::1" {
		t.Fatalf("got ip %s gw %s ip6 %s gw6 %s", cfg.IP, cfg.Gateway, cfg.IP6, cfg.Gateway6)
	}
	again, err := Parse(Marshal(cfg), "u")
	if err != nil || again.IP6.String() != cfg.IP6.String() || !again.Gateway6.Equal(cfg.Gateway6) {
		t.Fatalf("round trip of %s: %+v, %v", Marshal(cfg), again, err)
	}
	// The IPv6 gateway is optional, like gateway_ip.
	v = `{"version":1,"pod_uid":"u","ip_address":"10.0.1.5/24","mac_address":"02:00:00:00:00:05","ipv6_address":"fd00::5/127","vlan_id":7}`
	if cfg, err := Parse(v, "u"); err != nil || cfg.IP6.String() != "fd00::5/127" || cfg.Gateway6 != nil {
		t.Fatalf("without ipv6_gateway_ip: %+v, %v", cfg, err)
	}
	// Single-stack configs have neither, and Marshal writes neither.
	cfg.IP6, cfg.Gateway6 = nil, nil
	if m := Marshal(cfg); strings.Contains(m, "ipv6") {
		t.Fatalf("single-stack Marshal wrote %s", m)
	}
	if single, err := Parse(Marshal(cfg), "u"); err != nil || single.IP6 != nil || single.Gateway6 != nil {
		t.Fatalf("single stack: %+v, %v", single, err)
	}
}

func TestParseInvalid(t *testing.T) {
	base := map[string]string{
		"version": `1`, "pod_uid": `"` + uid + `"`, "ip_address": `"10.0.1.5/24"`,
		"mac_address": `"02:50:56:00:00:05"`, "gateway_ip": `"10.0.1.1"`, "vlan_id": `101`,
	}
	build := func(over map[string]string) string {
		var parts []string
		for k, v := range base {
			if o, ok := over[k]; ok {
				v = o
			}
			if v == "<omit>" {
				continue
			}
			parts = append(parts, `"`+k+`":`+v)
		}
		for k, v := range over {
			if _, ok := base[k]; !ok {
				parts = append(parts, `"`+k+`":`+v)
			}
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
	cases := []struct {
		name  string
		over  map[string]string
		field string // "" = not a FieldError
	}{
		{"missing version", map[string]string{"version": "<omit>"}, "version"},
		{"version 2", map[string]string{"version": "2"}, "version"},
		{"missing uid", map[string]string{"pod_uid": "<omit>"}, "pod_uid"},
		{"bad cidr", map[string]string{"ip_address": `"10.0.1.5"`}, "ip_address"},
		{"network address", map[string]string{"ip_address": `"10.0.1.0/24"`}, "ip_address"},
		{"bad mac", map[string]string{"mac_address": `"zz:50:56:00:00:05"`}, "mac_address"},
		{"multicast mac", map[string]string{"mac_address": `"01:00:5e:00:00:05"`}, "mac_address"},
		{"long mac", map[string]string{"mac_address": `"02:00:00:00:00:00:00:05"`}, "mac_address"},
		{"bad gateway", map[string]string{"gateway_ip": `"10.0.1"`}, "gateway_ip"},
		{"gateway outside", map[string]string{"gateway_ip": `"10.0.2.1"`}, "gateway_ip"},
		{"gateway family", map[string]string{"gateway_ip": `"fd00::1"`}, "gateway_ip"},
		{"gateway is ip", map[string]string{"gateway_ip": `"10.0.1.5"`}, "gateway_ip"},
		{"vlan 0", map[string]string{"vlan_id": `0`}, "vlan_id"},
		{"vlan 4095", map[string]string{"vlan_id": `4095`}, "vlan_id"},
		{"vlan missing", map[string]string{"vlan_id": "<omit>"}, "vlan_id"},
		{"vlan string", map[string]string{"vlan_id": `"101"`}, "vlan_id"},
		{"mtu small", map[string]string{"mtu": `100`}, "mtu"},
		{"mtu big", map[string]string{"mtu": `65000`}, "mtu"},
		// Dual stack: ipv6_address and ipv6_gateway_ip next to an IPv4 ip_address.
		{"ipv6 not cidr", map[string]string{"ipv6_address": `"fd00::5"`}, "ipv6_address"},
		{"ipv6 garbage", map[string]string{"ipv6_address": `"nope/64"`}, "ipv6_address"},
		{"ipv6 is ipv4", map[string]string{"ipv6_address": `"10.0.2.5/24"`}, "ipv6_address"},
		{"ipv6 is v4-mapped", map[string]string{"ipv6_address": `"::ffff:10.0.2.5/120"`}, "ipv6_address"},
		{"ipv6 network address", map[string]string{"ipv6_address": `"fd00::/64"`}, "ipv6_address"},
		{"ipv6 link-local", map[string]string{"ipv6_address": `"fe80::5/64"`}, "ipv6_address"},
		{"ipv6 multicast", map[string]string{"ipv6_address": `"ff02::5/64"`}, "ipv6_address"},
		{"ipv6 number", map[string]string{"ipv6_address": `6`}, "ipv6_address"},
		{"ipv6 with ipv6 ip_address", map[string]string{"ip_address": `"fd00:1::5/64"`, "gateway_ip": `"fd00:1::1"`,
			"ipv6_address": `"fd00:2::5/64"`}, "ipv6_address"},
		{"ipv6 gateway alone", map[string]string{"ipv6_gateway_ip": `"fd00::1"`}, "ipv6_gateway_ip"},
		{"ipv6 gateway bad", map[string]string{"ipv6_address": `"fd00::5/64"`, "ipv6_gateway_ip": `"fd00::1::1"`}, "ipv6_gateway_ip"},
		{"ipv6 gateway family", map[string]string{"ipv6_address": `"fd00::5/64"`, "ipv6_gateway_ip": `"10.0.1.1"`}, "ipv6_gateway_ip"},
		{"ipv6 gateway outside", map[string]string{"ipv6_address": `"fd00::5/64"`, "ipv6_gateway_ip": `"fd01::1"`}, "ipv6_gateway_ip"},
		{"ipv6 gateway is ip", map[string]string{"ipv6_address": `"fd00::5/64"`, "ipv6_gateway_ip": `"fd00::5"`}, "ipv6_gateway_ip"},
		{"ipv6 mtu small", map[string]string{"ipv6_address": `"fd00::5/64"`, "mtu": `1000`}, "mtu"},
		{"v6-only mtu small", map[string]string{"ip_address": `"fd00:1::5/64"`, "gateway_ip": `"fd00:1::1"`, "mtu": `1000`}, "mtu"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := build(tc.over)
			_, err := Parse(v, uid)
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Parse(%s) = %v, want a FieldError for %s", v, err, tc.field)
			}
			if fe.Field != tc.field || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %q names %q, want %q", err, fe.Field, tc.field)
			}
		})
	}
	if _, err := Parse(`{not json`, uid); err == nil || !strings.Contains(err.Error(), AnnotationKey) {
		t.Fatalf("malformed JSON: %v", err)
	}
	if _, err := Parse(build(nil), "another-uid"); !errors.Is(err, ErrUIDMismatch) {
		t.Fatalf("uid mismatch: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(`{"version":1,"pod_uid":"u","ip_address":"10.0.1.5/24","mac_address":"02:50:56:00:00:05","gateway_ip":"10.0.1.1","vlan_id":101}`, "u")
	f.Add(`{"version":1,"pod_uid":"u","ip_address":"fd00::5/64","mac_address":"02:00:00:00:00:05","vlan_id":4094,"mtu":9000}`, "")
	f.Add(`{"version":1,"pod_uid":"u","ip_address":"10.0.1.5/24","mac_address":"02:50:56:00:00:05","ipv6_address":"fd00::5/64","ipv6_gateway_ip":"fd00::1","vlan_id":1}`, "u")
	f.Add(`{"version":1}`, "x")
	f.Add(`[]`, "")
	f.Fuzz(func(t *testing.T, value, uid string) {
		cfg, err := Parse(value, uid)
		if err != nil {
			return
		}
		// Whatever parses must be usable as is.
		if cfg.IP == nil || len(cfg.MAC) != 6 || cfg.VLAN < 1 || cfg.VLAN > 4094 || (uid != "" && cfg.PodUID != uid) {
			t.Fatalf("accepted an unusable config %+v from %q", cfg, value)
		}
		if cfg.Gateway != nil && !cfg.IP.Contains(cfg.Gateway) {
			t.Fatalf("gateway %s outside %s", cfg.Gateway, cfg.IP)
		}
		if cfg.IP6 != nil && (cfg.IP.IP.To4() == nil || cfg.IP6.IP.To4() != nil) {
			t.Fatalf("dual stack with ip %s and ip6 %s", cfg.IP, cfg.IP6)
		}
		if cfg.Gateway6 != nil && (cfg.IP6 == nil || !cfg.IP6.Contains(cfg.Gateway6) || cfg.IP6.IP.Equal(cfg.Gateway6)) {
			t.Fatalf("gateway6 %s with ip6 %s", cfg.Gateway6, cfg.IP6)
		}
		if _, err := Parse(Marshal(cfg), cfg.PodUID); err != nil {
			t.Fatalf("Marshal output does not parse: %v", err)
		}
	})
}
