//! The per-packet path of one dataplane worker: [`Forwarder::forward_packet`].
//!
//! A [`Forwarder`] forwards by an immutable [`ForwardingSnapshot`] (the forwarding table and
//! the links whose session is established) that the control plane (the [`Node`]) publishes
//! whenever either changes, and counts what it did into a [`DataplaneReport`] that the node
//! takes back ([`Node::absorb_dataplane`]): traffic per link (which also keeps an idle
//! session alive) and drops by reason. It never touches the node, takes no lock and, in steady
//! state, allocates nothing; only an ICMPv6 error (rate-limited per forwarder) is built in
//! memory of its own.
//!
//! The daemon runs one forwarder per dataplane worker; the node keeps one of its own for the
//! packets it forwards itself (the simulator's), so both go through the same function.
//!
//! [`Node`]: crate::node::Node
//! [`Node::absorb_dataplane`]: crate::node::Node::absorb_dataplane

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::forward::{self, Decision, DropReason, ForwardingTable, Ingress, RouteTarget};
use crate::icmp::{self, IcmpErrorKind, IcmpRateLimiter, MAX_ICMP_ERROR_LEN};
use crate::node::Forwarded;
use crate::{LinkId, Time};

/// What a dataplane worker forwards by; replaced whole, never changed in place.
#[derive(Debug, Clone, Default)]
pub struct ForwardingSnapshot {
    /// Routes and the node's own address.
    pub table: Arc<ForwardingTable>,
    /// Links whose session is established, sorted: packets arrive and leave only on these.
    pub established: Vec<LinkId>,
    /// Increases with every new snapshot.
    pub generation: u64,
}

impl ForwardingSnapshot {
    /// Returns true if `link`'s session is established in this snapshot.
    pub fn is_established(&self, link: LinkId) -> bool {
        self.established.binary_search(&link).is_ok()
    }
}

/// Traffic of one link through a forwarder since the node last took its report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkTraffic {
    /// When the latest packet arrived on the link (its session is alive then).
    pub last_received: Option<Time>,
    /// Packets received on the link.
    pub packets_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Packets sent on the link.
    pub packets_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
}

impl LinkTraffic {
    fn is_empty(&self) -> bool {
        self.packets_in == 0 && self.packets_out == 0
    }
}

/// What a forwarder did since the node last took its report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneReport {
    /// Packets dropped, by reason.
    pub drops: BTreeMap<DropReason, u64>,
    /// Traffic per link.
    pub links: BTreeMap<LinkId, LinkTraffic>,
    /// ICMPv6 errors sent.
    pub icmp_errors_sent: u64,
}

impl DataplaneReport {
    /// Sets every count to zero, keeping the entries (so counting again allocates nothing).
    pub fn clear(&mut self) {
        self.drops.values_mut().for_each(|n| *n = 0);
        self.links
            .values_mut()
            .for_each(|t| *t = LinkTraffic::default());
        self.icmp_errors_sent = 0;
    }

    /// Adds `other`'s counts to this report.
    pub fn add(&mut self, other: &DataplaneReport) {
        for (reason, n) in &other.drops {
            *self.drops.entry(*reason).or_default() += n;
        }
        for (link, t) in &other.links {
            let mine = self.links.entry(*link).or_default();
            mine.last_received = mine.last_received.max(t.last_received);
            mine.packets_in += t.packets_in;
            mine.bytes_in += t.bytes_in;
            mine.packets_out += t.packets_out;
            mine.bytes_out += t.bytes_out;
        }
        self.icmp_errors_sent += other.icmp_errors_sent;
    }
}

/// One worker's per-packet path. See the module documentation.
#[derive(Debug)]
pub struct Forwarder {
    snapshot: Arc<ForwardingSnapshot>,
    icmp_limiter: IcmpRateLimiter,
    report: DataplaneReport,
    /// ICMPv6 errors to move: `Deliver` to the TUN device or `Send` on a link.
    originated: VecDeque<(Forwarded, Vec<u8>)>,
}

impl Forwarder {
    /// A forwarder with an empty snapshot (it drops everything until the first one arrives)
    /// and its own ICMPv6 error budget.
    pub fn new(icmp_limiter: IcmpRateLimiter) -> Self {
        Self {
            snapshot: Arc::default(),
            icmp_limiter,
            report: DataplaneReport::default(),
            originated: VecDeque::new(),
        }
    }

