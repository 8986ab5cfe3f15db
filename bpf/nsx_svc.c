// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Service NAT for nsx-ujo's eBPF dataplane. Attached with TCX to each
// pod's interface inside the pod's network namespace, and to the node's
// interface on the integration bridge:
//   egress  (packets the pod or the node sends): forward DNAT of service
//           frontends, new connections pick a backend, established ones
//           follow conntrack; services without endpoints answer with a TCP
//           RST / ICMP port unreachable (or drop, under a Local traffic
//           policy); a pod reaching itself is SNATed to the hairpin address
//           and turned around into its own ingress; a pod's replies on a
//           connection an external frontend sent it get the frontend's
//           address back.
//   ingress (packets to the pod or the node): reverse NAT of replies. On the
//           node's interface (nsx_node_ingress) also the external frontends (NodePort,
//           external and load-balancer IPs) for clients outside the node:
//           DNAT, and SNAT to the node under externalTrafficPolicy Cluster,
//           then back out to the router that sent the packet; their
//           replies the same way.
// Packets that are not ours return TCX_NEXT so other TC programs keep
// working (under TCX, TCX_PASS would end the chain). IPv4 only.
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

// TCX return codes (linux/bpf.h >= 6.6; the build host's headers may be
// older, the running kernel is not).
#define TCX_NEXT (-1)
#define TCX_PASS 0

#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3

struct icmphdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 unused;
};

enum {
	SVC_F_AFFINITY = 1,  // ClientIP session affinity
	SVC_F_DROP = 2,      // no endpoints: drop (else reject)
	SVC_F_EXTERNAL = 4,  // served to clients outside the node too (node ingress)
	SVC_F_RANGES = 8,    // only sources in nsx_ranges (loadBalancerSourceRanges)
};

enum { CT_FWD = 0, CT_REV = 1, CT_HAIRPIN_REPLY = 2 };
enum {
	CT_F_HAIRPIN = 1,
	CT_F_EXTERNAL = 2,  // opened from outside the node through an external frontend
	CT_F_SNAT = 4,      // and source-NATed to the node (client_* hold the client, or in CT_FWD the SNAT source)
};

enum {
	STAT_CT_FULL = 0,   // a conntrack insert failed
	STAT_AFF_FULL = 1,  // an affinity insert failed
	STAT_REJECTED = 2,
	STAT_DROPPED = 3,
	STAT_NATED = 4,     // new connections NATed
	STAT_SNAT_FULL = 5, // no free SNAT source port
	STAT_MAX = 8,
};

// The programs compute with these (the _n types): addresses and ports as
// network-order integers, as they sit in the packet. The maps are declared
// with the views further down.
struct svc_key_n {
	__u32 vip;   // network order
	__u16 port;  // network order
	__u8 proto;
	__u8 pad;
};

struct svc_val_n {
	__u32 id;
	__u16 count;         // usable backends in slots 0..count-1
	__u16 flags;
	__u32 affinity_sec;  // ClientIP affinity inactivity timeout
	__u32 snat_ip;       // network order; 0: external clients keep their source
};

struct be_key {
	__u32 svc_id;
	__u32 slot;
};

struct be_val_n {
	__u32 ip;    // network order
	__u16 port;  // network order
	__u16 pad;
};

