//! The node's attachments besides its TUN devices, reconciled with the configuration: network
//! namespaces (each a TUN device the attach helper hands over, serving the namespace's /128)
//! and inetd-style services. See `crate::attach`.
//!
//! A namespace that is added is asked of the helper; once its TUN device arrives the node
//! reads and writes it like any other, and advertises its /128 (with its cost) and its name.
//! One that is removed is withdrawn, its device closed and its process stopped; one whose
//! address, services or MTU changed is replaced; a new cost is only re-advertised. A namespace
//! that fails (or whose process ends) is withdrawn and asked for again 5 s later.
//!
//! Packets between two of the node's TUN devices (a namespace and the host, or two
//! namespaces) never leave the node: [`Daemon::hairpin`] writes them to the other device.

use std::os::fd::OwnedFd;

use connectopus_config::attach::{self, NamespaceSpec, changes};
use connectopus_offload::VNET_HDR_LEN;
use connectopus_wire::{NameBinding, Prefix, PrefixAdvert};
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
}

/// The attachments' state.
#[derive(Debug, Default)]
pub(super) struct Attachments {
    helper: Option<Arc<Client>>,
    namespaces: BTreeMap<String, Namespace>,
    next_generation: u64,
    services: Services,
    /// What the `tun_devs` entries advertise.
    tun_devs: (Vec<PrefixAdvert>, Vec<NameBinding>),
}

impl Attachments {
    pub(super) fn new(
        helper: Option<Arc<Client>>,
        tun_devs: (Vec<PrefixAdvert>, Vec<NameBinding>),
    ) -> Self {
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
                }
            }
            None => {
                tracing::error!(namespace = %name, "namespace cannot run: the node has no attach helper");
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
                if let Some(slot) = slot {
                    self.retire_tun_slot(slot);
                    self.publish_attachments();
                }
                if let Some(helper) = &self.attachments.helper {
                    let _ = helper.request(&ToHelper::StopNamespace { name }, None);
                }
            }
            FromHelper::SpawnFailed { .. } | FromHelper::Exited { .. } => {}
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
        }
        self.publish_attachments();
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
    pub(super) fn set_tun_dev_attachments(
        &mut self,
        prefixes: Vec<PrefixAdvert>,
        names: Vec<NameBinding>,
    ) {
        self.attachments.tun_devs = (prefixes, names);
        self.publish_attachments();
    }

    /// Advertises the running `tun_devs` and namespaces (their /128s and names).
    fn publish_attachments(&mut self) {
        let (mut prefixes, mut names) = self.attachments.tun_devs.clone();
        for ns in self.attachments.namespaces.values() {
            if ns.slot.is_none() {
                continue;
            }
            prefixes.push(PrefixAdvert {
                prefix: Prefix::host(ns.spec.address),
                cost: Cost::from_f64(ns.spec.cost),
            });
            names.push(NameBinding {
                name: ns.spec.name.clone(),
                address: ns.spec.address,
            });
        }
        let now = self.now();
        self.node.set_attachments(now, prefixes, names);
    }

    /// Stops every service listener and the helper (with every namespace and process).
    pub(super) fn stop_attachments(&mut self) {
        self.attachments.services.stop_all();
        if let Some(helper) = self.attachments.helper.take() {
            helper.stop();
        }
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
        let Some((_, destination)) = forward::addresses(packet_body) else {
            return false;
        };
        let to = self
            .tuns
            .indexed()
            .find(|(_, t)| t.address() == destination)
            .map(|(i, _)| i);
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
