//! The mesh prefix by DHCPv6 prefix delegation on the daemon's side (`docs/dynamic-mesh.md`
//! §2.5): what the core is told about `global.delegated`, and what the node does with the
//! planes the core hands out ([`Command::SetMeshPrefixes`]).
//!
//! - On the node `global.delegated` names: [`open_pd`] opens the DHCPv6 client's socket on
//!   the upstream interface before capabilities drop (its state, with the DUID, in
//!   `<config>.dhcp6`), and [`spawn_pd`] runs it on a thread of its own that hands every
//!   change to the loop as a [`PdUpdate`]; the loop gives it to the core
//!   (`Node::set_delegations`, `Node::withdraw_delegations`).
//! - On every node: each live plane `M` puts φ(own address) on the node's own TUN device with
//!   the subnet's length, so the kernel routes all of `M` into the mesh; a withdrawn plane's
//!   address is deleted. The core's forwarding carries the mirrors of every route. The
//!   delegating node's router setup and the egress rules are in `mesh_routes`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Duration;

use anyhow::{Context, Result};
use connectopus_config::MeshConfig;
use connectopus_core::Time;
use connectopus_core::node::{Delegation, MeshPrefix, MeshPrefixConfig};
use connectopus_dhcp6::{PdEvent, PdState};
use connectopus_wire::Prefix;

use super::Daemon;
use crate::backends::{LoopMessage, LoopSender};
use crate::control::ControlReply;
use crate::pd::PdDriver;

#[cfg(doc)]
use connectopus_core::node::Command;

/// How long the client waits for the upstream interface's link-local address at start-up.
const LINK_WAIT: Duration = Duration::from_secs(10);

/// A change of the client's delegations, with lifetimes left when it was sent.
#[derive(Debug)]
pub(crate) enum PdUpdate {
    /// The prefixes held now: (prefix, preferred left, valid left).
    Held(Vec<(Prefix, Duration, Duration)>),
    /// These are gone (expired, or released).
    Gone(Vec<Prefix>),
}

/// Where the client keeps its state: `<config>.dhcp6`.
fn state_path(config_path: &Path) -> PathBuf {
    let mut name = config_path.as_os_str().to_owned();
    name.push(".dhcp6");
    PathBuf::from(name)
}

/// The still-valid delegations saved in the client's state file, with the time left: the
/// node advertises them from its first update, so a restart does not withdraw the mesh prefix
/// while the client Rebinds it.
///
/// Deadlines in the file are Unix milliseconds. A wall clock that reads earlier than the
/// file's last write (its mtime, set by the same clock) is behind: then time since the write
/// counts from the write, so a wrong clock at boot never keeps a prefix longer than the file
/// held it (`docs/dynamic-mesh.md` §1.7 "Wall clock").
fn saved_delegations(state: &Path) -> PdUpdate {
    let Ok(saved) = std::fs::read(state)
        .map_err(|_| ())
        .and_then(|b| PdState::decode(&b).map_err(|_| ()))
    else {
        return PdUpdate::Held(Vec::new());
    };
    let unix_ms = crate::pd::unix_ms_for_saved(state);
    PdUpdate::Held(
        saved
            .delegations_at(connectopus_core::Time::ZERO, unix_ms)
            .into_iter()
            .filter(|d| !d.valid.is_zero())
            .filter_map(|d| Some((wire_prefix(d.prefix)?, d.preferred, d.valid)))
            .collect(),
    )
}

/// Opens the DHCPv6 client if `global.delegated` names this node, with the delegations its
/// state file still holds; logs and goes on without one if its interface or socket is not
/// there.
pub(super) fn open_pd(
    config: &MeshConfig,
    id: &str,
    config_path: &Path,
) -> Option<(PdDriver, PdUpdate)> {
    let entry = config.global.delegated.iter().find(|d| d.node == id)?;
    let state = state_path(config_path);
    match PdDriver::open(&entry.interface, &state, entry.length, LINK_WAIT) {
        Ok(driver) => {
            tracing::info!(interface = %entry.interface, duid = %driver.duid(), state = %state.display(), "dhcp6 prefix delegation client started");
            // The node routes between upstream and the mesh (§2.5); sysctls need the
            // capabilities the node drops next.
            super::mesh_routes::enable_forwarding(&entry.interface);
            Some((driver, saved_delegations(&state)))
        }
        Err(error) => {
            tracing::warn!(interface = %entry.interface, error = %format!("{error:#}"), "no dhcp6 prefix delegation: the mesh gets no prefix from this node");
            None
        }
    }
}