    /// Forwards by `snapshot` from now on.
    pub fn install(&mut self, snapshot: Arc<ForwardingSnapshot>) {
        // Links that left the snapshot are gone for good (ids are never reused).
        self.report
            .links
            .retain(|link, t| !t.is_empty() || snapshot.is_established(*link));
        self.snapshot = snapshot;
    }

    /// The snapshot it forwards by.
    pub fn snapshot(&self) -> &Arc<ForwardingSnapshot> {
        &self.snapshot
    }

    /// The per-packet path, the same for the daemon's dataplane and the simulator: credits the
    /// ingress link, takes the forwarding decision ([`forward::decide_segmented`]; a
    /// `segment_len` for TSO/USO super-packets), checks and credits the egress link, counts
    /// drops and answers rejected packets with a rate-limited ICMPv6 error
    /// ([`Forwarder::poll_originated`]). What is left for the caller is moving the bytes:
    /// [`Forwarded::Deliver`] to the TUN device or [`Forwarded::Send`] on a link.
    ///
    /// Allocates nothing in steady state, except for an ICMPv6 error.
    pub fn forward_packet(
        &mut self,
        now: Time,
        packet: &mut [u8],
        ingress: Ingress,
        segment_len: Option<usize>,
    ) -> Forwarded {
        if let Ingress::Link(link) = ingress {
            if !self.snapshot.is_established(link) {
                self.count_drop(DropReason::LinkDown);
                return Forwarded::Done;
            }
            let t = self.report.links.entry(link).or_default();
            t.last_received = Some(now);
            t.packets_in += 1;
            t.bytes_in += packet.len() as u64;
        }
        match forward::decide_segmented(&self.snapshot.table, packet, ingress, segment_len) {
            Decision::Deliver => Forwarded::Deliver,
            Decision::Forward { link } => self.credit_egress(link, packet.len()),
            Decision::Reject(kind) => {
                self.reject(now, kind, packet);
                Forwarded::Done
            }
            Decision::Drop(reason) => {
                self.count_drop(reason);
                Forwarded::Done
            }
        }
    }

    fn credit_egress(&mut self, link: LinkId, len: usize) -> Forwarded {
        if !self.snapshot.is_established(link) {
            self.count_drop(DropReason::LinkDown);
            return Forwarded::Done;
        }
        let t = self.report.links.entry(link).or_default();
        t.packets_out += 1;
        t.bytes_out += len as u64;
        Forwarded::Send(link)
    }

    /// Counts a packet the dataplane dropped.
    pub fn count_drop(&mut self, reason: DropReason) {
        *self.report.drops.entry(reason).or_default() += 1;
    }

    /// Answers `packet`, which the dataplane rejected, with the ICMPv6 error `kind`, subject to
    /// this forwarder's rate limit; the error comes out of [`Forwarder::poll_originated`].
    pub fn reject(&mut self, now: Time, kind: IcmpErrorKind, packet: &[u8]) {
        if !self.icmp_limiter.allow(now) {
            self.count_drop(DropReason::IcmpRateLimited);
            return;
        }
        let Some(source) = self.snapshot.table.node_address else {
            self.count_drop(DropReason::NoRoute);
            return;
        };
        let mut error = vec![0u8; MAX_ICMP_ERROR_LEN];
        let Some(len) = icmp::write_error(kind, source, packet, &mut error) else {
            self.count_drop(DropReason::Malformed);
            return;
        };
        error.truncate(len);
        self.report.icmp_errors_sent += 1;
        let Some(dst) = forward::addresses(&error).map(|(_, dst)| dst) else {
            return;
        };
        let forwarded = match self.snapshot.table.routes.lookup(dst).map(|(_, t)| *t) {
            Some(RouteTarget::Local) => Forwarded::Deliver,
            Some(RouteTarget::Link { link, .. }) => self.credit_egress(link, error.len()),
            None => {
                self.count_drop(DropReason::NoRoute);
                Forwarded::Done
            }
        };
        if forwarded != Forwarded::Done {
            self.originated.push_back((forwarded, error));
        }
    }

    /// Returns the next ICMPv6 error to move, and where.
    pub fn poll_originated(&mut self) -> Option<(Forwarded, Vec<u8>)> {
        self.originated.pop_front()
    }