struct ct_key_n {
	__u32 src;
	__u32 dst;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

struct ct_val_n {
	__u32 ip;    // CT_FWD: backend; CT_REV, CT_HAIRPIN_REPLY: the VIP
	__u16 port;
	__u16 flags;
	__u32 svc_id;
	__u32 client_ip;    // CT_F_SNAT: CT_REV the client, CT_FWD the SNAT source
	__u16 client_port;
	__u16 pad;
};

// loadBalancerSourceRanges: an LPM key of svc_id (32 bits) then the source.
struct range_key_n {
	__u32 prefixlen;
	__u32 svc_id;
	__u32 ip;
};

struct aff_key_n {
	__u32 client;
	__u32 svc_id;
};

// A usable backend of an affinity service: "is the affined backend still
// one" is one lookup, whatever the number of backends.
struct member_key_n {
	__u32 svc_id;
	__u32 ip;    // network order
	__u16 port;  // network order
	__u16 pad;
};

struct aff_val_n {
	__u32 ip;
	__u16 port;
	__u16 pad;
	__u64 last_ns;
};

// What bpftool shows, and the Go side's types. The programs compute on
// network-order integers (the _n structs above); the maps are declared
// with these views of the same bytes,
// so `bpftool map dump` prints an address as its 4 bytes ([10, 96, 0, 10]),
// a port as its 2 bytes in network order ([31, 144] is 8080) and a
// conntrack direction by name. The assertions keep the two in step: a map
// pinned by an older version, laid out the same, is adopted as it is.
enum ct_dir : __u8 { DIR_FWD = CT_FWD, DIR_REV = CT_REV, DIR_HAIRPIN_REPLY = CT_HAIRPIN_REPLY };

struct svc_key {
	__u8 vip[4];
	__u8 port[2];
	__u8 proto;
	__u8 pad;
};

struct svc_val {
	__u32 id;
	__u16 count;
	__u16 flags;  // 1 affinity, 2 drop when empty, 4 external, 8 source ranges
	__u32 affinity_sec;
	__u8 snat_ip[4];
};

struct be_val {
	__u8 ip[4];
	__u8 port[2];
	__u16 pad;
};

struct ct_key {
	__u8 src[4];
	__u8 dst[4];
	__u8 sport[2];
	__u8 dport[2];
	__u8 proto;
	enum ct_dir dir;
	__u16 pad;
};

struct ct_val {
	__u8 ip[4];
	__u8 port[2];
	__u16 flags;  // 1 hairpin, 2 external, 4 SNAT
	__u32 svc_id;
	__u8 client_ip[4];
	__u8 client_port[2];
	__u16 pad;
};

struct range_key {
	__u32 prefixlen;
	__u32 svc_id;
	__u8 ip[4];
};

struct aff_key {
	__u8 client[4];
	__u32 svc_id;
};

struct member_key {
	__u32 svc_id;
	__u8 ip[4];
	__u8 port[2];
	__u16 pad;
};

struct aff_val {
	__u8 ip[4];
	__u8 port[2];
	__u16 pad;
	__u64 last_ns;
};

#define SAME(a, b, f) _Static_assert(offsetof(struct a, f) == offsetof(struct b, f), #a "." #f " moved")
#define SAME_SIZE(a, b) _Static_assert(sizeof(struct a) == sizeof(struct b), #a " resized")
SAME_SIZE(svc_key_n, svc_key); SAME(svc_key_n, svc_key, port); SAME(svc_key_n, svc_key, proto);
SAME_SIZE(svc_val_n, svc_val); SAME(svc_val_n, svc_val, count); SAME(svc_val_n, svc_val, flags);
SAME(svc_val_n, svc_val, affinity_sec); SAME(svc_val_n, svc_val, snat_ip);
SAME_SIZE(be_val_n, be_val); SAME(be_val_n, be_val, port);
SAME_SIZE(ct_key_n, ct_key); SAME(ct_key_n, ct_key, dst); SAME(ct_key_n, ct_key, sport);
SAME(ct_key_n, ct_key, dport); SAME(ct_key_n, ct_key, proto); SAME(ct_key_n, ct_key, dir);
SAME_SIZE(ct_val_n, ct_val); SAME(ct_val_n, ct_val, port); SAME(ct_val_n, ct_val, flags);
SAME(ct_val_n, ct_val, svc_id); SAME(ct_val_n, ct_val, client_ip); SAME(ct_val_n, ct_val, client_port);
SAME_SIZE(range_key_n, range_key); SAME(range_key_n, range_key, svc_id); SAME(range_key_n, range_key, ip);
SAME_SIZE(aff_key_n, aff_key); SAME(aff_key_n, aff_key, svc_id);
SAME_SIZE(member_key_n, member_key); SAME(member_key_n, member_key, ip); SAME(member_key_n, member_key, port);
SAME_SIZE(aff_val_n, aff_val); SAME(aff_val_n, aff_val, port); SAME(aff_val_n, aff_val, last_ns);

// Sizes are set by the loader from ncp.ini before the maps are created.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsx_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct be_key);
	__type(value, struct be_val);
	__uint(max_entries, 1048576);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsx_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
	__uint(max_entries, 524288);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsx_conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct aff_key);
	__type(value, struct aff_val);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsx_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct member_key);
	__type(value, __u8);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsx_members SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct range_key);
	__type(value, __u8);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsx_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsx_stats SEC(".maps");

