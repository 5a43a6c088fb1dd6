//! The node's TUN devices, and applying `tun_devs` changes live.
//!
//! Slot `i` of a [`TunSet`] is the device whose receive is armed with token
//! `TOKEN_TUN_RECV | i`. Slots are never reused: a removed device's receive is disarmed first,
//! and the device (its fd) closes only once the receive's last completion came back, so no
//! completion can ever be taken for another device's.
//!
//! A `tun_devs` entry that is added starts its device and advertises its /128 and name; one
//! that is removed stops advertising them and closes its device; one whose `device` or
//! `address` or `address4` changed is replaced; a change of `cost` only re-advertises. An
//! `address4` is advertised as its IPv4-mapped /128 with the name's IPv4 binding. The node's links and
//! sessions are untouched.

use connectopus_config::TunDevConfig;
use connectopus_wire::{NameBinding, NameBinding4, Prefix, PrefixAdvert};

use super::*;

/// The TUN devices, by slot.
#[derive(Debug, Default)]
pub(super) struct TunSet {
    slots: Vec<Option<TunDevice>>,
    /// The slot of each running `tun_devs` entry.
    attached: BTreeMap<String, usize>,
    /// Removed devices whose receive is still armed, by slot.
    retiring: Vec<(usize, TunDevice)>,
}

impl TunSet {
    /// Holds the node's devices as `run` created them: its own (if any) first, then the
    /// `tun_devs` entries `names`, in order.
    pub(super) fn new(devices: Vec<TunDevice>, names: &[String]) -> Self {
        let own = devices.len() - names.len().min(devices.len());
        let attached = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), own + i))
            .collect();
        Self {
            slots: devices.into_iter().map(Some).collect(),
            attached,
            retiring: Vec::new(),
        }
    }

    /// The device in slot `slot`, unless it was removed.
    pub(super) fn get(&self, slot: usize) -> Option<&TunDevice> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// Every running device, with its slot.
    pub(super) fn indexed(&self) -> impl Iterator<Item = (usize, &TunDevice)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.as_ref().map(|d| (i, d)))
    }

    /// Every running device.
    pub(super) fn iter(&self) -> impl Iterator<Item = &TunDevice> {
        self.slots.iter().flatten()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// True if `slot` held a device that was removed.
    pub(super) fn is_removed(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(Option::is_none)
    }

    /// Closes a removed device once its receive completed for the last time.
    pub(super) fn reap(&mut self, slot: usize) {
        self.retiring.retain(|(s, _)| *s != slot);
    }
}

/// The prefixes, names and IPv4 names the node advertises for its running `tun_devs` entries.
pub(super) fn attachments(
    entries: &BTreeMap<String, TunDevConfig>,
    running: impl Fn(&str) -> bool,
) -> (Vec<PrefixAdvert>, Vec<NameBinding>, Vec<NameBinding4>) {
    let mut prefixes = Vec::new();
    let mut names = Vec::new();
    let mut names4 = Vec::new();
    for (name, dev) in entries.iter().filter(|(name, _)| running(name)) {
        let cost = Cost::from_f64(dev.cost);
        prefixes.push(PrefixAdvert {
            prefix: Prefix::host(dev.address),
            cost,
        });
        names.push(NameBinding {
            name: name.clone(),
            address: dev.address,
        });
        if let Some(address4) = dev.address4 {
            prefixes.push(PrefixAdvert {
                prefix: Prefix::host(address4.to_ipv6_mapped()),
                cost,
            });
            names4.push(NameBinding4 {
                name: name.clone(),
                address: address4,
            });
        }
    }
    (prefixes, names, names4)
}

impl Daemon {
    /// Applies a change of this node's `tun_devs` in place (see the module documentation).
    pub(super) fn apply_tun_devs(
        &mut self,
        old: &BTreeMap<String, TunDevConfig>,
        new: &BTreeMap<String, TunDevConfig>,
        mtu: u16,
    ) {
        let moved = |name: &str| match (old.get(name), new.get(name)) {
            (Some(a), Some(b)) => {
                a.device != b.device || a.address != b.address || a.address4 != b.address4
            }
            _ => true,
        };
        let gone: Vec<String> = old
            .keys()
            .filter(|n| !new.contains_key(*n) || moved(n))
            .cloned()
            .collect();
        for name in &gone {
            self.remove_tun_dev(name);
        }
        for (name, dev) in new {
            if old.contains_key(name) && !moved(name) {
                continue;
            }
            let address4 = dev.address4.map(|a| (a, 32));
            match TunDevice::create(
                &dev.device,
                dev.address,
                128,
                address4,
                mtu,
                self.worker.offloads.wanted,
            ) {
                Ok(tun) => {
                    let slot = self.tuns.slots.len();
                    if let Err(error) = self
                        .worker
                        .io
                        .recv_packets(tun.fd(), Token(TOKEN_TUN_RECV | slot as u64))
                    {
                        tracing::error!(tun_dev = %name, %error, "arming the TUN receive failed");
                        continue;
                    }
                    tracing::info!(tun = %tun.name(), address = %dev.address, name = %name, "extra tun device up");
                    self.tuns.slots.push(Some(tun));
                    self.tuns.attached.insert(name.clone(), slot);
                }
                Err(error) => {
                    tracing::error!(tun_dev = %name, error = %format!("{error:#}"), "cannot create the tun device");
                }
            }
        }
        let running = |name: &str| self.tuns.attached.contains_key(name);
        let adverts = attachments(new, running);
        self.set_tun_dev_attachments(adverts);
    }

    fn remove_tun_dev(&mut self, name: &str) {
        let Some(slot) = self.tuns.attached.remove(name) else {
            return;
        };
        if let Some(tun) = self.tuns.get(slot) {
            tracing::info!(tun = %tun.name(), name = %name, "extra tun device removed");
        }
        self.retire_tun_slot(slot);
    }

    /// Puts a device (a namespace's) in a new slot and arms its receive.
    pub(super) fn add_tun_slot(&mut self, tun: TunDevice) -> Result<usize> {
        let slot = self.tuns.slots.len();
        self.worker
            .io
            .recv_packets(tun.fd(), Token(TOKEN_TUN_RECV | slot as u64))
            .context("arming the TUN receive")?;
        self.tuns.slots.push(Some(tun));
        Ok(slot)
    }

    /// Takes the device out of `slot`; it closes once its receive is disarmed.
    pub(super) fn retire_tun_slot(&mut self, slot: usize) {
        self.flush_tun_writes(Some(slot));
        let Some(tun) = self.tuns.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if self.worker.io.disarm(Token(TOKEN_TUN_RECV | slot as u64)) {
            // Its fd closes when the cancelled receive's last completion arrives.
            self.tuns.retiring.push((slot, tun));
        }
    }
}
