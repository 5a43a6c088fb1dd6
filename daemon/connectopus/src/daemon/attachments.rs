//! The node's attachments besides its TUN devices, reconciled with the configuration: network
//! namespaces (each a TUN device the attach helper hands over, serving the namespace's /128)
//! and inetd-style services. See `crate::attach`.
//!
//! A namespace that is added is asked of the helper; once its TUN device arrives the node
//! reads and writes it like any other, and advertises its /128 (with its cost) and its name;
//! with an `address4`, also that address (as its IPv4-mapped /128) and the name's `A` record.
//! One that is removed is withdrawn, its device closed and its process stopped; one whose
//! address, services or MTU changed is replaced; a new cost is only re-advertised. A namespace
//! that fails (or whose process ends) is withdrawn and asked for again 5 s later.
//!
//! Packets between two of the node's TUN devices (a namespace and the host, or two
//! namespaces) never leave the node: [`Daemon::hairpin`] writes them to the other device.

use std::os::fd::OwnedFd;

use connectopus_config::attach::{self, NamespaceSpec, changes};
use connectopus_offload::VNET_HDR_LEN;
use connectopus_wire::{NameBinding, NameBinding4, Prefix, PrefixAdvert};
use uring_io::BufId;

use crate::attach::helper::{Client, FromHelper, NamespaceSetup, Received, ToHelper};
use crate::attach::services::Services;

use super::*;

/// How long after a failure a namespace is asked for again.
const NAMESPACE_RETRY: Duration = Duration::from_secs(5);

/// A namespace the node asked for.
#[derive(Debug)]
struct Namespace {
    spec: NamespaceSpec,
    generation: u64,
    /// Its TUN device's slot, once it arrived.
    slot: Option<usize>,
    /// Set after a failure: when to ask again.
    retry_at: Option<Instant>,
    /// Why it last failed, while it waits to be asked for again.
    error: Option<String>,
    /// The process that holds it, once up.
    pid: Option<i32>,
    /// Its services: their process (while it runs) and restarts.
    services: BTreeMap<String, (Option<i32>, u32)>,
}

/// What the `tun_devs` entries advertise: prefixes, names, IPv4 names.
pub(super) type TunDevAdverts = (Vec<PrefixAdvert>, Vec<NameBinding>, Vec<NameBinding4>);

/// The attachments' state.
#[derive(Debug, Default)]
pub(super) struct Attachments {
    helper: Option<Arc<Client>>,
    namespaces: BTreeMap<String, Namespace>,
    next_generation: u64,
    services: Services,
    /// What the `tun_devs` entries advertise.
    tun_devs: TunDevAdverts,
}

impl Attachments {
    pub(super) fn new(helper: Option<Arc<Client>>, tun_devs: TunDevAdverts) -> Self {
        Self {
            helper,
            tun_devs,
            ..Self::default()
        }
    }
}

impl Daemon {
    /// Makes the namespaces and services of `node` (this node's entry) run.
    pub(super) fn apply_attachments(
        &mut self,
        global: &connectopus_config::GlobalConfig,
        node: &connectopus_config::NodeConfig,
        mtu: u16,
    ) {
        let desired = attach::namespaces(global, node, mtu);
        let running: BTreeMap<String, NamespaceSpec> = self
            .attachments
            .namespaces
            .iter()
            .map(|(n, ns)| (n.clone(), ns.spec.clone()))
            .collect();
        let plan = changes(&running, &desired, NamespaceSpec::needs_restart);
        for name in &plan.stop {
            self.stop_namespace(name);
        }
        for name in &plan.start {
            if let Some(spec) = desired.get(name) {
                self.start_namespace(spec.clone());
            }
        }
        // Cost changes.
        for (name, spec) in &desired {
            if let Some(ns) = self.attachments.namespaces.get_mut(name) {
                ns.spec.cost = spec.cost;
            }
        }
        let services = attach::services(node);
        let helper = self.attachments.helper.clone();
        self.attachments.services.apply(&services, helper.as_ref());
        self.publish_attachments();
    }