// New connections of each frontend (NATed, rejected or dropped), by
// service id, for nsxctl. The backend creates (and zeroes) a frontend's
// entry when it installs it: the program only counts, it never inserts.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsx_svc_conns SEC(".maps");

// Node-wide state the proxy sets; one slot.
enum {
	// Taking over from the OVS dataplane: a TCP packet that is not a SYN
	// and has no conntrack entry belongs to a connection OVS NATed and
	// passes on to it, instead of being balanced afresh.
	STATE_F_HANDOVER = 1,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsx_state SEC(".maps");

static __always_inline int handing_over(void)
{
	__u32 k = 0;
	__u32 *v = bpf_map_lookup_elem(&nsx_state, &k);
	return v && (*v & STATE_F_HANDOVER);
}

// The source a pod sees when it reaches itself through a service (network
// order); the loader sets it (LoadOptions.HairpinIP, default
// 169.254.169.253 as the OVS dataplane's).
volatile const __u32 hairpin_ip = bpf_htonl(0xa9fea9fd);

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&nsx_stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline void count_svc(__u32 id)
{
	__u64 *v = bpf_map_lookup_elem(&nsx_svc_conns, &id);
	if (v)
		*v += 1;
}

#define ETH_OFF 0
#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (IP_OFF + offsetof(struct iphdr, check))
#define IP_SRC_OFF (IP_OFF + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (IP_OFF + offsetof(struct iphdr, daddr))

struct pkt {
	struct iphdr ip;
	__u32 l4_off;
	__u16 sport, dport;  // network order
	__u32 csum_off;      // L4 checksum offset
	__u8 tcp_flags;
};

// parse reads the IPv4 and L4 headers; 0 when the packet is one we handle.
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	if (bpf_skb_load_bytes(skb, IP_OFF, &p->ip, sizeof(p->ip)) < 0)
		return -1;
	if (p->ip.version != 4 || p->ip.ihl < 5)
		return -1;
	if (p->ip.frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return -1;
	p->l4_off = IP_OFF + p->ip.ihl * 4;
	__u16 ports[2];
	switch (p->ip.protocol) {
	case IPPROTO_TCP: {
		__u8 flags;
		if (bpf_skb_load_bytes(skb, p->l4_off + 13, &flags, 1) < 0)
			return -1;
		p->tcp_flags = flags;
		p->csum_off = p->l4_off + offsetof(struct tcphdr, check);
		break;
	}
	case IPPROTO_UDP:
		p->csum_off = p->l4_off + offsetof(struct udphdr, check);
		break;
	case IPPROTO_SCTP:
		p->csum_off = 0;  // CRC32c covers no IP fields: ports only, no csum fixup here
		break;
	default:
		return -1;
	}
	if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)) < 0)
		return -1;
	p->sport = ports[0];
	p->dport = ports[1];
	return 0;
}

static __always_inline __u64 l4_flags(struct pkt *p)
{
	// A UDP checksum of 0 means "none": keep it so (BPF_F_MARK_MANGLED_0).
	return p->ip.protocol == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

// set_addr rewrites the source (is_src) or destination address and port,
// with incremental L3 and L4 (pseudo-header) checksum updates that are also
// right for CHECKSUM_PARTIAL packets.
static __always_inline int set_addr(struct __sk_buff *skb, struct pkt *p, int is_src, __u32 ip, __u16 port)
{
	__u32 old_ip = is_src ? p->ip.saddr : p->ip.daddr;
	__u16 old_port = is_src ? p->sport : p->dport;
	__u32 ip_off = is_src ? IP_SRC_OFF : IP_DST_OFF;
	__u32 port_off = p->l4_off + (is_src ? 0 : 2);

	if (old_ip != ip) {
		if (p->csum_off && bpf_l4_csum_replace(skb, p->csum_off, old_ip, ip, BPF_F_PSEUDO_HDR | sizeof(ip) | l4_flags(p)) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_ip, ip, sizeof(ip)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, ip_off, &ip, sizeof(ip), 0) < 0)
			return -1;
	}
	if (old_port != port) {
		if (p->csum_off && bpf_l4_csum_replace(skb, p->csum_off, old_port, port, sizeof(port) | l4_flags(p)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &port, sizeof(port), 0) < 0)
			return -1;
	}
	if (is_src) {
		p->ip.saddr = ip;
		p->sport = port;
	} else {
		p->ip.daddr = ip;
		p->dport = port;
	}
	return 0;
}

