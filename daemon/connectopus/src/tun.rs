//! The node's kernel TUN device.
//!
//! The node's mesh address is put on the device with the mesh subnet's prefix length, so the
//! kernel installs the route for the whole subnet through the device and uses the node's
//! address as the source of locally originated mesh traffic. With IPv4 (`global.subnet4`) the
//! device also holds the node's IPv4 address with `subnet4`'s prefix length, so the kernel
//! routes `subnet4` into the mesh the same way. Closing the device (on shutdown)
//! removes the device, the address and the route.
//!
//! With offloads (the default), the device is opened with `IFF_VNET_HDR` and
//! `TUNSETOFFLOAD` (checksum, TSO4/6 and, from Linux 6.2, USO): every read and write then
//! starts with a 10-byte virtio-net header, and the kernel hands the node TCP and UDP
//! super-packets of up to 64 KiB that the dataplane cuts only where a link needs it
//! (`connectopus-offload`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};

use anyhow::{Context, Result};

/// The environment variable that opens TUN devices without offloads when set to `1`.
pub const DISABLE_OFFLOAD_ENV: &str = "CONNECTOPUS_DISABLE_OFFLOAD";

/// Which offloads a TUN device runs with, or why none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offload {
    /// Virtio-net headers with checksum and TCP segmentation offload; `uso` when the kernel
    /// also took UDP segmentation offload.
    On {
        /// UDP segmentation offload (Linux 6.2 and newer).
        uso: bool,
    },
    /// Plain packets, one per read and write.
    Off(String),
}

impl Offload {
    /// Tells whether reads and writes carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        matches!(self, Offload::On { .. })
    }

    /// Describes the state for `status`.
    pub fn describe(&self) -> String {
        match self {
            Offload::On { uso: true } => "on (csum, tso4, tso6, uso4, uso6)".to_owned(),
            Offload::On { uso: false } => {
                "on (csum, tso4, tso6; no uso: kernel older than 6.2)".to_owned()
            }
            Offload::Off(why) => format!("off: {why}"),
        }
    }
}

/// An open TUN device.
pub struct TunDevice {
    device: tun_rs::SyncDevice,
    name: String,
    address: Ipv6Addr,
    offload: Offload,
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("name", &self.name)
            .field("offload", &self.offload)
            .finish()
    }
}

impl TunDevice {
    /// Creates the device `name` with `address/prefix_len` (and `address4` with its prefix
    /// length, if any) and `mtu`, and brings it up; with offloads when `offload` is true and
    /// the kernel takes them (else says why not).
    ///
    /// # Errors
    /// The device cannot be created (no CAP_NET_ADMIN, the name is taken by a non-TUN device).
    pub fn create(
        name: &str,
        address: Ipv6Addr,
        prefix_len: u8,
        address4: Option<(Ipv4Addr, u8)>,
        mtu: u16,
        offload: bool,
    ) -> Result<Self> {
        Self::create_queues(name, address, prefix_len, address4, mtu, offload, false)
    }

    /// Like [`Self::create`], with `IFF_MULTI_QUEUE` so that [`Self::clone_queue`] opens
    /// more queues of the device (the kernel steers each flow to one queue); `Err` (with why)
    /// when the kernel or a persistent device refused it and the device has one queue.
    ///
    /// # Errors
    /// As [`Self::create`].
    pub fn create_multi_queue(
        name: &str,
        address: Ipv6Addr,
        prefix_len: u8,
        address4: Option<(Ipv4Addr, u8)>,
        mtu: u16,
        offload: bool,
    ) -> Result<(Self, std::result::Result<(), String>)> {
        match Self::create_queues(name, address, prefix_len, address4, mtu, offload, true) {
            Ok(device) => Ok((device, Ok(()))),
            Err(error) => {
                let why = format!("the kernel refused IFF_MULTI_QUEUE: {error:#}");
                tracing::warn!(tun = name, %why, "one TUN queue, one dataplane worker");
                let device =
                    Self::create_queues(name, address, prefix_len, address4, mtu, offload, false)?;
                Ok((device, Err(why)))
            }
        }
    }

    /// Opens one more queue of a device made by [`Self::create_multi_queue`], with the same
    /// virtio-net header and offloads.
    ///
    /// # Errors
    /// The device is not multi-queue, or the kernel refused another queue.
    pub fn clone_queue(&self) -> Result<Self> {
        let device = self
            .device
            .try_clone()
            .with_context(|| format!("opening another queue of TUN device {}", self.name))?;
        Ok(Self {
            device,
            name: self.name.clone(),
            address: self.address,
            offload: self.offload.clone(),
        })
    }

