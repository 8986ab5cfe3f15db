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
// working (under TCX, TCX_PASS would end the chain).
// IPv4 and IPv6, each with maps of its own (an IPv6 Service's frontends,
// backends and connections never meet IPv4 ones; the maps of IPv4 keep the
// layout older versions pinned). The logic is written once, in
// nsx_fam.h, included once per family; what differs (headers, checksums,
// the answers of reject) is here. IPv6 packets with extension headers are
// not ours.
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef BPF_F_IPV6
#define BPF_F_IPV6 (1ULL << 7)  // bpf_l4_csum_replace, Linux 6.16; older build headers lack it
#endif

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

// TCX return codes (linux/bpf.h >= 6.6; the build host's headers may be
// older, the running kernel is not).
#define TCX_NEXT (-1)
#define TCX_PASS 0

#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3

#define NEXTHDR_ICMPV6 58
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PORT_UNREACH 4

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
	CT_F_SYNSEQ = 8,    // CT_FWD of a pod's connection: client_ip's first 4 bytes hold the sequence number of its SYN
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

// An IPv6 address as the programs compute with it: network order, as in
// the packet.
struct in6_n {
	__u32 w[4];
};

// The programs compute with these (the _n types, one set per family:
// suffix 4 with a __u32 address, 6 with an in6_n): addresses and ports as
// network-order integers, as they sit in the packet. The maps are declared
// with the views further down.
#define NSX_N_TYPES(F, addr_t)                                                              \
	struct svc_key_n##F {                                                               \
		addr_t vip;                                                                 \
		__u16 port; /* network order */                                             \
		__u8 proto;                                                                 \
		__u8 pad;                                                                   \
	};                                                                                  \
	struct svc_val_n##F {                                                               \
		__u32 id;                                                                   \
		__u16 count; /* usable backends in slots 0..count-1 */                      \
		__u16 flags;                                                                \
		__u32 affinity_sec; /* ClientIP affinity inactivity timeout */              \
		addr_t snat_ip;     /* zero: external clients keep their source */          \
	};                                                                                  \
	struct be_val_n##F {                                                                \
		addr_t ip;                                                                  \
		__u16 port;                                                                 \
		__u16 pad;                                                                  \
	};                                                                                  \
	struct ct_key_n##F {                                                                \
		addr_t src;                                                                 \
		addr_t dst;                                                                 \
		__u16 sport;                                                                \
		__u16 dport;                                                                \
		__u8 proto;                                                                 \
		__u8 dir;                                                                   \
		__u16 pad;                                                                  \
	};                                                                                  \
	/* ip: CT_FWD the backend; CT_REV, CT_HAIRPIN_REPLY the VIP. client_*:   */        \
	/* with CT_F_SNAT, CT_REV the client, CT_FWD the SNAT source.            */        \
	struct ct_val_n##F {                                                                \
		addr_t ip;                                                                  \
		__u16 port;                                                                 \
		__u16 flags;                                                                \
		__u32 svc_id;                                                               \
		addr_t client_ip;                                                           \
		__u16 client_port;                                                          \
		__u16 pad;                                                                  \
	};                                                                                  \
	/* loadBalancerSourceRanges: an LPM key of svc_id (32 bits), then the source. */  \
	struct range_key_n##F {                                                             \
		__u32 prefixlen;                                                            \
		__u32 svc_id;                                                               \
		addr_t ip;                                                                  \
	};                                                                                  \
	struct aff_key_n##F {                                                               \
		addr_t client;                                                              \
		__u32 svc_id;                                                               \
	};                                                                                  \
	/* A usable backend of an affinity service: "is the affined backend */             \
	/* still one" is one lookup, whatever the number of backends.        */            \
	struct member_key_n##F {                                                            \
		__u32 svc_id;                                                               \
		addr_t ip;                                                                  \
		__u16 port;                                                                 \
		__u16 pad;                                                                  \
	};                                                                                  \
	struct aff_val_n##F {                                                               \
		addr_t ip;                                                                  \
		__u16 port;                                                                 \
		__u16 pad;                                                                  \
		__u64 last_ns;                                                              \
	};                                                                                  \
	/* A packet, parsed. */                                                             \
	struct pkt##F {                                                                     \
		addr_t saddr, daddr;                                                        \
		__u16 sport, dport; /* network order */                                     \
		__u8 proto;                                                                 \
		__u8 tcp_flags;                                                             \
		__u32 l3_hdr;   /* IP header length */                                      \
		__u32 l3_len;   /* IP packet length */                                      \
		__u32 l4_off;                                                               \
		__u32 csum_off; /* L4 checksum offset; 0: none to fix (SCTP) */             \
	};