// turn_around swaps the Ethernet addresses and sends the packet back where
// it came from: at a pod's egress into the interface's own ingress (back to
// the pod, as if from its gateway); at the node's ingress out of its egress
// (back into the bridge, to the router that sent it).
static __always_inline int turn_around(struct __sk_buff *skb, int to_ingress)
{
	__u8 macs[12], swapped[12];
	if (bpf_skb_load_bytes(skb, ETH_OFF, macs, sizeof(macs)) < 0)
		return TC_ACT_SHOT;
	__builtin_memcpy(swapped, macs + 6, 6);
	__builtin_memcpy(swapped + 6, macs, 6);
	if (bpf_skb_store_bytes(skb, ETH_OFF, swapped, sizeof(swapped), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, to_ingress ? BPF_F_INGRESS : 0);
}

static __always_inline __u16 fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

// reject_tcp turns the SYN (or any segment) into the RST that answers it,
// from the VIP, and sends it back where it came from (see turn_around).
static __always_inline int reject_tcp(struct __sk_buff *skb, struct pkt *p, int to_ingress)
{
	struct tcphdr th;
	if (bpf_skb_load_bytes(skb, p->l4_off, &th, sizeof(th)) < 0)
		return TC_ACT_SHOT;
	if (th.rst)
		return TC_ACT_SHOT;
	__u32 payload = bpf_ntohs(p->ip.tot_len) - p->ip.ihl * 4 - th.doff * 4;
	struct tcphdr rst = {};
	rst.source = th.dest;
	rst.dest = th.source;
	rst.doff = 5;
	rst.rst = 1;
	if (th.ack) {
		rst.seq = th.ack_seq;
	} else {
		rst.ack = 1;
		rst.ack_seq = bpf_htonl(bpf_ntohl(th.seq) + payload + th.syn + th.fin);
	}
	// New IPv4 header: 20 bytes, addresses swapped.
	struct iphdr ip = {};
	ip.version = 4;
	ip.ihl = 5;
	ip.ttl = 64;
	ip.protocol = IPPROTO_TCP;
	ip.tot_len = bpf_htons(sizeof(ip) + sizeof(rst));
	ip.saddr = p->ip.daddr;
	ip.daddr = p->ip.saddr;
	ip.check = fold(bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0));
	// TCP checksum over the pseudo-header and the header.
	__u32 pseudo[3] = {ip.saddr, ip.daddr, bpf_htonl((IPPROTO_TCP << 16) | sizeof(rst))};
	__s64 s = bpf_csum_diff(0, 0, pseudo, sizeof(pseudo), 0);
	s = bpf_csum_diff(0, 0, (__be32 *)&rst, sizeof(rst), s);
	rst.check = fold(s);
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(ip) + sizeof(rst), 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, IP_OFF, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_OFF + sizeof(ip), &rst, sizeof(rst), 0) < 0)
		return TC_ACT_SHOT;
	count(STAT_REJECTED);
	return turn_around(skb, to_ingress);
}