    fn create_queues(
        name: &str,
        address: Ipv6Addr,
        prefix_len: u8,
        address4: Option<(Ipv4Addr, u8)>,
        mtu: u16,
        offload: bool,
        multi_queue: bool,
    ) -> Result<Self> {
        let offload_wanted = offload;
        let build = |offload: bool| {
            let mut builder = tun_rs::DeviceBuilder::new()
                .name(name)
                .mtu(mtu)
                .multi_queue(multi_queue)
                .offload(offload);
            // An ephemeral node's device starts without an address (`::`): it gets the
            // leased one later (daemon/leases.rs).
            if !address.is_unspecified() {
                builder = builder.ipv6(address, prefix_len);
            }
            if let Some((address4, len4)) = address4 {
                builder = builder.ipv4(address4, len4, None);
            }
            builder.build_sync()
        };
        let (device, offload) = if !offload {
            let device = build(false);
            (device, Offload::Off("disabled".to_owned()))
        } else {
            match build(true) {
                Ok(device) => {
                    let state = if device.tcp_gso() {
                        Offload::On {
                            uso: device.udp_gso(),
                        }
                    } else {
                        Offload::Off("the kernel refused IFF_VNET_HDR".to_owned())
                    };
                    (Ok(device), state)
                }
                Err(error) => {
                    tracing::warn!(tun = name, %error, "TUN offloads unavailable; plain packets");
                    (
                        build(false),
                        Offload::Off(format!("TUNSETOFFLOAD failed: {error}")),
                    )
                }
            }
        };
        let (device, offload) = match device {
            Ok(device) => (device, offload),
            // A persistent device made by `setup-tunnel`: opened as its owner, without
            // privileges, as long as it already holds the address.
            Err(error) if std::path::Path::new(&format!("/sys/class/net/{name}")).exists() => {
                if multi_queue {
                    anyhow::bail!("the prepared TUN device {name} is opened with one queue");
                }
                Self::open_prepared(name, address, prefix_len, offload_wanted, &error)?
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("creating TUN device {name} (needs root or CAP_NET_ADMIN)")
                });
            }
        };
        Ok(Self {
            device,
            name: name.to_owned(),
            address,
            offload,
        })
    }

    /// Opens an existing device that could not be configured (no CAP_NET_ADMIN, or its address
    /// is already there): usable when it holds `address/prefix_len`, as `setup-tunnel` leaves it.
    fn open_prepared(
        name: &str,
        address: Ipv6Addr,
        prefix_len: u8,
        offload: bool,
        why: &std::io::Error,
    ) -> Result<(tun_rs::SyncDevice, Offload)> {
        if !crate::setup_tunnel::has_address(name, address, prefix_len) {
            anyhow::bail!(
                "TUN device {name} exists without {address}/{prefix_len}, and configuring it failed: {why} \
                 (run `connectopus setup-tunnel` as root, or start the node with CAP_NET_ADMIN)"
            );
        }
        let open = |offload: bool| {
            tun_rs::DeviceBuilder::new()
                .name(name)
                .offload(offload)
                .inherit_enable_state()
                .build_sync()
        };
        let (device, state) = match open(offload) {
            Ok(device) if offload && device.tcp_gso() => {
                let uso = device.udp_gso();
                (device, Offload::On { uso })
            }
            Ok(device) => (device, Offload::Off("disabled".to_owned())),
            Err(_) if offload => (
                open(false).with_context(|| format!("opening TUN device {name}"))?,
                Offload::Off("the persistent device refused offloads".to_owned()),
            ),
            Err(error) => return Err(error).with_context(|| format!("opening TUN device {name}")),
        };
        tracing::info!(
            tun = name,
            "using the prepared (persistent) TUN device as it is"
        );
        Ok((device, state))
    }

    /// Takes over a TUN device opened elsewhere (a namespace's, handed over by the attach
    /// helper): plain packets, no offloads.
    ///
    /// # Errors
    /// `fd` is not a usable TUN device.
    pub fn adopt(fd: std::os::fd::OwnedFd, name: &str, address: Ipv6Addr) -> Result<Self> {
        use std::os::fd::IntoRawFd;
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` is a TUN device descriptor the namespace's holder opened with
        // `IFF_NO_PI` and without `IFF_VNET_HDR` (tun-rs defaults, see `attach::holder`), and
        // it is ours alone: ownership passes to the device.
        let device = unsafe { tun_rs::SyncDevice::from_fd(raw) }
            .with_context(|| format!("adopting the TUN device {name}"))?;
        Ok(Self {
            device,
            name: name.to_owned(),
            address,
            offload: Offload::Off("a namespace's device".to_owned()),
        })
    }

    /// Returns the device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the address on the device.
    pub fn address(&self) -> Ipv6Addr {
        self.address
    }

    /// Returns the offloads the device runs with.
    pub fn offload(&self) -> &Offload {
        &self.offload
    }

    /// Returns the file descriptor the dataplane reads and writes.
    pub fn fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }

    /// A second descriptor of this very queue (`dup`, not a new queue): a worker thread reads
    /// the queue through it while the main loop keeps writing through this one.
    ///
    /// # Errors
    /// The process is out of descriptors.
    pub fn share_queue(&self) -> Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.device
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating the queue of TUN device {}", self.name))
    }
}

/// Tells whether the environment asks for TUN devices without offloads.
pub fn offload_disabled_by_env() -> bool {
    std::env::var_os(DISABLE_OFFLOAD_ENV).is_some_and(|v| v == "1")
}