fn wire_prefix(p: connectopus_dhcp6::Prefix) -> Option<Prefix> {
    Prefix::new_truncating(p.addr, p.len).ok()
}

/// What the loop asks of the DHCPv6 client's thread.
#[derive(Debug)]
pub(super) enum PdCommand {
    /// Release the delegation (`connectopus pd release`); the answer goes to the control
    /// client once the server replied or the Release was retransmitted to its limit.
    Release(Sender<ControlReply>),
}

/// Runs the client on a thread of its own (it dies with the process); `saved` are the
/// delegations the loop was given from the state file at start. The loop's requests come
/// through the returned channel; the thread looks at it between steps (at least once a
/// second).
pub(super) fn spawn_pd(
    mut driver: PdDriver,
    to_loop: LoopSender,
    saved: &PdUpdate,
) -> Result<Sender<PdCommand>> {
    let mut held: BTreeSet<Prefix> = match saved {
        PdUpdate::Held(list) => list.iter().map(|(p, _, _)| *p).collect(),
        PdUpdate::Gone(_) => BTreeSet::new(),
    };
    let (commands, from_loop) = std::sync::mpsc::channel::<PdCommand>();
    std::thread::Builder::new()
        .name("dhcp6".to_owned())
        .spawn(move || {
            // Release requests waiting for the client's `Released`, with what it held.
            let mut releasing: Vec<(Sender<ControlReply>, String)> = Vec::new();
            loop {
                while let Ok(PdCommand::Release(reply)) = from_loop.try_recv() {
                    let prefixes: Vec<String> = driver
                        .client()
                        .lease()
                        .map(|l| l.delegations.iter().map(|d| d.prefix.to_string()).collect())
                        .unwrap_or_default();
                    if prefixes.is_empty() && held.is_empty() {
                        let _ = reply.send(ControlReply::Done(
                            "no delegated prefix held: nothing to release".to_owned(),
                        ));
                        continue;
                    }
                    if releasing.is_empty() {
                        tracing::info!(prefixes = ?prefixes, "dhcp6 release asked for");
                        driver.release();
                    }
                    releasing.push((reply, prefixes.join(", ")));
                }
                let events = match driver.step(Duration::from_secs(1)) {
                    Ok(events) => events,
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "dhcp6 client");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
                for event in events {
                    tracing::info!(event = %crate::pd::describe(&event), "dhcp6");
                    let released = matches!(event, PdEvent::Released);
                    let update = update_for(&event, driver.now(), &mut held);
                    if !to_loop.send(LoopMessage::Delegations(update)) {
                        return;
                    }
                    if released {
                        for (reply, prefixes) in releasing.drain(..) {
                            let _ = reply.send(ControlReply::Done(format!(
                                "released {prefixes}; the mesh withdraws it, and the client stays idle until the node's mesh instance restarts"
                            )));
                        }
                    }
                }
            }
        })
        .context("starting the dhcp6 thread")?;
    Ok(commands)
}

/// What the loop hears of a client event. `held` tracks every prefix handed to the core and
/// not withdrawn (a renumbered one stays, deprecated, in the core): a `Released` withdraws
/// them all at once (§2.4), rather than leaving them deprecated until their valid lifetime.
fn update_for(
    event: &PdEvent,
    now: connectopus_core::Time,
    held: &mut BTreeSet<Prefix>,
) -> PdUpdate {
    match event {
        PdEvent::Bound(lease) | PdEvent::Renewed(lease) | PdEvent::Rebound(lease) => {
            let list: Vec<(Prefix, Duration, Duration)> = lease
                .delegations
                .iter()
                .filter_map(|d| {
                    Some((
                        wire_prefix(d.prefix)?,
                        d.preferred_until.saturating_since(now),
                        d.valid_until.saturating_since(now),
                    ))
                })
                .collect();
            held.extend(list.iter().map(|(p, _, _)| *p));
            PdUpdate::Held(list)
        }
        PdEvent::Expired(prefixes) => {
            let gone: Vec<Prefix> = prefixes.iter().filter_map(|p| wire_prefix(*p)).collect();
            for p in &gone {
                held.remove(p);
            }
            PdUpdate::Gone(gone)
        }
        PdEvent::Released => PdUpdate::Gone(std::mem::take(held).into_iter().collect()),
    }
}

/// The mirror addresses on the node's own TUN device, by plane, and whether each is
/// deprecated (preferred lifetime 0: the plane is being renumbered away or ends soon).
#[derive(Debug, Default)]
pub(super) struct MirrorAddresses {
    applied: BTreeMap<Prefix, (Ipv6Addr, bool)>,
}