// reject_icmp answers with an ICMP port unreachable quoting the packet's
// IP header and 8 bytes of its payload.
static __always_inline int reject_icmp(struct __sk_buff *skb, struct pkt *p, int to_ingress)
{
	__u32 hl = p->ip.ihl * 4;
	if (hl != sizeof(struct iphdr))
		return TC_ACT_SHOT;  // options: not worth quoting, drop
	__u8 quote[28];
	if (bpf_skb_load_bytes(skb, IP_OFF, quote, sizeof(quote)) < 0)
		return TC_ACT_SHOT;
	struct iphdr ip = {};
	ip.version = 4;
	ip.ihl = 5;
	ip.ttl = 64;
	ip.protocol = IPPROTO_ICMP;
	ip.tot_len = bpf_htons(sizeof(ip) + 8 + sizeof(quote));
	ip.saddr = p->ip.daddr;
	ip.daddr = p->ip.saddr;
	ip.check = fold(bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0));
	struct icmphdr ic = {};
	ic.type = ICMP_DEST_UNREACH;
	ic.code = ICMP_PORT_UNREACH;
	__s64 s = bpf_csum_diff(0, 0, (__be32 *)&ic, sizeof(ic), 0);
	s = bpf_csum_diff(0, 0, (__be32 *)quote, sizeof(quote), s);
	ic.checksum = fold(s);
	__u32 want = ETH_HLEN + sizeof(ip) + sizeof(ic) + sizeof(quote);
	if (skb->len < want) {
		if (bpf_skb_change_tail(skb, want, 0) < 0)
			return TC_ACT_SHOT;
	} else if (skb->len > want) {
		if (bpf_skb_change_tail(skb, want, 0) < 0)
			return TC_ACT_SHOT;
	}
	if (bpf_skb_store_bytes(skb, IP_OFF, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_OFF + sizeof(ip), &ic, sizeof(ic), 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_OFF + sizeof(ip) + sizeof(ic), quote, sizeof(quote), 0) < 0)
		return TC_ACT_SHOT;
	count(STAT_REJECTED);
	return turn_around(skb, to_ingress);
}

// pick chooses the backend of a new connection (affinity first).
static __always_inline int pick(struct pkt *p, struct svc_val_n *svc, struct be_val_n *out)
{
	struct aff_key_n ak = {.client = p->ip.saddr, .svc_id = svc->id};
	__u64 now = bpf_ktime_get_ns();
	if (svc->flags & SVC_F_AFFINITY) {
		struct aff_val_n *av = bpf_map_lookup_elem(&nsx_affinity, &ak);
		if (av && now - av->last_ns <= (__u64)svc->affinity_sec * 1000000000ULL) {
			// Still a usable backend of the service?
			struct member_key_n mk = {.svc_id = svc->id, .ip = av->ip, .port = av->port};
			if (bpf_map_lookup_elem(&nsx_members, &mk)) {
				av->last_ns = now;
				out->ip = av->ip;
				out->port = av->port;
				out->pad = 0;
				return 0;
			}
		}
	}
	struct be_key bk = {.svc_id = svc->id, .slot = bpf_get_prandom_u32() % svc->count};
	struct be_val_n *b = bpf_map_lookup_elem(&nsx_backends, &bk);
	if (!b)
		return -1;
	*out = *b;
	if (svc->flags & SVC_F_AFFINITY) {
		struct aff_val_n av = {.ip = b->ip, .port = b->port, .last_ns = now};
		if (bpf_map_update_elem(&nsx_affinity, &ak, &av, BPF_ANY) < 0)
			count(STAT_AFF_FULL);
	}
	return 0;
}

// in_ranges says whether the frontend admits the source
// (loadBalancerSourceRanges; every source when it has none).
static __always_inline int in_ranges(struct svc_val_n *svc, __u32 src)
{
	if (!(svc->flags & SVC_F_RANGES))
		return 1;
	struct range_key_n k = {.prefixlen = 64, .svc_id = svc->id, .ip = src};
	return bpf_map_lookup_elem(&nsx_ranges, &k) != NULL;
}

// no_endpoints answers a new connection to a frontend without endpoints.
static __always_inline int no_endpoints(struct __sk_buff *skb, struct pkt *p, struct svc_val_n *svc, int to_ingress)
{
	count_svc(svc->id);
	if (svc->flags & SVC_F_DROP) {
		count(STAT_DROPPED);
		return TC_ACT_SHOT;
	}
	if (p->ip.protocol == IPPROTO_TCP)
		return reject_tcp(skb, p, to_ingress);
	return reject_icmp(skb, p, to_ingress);
}