NSX_N_TYPES(4, __u32)
NSX_N_TYPES(6, struct in6_n)

// The backend slots of a service, either family (service ids are one space).
struct be_key {
	__u32 svc_id;
	__u32 slot;
};

// What bpftool shows, and the Go side's types. The programs compute on
// network-order integers (the _n structs above); the maps are declared
// with these views of the same bytes,
// so `bpftool map dump` prints an address as its bytes ([10, 96, 0, 10]),
// a port as its 2 bytes in network order ([31, 144] is 8080) and a
// conntrack direction by name. The assertions keep the two in step: a map
// pinned by an older version, laid out the same, is adopted as it is.
enum ct_dir : __u8 { DIR_FWD = CT_FWD, DIR_REV = CT_REV, DIR_HAIRPIN_REPLY = CT_HAIRPIN_REPLY };

#define NSX_VIEW_TYPES(P, N)                                                                \
	struct svc##P##key {                                                                \
		__u8 vip[N];                                                                \
		__u8 port[2];                                                               \
		__u8 proto;                                                                 \
		__u8 pad;                                                                   \
	};                                                                                  \
	struct svc##P##val {                                                                \
		__u32 id;                                                                   \
		__u16 count;                                                                \
		__u16 flags; /* 1 affinity, 2 drop when empty, 4 external, 8 source ranges */ \
		__u32 affinity_sec;                                                         \
		__u8 snat_ip[N];                                                            \
	};                                                                                  \
	struct be##P##val {                                                                 \
		__u8 ip[N];                                                                 \
		__u8 port[2];                                                               \
		__u16 pad;                                                                  \
	};                                                                                  \
	struct ct##P##key {                                                                 \
		__u8 src[N];                                                                \
		__u8 dst[N];                                                                \
		__u8 sport[2];                                                              \
		__u8 dport[2];                                                              \
		__u8 proto;                                                                 \
		enum ct_dir dir;                                                            \
		__u16 pad;                                                                  \
	};                                                                                  \
	struct ct##P##val {                                                                 \
		__u8 ip[N];                                                                 \
		__u8 port[2];                                                               \
		__u16 flags; /* 1 hairpin, 2 external, 4 SNAT, 8 SYN seq in client_ip */   \
		__u32 svc_id;                                                               \
		__u8 client_ip[N];                                                          \
		__u8 client_port[2];                                                        \
		__u16 pad;                                                                  \
	};                                                                                  \
	struct range##P##key {                                                              \
		__u32 prefixlen;                                                            \
		__u32 svc_id;                                                               \
		__u8 ip[N];                                                                 \
	};                                                                                  \
	struct aff##P##key {                                                                \
		__u8 client[N];                                                             \
		__u32 svc_id;                                                               \
	};                                                                                  \
	struct member##P##key {                                                             \
		__u32 svc_id;                                                               \
		__u8 ip[N];                                                                 \
		__u8 port[2];                                                               \
		__u16 pad;                                                                  \
	};                                                                                  \
	struct aff##P##val {                                                                \
		__u8 ip[N];                                                                 \
		__u8 port[2];                                                               \
		__u16 pad;                                                                  \
		__u64 last_ns;                                                              \
	};

// IPv4: svc_key, be_val, ... (the names older versions pinned); IPv6:
// svc6_key, be6_val, ...
NSX_VIEW_TYPES(_, 4)
NSX_VIEW_TYPES(6_, 16)

