//! The node's side of the CNI plugin (`docs/dynamic-mesh.md` §3.3): the control socket's
//! `cni_*` requests. The core allocates, advertises and releases ([`Node::attach_container`]);
//! this answers the plugin, a new lease only once the lease table that records it is on disk,
//! and at start releases the leases of containers whose host veth is gone (a DEL while the node
//! was down).

use std::net::Ipv6Addr;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use connectopus_core::lease_table::AllocError;
use connectopus_core::node::{ContainerError, ContainerKey, ContainerLease};

use super::*;
use crate::control::{CniAttachment, CniLease, CniReleased};

/// CNI error codes the node answers with (`docs/dynamic-mesh.md` §3.2).
pub(super) mod code {
    /// The request's container key is invalid (as the plugin's bad configuration).
    pub const INVALID: u32 = 7;
    /// Try again later: the node is busy, or its lease table could not be written.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The pool is exhausted (or no name is free).
    pub const POOL_EXHAUSTED: u32 = 100;
    /// The node does not serve containers.
    pub const NOT_SERVED: u32 = 101;
    /// CHECK: the node does not hold the address for the container.
    pub const CHECK_MISMATCH: u32 = 103;
}

/// How long an answer may wait for its lease table to be written before the plugin is told
/// to try again (the `lease-writer` thread keeps failing, or the disk is that slow; the thread
/// goes on retrying, and the plugin's next ADD gets the lease once it is written). The loop
/// wakes at least once a second, which checks it.
const PERSIST_WAIT: Duration = Duration::from_secs(10);

/// An answer waiting for the lease table of `generation` to be written.
#[derive(Debug)]
struct Waiting {
    generation: u64,
    since: Instant,
    answer: ControlReply,
    reply: Sender<ControlReply>,
}

/// The `cni_*` answers waiting for the lease table.
#[derive(Debug, Default)]
pub(super) struct CniReplies {
    waiting: Vec<Waiting>,
}

impl Drop for CniReplies {
    /// The node stops (or restarts its instance) before the table was written: the plugin
    /// tries again later rather than reading "the node did not answer" as a refusal.
    fn drop(&mut self) {
        for w in self.waiting.drain(..) {
            let _ = w.reply.send(error(
                code::TRY_AGAIN_LATER,
                "the node stopped before the lease table was written",
            ));
        }
    }
}

fn error(code: u32, msg: impl Into<String>) -> ControlReply {
    ControlReply::CniError {
        code,
        msg: msg.into(),
    }
}

fn key(network: &str, container_id: &str, ifname: &str) -> ContainerKey {
    ContainerKey {
        network: network.to_owned(),
        container_id: container_id.to_owned(),
        ifname: ifname.to_owned(),
    }
}

/// Longest network name and container id the node keeps (they are stored in the lease table
/// and on disk; runtimes use 64 hex digits for ids).
pub(super) const MAX_KEY_PART: usize = 256;

/// Why a request's key cannot be a container's: an empty or overlong network or container id,
/// or an interface name the kernel would not take (code 7, as for a bad configuration).
fn invalid(request: &ControlRequest) -> Option<ControlReply> {
    let (network, container_id, ifname) = match request {
        ControlRequest::CniAdd {
            network,
            container_id,
            ifname,
            ..
        }
        | ControlRequest::CniDel {
            network,
            container_id,
            ifname,
        }
        | ControlRequest::CniCheck {
            network,
            container_id,
            ifname,
            ..
        } => (network, Some(container_id), Some(ifname)),
        ControlRequest::CniGc { network, keep } => {
            let bad = keep.iter().find(|a| {
                a.container_id.is_empty()
                    || a.container_id.len() > MAX_KEY_PART
                    || a.ifname.len() > MAX_KEY_PART
            });
            if let Some(bad) = bad {
                return Some(error(
                    code::INVALID,
                    format!("`keep` holds an invalid attachment `{}`", bad.container_id),
                ));
            }
            (network, None, None)
        }
        ControlRequest::CniStatus { network } => (network, None, None),
        _ => return None,
    };
    if network.is_empty() || network.len() > MAX_KEY_PART {
        return Some(error(code::INVALID, "`network` is empty or too long"));
    }
    if container_id.is_some_and(|id| id.is_empty() || id.len() > MAX_KEY_PART) {
        return Some(error(code::INVALID, "`container_id` is empty or too long"));
    }
    if let Some(Err(why)) = ifname.map(|i| connectopus_netlink::link::check_name(i)) {
        return Some(error(code::INVALID, format!("`ifname`: {why}")));
    }
    None
}