/// How long a configuration change that ends this node's delegation waits for the Release
/// before the node restarts its mesh instance (the server answers in milliseconds; without
/// an answer RFC 8415's four retransmissions would take 15 s).
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Whether `new` ends the delegation `old` gives node `id`: the entry is gone, or names
/// another interface or length (the running client's lease is for the old one).
fn delegation_ends(old: &MeshConfig, new: &MeshConfig, id: &str) -> bool {
    let entry = |c: &MeshConfig| {
        c.global
            .delegated
            .iter()
            .find(|d| d.node == id)
            .map(|d| (d.interface.clone(), d.length))
    };
    match (entry(old), entry(new)) {
        (Some(before), after) => after.as_ref() != Some(&before),
        (None, _) => false,
    }
}

impl Daemon {
    /// Before the node applies `new` by restarting its mesh instance (or stops forwarding,
    /// removed from it): if `new` ends this node's delegation, the client Releases it first,
    /// waiting at most [`RELEASE_WAIT`], so the server gets the prefix back at once rather
    /// than at the end of its valid lifetime. The loop waits here; it is about to restart.
    pub(super) fn release_ending_delegation(&mut self, new: &MeshConfig) {
        if !delegation_ends(&self.config, new, &self.id) {
            return;
        }
        let Some(commands) = &self.pd_commands else {
            return;
        };
        let (reply, answer) = std::sync::mpsc::channel();
        if commands.send(PdCommand::Release(reply)).is_err() {
            return;
        }
        match answer.recv_timeout(RELEASE_WAIT) {
            Ok(ControlReply::Done(said)) => {
                tracing::info!(%said, "the new configuration ends this node's delegation");
            }
            _ => tracing::warn!(
                wait = ?RELEASE_WAIT,
                "the new configuration ends this node's delegation, but its Release did not finish: the server keeps the prefix until its valid lifetime ends"
            ),
        }
    }

    /// Hands the client's change to the core.
    pub(super) fn on_delegations(&mut self, update: PdUpdate) {
        let now = self.now();
        match update {
            PdUpdate::Held(list) => {
                let delegations = list
                    .into_iter()
                    .map(|(prefix, preferred, valid)| Delegation {
                        prefix,
                        preferred_until: now + preferred,
                        valid_until: now + valid,
                    })
                    .collect();
                self.node.set_delegations(now, delegations);
            }
            PdUpdate::Gone(prefixes) => self.node.withdraw_delegations(now, &prefixes),
        }
    }

    /// The planes for `status`.
    pub(super) fn mesh_prefix_report(
        &self,
        now: Time,
        name_of: impl Fn(Ipv6Addr) -> Option<String>,
    ) -> Vec<crate::control::MeshPrefixReport> {
        let own = self.node.address();
        self.node
            .mesh_prefixes()
            .iter()
            .map(|p| crate::control::MeshPrefixReport {
                prefix: p.prefix.to_string(),
                delegated: p.delegated.to_string(),
                origin: p.origin.to_string(),
                origin_name: name_of(p.origin),
                state: if p.deprecated { "deprecated" } else { "active" }.to_owned(),
                valid_for_secs: p.valid_until.saturating_since(now).as_secs_f64(),
                mirror: (!own.is_unspecified()).then(|| p.mirror(own).to_string()),
            })
            .collect()
    }