#define SAME(a, b, f) _Static_assert(offsetof(struct a, f) == offsetof(struct b, f), #a "." #f " moved")
#define SAME_SIZE(a, b) _Static_assert(sizeof(struct a) == sizeof(struct b), #a " resized")
#define SAME_LAYOUT(F, P)                                                                                   \
	SAME_SIZE(svc_key_n##F, svc##P##key); SAME(svc_key_n##F, svc##P##key, port);                         \
	SAME(svc_key_n##F, svc##P##key, proto);                                                              \
	SAME_SIZE(svc_val_n##F, svc##P##val); SAME(svc_val_n##F, svc##P##val, count);                        \
	SAME(svc_val_n##F, svc##P##val, flags); SAME(svc_val_n##F, svc##P##val, affinity_sec);               \
	SAME(svc_val_n##F, svc##P##val, snat_ip);                                                            \
	SAME_SIZE(be_val_n##F, be##P##val); SAME(be_val_n##F, be##P##val, port);                             \
	SAME_SIZE(ct_key_n##F, ct##P##key); SAME(ct_key_n##F, ct##P##key, dst);                              \
	SAME(ct_key_n##F, ct##P##key, sport); SAME(ct_key_n##F, ct##P##key, dport);                          \
	SAME(ct_key_n##F, ct##P##key, proto); SAME(ct_key_n##F, ct##P##key, dir);                            \
	SAME_SIZE(ct_val_n##F, ct##P##val); SAME(ct_val_n##F, ct##P##val, port);                             \
	SAME(ct_val_n##F, ct##P##val, flags); SAME(ct_val_n##F, ct##P##val, svc_id);                         \
	SAME(ct_val_n##F, ct##P##val, client_ip); SAME(ct_val_n##F, ct##P##val, client_port);                \
	SAME_SIZE(range_key_n##F, range##P##key); SAME(range_key_n##F, range##P##key, svc_id);               \
	SAME(range_key_n##F, range##P##key, ip);                                                             \
	SAME_SIZE(aff_key_n##F, aff##P##key); SAME(aff_key_n##F, aff##P##key, svc_id);                       \
	SAME_SIZE(member_key_n##F, member##P##key); SAME(member_key_n##F, member##P##key, ip);               \
	SAME(member_key_n##F, member##P##key, port);                                                         \
	SAME_SIZE(aff_val_n##F, aff##P##val); SAME(aff_val_n##F, aff##P##val, port);                         \
	SAME(aff_val_n##F, aff##P##val, last_ns);
SAME_LAYOUT(4, _)
SAME_LAYOUT(6, 6_)

// Sizes are set by the loader from ncp.ini before the maps are created;
// IPv6's hash maps take their IPv4 counterparts' sizes and allocate on use,
// its two LRU maps (preallocated) have sizes of their own, smaller by
// default: an IPv4-only node pays little for them.
#define NSX_MAPS(S, KP, NOPREALLOC, CT_SIZE, AFF_SIZE)                                          \
	struct {                                                             \
		__uint(type, BPF_MAP_TYPE_HASH);                             \
		__type(key, struct svc##KP##key);                            \
		__type(value, struct svc##KP##val);                          \
		__uint(max_entries, 65536);                                  \
		__uint(map_flags, NOPREALLOC);                               \
		__uint(pinning, LIBBPF_PIN_BY_NAME);                         \
	} nsx_services##S SEC(".maps");                                      \
	struct {                                                             \
		__uint(type, BPF_MAP_TYPE_HASH);                             \
		__type(key, struct be_key);                                  \
		__type(value, struct be##KP##val);                           \
		__uint(max_entries, 1048576);                                \
		__uint(map_flags, NOPREALLOC);                               \
		__uint(pinning, LIBBPF_PIN_BY_NAME);                         \
	} nsx_backends##S SEC(".maps");                                      \
	struct {                                                             \
		__uint(type, BPF_MAP_TYPE_LRU_HASH);                         \
		__type(key, struct ct##KP##key);                             \
		__type(value, struct ct##KP##val);                           \
		__uint(max_entries, CT_SIZE);                                \
		__uint(pinning, LIBBPF_PIN_BY_NAME);                         \
	} nsx_conntrack##S SEC(".maps");                                     \
	struct {                                                             \
		__uint(type, BPF_MAP_TYPE_LRU_HASH);                         \
		__type(key, struct aff##KP##key);                            \
		__type(value, struct aff##KP##val);                          \
		__uint(max_entries, AFF_SIZE);                               \
		__uint(pinning, LIBBPF_PIN_BY_NAME);                         \
	} nsx_affinity##S SEC(".maps");                                      \
	struct {                                                             \
		__uint(type, BPF_MAP_TYPE_HASH);                             \
		__type(key, struct member##KP##key);                         \
		__type(value, __u8);                                         \
		__uint(max_entries, 1048576);                                \
		__uint(map_flags, BPF_F_NO_PREALLOC);                        \
		__uint(pinning, LIBBPF_PIN_BY_NAME);                         \
	} nsx_members##S SEC(".maps");                                       \
	struct {                                                             \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);                         \
		__type(key, struct range##KP##key);                          \
		__type(value, __u8);                                         \
		__uint(max_entries, 16384);                                  \
		__uint(map_flags, BPF_F_NO_PREALLOC);                        \
		__uint(pinning, LIBBPF_PIN_BY_NAME);                         \
	} nsx_ranges##S SEC(".maps");

// IPv4's keep the flags older versions pinned them with (preallocated).
NSX_MAPS(, _, 0, 524288, 131072)
NSX_MAPS(6, 6_, BPF_F_NO_PREALLOC, 65536, 16384)

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
// order); the loader sets them (LoadOptions.HairpinIP, HairpinIP6; by
// default dataplane.DefaultHairpinIP and DefaultHairpinIP6, as the OVS
// dataplane's).
volatile const __u32 hairpin_ip = bpf_htonl(0xa9fea9fd);
volatile const __u32 hairpin_ip6[4] = {bpf_htonl(0xfd00a9fe), bpf_htonl(0xa9fe0000), 0, bpf_htonl(0xfd)};

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
#define IP6_SRC_OFF (IP_OFF + offsetof(struct ipv6hdr, saddr))
#define IP6_DST_OFF (IP_OFF + offsetof(struct ipv6hdr, daddr))
#define IP6_HLEN 40

static __always_inline __u64 l4_flags(__u8 proto)
{
	// A UDP checksum of 0 means "none" (IPv4): keep it so
	// (BPF_F_MARK_MANGLED_0).
	return proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
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

// make_rst builds the RST that answers th (a segment with payload bytes
// of data); the caller sets its checksum.
static __always_inline int make_rst(struct __sk_buff *skb, __u32 l4_off, __u32 l3_payload, struct tcphdr *rst)
{
	struct tcphdr th;
	if (bpf_skb_load_bytes(skb, l4_off, &th, sizeof(th)) < 0)
		return -1;
	if (th.rst)
		return -1;
	__u32 payload = l3_payload - th.doff * 4;
	rst->source = th.dest;
	rst->dest = th.source;
	rst->doff = 5;
	rst->rst = 1;
	if (th.ack) {
		rst->seq = th.ack_seq;
	} else {
		rst->ack = 1;
		rst->ack_seq = bpf_htonl(bpf_ntohl(th.seq) + payload + th.syn + th.fin);
	}
	return 0;
}

// ---- IPv4 ----

static __always_inline int addr_eq4(__u32 a, __u32 b) { return a == b; }
static __always_inline int addr_zero4(__u32 a) { return a == 0; }
static __always_inline __u32 hairpin4(void) { return hairpin_ip; }
#define ADDR_BITS4 32

static __always_inline int parse_l3_4(struct __sk_buff *skb, struct pkt4 *p)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, IP_OFF, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	if (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return -1;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;
	p->l3_hdr = ip.ihl * 4;
	p->l3_len = bpf_ntohs(ip.tot_len);
	p->l4_off = IP_OFF + p->l3_hdr;
	return 0;
}

// store_ip_4 writes a source (is_src) or destination address with
// incremental L3 and L4 (pseudo-header) checksum updates that are also
// right for CHECKSUM_PARTIAL packets.
static __always_inline int store_ip_4(struct __sk_buff *skb, struct pkt4 *p, int is_src, __u32 *old, __u32 *ip)
{
	if (p->csum_off && bpf_l4_csum_replace(skb, p->csum_off, *old, *ip, BPF_F_PSEUDO_HDR | sizeof(*ip) | l4_flags(p->proto)) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, *old, *ip, sizeof(*ip)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, is_src ? IP_SRC_OFF : IP_DST_OFF, ip, sizeof(*ip), 0);
}

// reject_tcp4 turns the SYN (or any segment) into the RST that answers it,
// from the VIP, and sends it back where it came from (see turn_around).
static __always_inline int reject_tcp4(struct __sk_buff *skb, struct pkt4 *p, int to_ingress)
{
	struct tcphdr rst = {};
	if (make_rst(skb, p->l4_off, p->l3_len - p->l3_hdr, &rst) < 0)
		return TC_ACT_SHOT;
	// New IPv4 header: 20 bytes, addresses swapped.
	struct iphdr ip = {};
	ip.version = 4;
	ip.ihl = 5;
	ip.ttl = 64;
	ip.protocol = IPPROTO_TCP;
	ip.tot_len = bpf_htons(sizeof(ip) + sizeof(rst));
	ip.saddr = p->daddr;
	ip.daddr = p->saddr;
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

// reject_icmp4 answers with an ICMP port unreachable quoting the packet's
// IP header and 8 bytes of its payload.
static __always_inline int reject_icmp4(struct __sk_buff *skb, struct pkt4 *p, int to_ingress)
{
	if (p->l3_hdr != sizeof(struct iphdr))
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
	ip.saddr = p->daddr;
	ip.daddr = p->saddr;
	ip.check = fold(bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0));
	struct icmphdr ic = {};
	ic.type = ICMP_DEST_UNREACH;
	ic.code = ICMP_PORT_UNREACH;
	__s64 s = bpf_csum_diff(0, 0, (__be32 *)&ic, sizeof(ic), 0);
	s = bpf_csum_diff(0, 0, (__be32 *)quote, sizeof(quote), s);
	ic.checksum = fold(s);
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(ip) + sizeof(ic) + sizeof(quote), 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, IP_OFF, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_OFF + sizeof(ip), &ic, sizeof(ic), 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_OFF + sizeof(ip) + sizeof(ic), quote, sizeof(quote), 0) < 0)
		return TC_ACT_SHOT;
	count(STAT_REJECTED);
	return turn_around(skb, to_ingress);
}

#define F 4
#define ADDR __u32
#define M_SERVICES nsx_services
#define M_BACKENDS nsx_backends
#define M_CONNTRACK nsx_conntrack
#define M_AFFINITY nsx_affinity
#define M_MEMBERS nsx_members
#define M_RANGES nsx_ranges
#include "nsx_fam.h"
#undef F
#undef ADDR
#undef M_SERVICES
#undef M_BACKENDS
#undef M_CONNTRACK
#undef M_AFFINITY
#undef M_MEMBERS
#undef M_RANGES

// ---- IPv6 ----

static __always_inline int addr_eq6(struct in6_n a, struct in6_n b)
{
	return a.w[0] == b.w[0] && a.w[1] == b.w[1] && a.w[2] == b.w[2] && a.w[3] == b.w[3];
}
static __always_inline int addr_zero6(struct in6_n a) { return (a.w[0] | a.w[1] | a.w[2] | a.w[3]) == 0; }
static __always_inline struct in6_n hairpin6(void)
{
	struct in6_n a = {{hairpin_ip6[0], hairpin_ip6[1], hairpin_ip6[2], hairpin_ip6[3]}};
	return a;
}
#define ADDR_BITS6 128

static __always_inline int parse_l3_6(struct __sk_buff *skb, struct pkt6 *p)
{
	if (skb->protocol != bpf_htons(ETH_P_IPV6))
		return -1;
	struct ipv6hdr ip;
	if (bpf_skb_load_bytes(skb, IP_OFF, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 6)
		return -1;
	__builtin_memcpy(&p->saddr, &ip.saddr, sizeof(p->saddr));
	__builtin_memcpy(&p->daddr, &ip.daddr, sizeof(p->daddr));
	// The next header is the L4 one or the packet is not ours: extension
	// headers (a fragment among them) are not followed.
	p->proto = ip.nexthdr;
	p->l3_hdr = IP6_HLEN;
	p->l3_len = IP6_HLEN + bpf_ntohs(ip.payload_len);
	p->l4_off = IP_OFF + IP6_HLEN;
	return 0;
}

// store_ip_6 writes a source (is_src) or destination address with an
// incremental L4 (pseudo-header) checksum update; IPv6 has no L3 one.
// BPF_F_IPV6 keeps skb->csum of a CHECKSUM_COMPLETE packet as it is (the
// address and the L4 checksum change cancel out; without the flag the
// kernel moves it as for IPv4, whose header checksum also changes).
// Kernels before 6.16 refuse the flag, untouched: then the update without
// it, and bpf_csum_update puts skb->csum back (a no-op unless
// CHECKSUM_COMPLETE).
static __always_inline int store_ip_6(struct __sk_buff *skb, struct pkt6 *p, int is_src, struct in6_n *old, struct in6_n *ip)
{
	if (p->csum_off) {
		__s64 d = bpf_csum_diff(old->w, sizeof(*old), ip->w, sizeof(*ip), 0);
		__u64 flags = BPF_F_PSEUDO_HDR | l4_flags(p->proto);
		if (bpf_l4_csum_replace(skb, p->csum_off, 0, d, flags | BPF_F_IPV6) < 0) {
			if (bpf_l4_csum_replace(skb, p->csum_off, 0, d, flags) < 0)
				return -1;
			bpf_csum_update(skb, d);
		}
	}
	return bpf_skb_store_bytes(skb, is_src ? IP6_SRC_OFF : IP6_DST_OFF, ip, sizeof(*ip), 0);
}

// reply6 is the IPv6 header of an answer to p (addresses swapped) carrying
// len bytes of nexthdr, and the checksum of its pseudo-header.
static __always_inline __s64 reply6(struct pkt6 *p, struct ipv6hdr *ip, __u8 nexthdr, __u32 len)
{
	ip->version = 6;
	ip->payload_len = bpf_htons(len);
	ip->nexthdr = nexthdr;
	ip->hop_limit = 64;
	__builtin_memcpy(&ip->saddr, &p->daddr, sizeof(p->daddr));
	__builtin_memcpy(&ip->daddr, &p->saddr, sizeof(p->saddr));
	__u32 pseudo[10] = {p->daddr.w[0], p->daddr.w[1], p->daddr.w[2], p->daddr.w[3],
			    p->saddr.w[0], p->saddr.w[1], p->saddr.w[2], p->saddr.w[3],
			    bpf_htonl(len), bpf_htonl(nexthdr)};
	return bpf_csum_diff(0, 0, pseudo, sizeof(pseudo), 0);
}

// reject_tcp6 is reject_tcp4 for IPv6.
static __always_inline int reject_tcp6(struct __sk_buff *skb, struct pkt6 *p, int to_ingress)
{
	struct tcphdr rst = {};
	if (make_rst(skb, p->l4_off, p->l3_len - p->l3_hdr, &rst) < 0)
		return TC_ACT_SHOT;
	struct ipv6hdr ip = {};
	__s64 s = reply6(p, &ip, IPPROTO_TCP, sizeof(rst));
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

// reject_icmp6 answers with an ICMPv6 port unreachable quoting the
// packet's IPv6 header and 8 bytes of its payload.
static __always_inline int reject_icmp6(struct __sk_buff *skb, struct pkt6 *p, int to_ingress)
{
	__u8 quote[IP6_HLEN + 8];
	if (bpf_skb_load_bytes(skb, IP_OFF, quote, sizeof(quote)) < 0)
		return TC_ACT_SHOT;
	struct icmphdr ic = {};
	ic.type = ICMPV6_DEST_UNREACH;
	ic.code = ICMPV6_PORT_UNREACH;
	struct ipv6hdr ip = {};
	__s64 s = reply6(p, &ip, NEXTHDR_ICMPV6, sizeof(ic) + sizeof(quote));
	s = bpf_csum_diff(0, 0, (__be32 *)&ic, sizeof(ic), s);
	s = bpf_csum_diff(0, 0, (__be32 *)quote, sizeof(quote), s);
	ic.checksum = fold(s);
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(ip) + sizeof(ic) + sizeof(quote), 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, IP_OFF, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_OFF + sizeof(ip), &ic, sizeof(ic), 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_OFF + sizeof(ip) + sizeof(ic), quote, sizeof(quote), 0) < 0)
		return TC_ACT_SHOT;
	count(STAT_REJECTED);
	return turn_around(skb, to_ingress);
}

#define F 6
#define ADDR struct in6_n
#define M_SERVICES nsx_services6
#define M_BACKENDS nsx_backends6
#define M_CONNTRACK nsx_conntrack6
#define M_AFFINITY nsx_affinity6
#define M_MEMBERS nsx_members6
#define M_RANGES nsx_ranges6
#include "nsx_fam.h"

// ---- the programs ----

SEC("tcx/egress")
int nsx_egress(struct __sk_buff *skb)
{
	// Sent back out by nsx_ingress on the node's interface: translated.
	if (skb->ingress_ifindex == skb->ifindex)
		return TCX_NEXT;
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return egress4(skb);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return egress6(skb);
	return TCX_NEXT;
}

// nsx_ingress runs at a pod's interface: replies to the pod.
SEC("tcx/ingress")
int nsx_ingress(struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return ingress4(skb);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return ingress6(skb);
	return TCX_NEXT;
}

// nsx_node_ingress runs at the node's interface on the bridge: replies to
// the node, and external frontends for clients outside the node.
SEC("tcx/ingress")
int nsx_node_ingress(struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return node_ingress4(skb);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return node_ingress6(skb);
	return TCX_NEXT;
}

char __license[] SEC("license") = "Dual BSD/GPL";