/// The host side of a container's veth pair, as the plugin names it.
fn host_ifname(key: &ContainerKey) -> String {
    connectopus_cni::netns::host_ifname(&key.container_id, &key.ifname)
}

impl Daemon {
    /// Answers a `cni_*` request now, or once the lease table that records it is written.
    pub(super) fn cni_request(&mut self, request: ControlRequest, reply: Sender<ControlReply>) {
        if let Some(refusal) = self.cni_refusal(&request).or_else(|| invalid(&request)) {
            let _ = reply.send(refusal);
            return;
        }
        let now = self.now();
        let answer = match request {
            ControlRequest::CniAdd {
                network,
                container_id,
                ifname,
                name,
                ..
            } => {
                let key = key(&network, &container_id, &ifname);
                match self.node.attach_container(now, key, &name) {
                    Ok(lease) => {
                        if !lease.existing {
                            tracing::info!(%network, container = %container_id, %ifname,
                                address = %lease.address, name = %lease.name, "container attached");
                        }
                        let answer = ControlReply::CniLease(self.cni_lease(&lease));
                        self.drain_node();
                        if lease.generation > self.node.leases_persisted_generation() {
                            self.cni.waiting.push(Waiting {
                                generation: lease.generation,
                                since: Instant::now(),
                                answer,
                                reply,
                            });
                            return;
                        }
                        answer
                    }
                    Err(ContainerError::NotServed) => error(
                        code::NOT_SERVED,
                        "this node issues no addresses (no `issue`)",
                    ),
                    Err(ContainerError::Alloc(AllocError::PoolExhausted)) => {
                        error(code::POOL_EXHAUSTED, "the node's pool is exhausted")
                    }
                    Err(ContainerError::Alloc(AllocError::NameTaken)) => error(
                        code::POOL_EXHAUSTED,
                        format!("no free name for `{name}` (with or without a suffix)"),
                    ),
                    Err(ContainerError::Alloc(AllocError::Restarting { until })) => error(
                        code::TRY_AGAIN_LATER,
                        format!(
                            "the node's lease table was lost; it issues again in {:.0} s",
                            until.saturating_since(now).as_secs_f64()
                        ),
                    ),
                }
            }
            ControlRequest::CniDel {
                network,
                container_id,
                ifname,
            } => match self
                .node
                .detach_container(now, &key(&network, &container_id, &ifname))
            {
                Some(lease) => {
                    tracing::info!(%network, container = %container_id, %ifname,
                        address = %lease.address, "container detached");
                    self.drain_node();
                    ControlReply::Done(format!("released {}", lease.address))
                }
                None => ControlReply::Done("no lease".to_owned()),
            },
            ControlRequest::CniCheck {
                network,
                container_id,
                ifname,
                address,
            } => match self.node.container(&key(&network, &container_id, &ifname)) {
                Some(lease) if lease.address == address => ControlReply::Done("ok".to_owned()),
                Some(lease) => error(
                    code::CHECK_MISMATCH,
                    format!("the container holds {}, not {address}", lease.address),
                ),
                None => error(code::CHECK_MISMATCH, "the container holds no lease"),
            },
            ControlRequest::CniGc { network, keep } => {
                let keep: Vec<ContainerKey> = keep
                    .iter()
                    .map(
                        |CniAttachment {
                             container_id,
                             ifname,
                         }| { key(&network, container_id, ifname) },
                    )
                    .collect();
                let gone = self.node.gc_containers(now, &network, &keep);
                for lease in &gone {
                    tracing::info!(%network, container = %lease.key.container_id,
                        address = %lease.address, "container released by GC");
                }
                self.drain_node();
                ControlReply::CniReleased(
                    gone.iter()
                        .map(|l| CniReleased {
                            container_id: l.key.container_id.clone(),
                            ifname: l.key.ifname.clone(),
                            address: l.address,
                            host_ifname: host_ifname(&l.key),
                        })
                        .collect(),
                )
            }
            ControlRequest::CniStatus { network } => self.cni_status(&network, now),
            _ => ControlReply::Error("not a cni request".to_owned()),
        };
        let _ = reply.send(answer);
    }

    /// Why this node serves no `cni_*` request: no pool, or `issue.containers: false`.
    fn cni_refusal(&self, request: &ControlRequest) -> Option<ControlReply> {
        let issue = self
            .config
            .nodes
            .get(&self.id)
            .and_then(|n| n.issue.as_ref());
        let why = match issue {
            None => "this node issues no addresses (no `issue`)",
            Some(issue) if !issue.containers => {
                "this node serves no containers (`issue.containers: false`)"
            }
            Some(_) if self.node.leases().is_none() => "this node issues no addresses",
            Some(_) => return None,
        };
        // Answered like a request the node does not know (the plugin returns 101, and 50 for
        // STATUS), naming the request.
        let cmd = match request {
            ControlRequest::CniAdd { .. } => "cni_add",
            ControlRequest::CniDel { .. } => "cni_del",
            ControlRequest::CniCheck { .. } => "cni_check",
            ControlRequest::CniGc { .. } => "cni_gc",
            _ => "cni_status",
        };
        Some(ControlReply::Error(format!("{cmd}: {why}")))
    }