    /// Puts φ(own) of every live plane on the own TUN device and takes withdrawn ones off; the
    /// mirror of a deprecated plane gets preferred lifetime 0, so the kernel keeps it for the
    /// connections that use it but picks another source for new ones (§2.4 of
    /// docs/dynamic-mesh.md).
    pub(super) fn apply_mesh_prefixes(&mut self, planes: &[MeshPrefix]) {
        log_planes(planes);
        // Names answer in the active planes (the core's table already has them).
        self.dns.update(&self.node, &self.config.global.subnet);
        let Some(tun) = self.tuns.get(0).map(|t| t.name().to_owned()) else {
            return;
        };
        let own = self.node.address();
        // An ephemeral node without its lease (address `::`) has no mirror either.
        let planes = if own.is_unspecified() {
            &[][..]
        } else {
            planes
        };
        let want: BTreeMap<Prefix, (Ipv6Addr, bool)> = planes
            .iter()
            .map(|p| (p.prefix, (p.mirror(own), p.deprecated)))
            .collect();
        let mut netlink = match connectopus_netlink::Netlink::open() {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(%error, "mesh prefixes not applied: no netlink socket");
                return;
            }
        };
        let stale: Vec<(Prefix, Ipv6Addr)> = self
            .mesh_addresses
            .applied
            .iter()
            .filter(|(plane, (addr, _))| want.get(plane).map(|w| w.0) != Some(*addr))
            .map(|(p, (a, _))| (*p, *a))
            .collect();
        for (plane, addr) in stale {
            match netlink.delete_address(tun.as_str(), IpAddr::V6(addr), plane.len()) {
                Ok(()) => tracing::info!(%addr, %tun, "mirror address removed"),
                Err(error) if error.is_not_found() => {}
                Err(error) => tracing::warn!(%error, "removing a mirror address"),
            }
            self.mesh_addresses.applied.remove(&plane);
        }
        for (plane, (addr, deprecated)) in want {
            let before = self.mesh_addresses.applied.get(&plane).copied();
            if before == Some((addr, deprecated)) {
                continue;
            }
            // Adds the address when it is not there, else changes its preferred lifetime.
            match netlink.set_address_deprecated(
                tun.as_str(),
                IpAddr::V6(addr),
                plane.len(),
                true,
                deprecated,
            ) {
                Ok(()) if before.is_none() => {
                    tracing::info!(%addr, %tun, deprecated, "mirror address added");
                }
                Ok(()) if deprecated => tracing::info!(%addr, %tun, "mirror address deprecated"),
                Ok(()) => tracing::info!(%addr, %tun, "mirror address preferred again"),
                Err(error) => {
                    tracing::warn!(%error, "adding a mirror address");
                    continue;
                }
            }
            self.mesh_addresses
                .applied
                .insert(plane, (addr, deprecated));
        }
        let egress = core_config(&self.config)
            .map(|c| c.egress)
            .unwrap_or_default();
        self.mesh_routes
            .apply(&mut netlink, tun.as_str(), own, &egress, planes);
    }
}

/// The core's view of `global.delegated`: the subnet and every delegating node's address with
/// its `use`; `None` without entries (the core then refuses extension kind 2 from anyone).
pub(super) fn core_config(config: &MeshConfig) -> Option<MeshPrefixConfig> {
    if config.global.delegated.is_empty() {
        return None;
    }
    let subnet = Prefix::new_truncating(
        config.global.subnet.network(),
        config.global.subnet.prefix_len(),
    )
    .ok()?;
    let delegators: BTreeMap<_, _> = config
        .global
        .delegated
        .iter()
        .filter_map(|d| Some((config.nodes.get(&d.node)?.address, d.use_)))
        .collect();
    let egress = config
        .global
        .delegated
        .iter()
        .filter(|d| d.egress)
        .filter_map(|d| Some(config.nodes.get(&d.node)?.address))
        .collect();
    Some(MeshPrefixConfig {
        subnet,
        delegators,
        egress,
    })
}

/// Logs a new set of planes.
fn log_planes(planes: &[MeshPrefix]) {
    let list: Vec<String> = planes
        .iter()
        .map(|p| {
            let state = if p.deprecated { " (deprecated)" } else { "" };
            format!("{} from {}{state}", p.prefix, p.delegated)
        })
        .collect();
    tracing::info!(planes = ?list, "mesh prefixes");
}

#[cfg(test)]
mod tests {
    use connectopus_core::Time;
    use connectopus_dhcp6::{Duid, SavedDelegation};

    use super::*;

    /// A two-node mesh whose `global` holds `delegated` (YAML lines, or "").
    fn mesh(delegated: &str) -> MeshConfig {
        let yaml = format!(
            "global:\n  domain: connectopus.test\n  subnet: fd00:cafe::/64\n{delegated}nodes:\n  gw:\n    address: fd00:cafe::1\n  b:\n    address: fd00:cafe::2\n"
        );
        connectopus_config::load("mesh.yml", yaml.as_bytes()).unwrap()
    }

    #[test]
    fn a_change_ends_the_delegation_when_the_entry_goes_or_asks_for_another_prefix() {
        let on = |iface: &str, length: &str| {
            mesh(&format!(
                "  delegated:\n    - {{node: gw, interface: {iface}{length}}}\n"
            ))
        };
        let wan56 = on("wan0", ", length: 56");
        assert!(delegation_ends(&wan56, &mesh(""), "gw"), "entry removed");
        assert!(delegation_ends(&wan56, &on("wan1", ", length: 56"), "gw"));
        assert!(delegation_ends(&wan56, &on("wan0", ", length: 60"), "gw"));
        assert!(delegation_ends(&wan56, &on("wan0", ""), "gw"));
        // The same entry (other changes restart the instance, which Rebinds the prefix).
        assert!(!delegation_ends(&wan56, &on("wan0", ", length: 56"), "gw"));
        let egress =
            mesh("  delegated:\n    - {node: gw, interface: wan0, length: 56, egress: true}\n");
        assert!(!delegation_ends(&wan56, &egress, "gw"));
        // Another node, or a node that delegated nothing before.
        assert!(!delegation_ends(&wan56, &mesh(""), "b"));
        assert!(!delegation_ends(&mesh(""), &wan56, "gw"));
    }