    fn start_namespace(&mut self, spec: NamespaceSpec) {
        self.attachments.next_generation += 1;
        let generation = self.attachments.next_generation;
        let name = spec.name.clone();
        let mut ns = Namespace {
            spec,
            generation,
            slot: None,
            retry_at: None,
            error: None,
            pid: None,
            services: BTreeMap::new(),
        };
        match &self.attachments.helper {
            Some(helper) => {
                let request = ToHelper::StartNamespace {
                    generation,
                    setup: NamespaceSetup::from_spec(&ns.spec),
                };
                if let Err(error) = helper.request(&request, None) {
                    tracing::error!(namespace = %name, %error, "cannot ask the attach helper for the namespace");
                    ns.retry_at = Some(Instant::now() + NAMESPACE_RETRY);
                    ns.error = Some(format!("the attach helper is gone: {error}"));
                }
            }
            None => {
                tracing::error!(namespace = %name, "namespace cannot run: the node has no attach helper");
                ns.error = Some("the node has no attach helper".to_owned());
            }
        }
        self.attachments.namespaces.insert(name, ns);
    }

    fn stop_namespace(&mut self, name: &str) {
        let Some(ns) = self.attachments.namespaces.remove(name) else {
            return;
        };
        if let Some(slot) = ns.slot {
            self.retire_tun_slot(slot);
        }
        if let Some(helper) = &self.attachments.helper {
            let _ = helper.request(
                &ToHelper::StopNamespace {
                    name: name.to_owned(),
                },
                None,
            );
        }
        tracing::info!(namespace = %name, "namespace removed");
    }

    /// Handles a message of the attach helper about a namespace.
    pub(super) fn on_attach_message(&mut self, received: Received<FromHelper>) {
        match received.message {
            FromHelper::NamespaceReady {
                name,
                generation,
                pid,
            } => {
                let Some(fd) = received.fd else {
                    return;
                };
                self.namespace_ready(&name, generation, pid, fd);
            }
            FromHelper::NamespaceFailed {
                name,
                generation,
                error,
            } => {
                let Some(ns) = self.attachments.namespaces.get_mut(&name) else {
                    return;
                };
                if ns.generation != generation {
                    return;
                }
                tracing::error!(namespace = %name, %error, "namespace failed; retrying in 5 s");
                let slot = ns.slot.take();
                ns.retry_at = Some(Instant::now() + NAMESPACE_RETRY);
                ns.error = Some(error);
                ns.pid = None;
                ns.services.clear();
                if let Some(slot) = slot {
                    self.retire_tun_slot(slot);
                    self.publish_attachments();
                }
                if let Some(helper) = &self.attachments.helper {
                    let _ = helper.request(&ToHelper::StopNamespace { name }, None);
                }
            }
            FromHelper::ServiceState {
                name,
                generation,
                service,
                pid,
                restarts,
            } => {
                if let Some(ns) = self
                    .attachments
                    .namespaces
                    .get_mut(&name)
                    .filter(|ns| ns.generation == generation)
                {
                    ns.services.insert(service, (pid, restarts));
                }
            }
            FromHelper::SpawnFailed { .. } | FromHelper::Exited { .. } | FromHelper::ResetDone => {}
        }
    }

    fn namespace_ready(&mut self, name: &str, generation: u64, pid: i32, fd: OwnedFd) {
        let current = self
            .attachments
            .namespaces
            .get(name)
            .filter(|ns| ns.generation == generation && ns.slot.is_none())
            .map(|ns| NamespaceSetup::from_spec(&ns.spec));
        let Some(setup) = current else {
            // A namespace stopped or replaced since: its device closes with `fd`.
            return;
        };
        let tun = TunDevice::adopt(fd, &setup.ifname(), setup.address);
        let slot = match tun.and_then(|t| self.add_tun_slot(t)) {
            Ok(slot) => slot,
            Err(error) => {
                tracing::error!(namespace = %name, error = %format!("{error:#}"), "cannot use the namespace's TUN device");
                return;
            }
        };
        tracing::info!(namespace = %name, address = %setup.address, pid, "namespace up");
        if let Some(ns) = self.attachments.namespaces.get_mut(name) {
            ns.slot = Some(slot);
            ns.pid = Some(pid);
            ns.error = None;
        }
        self.publish_attachments();
    }