    /// What the forwarder did since the report was last cleared; the node takes it with
    /// [`crate::node::Node::absorb_dataplane`], which clears it.
    pub fn report_mut(&mut self) -> &mut DataplaneReport {
        &mut self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use connectopus_wire::Prefix;

    use crate::icmp::tests::{a, udp};
    use crate::route::PrefixTable;

    const L1: LinkId = LinkId(1);
    const L2: LinkId = LinkId(2);

    fn snapshot(established: Vec<LinkId>) -> Arc<ForwardingSnapshot> {
        let mut routes = PrefixTable::new();
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        routes.insert(p("2001:db8:1::/48"), RouteTarget::Local);
        routes.insert(
            p("2001:db8:2::/48"),
            RouteTarget::Link {
                link: L1,
                mtu: 1400,
            },
        );
        Arc::new(ForwardingSnapshot {
            table: Arc::new(ForwardingTable {
                routes,
                node_address: Some(a("2001:db8:1::")),
                generation: 1,
            }),
            established,
            generation: 1,
        })
    }

    fn forwarder() -> Forwarder {
        Forwarder::new(IcmpRateLimiter::new(100, 10))
    }

    #[test]
    fn a_forwarder_moves_to_its_worker_thread_and_snapshots_are_shared() {
        fn send<T: Send>() {}
        fn share<T: Send + Sync>() {}
        send::<Forwarder>();
        send::<DataplaneReport>();
        share::<ForwardingSnapshot>();
    }

    #[test]
    fn forwards_by_the_snapshot_and_counts_per_link() {
        let mut f = forwarder();
        f.install(snapshot(vec![L1, L2]));
        let now = Time::from_duration(std::time::Duration::from_millis(5));
        let mut packet = udp(a("2001:db8:9::9"), a("2001:db8:2::2"), 64, 100);
        let out = f.forward_packet(now, &mut packet, Ingress::Link(L2), None);
        assert_eq!(out, Forwarded::Send(L1));
        let mut local = udp(a("2001:db8:9::9"), a("2001:db8:1::5"), 64, 80);
        let out = f.forward_packet(now, &mut local, Ingress::Link(L2), None);
        assert_eq!(out, Forwarded::Deliver);
        let report = f.report_mut();
        let in_l2 = report.links[&L2];
        assert_eq!(in_l2.last_received, Some(now));
        assert_eq!((in_l2.packets_in, in_l2.bytes_in), (2, 180));
        assert_eq!(
            (report.links[&L1].packets_out, report.links[&L1].bytes_out),
            (1, 100)
        );
        report.clear();
        assert_eq!(report.links[&L2], LinkTraffic::default());
    }

    #[test]
    fn links_outside_the_snapshot_are_down() {
        let mut f = forwarder();
        // L1 has a route but no established session (yet, or any more).
        f.install(snapshot(vec![L2]));
        let mut packet = udp(a("2001:db8:9::9"), a("2001:db8:2::2"), 64, 100);
        let out = f.forward_packet(Time::ZERO, &mut packet, Ingress::Link(L2), None);
        assert_eq!(out, Forwarded::Done);
        let out = f.forward_packet(Time::ZERO, &mut packet, Ingress::Link(LinkId(9)), None);
        assert_eq!(out, Forwarded::Done);
        assert_eq!(f.report_mut().drops[&DropReason::LinkDown], 2);
        // A newer snapshot takes effect at once.
        f.install(snapshot(vec![L1, L2]));
        let out = f.forward_packet(Time::ZERO, &mut packet, Ingress::Link(L2), None);
        assert_eq!(out, Forwarded::Send(L1));
    }

    #[test]
    fn rejected_packets_get_an_icmp_error_routed_by_the_snapshot() {
        let mut f = forwarder();
        f.install(snapshot(vec![L1, L2]));
        // From the TUN to an address nobody routes: Destination Unreachable back to the host.
        let mut packet = udp(a("2001:db8:1::5"), a("2001:db8:99::1"), 64, 100);
        let out = f.forward_packet(Time::ZERO, &mut packet, Ingress::Tun, None);
        assert_eq!(out, Forwarded::Done);
        let (to, error) = f.poll_originated().unwrap();
        assert_eq!(to, Forwarded::Deliver);
        assert_eq!(
            forward::addresses(&error),
            Some((a("2001:db8:1::"), a("2001:db8:1::5")))
        );
        assert_eq!(f.report_mut().icmp_errors_sent, 1);
        assert!(f.poll_originated().is_none());
    }
}