// reply_external gives a reply on a connection that an external frontend
// opened from outside the node the frontend's address as its source, and
// (SNATed connections) the client as its destination.
static __always_inline int reply_external(struct __sk_buff *skb, struct pkt *p, struct ct_val_n *rv)
{
	__u32 vip = rv->ip, client = rv->client_ip;
	__u16 vport = rv->port, cport = rv->client_port;
	if ((rv->flags & CT_F_SNAT) && set_addr(skb, p, 0, client, cport) < 0)
		return -1;
	return set_addr(skb, p, 1, vip, vport);
}

static __always_inline int is_syn(struct pkt *p)
{
	return p->ip.protocol == IPPROTO_TCP && (p->tcp_flags & 0x12) == 0x02;
}

SEC("tcx/egress")
int nsx_egress(struct __sk_buff *skb)
{
	// Sent back out by nsx_ingress on the node's interface: translated.
	if (skb->ingress_ifindex == skb->ifindex)
		return TCX_NEXT;
	struct pkt p = {};
	if (parse(skb, &p) < 0)
		return TCX_NEXT;

	// A hairpinned connection's server answering the hairpin address.
	if (p.ip.daddr == hairpin_ip) {
		struct ct_key_n hk = {.src = p.ip.saddr, .dst = p.ip.daddr, .sport = p.sport, .dport = p.dport,
				    .proto = p.ip.protocol, .dir = CT_HAIRPIN_REPLY};
		struct ct_val_n *hv = bpf_map_lookup_elem(&nsx_conntrack, &hk);
		if (!hv)
			return TCX_NEXT;
		__u32 vip = hv->ip;
		__u16 vport = hv->port;
		__u32 self = p.ip.saddr;
		if (set_addr(skb, &p, 0, self, p.dport) < 0 || set_addr(skb, &p, 1, vip, vport) < 0)
			return TC_ACT_SHOT;
		return turn_around(skb, 1);
	}

	// A SYN opens a new connection: it never follows the conntrack entry
	// of an earlier connection that happened to use the same ports (the
	// LRU keeps entries of closed connections), it picks afresh.
	int syn = is_syn(&p);
	struct ct_key_n fk = {.src = p.ip.saddr, .dst = p.ip.daddr, .sport = p.sport, .dport = p.dport,
			    .proto = p.ip.protocol, .dir = CT_FWD};
	struct ct_val_n *cv = syn ? NULL : bpf_map_lookup_elem(&nsx_conntrack, &fk);
	struct be_val_n be;
	__u16 ctflags = 0;
	__u32 svc_id = 0;
	if (cv) {
		be.ip = cv->ip;
		be.port = cv->port;
		ctflags = cv->flags;
		svc_id = cv->svc_id;
	} else {
		struct svc_key_n sk = {.vip = p.ip.daddr, .port = p.dport, .proto = p.ip.protocol};
		struct svc_val_n *svc = bpf_map_lookup_elem(&nsx_services, &sk);
		if (!svc) {
			struct ct_key_n rk = {.src = p.ip.saddr, .dst = p.ip.daddr, .sport = p.sport, .dport = p.dport,
					    .proto = p.ip.protocol, .dir = CT_REV};
			if (syn) {
				// A direct connection reusing the ports of a closed
				// service connection to the same backend: its replies
				// must not be un-NATed by the old reverse entry.
				struct ct_key_n stale = {.src = p.ip.daddr, .dst = p.ip.saddr, .sport = p.dport, .dport = p.sport,
						       .proto = IPPROTO_TCP, .dir = CT_REV};
				bpf_map_delete_elem(&nsx_conntrack, &stale);
				// Nor may its later packets follow the forward entry of
				// a closed connection on the same ports (the frontend
				// is not ours any more: the node is switching to OVS).
				bpf_map_delete_elem(&nsx_conntrack, &fk);
				return TCX_NEXT;
			}
			// This pod answering a client that an external frontend
			// sent it from outside the node.
			struct ct_val_n *rv = bpf_map_lookup_elem(&nsx_conntrack, &rk);
			if (!rv || !(rv->flags & CT_F_EXTERNAL))
				return TCX_NEXT;
			if (reply_external(skb, &p, rv) < 0)
				return TC_ACT_SHOT;
			return TCX_PASS;
		}
		if (p.ip.protocol == IPPROTO_TCP && !syn && handing_over())
			return TCX_NEXT;
		if (!in_ranges(svc, p.ip.saddr)) {
			count(STAT_DROPPED);
			count_svc(svc->id);
			return TC_ACT_SHOT;
		}
		if (svc->count == 0)
			return no_endpoints(skb, &p, svc, 1);
		if (pick(&p, svc, &be) < 0)
			return TC_ACT_SHOT;
		svc_id = svc->id;
		if (be.ip == p.ip.saddr)
			ctflags = CT_F_HAIRPIN;
		struct ct_val_n fv = {.ip = be.ip, .port = be.port, .flags = ctflags, .svc_id = svc_id};
		// Replies: from the backend (or, hairpinned, from the pod to the
		// hairpin address) back to the client.
		struct ct_key_n rk = {.src = be.ip, .dst = p.ip.saddr, .sport = be.port, .dport = p.sport,
				    .proto = p.ip.protocol, .dir = CT_REV};
		if (ctflags & CT_F_HAIRPIN) {
			rk.dst = hairpin_ip;
			rk.dir = CT_HAIRPIN_REPLY;
		}
		struct ct_val_n rv = {.ip = p.ip.daddr, .port = p.dport, .svc_id = svc_id};
		if (bpf_map_update_elem(&nsx_conntrack, &rk, &rv, BPF_ANY) < 0 ||
		    bpf_map_update_elem(&nsx_conntrack, &fk, &fv, BPF_ANY) < 0) {
			count(STAT_CT_FULL);
			return TC_ACT_SHOT;
		}
		count(STAT_NATED);
		count_svc(svc_id);
	}
	if (set_addr(skb, &p, 0, be.ip, be.port) < 0)
		return TC_ACT_SHOT;
	if (ctflags & CT_F_HAIRPIN) {
		if (set_addr(skb, &p, 1, hairpin_ip, p.sport) < 0)
			return TC_ACT_SHOT;
		return turn_around(skb, 1);
	}
	return TCX_PASS;
}

