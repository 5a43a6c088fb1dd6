//! Routes and forwarding: the route computation, the forwarding table and the snapshot the
//! dataplane forwards by, the node's own per-packet path, and control datagrams.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::sync::Arc;

use connectopus_wire::{ControlDatagram, Cost, Prefix, PrefixAdvert};

use super::{Command, Event, Forwarded, Node, Transmit};
use crate::LinkId;
use crate::forward::{DropReason, ForwardingTable, Ingress, RouteTarget};
use crate::forward4::mapped;
#[cfg(doc)]
use crate::forwarder::Forwarder;
use crate::forwarder::{DataplaneReport, ForwardingSnapshot};
use crate::route::{self, PrefixTable, RouteSet, SpfOptions};
use crate::time::Time;

impl Node {
    /// Routes one IPv6 packet read from the TUN device (the simulator's TUN; the daemon calls
    /// [`crate::forwarder::Forwarder::forward_packet`] on its own buffers).
    pub fn handle_tun_packet(&mut self, now: Time, packet: &mut [u8]) {
        let forwarded = self.forward_packet(now, packet, Ingress::Tun, None);
        self.queue_forwarded(forwarded, packet);
        self.after_input(now);
    }

    /// Forwards one packet by the node's own [`Forwarder`] (the per-packet path the daemon's
    /// workers run, see [`Forwarder::forward_packet`]) and takes its counts at once; an ICMPv6
    /// error it answers with comes out of [`Node::poll_tun_packet`] or [`Node::poll_transmit`].
    pub fn forward_packet(
        &mut self,
        now: Time,
        packet: &mut [u8],
        ingress: Ingress,
        segment_len: Option<usize>,
    ) -> Forwarded {
        let forwarded = self
            .forwarder
            .forward_packet(now, packet, ingress, segment_len);
        self.absorb_own_forwarder();
        forwarded
    }

    /// Takes the own forwarder's counts and queues its ICMPv6 errors as output.
    pub(super) fn absorb_own_forwarder(&mut self) {
        let mut report = std::mem::take(self.forwarder.report_mut());
        self.absorb_dataplane(&mut report);
        *self.forwarder.report_mut() = report;
        while let Some((forwarded, packet)) = self.forwarder.poll_originated() {
            match forwarded {
                Forwarded::Deliver => self.tun_packets.push_back(packet),
                Forwarded::Send(link) => self.transmits.push_back(Transmit {
                    link,
                    payload: packet,
                }),
                Forwarded::Done => {}
            }
        }
    }

    /// Takes what a dataplane worker's [`Forwarder`] counted (traffic per link, which keeps
    /// their sessions alive; drops; ICMPv6 errors) and clears the report.
    pub fn absorb_dataplane(&mut self, report: &mut DataplaneReport) {
        for (reason, n) in &report.drops {
            if *n > 0 {
                *self.counters.drops.entry(*reason).or_default() += n;
            }
        }
        for (link, traffic) in &report.links {
            if let Some(session) = self.sessions.get_mut(link) {
                session.note_traffic(traffic);
            }
        }
        self.counters.icmp_errors_sent += report.icmp_errors_sent;
        report.clear();
    }

    /// The snapshot dataplane workers forward by: install it whenever it changes (compare with
    /// [`Arc::ptr_eq`]; [`Command::InstallForwarding`] announces each new one).
    pub fn forwarding_snapshot(&self) -> &Arc<ForwardingSnapshot> {
        self.forwarder.snapshot()
    }