    fn dp(s: &str) -> connectopus_dhcp6::Prefix {
        let (a, l) = s.split_once('/').unwrap();
        connectopus_dhcp6::Prefix {
            addr: a.parse().unwrap(),
            len: l.parse().unwrap(),
        }
    }

    fn lease(prefixes: &[&str], now: Time) -> connectopus_dhcp6::Lease {
        connectopus_dhcp6::Lease {
            delegations: prefixes
                .iter()
                .map(|p| connectopus_dhcp6::Delegation {
                    prefix: dp(p),
                    preferred: Duration::from_secs(10),
                    valid: Duration::from_secs(14),
                    preferred_until: now + Duration::from_secs(10),
                    valid_until: now + Duration::from_secs(14),
                })
                .collect(),
            t1: Duration::from_secs(2),
            t2: Duration::from_secs(4),
            server_id: vec![0, 1, 2],
            bound_at: now,
        }
    }

    #[test]
    fn a_release_withdraws_every_prefix_the_core_holds_at_once() {
        let now = Time::ZERO;
        let d1 = wire_prefix(dp("2001:db8:100::/56")).unwrap();
        let d2 = wire_prefix(dp("2001:db8:200::/56")).unwrap();
        // A saved delegation at start, then a renumbering D1 → D2 (the core keeps D1,
        // deprecated), then `pd release`.
        let mut held: BTreeSet<Prefix> = [d1].into();
        match update_for(
            &PdEvent::Renewed(lease(&["2001:db8:200::/56"], now)),
            now,
            &mut held,
        ) {
            PdUpdate::Held(list) => {
                assert_eq!(list.iter().map(|l| l.0).collect::<Vec<_>>(), vec![d2])
            }
            other => panic!("{other:?}"),
        }
        match update_for(&PdEvent::Released, now, &mut held) {
            PdUpdate::Gone(gone) => assert_eq!(gone, vec![d1, d2]),
            other => panic!("a Release must withdraw at once, not {other:?}"),
        }
        assert!(held.is_empty());
        // An expiry withdraws only what expired.
        let mut held: BTreeSet<Prefix> = [d1, d2].into();
        match update_for(
            &PdEvent::Expired(vec![dp("2001:db8:100::/56")]),
            now,
            &mut held,
        ) {
            PdUpdate::Gone(gone) => assert_eq!(gone, vec![d1]),
            other => panic!("{other:?}"),
        }
        assert_eq!(held, [d2].into());
    }

    #[test]
    fn a_clock_behind_the_state_files_write_does_not_stretch_saved_delegations() {
        let dir = std::env::temp_dir().join(format!("cx-pd-clock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mesh.yml.dhcp6");
        let now_ms = crate::pd::unix_ms_for_saved(&dir.join("missing"));
        // Saved with 60 s of valid lifetime left.
        let state = PdState {
            duid: Duid::uuid([7; 16]),
            iaid: 1,
            server_id: vec![0, 1, 2],
            delegations: vec![SavedDelegation {
                prefix: dp("2001:db8:100::/56"),
                preferred_until_unix_ms: now_ms + 30_000,
                valid_until_unix_ms: now_ms + 60_000,
            }],
        };
        std::fs::write(&path, state.encode()).unwrap();
        let left = |path: &Path| match saved_delegations(path) {
            PdUpdate::Held(list) => list[0].2,
            other => panic!("{other:?}"),
        };
        assert!(left(&path) <= Duration::from_secs(60));
        // The file was written an hour from now by the clock's reckoning (as when the clock
        // now reads an hour behind the write): the deadline counts from the write, 60 s at most,
        // not an hour and a minute.
        let hour_ahead = std::time::SystemTime::now() + Duration::from_secs(3600);
        let state = PdState {
            delegations: vec![SavedDelegation {
                prefix: dp("2001:db8:100::/56"),
                preferred_until_unix_ms: now_ms + 3_630_000,
                valid_until_unix_ms: now_ms + 3_660_000,
            }],
            ..state
        };
        std::fs::write(&path, state.encode()).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(hour_ahead)
            .unwrap();
        let valid = left(&path);
        assert!(
            valid <= Duration::from_secs(61),
            "a delegation saved with 60 s left lasts {valid:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