// SNAT source ports when the client's own is taken: above the start of
// Linux's ephemeral range and the default NodePort range.
#define SNAT_PORT_MIN 32768
#define SNAT_TRIES 8

// external_in serves a packet from outside the node to an external
// frontend, at the node's ingress: DNAT (and SNAT), then back out to the
// bridge and the router that sent it, which routes it to the backend.
static __always_inline int external_in(struct __sk_buff *skb, struct pkt *p)
{
	int syn = is_syn(p);
	struct ct_key_n fk = {.src = p->ip.saddr, .dst = p->ip.daddr, .sport = p->sport, .dport = p->dport,
			    .proto = p->ip.protocol, .dir = CT_FWD};
	struct ct_val_n *cv = syn ? NULL : bpf_map_lookup_elem(&nsx_conntrack, &fk);
	__u32 be_ip, snat_ip = 0;
	__u16 be_port, snat_port = 0, flags;
	if (cv) {
		if (!(cv->flags & CT_F_EXTERNAL))
			return TCX_NEXT;
		be_ip = cv->ip;
		be_port = cv->port;
		flags = cv->flags;
		snat_ip = cv->client_ip;
		snat_port = cv->client_port;
	} else {
		struct svc_key_n sk = {.vip = p->ip.daddr, .port = p->dport, .proto = p->ip.protocol};
		struct svc_val_n *svc = bpf_map_lookup_elem(&nsx_services, &sk);
		if (!svc || !(svc->flags & SVC_F_EXTERNAL))
			return TCX_NEXT;
		if (!in_ranges(svc, p->ip.saddr)) {
			count(STAT_DROPPED);
			count_svc(svc->id);
			return TC_ACT_SHOT;
		}
		if (svc->count == 0)
			return no_endpoints(skb, p, svc, 0);
		struct be_val_n be;
		if (pick(p, svc, &be) < 0)
			return TC_ACT_SHOT;
		be_ip = be.ip;
		be_port = be.port;
		flags = CT_F_EXTERNAL;
		struct ct_key_n rk = {.src = be.ip, .dst = p->ip.saddr, .sport = be.port, .dport = p->sport,
				    .proto = p->ip.protocol, .dir = CT_REV};
		if (svc->snat_ip) {
			// The client's port when free at the SNAT address, else a
			// random one.
			flags |= CT_F_SNAT;
			snat_ip = svc->snat_ip;
			rk.dst = snat_ip;
			__u16 port = p->sport;
			int found = 0;
			for (int i = 0; i < SNAT_TRIES; i++) {
				rk.dport = port;
				struct ct_val_n *o = bpf_map_lookup_elem(&nsx_conntrack, &rk);
				if (!o || ((o->flags & CT_F_SNAT) && o->client_ip == p->ip.saddr && o->client_port == p->sport)) {
					found = 1;
					break;
				}
				// SCTP keeps its port: a rewritten one would need the
				// CRC32c recomputed (dataplane.Unservable).
				if (p->ip.protocol == IPPROTO_SCTP)
					break;
				port = bpf_htons(SNAT_PORT_MIN + (bpf_get_prandom_u32() & 0x7fff));
			}
			if (!found) {
				count(STAT_SNAT_FULL);
				return TC_ACT_SHOT;
			}
			snat_port = port;
		}
		struct ct_val_n fv = {.ip = be.ip, .port = be.port, .flags = flags, .svc_id = svc->id,
				    .client_ip = snat_ip, .client_port = snat_port};
		struct ct_val_n rv = {.ip = p->ip.daddr, .port = p->dport, .flags = flags, .svc_id = svc->id,
				    .client_ip = p->ip.saddr, .client_port = p->sport};
		if (bpf_map_update_elem(&nsx_conntrack, &rk, &rv, BPF_ANY) < 0 ||
		    bpf_map_update_elem(&nsx_conntrack, &fk, &fv, BPF_ANY) < 0) {
			count(STAT_CT_FULL);
			return TC_ACT_SHOT;
		}
		count(STAT_NATED);
		count_svc(svc->id);
	}
	if ((flags & CT_F_SNAT) && set_addr(skb, p, 1, snat_ip, snat_port) < 0)
		return TC_ACT_SHOT;
	if (set_addr(skb, p, 0, be_ip, be_port) < 0)
		return TC_ACT_SHOT;
	return turn_around(skb, 0);
}

