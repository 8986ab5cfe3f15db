// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// The service NAT of one address family: included by nsx_svc.c once per
// family, with
//   F              4 or 6: the suffix of this family's types and functions
//   ADDR           the address type (__u32, struct in6_n)
//   M_SERVICES ... this family's maps
// and, defined before, the family's parse_l3_F, store_ip_F, reject_tcpF,
// reject_icmpF, addr_eqF, addr_zeroF, hairpinF and ADDR_BITSF.
// The logic is the same for both families; see nsx_svc.c's header for what
// each program does.

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define X(n) CAT(n, F)
#define X_(n) CAT(n, CAT(_, F))

#define PKT struct X(pkt)
#define SVC_KEY struct X(svc_key_n)
#define SVC_VAL struct X(svc_val_n)
#define BE_VAL struct X(be_val_n)
#define CT_KEY struct X(ct_key_n)
#define CT_VAL struct X(ct_val_n)
#define RANGE_KEY struct X(range_key_n)
#define AFF_KEY struct X(aff_key_n)
#define AFF_VAL struct X(aff_val_n)
#define MEMBER_KEY struct X(member_key_n)

// parse reads the IP and L4 headers; 0 when the packet is one we handle.
static __always_inline int X(parse)(struct __sk_buff *skb, PKT *p)
{
	if (X_(parse_l3)(skb, p) < 0)
		return -1;
	__u16 ports[2];
	switch (p->proto) {
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

// set_addr rewrites the source (is_src) or destination address and port,
// with incremental checksum updates that are also right for
// CHECKSUM_PARTIAL packets.
static __always_inline int X(set_addr)(struct __sk_buff *skb, PKT *p, int is_src, ADDR ip, __u16 port)
{
	ADDR old_ip = is_src ? p->saddr : p->daddr;
	__u16 old_port = is_src ? p->sport : p->dport;
	__u32 port_off = p->l4_off + (is_src ? 0 : 2);

	if (!X(addr_eq)(old_ip, ip)) {
		if (X_(store_ip)(skb, p, is_src, &old_ip, &ip) < 0)
			return -1;
	}
	if (old_port != port) {
		if (p->csum_off && bpf_l4_csum_replace(skb, p->csum_off, old_port, port, sizeof(port) | l4_flags(p->proto)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &port, sizeof(port), 0) < 0)
			return -1;
	}
	if (is_src) {
		p->saddr = ip;
		p->sport = port;
	} else {
		p->daddr = ip;
		p->dport = port;
	}
	return 0;
}

// pick chooses the backend of a new connection (affinity first).
static __always_inline int X(pick)(PKT *p, SVC_VAL *svc, BE_VAL *out)
{
	AFF_KEY ak = {.client = p->saddr, .svc_id = svc->id};
	__u64 now = bpf_ktime_get_ns();
	if (svc->flags & SVC_F_AFFINITY) {
		AFF_VAL *av = bpf_map_lookup_elem(&M_AFFINITY, &ak);
		if (av && now - av->last_ns <= (__u64)svc->affinity_sec * 1000000000ULL) {
			// Still a usable backend of the service?
			MEMBER_KEY mk = {.svc_id = svc->id, .ip = av->ip, .port = av->port};
			if (bpf_map_lookup_elem(&M_MEMBERS, &mk)) {
				av->last_ns = now;
				out->ip = av->ip;
				out->port = av->port;
				out->pad = 0;
				return 0;
			}
		}
	}
	struct be_key bk = {.svc_id = svc->id, .slot = bpf_get_prandom_u32() % svc->count};
	BE_VAL *b = bpf_map_lookup_elem(&M_BACKENDS, &bk);
	if (!b)
		return -1;
	*out = *b;
	if (svc->flags & SVC_F_AFFINITY) {
		AFF_VAL av = {.ip = b->ip, .port = b->port, .last_ns = now};
		if (bpf_map_update_elem(&M_AFFINITY, &ak, &av, BPF_ANY) < 0)
			count(STAT_AFF_FULL);
	}
	return 0;
}

// in_ranges says whether the frontend admits the source
// (loadBalancerSourceRanges; every source when it has none).
static __always_inline int X(in_ranges)(SVC_VAL *svc, ADDR src)
{
	if (!(svc->flags & SVC_F_RANGES))
		return 1;
	RANGE_KEY k = {.prefixlen = 32 + X(ADDR_BITS), .svc_id = svc->id, .ip = src};
	return bpf_map_lookup_elem(&M_RANGES, &k) != NULL;
}

// no_endpoints answers a new connection to a frontend without endpoints.
static __always_inline int X(no_endpoints)(struct __sk_buff *skb, PKT *p, SVC_VAL *svc, int to_ingress)
{
	count_svc(svc->id);
	if (svc->flags & SVC_F_DROP) {
		count(STAT_DROPPED);
		return TC_ACT_SHOT;
	}
	if (p->proto == IPPROTO_TCP)
		return X(reject_tcp)(skb, p, to_ingress);
	return X(reject_icmp)(skb, p, to_ingress);
}

// reply_external gives a reply on a connection that an external frontend
// opened from outside the node the frontend's address as its source, and
// (SNATed connections) the client as its destination.
static __always_inline int X(reply_external)(struct __sk_buff *skb, PKT *p, CT_VAL *rv)
{
	ADDR vip = rv->ip, client = rv->client_ip;
	__u16 vport = rv->port, cport = rv->client_port;
	if ((rv->flags & CT_F_SNAT) && X(set_addr)(skb, p, 0, client, cport) < 0)
		return -1;
	return X(set_addr)(skb, p, 1, vip, vport);
}

static __always_inline int X(is_syn)(PKT *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & 0x12) == 0x02;
}

// egress: packets a pod or the node sends.
static __always_inline int X(egress)(struct __sk_buff *skb)
{
	PKT p = {};
	if (X(parse)(skb, &p) < 0)
		return TCX_NEXT;

	// A hairpinned connection's server answering the hairpin address.
	if (X(addr_eq)(p.daddr, X(hairpin)())) {
		CT_KEY hk = {.src = p.saddr, .dst = p.daddr, .sport = p.sport, .dport = p.dport,
			     .proto = p.proto, .dir = CT_HAIRPIN_REPLY};
		CT_VAL *hv = bpf_map_lookup_elem(&M_CONNTRACK, &hk);
		if (!hv)
			return TCX_NEXT;
		ADDR vip = hv->ip;
		__u16 vport = hv->port;
		ADDR self = p.saddr;
		if (X(set_addr)(skb, &p, 0, self, p.dport) < 0 || X(set_addr)(skb, &p, 1, vip, vport) < 0)
			return TC_ACT_SHOT;
		return turn_around(skb, 1);
	}

	// A SYN opens a new connection: it never follows the conntrack entry
	// of an earlier connection that happened to use the same ports (the
	// LRU keeps entries of closed connections), it picks afresh. But the
	// same SYN sent again after a loss (the same sequence number) keeps
	// the backend its first copy went to, whose SYN-ACK may still come
	// (also while the services map is drained in a switch to OVS):
	// balanced afresh, the client would end up with a half-open
	// connection on each of two backends, and a reset.
	int syn = X(is_syn)(&p);
	__u32 synseq = 0;
	if (syn && bpf_skb_load_bytes(skb, p.l4_off + offsetof(struct tcphdr, seq), &synseq, sizeof(synseq)) < 0)
		return TCX_NEXT;
	CT_KEY fk = {.src = p.saddr, .dst = p.daddr, .sport = p.sport, .dport = p.dport,
		     .proto = p.proto, .dir = CT_FWD};
	CT_VAL *cv = bpf_map_lookup_elem(&M_CONNTRACK, &fk);
	if (cv && syn) {
		__u32 seen;
		__builtin_memcpy(&seen, &cv->client_ip, sizeof(seen));
		if (cv->flags & CT_F_SYNSEQ) {
			if (seen != synseq)
				cv = NULL;
		} else if (!handing_over()) {
			// No sequence recorded: a connection handed over from OVS
			// (SYN_SENT there) follows its entry while the take-over
			// lasts; any other entry is an older one's.
			cv = NULL;
		}
	}
	BE_VAL be;
	__u16 ctflags = 0;
	__u32 svc_id = 0;
	if (cv) {
		be.ip = cv->ip;
		be.port = cv->port;
		ctflags = cv->flags;
		svc_id = cv->svc_id;
	} else {
		SVC_KEY sk = {.vip = p.daddr, .port = p.dport, .proto = p.proto};
		SVC_VAL *svc = bpf_map_lookup_elem(&M_SERVICES, &sk);
		if (!svc) {
			CT_KEY rk = {.src = p.saddr, .dst = p.daddr, .sport = p.sport, .dport = p.dport,
				     .proto = p.proto, .dir = CT_REV};
			if (syn) {
				// A direct connection reusing the ports of a closed
				// service connection to the same backend: its replies
				// must not be un-NATed by the old reverse entry.
				CT_KEY stale = {.src = p.daddr, .dst = p.saddr, .sport = p.dport, .dport = p.sport,
						.proto = IPPROTO_TCP, .dir = CT_REV};
				bpf_map_delete_elem(&M_CONNTRACK, &stale);
				// Nor may its later packets follow the forward entry of
				// a closed connection on the same ports (the frontend
				// is not ours any more: the node is switching to OVS).
				bpf_map_delete_elem(&M_CONNTRACK, &fk);
				return TCX_NEXT;
			}
			// This pod answering a client that an external frontend
			// sent it from outside the node.
			CT_VAL *rv = bpf_map_lookup_elem(&M_CONNTRACK, &rk);
			if (!rv || !(rv->flags & CT_F_EXTERNAL))
				return TCX_NEXT;
			if (X(reply_external)(skb, &p, rv) < 0)
				return TC_ACT_SHOT;
			return TCX_PASS;
		}
		if (p.proto == IPPROTO_TCP && !syn && handing_over())
			return TCX_NEXT;
		if (!X(in_ranges)(svc, p.saddr)) {
			count(STAT_DROPPED);
			count_svc(svc->id);
			return TC_ACT_SHOT;
		}
		if (svc->count == 0)
			return X(no_endpoints)(skb, &p, svc, 1);
		if (X(pick)(&p, svc, &be) < 0)
			return TC_ACT_SHOT;
		svc_id = svc->id;
		if (X(addr_eq)(be.ip, p.saddr))
			ctflags = CT_F_HAIRPIN;
		CT_VAL fv = {.ip = be.ip, .port = be.port, .flags = ctflags, .svc_id = svc_id};
		if (syn) {
			fv.flags |= CT_F_SYNSEQ;
			__builtin_memcpy(&fv.client_ip, &synseq, sizeof(synseq));
		}
		// Replies: from the backend (or, hairpinned, from the pod to the
		// hairpin address) back to the client.
		CT_KEY rk = {.src = be.ip, .dst = p.saddr, .sport = be.port, .dport = p.sport,
			     .proto = p.proto, .dir = CT_REV};
		if (ctflags & CT_F_HAIRPIN) {
			rk.dst = X(hairpin)();
			rk.dir = CT_HAIRPIN_REPLY;
		}
		CT_VAL rv = {.ip = p.daddr, .port = p.dport, .svc_id = svc_id};
		if (bpf_map_update_elem(&M_CONNTRACK, &rk, &rv, BPF_ANY) < 0 ||
		    bpf_map_update_elem(&M_CONNTRACK, &fk, &fv, BPF_ANY) < 0) {
			count(STAT_CT_FULL);
			return TC_ACT_SHOT;
		}
		count(STAT_NATED);
		count_svc(svc_id);
	}
	if (X(set_addr)(skb, &p, 0, be.ip, be.port) < 0)
		return TC_ACT_SHOT;
	if (ctflags & CT_F_HAIRPIN) {
		if (X(set_addr)(skb, &p, 1, X(hairpin)(), p.sport) < 0)
			return TC_ACT_SHOT;
		return turn_around(skb, 1);
	}
	return TCX_PASS;
}

#ifndef SNAT_PORT_MIN
// SNAT source ports when the client's own is taken: above the start of
// Linux's ephemeral range and the default NodePort range.
#define SNAT_PORT_MIN 32768
#define SNAT_TRIES 8
#endif

// external_in serves a packet from outside the node to an external
// frontend, at the node's ingress: DNAT (and SNAT), then back out to the
// bridge and the router that sent it, which routes it to the backend.
static __always_inline int X(external_in)(struct __sk_buff *skb, PKT *p)
{
	int syn = X(is_syn)(p);
	CT_KEY fk = {.src = p->saddr, .dst = p->daddr, .sport = p->sport, .dport = p->dport,
		     .proto = p->proto, .dir = CT_FWD};
	CT_VAL *cv = syn ? NULL : bpf_map_lookup_elem(&M_CONNTRACK, &fk);
	ADDR be_ip, snat_ip;
	__u16 be_port, snat_port = 0, flags;
	__builtin_memset(&snat_ip, 0, sizeof(snat_ip));
	if (cv) {
		if (!(cv->flags & CT_F_EXTERNAL))
			return TCX_NEXT;
		be_ip = cv->ip;
		be_port = cv->port;
		flags = cv->flags;
		snat_ip = cv->client_ip;
		snat_port = cv->client_port;
	} else {
		SVC_KEY sk = {.vip = p->daddr, .port = p->dport, .proto = p->proto};
		SVC_VAL *svc = bpf_map_lookup_elem(&M_SERVICES, &sk);
		if (!svc || !(svc->flags & SVC_F_EXTERNAL))
			return TCX_NEXT;
		if (!X(in_ranges)(svc, p->saddr)) {
			count(STAT_DROPPED);
			count_svc(svc->id);
			return TC_ACT_SHOT;
		}
		if (svc->count == 0)
			return X(no_endpoints)(skb, p, svc, 0);
		BE_VAL be;
		if (X(pick)(p, svc, &be) < 0)
			return TC_ACT_SHOT;
		be_ip = be.ip;
		be_port = be.port;
		flags = CT_F_EXTERNAL;
		CT_KEY rk = {.src = be.ip, .dst = p->saddr, .sport = be.port, .dport = p->sport,
			     .proto = p->proto, .dir = CT_REV};
		if (!X(addr_zero)(svc->snat_ip)) {
			// The client's port when free at the SNAT address, else a
			// random one.
			flags |= CT_F_SNAT;
			snat_ip = svc->snat_ip;
			rk.dst = snat_ip;
			__u16 port = p->sport;
			int found = 0;
			for (int i = 0; i < SNAT_TRIES; i++) {
				rk.dport = port;
				CT_VAL *o = bpf_map_lookup_elem(&M_CONNTRACK, &rk);
				if (!o || ((o->flags & CT_F_SNAT) && X(addr_eq)(o->client_ip, p->saddr) && o->client_port == p->sport)) {
					found = 1;
					break;
				}
				// SCTP keeps its port: a rewritten one would need the
				// CRC32c recomputed (dataplane.Unservable).
				if (p->proto == IPPROTO_SCTP)
					break;
				port = bpf_htons(SNAT_PORT_MIN + (bpf_get_prandom_u32() & 0x7fff));
			}
			if (!found) {
				count(STAT_SNAT_FULL);
				return TC_ACT_SHOT;
			}
			snat_port = port;
		}
		CT_VAL fv = {.ip = be.ip, .port = be.port, .flags = flags, .svc_id = svc->id,
			     .client_ip = snat_ip, .client_port = snat_port};
		CT_VAL rv = {.ip = p->daddr, .port = p->dport, .flags = flags, .svc_id = svc->id,
			     .client_ip = p->saddr, .client_port = p->sport};
		if (bpf_map_update_elem(&M_CONNTRACK, &rk, &rv, BPF_ANY) < 0 ||
		    bpf_map_update_elem(&M_CONNTRACK, &fk, &fv, BPF_ANY) < 0) {
			count(STAT_CT_FULL);
			return TC_ACT_SHOT;
		}
		count(STAT_NATED);
		count_svc(svc->id);
	}
	if ((flags & CT_F_SNAT) && X(set_addr)(skb, p, 1, snat_ip, snat_port) < 0)
		return TC_ACT_SHOT;
	if (X(set_addr)(skb, p, 0, be_ip, be_port) < 0)
		return TC_ACT_SHOT;
	return turn_around(skb, 0);
}

// rev_nat un-NATs a reply: its source becomes the frontend it was sent to.
static __always_inline int X(rev_nat)(struct __sk_buff *skb, PKT *p, CT_VAL *rv)
{
	if (X(set_addr)(skb, p, 1, rv->ip, rv->port) < 0)
		return TC_ACT_SHOT;
	return TCX_PASS;
}

// reply_entry is the reverse conntrack entry a packet is a reply of, or
// NULL.
static __always_inline CT_VAL *X(reply_entry)(PKT *p)
{
	CT_KEY rk = {.src = p->saddr, .dst = p->daddr, .sport = p->sport, .dport = p->dport,
		     .proto = p->proto, .dir = CT_REV};
	return bpf_map_lookup_elem(&M_CONNTRACK, &rk);
}

// ingress: at a pod's interface, replies to the pod.
static __always_inline int X(ingress)(struct __sk_buff *skb)
{
	PKT p = {};
	if (X(parse)(skb, &p) < 0)
		return TCX_NEXT;
	CT_VAL *rv = X(reply_entry)(&p);
	if (!rv)
		return TCX_NEXT;
	return X(rev_nat)(skb, &p, rv);
}

// node_ingress: at the node's interface on the bridge, replies to the
// node, and external frontends for clients outside the node.
static __always_inline int X(node_ingress)(struct __sk_buff *skb)
{
	PKT p = {};
	if (X(parse)(skb, &p) < 0)
		return TCX_NEXT;
	CT_VAL *rv = X(reply_entry)(&p);
	if (!rv)
		return X(external_in)(skb, &p);
	if (rv->flags & CT_F_EXTERNAL) {
		// The backend's reply to a client outside the node, which
		// reached the node (SNAT): back out to the router.
		if (X(reply_external)(skb, &p, rv) < 0)
			return TC_ACT_SHOT;
		return turn_around(skb, 0);
	}
	return X(rev_nat)(skb, &p, rv);
}

#undef PKT
#undef SVC_KEY
#undef SVC_VAL
#undef BE_VAL
#undef CT_KEY
#undef CT_VAL
#undef RANGE_KEY
#undef AFF_KEY
#undef AFF_VAL
#undef MEMBER_KEY
