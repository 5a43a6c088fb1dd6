//! The `status` report of a running node.

use super::*;

/// How often the loop renders the metrics it serves.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

impl Daemon {
    /// Renders the metrics for the HTTP thread when they are served and a second has passed.
    pub(super) fn publish_metrics(&mut self) {
        let Some(snapshot) = &self.metrics else {
            return;
        };
        if self
            .metrics_published
            .is_some_and(|at| at.elapsed() < METRICS_INTERVAL)
        {
            return;
        }
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        snapshot.publish(crate::metrics::render(&self.status(), now_unix));
        self.metrics_published = Some(Instant::now());
    }

    pub(super) fn wall_time(&self, t: Time) -> f64 {
        let at = self.started_wall + Duration::from_nanos(t.as_nanos());
        at.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    pub(super) fn status(&self) -> control::StatusReport {
        let privilege = crate::privilege::report(&self.seccomp);
        let now = self.now();
        let routes = self.node.routes();
        let name_of = |addr: std::net::Ipv6Addr| -> Option<String> {
            if addr == self.node.address() {
                return Some(self.node.name().to_owned());
            }
            self.node
                .known_nodes()
                .find(|(u, _)| u.origin == addr)
                .map(|(u, _)| u.name.clone())
        };
        let mut links = Vec::new();
        for (id, l) in &self.links {
            let session = self.node.sessions().find(|s| s.link() == *id);
            let counters = session.map(|s| s.counters()).unwrap_or_default();
            links.push(LinkReport {
                link: id.0,
                backend: l.backend.clone(),
                kind: l.kind.to_owned(),
                remote: l.remote.to_string(),
                state: match session {
                    Some(s) => s.state().as_str().to_owned(),
                    None if !l.announced => "tls handshake".to_owned(),
                    None => "closing".to_owned(),
                },
                peer_address: session
                    .and_then(|s| s.peer())
                    .map(|p| p.address.to_string()),
                peer_name: session.and_then(|s| s.peer()).map(|p| p.name.clone()),
                since_unix: session
                    .and_then(|s| s.established_at())
                    .map(|t| self.wall_time(t)),
                rtt_ms: session
                    .and_then(|s| s.rtt())
                    .map(|d| d.as_secs_f64() * 1000.0),
                cost: l.cost.as_f64(),
                mtu: l.mtu,
                bytes_in: counters.bytes_in,
                bytes_out: counters.bytes_out,
                packets_in: counters.messages_in,
                packets_out: counters.messages_out,
                dtls_epochs: match &l.transport {
                    Transport::Dtls(d) => d.association.epochs().map(|(tx, rx)| [tx, rx]),
                    Transport::Tcp(_) | Transport::PlainUdp(_) | Transport::TcpOnWorker { .. } => {
                        None
                    }
                },
                dtls_cipher: match &l.transport {
                    Transport::Dtls(d) => d.association.cipher_name().map(str::to_owned),
                    Transport::Tcp(_) | Transport::PlainUdp(_) | Transport::TcpOnWorker { .. } => {
                        None
                    }
                },
                fastpath: self.fastpath.link_report(
                    *id,
                    l.kind,
                    matches!(l.transport, Transport::PlainUdp(_)),
                ),
            });
        }
        let mut route_reports = Vec::new();
        for (prefix, target) in self.node.forwarding_table().routes.iter() {
            let (via, next_hop) = match target {
                forward::RouteTarget::Local => ("local".to_owned(), None),
                forward::RouteTarget::Link { link, .. } => {
                    let peer = self
                        .node
                        .sessions()
                        .find(|s| s.link() == *link)
                        .and_then(|s| s.peer())
                        .map(|p| p.name.clone());
                    (link.to_string(), peer)
                }
            };
            let cost = routes
                .nodes
                .get(&prefix.addr())
                .filter(|_| prefix.len() == 128)
                .map(|r| r.cost)
                .or_else(|| routes.prefixes.get(&prefix).map(|r| r.cost))
                .map(|c| c as f64 / 1000.0);
            route_reports.push(RouteReport {
                prefix: prefix.to_string(),
                via,
                next_hop,
                cost,
            });
        }
        let mut nodes = vec![NodeReport {
            address: self.node.address().to_string(),
            name: self.node.name().to_owned(),
            epoch: self.node.epoch(),
            sequence: self.node.sequence(),
            age_secs: 0.0,
            cost: Some(0.0),
            adjacencies: self
                .node
                .sessions()
                .filter(|s| s.is_established())
                .filter_map(|s| {
                    s.peer()
                        .map(|p| (p.address.to_string(), s.info().cost.as_f64()))
                })
                .collect(),
        }];
        for (update, received) in self.node.known_nodes() {
            nodes.push(NodeReport {
                address: update.origin.to_string(),
                name: update.name.clone(),
                epoch: update.epoch,
                sequence: update.sequence,
                age_secs: (now - received).as_secs_f64(),
                cost: routes
                    .nodes
                    .get(&update.origin)
                    .map(|r| r.cost as f64 / 1000.0),
                adjacencies: update
                    .adjacencies
                    .iter()
                    .map(|a| (a.peer.to_string(), a.cost.as_f64()))
                    .collect(),
            });
        }
        let counters = self.node.counters();
        let mut counter_map = BTreeMap::new();
        counter_map.insert("updates_accepted".to_owned(), counters.updates_accepted);
        counter_map.insert("updates_originated".to_owned(), counters.updates_originated);
        counter_map.insert("icmp_errors_sent".to_owned(), counters.icmp_errors_sent);
        counter_map.insert("spf_runs".to_owned(), counters.spf_runs);
        for (reason, n) in &counters.updates_rejected {
            counter_map.insert(format!("updates_rejected_{}", reason.as_str()), *n);
        }
        for (reason, n) in &counters.hellos_rejected {
            counter_map.insert(format!("hellos_rejected_{reason}"), *n);
        }
        for (what, n) in &counters.malformed_messages {
            counter_map.insert(format!("malformed_messages_{what}"), *n);
        }
        for (what, n) in &counters.config_offers {
            counter_map.insert(format!("config_offers_{what}"), *n);
        }
        for (what, n) in &counters.leases {
            counter_map.insert(format!("lease_messages_{what}"), *n);
        }
        counter_map.insert(
            "config_offers_checked".to_owned(),
            self.offer_checker.checks_started(),
        );
        let mut offload = self.worker.offload_counters;
        for other in &self.dataplane.offload {
            offload.add(other);
        }
        offload.report(&mut counter_map);
        counter_map.insert(
            "code_pages_unmapped_bytes".to_owned(),
            self.code_unmapped.resident_bytes,
        );
        counter_map.insert(
            "worker_channel_drops".to_owned(),
            self.dataplane
                .channel_drops
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        self.limit_counters.report(&mut counter_map);
        self.plain_udp_counters.report(&mut counter_map);
        counter_map.insert(
            "dtls_listener_kernel_drops".to_owned(),
            self.listener_kernel_drops(),
        );
        let _ = name_of;
        control::StatusReport {
            name: self.node.name().to_owned(),
            address: self.node.address().to_string(),
            subnet: self.subnet.clone(),
            domain: self.config.global.domain.clone(),
            lease: self.lease_report(now),
            mesh_prefixes: self.mesh_prefix_report(now, name_of),
            authorized_keys: self
                .config
                .global
                .authorized_keys
                .iter()
                .map(|k| k.0.trim().to_owned())
                .collect(),
            epoch: self.node.epoch(),
            sequence: self.node.sequence(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            config_version: self.node.config_version(),
            removed: self.removed.clone(),
            names: self
                .node
                .names()
                .iter()
                .map(|(name, entry)| control::NameReport {
                    name: name.clone(),
                    address: entry.address.to_string(),
                    owner: entry.owner.to_string(),
                })
                .collect(),
            name_conflicts: self
                .node
                .name_conflicts()
                .iter()
                .map(|c| {
                    let claimants: Vec<String> =
                        c.claimants.iter().map(ToString::to_string).collect();
                    format!("{} claimed by {}", c.contested, claimants.join(", "))
                })
                .collect(),
            dns: self.dns.describe(),
            tun: if self.tuns.is_empty() {
                "disabled".to_owned()
            } else {
                self.tuns
                    .iter()
                    .map(TunDevice::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            dataplane: self.worker.io.backend().as_str().to_owned(),
            dataplane_fallback_reason: self.worker.io.fallback_reason().map(|r| r.to_string()),
            offload: control::OffloadReport {
                tun: self
                    .tuns
                    .iter()
                    .map(|t| (t.name().to_owned(), t.offload().describe()))
                    .collect(),
                udp_gso: datapath::Offloads::describe(&self.worker.offloads.udp_gso),
                udp_gro: datapath::Offloads::describe(&self.worker.offloads.udp_gro),
            },
            workers: self.worker_reports(),
            control_plane: self.control_plane_report(),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            idle_wake: self.idle_wake.clone(),
            cpu_local: match &self.dataplane.cpu_local {
                Ok(cpus) => format!(
                    "on: {}",
                    cpus.iter()
                        .enumerate()
                        .map(|(i, cpu)| format!("worker {i} on CPU {cpu}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Err(why) => format!("off: {why}"),
            },
            ebpf: self.ebpf.describe(),
            fastpath: self.fastpath.describe(),
            fastpath_fallbacks: self.fastpath.reasons(),
            capabilities: privilege.capabilities,
            no_new_privs: privilege.no_new_privs,
            seccomp: privilege.seccomp,
            backends: self.backend_reports(),
            links,
            routes: route_reports,
            nodes,
            drops: DropReason::ALL
                .iter()
                .map(|r| {
                    (
                        r.as_str().to_owned(),
                        counters.drops.get(r).copied().unwrap_or(0),
                    )
                })
                .collect(),
            counters: counter_map,
            spf_seconds_total: self.spf_time.as_secs_f64(),
            dns_queries: self.dns.queries(),
            namespaces: self.namespace_reports(),
            services: self.service_reports(),
        }
    }
}

impl Daemon {
    /// The one-line state systemd shows (`STATUS=`): sessions up, backends configured.
    pub(super) fn status_line(&self) -> String {
        status_line(&self.node, self.backends.len() + self.failed.len())
    }
}

/// `"<n> links up, <m> backends configured"`, from the node's sessions.
pub(super) fn status_line(node: &Node, configured: usize) -> String {
    let up = node
        .sessions()
        .filter(|s| s.established_at().is_some())
        .count();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    format!(
        "{up} link{} up, {configured} backend{} configured",
        plural(up),
        plural(configured)
    )
}