    fn cni_status(&self, network: &str, now: Time) -> ControlReply {
        let Some(table) = self.node.leases() else {
            return error(code::NOT_AVAILABLE, "this node issues no addresses");
        };
        if let Some(until) = table.quarantined(now) {
            return error(
                code::NOT_AVAILABLE,
                format!(
                    "the lease table was lost; the node issues again in {:.0} s",
                    until.saturating_since(now).as_secs_f64()
                ),
            );
        }
        let pool = table.config().pool;
        let host_bits = 128 - u32::from(pool.len());
        let size: u128 = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let size = size.min(connectopus_core::lease_table::MAX_LEASES as u128);
        let used = table.leases().count() + table.hold_down_len();
        if used as u128 >= size {
            return error(code::NOT_AVAILABLE, format!("the pool {pool} is exhausted"));
        }
        let of_network = table
            .container_leases()
            .filter(|l| l.container.as_ref().is_some_and(|c| c.network == network))
            .count();
        ControlReply::Done(format!(
            "ok: {} of {size} in use ({of_network} containers of {network})",
            table.leases().count()
        ))
    }

    /// What the plugin sets up for `lease`: the address, its mirrors, the routes, MTU and DNS.
    fn cni_lease(&self, lease: &ContainerLease) -> CniLease {
        let planes: Vec<_> = self
            .node
            .mesh_prefixes()
            .iter()
            .filter(|p| !p.deprecated)
            .copied()
            .collect();
        let mtu = self
            .config
            .nodes
            .get(&self.id)
            .map_or(1280, |n| start::node_mtu(&n.backends));
        let nameserver = match &self.dns {
            dns::Dns::Running(_) => Some(self.node.address()),
            dns::Dns::Off(_) => None,
        };
        CniLease {
            address: lease.address,
            mirrors: planes.iter().map(|p| p.mirror(lease.address)).collect(),
            routes: std::iter::once(self.subnet.clone())
                .chain(planes.iter().map(|p| p.prefix.to_string()))
                .collect(),
            mtu: u32::from(mtu),
            nameserver,
            domain: self.config.global.domain.clone(),
            name: lease.name.clone(),
            existing: lease.existing,
        }
    }

    /// Sends the answers whose lease table is written; those that waited too long (the write
    /// failed) are told to try again.
    pub(super) fn answer_persisted_cni(&mut self) {
        if self.cni.waiting.is_empty() {
            return;
        }
        let persisted = self.node.leases_persisted_generation();
        let mut waiting = std::mem::take(&mut self.cni.waiting);
        waiting.retain_mut(|w| {
            if w.generation <= persisted {
                let answer = std::mem::replace(&mut w.answer, ControlReply::Done(String::new()));
                let _ = w.reply.send(answer);
                false
            } else if w.since.elapsed() >= PERSIST_WAIT {
                let _ = w.reply.send(error(
                    code::TRY_AGAIN_LATER,
                    "the lease table could not be written (see the node's log)",
                ));
                false
            } else {
                true
            }
        });
        self.cni.waiting = waiting;
    }

    /// At start: releases the leases of containers whose host veth no longer exists (the
    /// plugin's DEL ran while the node was down and removed only the veth).
    pub(super) fn reconcile_containers(&mut self) {
        let containers = self.node.containers();
        if containers.is_empty() {
            return;
        }
        let links = match connectopus_netlink::Netlink::open().and_then(|mut nl| nl.links()) {
            Ok(links) => links,
            Err(error) => {
                tracing::warn!(%error, "cannot list links: container leases not reconciled");
                return;
            }
        };
        let now = self.now();
        let mut released = 0;
        for lease in containers {
            let host = host_ifname(&lease.key);
            if links.iter().any(|l| l.name == host) {
                continue;
            }
            let address: Ipv6Addr = lease.address;
            if self.node.detach_container(now, &lease.key).is_some() {
                released += 1;
                tracing::info!(network = %lease.key.network, container = %lease.key.container_id,
                    %address, %host, "container gone while the node was down: lease released");
            }
        }
        if released > 0 {
            self.drain_node();
        }
    }
}