    /// The links packets may arrive and leave on, sorted: those whose session is established,
    /// except joining sessions. A joining session carries lease messages only (its peer has no
    /// address yet, and its key is checked against the join policy only at Join), so the
    /// dataplanes, which forward without asking the node, must not take packets from it.
    fn forwarding_links(&self) -> impl Iterator<Item = LinkId> + '_ {
        self.sessions
            .iter()
            .filter(|(link, s)| s.is_established() && !self.is_joining_session(**link))
            .map(|(link, _)| *link)
    }

    /// Publishes a new forwarding snapshot if the table or the set of established sessions
    /// changed since the last one.
    pub(super) fn publish_forwarding(&mut self) {
        let current = self.forwarder.snapshot();
        let same_links = self
            .forwarding_links()
            .eq(current.established.iter().copied());
        if same_links && Arc::ptr_eq(&current.table, &self.table) {
            return;
        }
        let snapshot = Arc::new(ForwardingSnapshot {
            table: self.table.clone(),
            established: self.forwarding_links().collect(),
            generation: current.generation + 1,
        });
        self.forwarder.install(snapshot.clone());
        self.commands
            .push_back(Command::InstallForwarding(snapshot));
    }

    /// Queues a forwarded packet as the simulator's output (the daemon moves the bytes itself).
    pub(super) fn queue_forwarded(&mut self, forwarded: Forwarded, packet: &[u8]) {
        match forwarded {
            Forwarded::Deliver => self.tun_packets.push_back(packet.to_vec()),
            Forwarded::Send(link) => self.transmits.push_back(Transmit {
                link,
                payload: packet.to_vec(),
            }),
            Forwarded::Done => {}
        }
    }

    /// Counts a packet the dataplane dropped.
    pub fn count_drop(&mut self, reason: DropReason) {
        *self.counters.drops.entry(reason).or_default() += 1;
    }

    /// Answers `packet`, which the dataplane rejected, with the ICMPv6 error `kind` (subject to
    /// the rate limit); the error comes out of [`Node::poll_tun_packet`] or
    /// [`Node::poll_transmit`].
    pub fn send_icmp_error(&mut self, now: Time, kind: crate::icmp::IcmpErrorKind, packet: &[u8]) {
        self.forwarder.reject(now, kind, packet);
        self.absorb_own_forwarder();
    }

    /// Sends a control datagram from `src_port` on this node to (`dst`, `dst_port`).
    ///
    /// # Errors
    /// [`DropReason::NoRoute`] if no route leads to `dst`.
    pub fn send_control_datagram(
        &mut self,
        now: Time,
        src_port: u16,
        dst: Ipv6Addr,
        dst_port: u16,
        payload: &[u8],
    ) -> Result<(), DropReason> {
        let datagram = ControlDatagram {
            hop_limit: 64,
            src: self.config.address,
            src_port,
            dst,
            dst_port,
            payload,
        };
        let result = self.route_control_datagram(now, &datagram, None);
        self.after_input(now);
        result
    }

    pub(super) fn route_control_datagram(
        &mut self,
        now: Time,
        datagram: &ControlDatagram<'_>,
        from: Option<LinkId>,
    ) -> Result<(), DropReason> {
        if datagram.dst == self.config.address
            && datagram.dst_port == connectopus_wire::lease::LEASE_PORT
        {
            // Port 0 carries lease messages; the core handles it, local programs never see it.
            self.process_lease_datagram(now, datagram.src, datagram.payload);
            return Ok(());
        }
        if datagram.dst == self.config.address {
            self.events.push_back(Event::ControlDatagram {
                src: datagram.src,
                src_port: datagram.src_port,
                dst_port: datagram.dst_port,
                payload: datagram.payload.to_vec(),
            });
            return Ok(());
        }
        let hop_limit = if from.is_some() {
            datagram.hop_limit.saturating_sub(1)
        } else {
            datagram.hop_limit
        };
        if hop_limit == 0 {
            self.count_drop(DropReason::HopLimitExceeded);
            return Err(DropReason::HopLimitExceeded);
        }
        match self.table.routes.lookup(datagram.dst).map(|(_, t)| *t) {
            Some(RouteTarget::Link { link, .. }) => {
                let forwarded = ControlDatagram {
                    hop_limit,
                    ..*datagram
                };
                self.send_on_link(now, link, forwarded.encode());
                Ok(())
            }
            Some(RouteTarget::Local) | None => {
                self.count_drop(DropReason::NoRoute);
                Err(DropReason::NoRoute)
            }
        }
    }

    /// Sends `payload` on `link` if its session is established; counts a drop otherwise.
    pub(super) fn send_on_link(&mut self, _now: Time, link: LinkId, payload: Vec<u8>) {
        match self.sessions.get_mut(&link) {
            Some(session) if session.is_established() => {
                session.note_sent(payload.len());
                self.transmits.push_back(Transmit { link, payload });
            }
            _ => self.count_drop(DropReason::LinkDown),
        }
    }

    /// Runs Dijkstra over the database and installs a new forwarding table if it changed.
    pub(super) fn recompute_routes(&mut self) {
        self.counters.spf_runs += 1;
        let own_prefixes = self.own_prefixes();
        let own = route::NodeView {
            address: self.config.address,
            adjacencies: &self.own_adjacencies,
            prefixes: &own_prefixes,
        };
        let others = self.database.values().map(|e| route::NodeView {
            address: e.update.origin,
            adjacencies: &e.update.adjacencies,
            prefixes: &e.update.prefixes,
        });
        let routes = route::compute_routes(
            self.config.address,
            std::iter::once(own).chain(others),
            SpfOptions {
                require_bidirectional: true,
            },
        );
        let table = self.build_forwarding_table(&routes);
        self.routes = routes;
        self.rebuild_names();
        if !same_routes(&table.routes, &self.table.routes) || self.table.node_address.is_none() {
            let n_routes = table.routes.len();
            let table = Arc::new(ForwardingTable {
                generation: self.table.generation + 1,
                ..table
            });
            self.table = table;
            self.fastpath_dirty = true;
            self.events.push_back(Event::RoutesChanged { n_routes });
        }
        self.publish_forwarding();
    }

    /// Chooses, for every first-hop neighbour, the session that carries its traffic: the
    /// cheapest established one, the newest on ties.
    pub(super) fn best_links(&self) -> BTreeMap<Ipv6Addr, (LinkId, u16)> {
        let mut best: BTreeMap<Ipv6Addr, (Cost, Time, LinkId, u16)> = BTreeMap::new();
        for (link, session) in &self.sessions {
            let (true, Some(peer)) = (session.is_established(), session.peer()) else {
                continue;
            };
            let candidate = (
                session.info().cost,
                session.established_at().unwrap_or(Time::ZERO),
                *link,
                session.info().mtu,
            );
            best.entry(peer.address)
                .and_modify(|current| {
                    if (candidate.0, std::cmp::Reverse(candidate.1))
                        < (current.0, std::cmp::Reverse(current.1))
                    {
                        *current = candidate;
                    }
                })
                .or_insert(candidate);
        }
        best.into_iter()
            .map(|(peer, (_, _, link, mtu))| (peer, (link, mtu)))
            .collect()
    }

    pub(super) fn build_forwarding_table(&self, routes: &RouteSet) -> ForwardingTable {
        let links = self.best_links();
        let mut table: PrefixTable<RouteTarget> = PrefixTable::new();
        let target = |first_hop: Option<Ipv6Addr>| match first_hop {
            None => Some(RouteTarget::Local),
            Some(hop) => links.get(&hop).map(|(link, mtu)| RouteTarget::Link {
                link: *link,
                mtu: *mtu,
            }),
        };
        for (prefix, route) in &routes.prefixes {
            if let Some(t) = target(route.first_hop) {
                table.insert(*prefix, t);
            }
        }
        for (address, route) in &routes.nodes {
            if let Some(t) = target(route.first_hop) {
                table.insert(Prefix::host(*address), t);
            }
        }
        // A neighbour whose update has not arrived yet is still reachable directly.
        for (peer, (link, mtu)) in &links {
            let host = Prefix::host(*peer);
            if table.get(&host).is_none() {
                table.insert(
                    host,
                    RouteTarget::Link {
                        link: *link,
                        mtu: *mtu,
                    },
                );
            }
        }
        table.insert(Prefix::host(self.config.address), RouteTarget::Local);
        if let Some(address4) = self.config.address4 {
            table.insert(Prefix::host(mapped(address4)), RouteTarget::Local);
        }
        let entries: Vec<(Prefix, RouteTarget)> = table.iter().map(|(p, t)| (p, *t)).collect();
        for (mirror, target) in self.mirror_routes(&entries) {
            table.insert(mirror, target);
        }
        ForwardingTable {
            routes: table,
            node_address: Some(self.config.address),
            node_address4: self.config.address4,
            generation: 0,
        }
    }

    /// The prefixes this node advertises: its attachments' and its IPv4 address as an
    /// IPv4-mapped /128.
    pub(super) fn own_prefixes(&self) -> Vec<PrefixAdvert> {
        let mut prefixes = self.config.prefixes.clone();
        prefixes.extend(self.container_prefixes());
        if let Some(address4) = self.config.address4 {
            prefixes.push(PrefixAdvert {
                prefix: Prefix::host(mapped(address4)),
                cost: Cost(0),
            });
        }
        prefixes
    }
}

pub(super) fn same_routes(a: &PrefixTable<RouteTarget>, b: &PrefixTable<RouteTarget>) -> bool {
    a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x == y)
}