    /// The namespaces for `status`, by name.
    pub(super) fn namespace_reports(&self) -> Vec<control::NamespaceReport> {
        self.attachments
            .namespaces
            .values()
            .map(|ns| control::NamespaceReport {
                name: ns.spec.name.clone(),
                address: ns.spec.address.to_string(),
                address4: ns.spec.address4.map(|a| a.to_string()),
                state: match (&ns.slot, &ns.error) {
                    (Some(_), _) => "up".to_owned(),
                    (None, Some(error)) => format!("failed: {error} (retrying)"),
                    (None, None) => "starting".to_owned(),
                },
                pid: ns.slot.and(ns.pid),
                services: ns
                    .spec
                    .services
                    .keys()
                    .map(|name| {
                        let (pid, restarts) = ns.services.get(name).copied().unwrap_or_default();
                        control::NamespaceServiceReport {
                            name: name.clone(),
                            pid,
                            restarts,
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// The inetd-style services for `status`.
    pub(super) fn service_reports(&self) -> Vec<control::ServiceReport> {
        self.attachments.services.report()
    }

    /// The slot of the namespace whose IPv4 address is the destination of the IPv4 `packet`.
    pub(super) fn namespace_tun4(&self, packet: &[u8]) -> Option<usize> {
        if packet.first().is_none_or(|b| b >> 4 != 4) {
            return None;
        }
        let (_, destination) = connectopus_core::forward4::addresses4(packet)?;
        self.attachments
            .namespaces
            .values()
            .find(|ns| ns.spec.address4 == Some(destination))
            .and_then(|ns| ns.slot)
    }

    /// Asks again for namespaces that failed 5 s ago.
    pub(super) fn retry_namespaces(&mut self) {
        let now = Instant::now();
        let due: Vec<NamespaceSpec> = self
            .attachments
            .namespaces
            .values()
            .filter(|ns| ns.retry_at.is_some_and(|t| t <= now))
            .map(|ns| ns.spec.clone())
            .collect();
        for spec in due {
            self.attachments.namespaces.remove(&spec.name);
            self.start_namespace(spec);
        }
    }

    /// The earliest namespace retry, for the loop's timeout.
    pub(super) fn next_namespace_retry(&self) -> Option<Instant> {
        self.attachments
            .namespaces
            .values()
            .filter_map(|ns| ns.retry_at)
            .min()
    }

    /// Records what the `tun_devs` entries advertise, and advertises it with the namespaces.
    pub(super) fn set_tun_dev_attachments(&mut self, adverts: TunDevAdverts) {
        self.attachments.tun_devs = adverts;
        self.publish_attachments();
    }

    /// Advertises the running `tun_devs` and namespaces: their /128s and names, and their
    /// IPv4 addresses (as IPv4-mapped /128s) with the names' IPv4 bindings.
    fn publish_attachments(&mut self) {
        let (mut prefixes, mut names, mut names4) = self.attachments.tun_devs.clone();
        for ns in self.attachments.namespaces.values() {
            if ns.slot.is_none() {
                continue;
            }
            let cost = Cost::from_f64(ns.spec.cost);
            prefixes.push(PrefixAdvert {
                prefix: Prefix::host(ns.spec.address),
                cost,
            });
            names.push(NameBinding {
                name: ns.spec.name.clone(),
                address: ns.spec.address,
            });
            if let Some(address4) = ns.spec.address4 {
                prefixes.push(PrefixAdvert {
                    prefix: Prefix::host(address4.to_ipv6_mapped()),
                    cost,
                });
                names4.push(NameBinding4 {
                    name: ns.spec.name.clone(),
                    address: address4,
                });
            }
        }
        let now = self.now();
        self.node.set_attachments(now, prefixes, names);
        let address4 = self.node.address4();
        self.node.set_ipv4(now, address4, names4);
    }

    /// Hands the attach helper to the node's re-executed self (a restart of the mesh
    /// instance): the service listeners stop, the helper's reader stops, and the helper keeps
    /// running; the new image resets it. Returns it with the value of its environment
    /// variable, to keep until the exec; `None` (the helper stopped) if it cannot be handed on.
    pub(super) fn hand_over_attachments(&mut self) -> Option<(Arc<Client>, String)> {
        self.attachments.services.stop_all();
        let helper = self.attachments.helper.take()?;
        helper.detach();
        match helper.hand_over() {
            Ok(env) => Some((helper, env)),
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "cannot keep the attach helper across the restart");
                helper.stop();
                None
            }
        }
    }

    /// Stops every service listener and the helper (with every namespace and process).
    pub(super) fn stop_attachments(&mut self) {
        self.attachments.services.stop_all();
        if let Some(helper) = self.attachments.helper.take() {
            helper.stop();
        }
    }

    /// The device for an IPv4 packet between the node's own devices: a namespace's that holds
    /// its destination, or the host's (the first device) for another address this node holds
    /// (its own, a `tun_devs` one).
    fn hairpin_target4(&self, packet: &[u8]) -> Option<usize> {
        if let Some(slot) = self.namespace_tun4(packet) {
            return Some(slot);
        }
        let (_, destination) = connectopus_core::forward4::addresses4(packet)?;
        let local = matches!(
            self.node
                .forwarding_table()
                .routes
                .lookup(destination.to_ipv6_mapped()),
            Some((_, forward::RouteTarget::Local))
        );
        local
            .then(|| self.tuns.indexed().next().map(|(i, _)| i))
            .flatten()
    }

    /// Writes a packet that TUN device `from` handed over straight to another of the node's
    /// TUN devices when that one holds its destination (a namespace talking to the host or to
    /// another namespace); returns false when the packet is for the mesh. `buf` stays the
    /// caller's.
    pub(super) fn hairpin(&mut self, from: usize, buf: &BufId, range: Range<usize>) -> bool {
        if self.attachments.namespaces.is_empty() {
            return false;
        }
        let vnet_in = self.tuns.get(from).is_some_and(|t| t.offload().vnet_hdr());
        let header_len = if vnet_in { VNET_HDR_LEN } else { 0 };
        let packet = self
            .worker
            .io
            .buf(buf)
            .get(range.clone())
            .unwrap_or_default();
        let Some(packet_body) = packet.get(header_len..) else {
            return false;
        };
        let to = if packet_body.first().is_some_and(|b| b >> 4 == 4) {
            self.hairpin_target4(packet_body)
        } else {
            let Some((_, destination)) = forward::addresses(packet_body) else {
                return false;
            };
            self.tuns
                .indexed()
                .find(|(_, t)| t.address() == destination)
                .map(|(i, _)| i)
        };
        if to.is_none_or(|to| to == from) {
            return false;
        }
        let start = range.start + header_len;
        if !vnet_in {
            self.deliver_pool(buf, start, range.end);
            return true;
        }
        let header = match connectopus_offload::VnetHeader::parse(packet) {
            Ok(h) => h,
            Err(_) => {
                self.worker.forwarder.count_drop(DropReason::Malformed);
                return true;
            }
        };
        if header.gso_type == connectopus_offload::GsoType::None {
            let done = self
                .worker
                .io
                .buf_mut(buf)
                .get_mut(start..range.end)
                .map(|p| connectopus_offload::complete_checksum(&header, p));
            if let Some(Ok(())) = done {
                self.deliver_pool(buf, start, range.end);
            } else {
                self.worker.forwarder.count_drop(DropReason::Malformed);
            }
            return true;
        }
        // A super-packet from the host: cut it into segments for the other device.
        let mut segments_out = Vec::new();
        if let Some(segments) = self
            .worker
            .io
            .buf(buf)
            .get(start..range.end)
            .and_then(|p| connectopus_offload::Segments::new(&header, p).ok())
        {
            let mut slot = vec![0u8; segments.max_segment_len()];
            for i in 0..segments.count() {
                if let Ok(n) = segments.write(i, &mut slot) {
                    segments_out.push(slot.get(..n).unwrap_or_default().to_vec());
                }
            }
        } else {
            self.worker.forwarder.count_drop(DropReason::Malformed);
        }
        for segment in segments_out {
            self.write_tun(&segment);
        }
        true
    }
}