// rev_nat un-NATs a reply: its source becomes the frontend it was sent to.
static __always_inline int rev_nat(struct __sk_buff *skb, struct pkt *p, struct ct_val_n *rv)
{
	if (set_addr(skb, p, 1, rv->ip, rv->port) < 0)
		return TC_ACT_SHOT;
	return TCX_PASS;
}

// reply_entry is the reverse conntrack entry a packet is a reply of, or
// NULL.
static __always_inline struct ct_val_n *reply_entry(struct pkt *p)
{
	struct ct_key_n rk = {.src = p->ip.saddr, .dst = p->ip.daddr, .sport = p->sport, .dport = p->dport,
			    .proto = p->ip.protocol, .dir = CT_REV};
	return bpf_map_lookup_elem(&nsx_conntrack, &rk);
}

// nsx_ingress runs at a pod's interface: replies to the pod.
SEC("tcx/ingress")
int nsx_ingress(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (parse(skb, &p) < 0)
		return TCX_NEXT;
	struct ct_val_n *rv = reply_entry(&p);
	if (!rv)
		return TCX_NEXT;
	return rev_nat(skb, &p, rv);
}

// nsx_node_ingress runs at the node's interface on the bridge: replies to
// the node, and external frontends for clients outside the node.
SEC("tcx/ingress")
int nsx_node_ingress(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (parse(skb, &p) < 0)
		return TCX_NEXT;
	struct ct_val_n *rv = reply_entry(&p);
	if (!rv)
		return external_in(skb, &p);
	if (rv->flags & CT_F_EXTERNAL) {
		// The backend's reply to a client outside the node, which
		// reached the node (SNAT): back out to the router.
		if (reply_external(skb, &p, rv) < 0)
			return TC_ACT_SHOT;
		return turn_around(skb, 0);
	}
	return rev_nat(skb, &p, rv);
}

char __license[] SEC("license") = "Dual BSD/GPL";
