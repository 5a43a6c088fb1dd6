//! The node's kernel TUN device.
//!
//! The node's mesh address is put on the device with the mesh subnet's prefix length, so the
//! kernel installs the route for the whole subnet through the device and uses the node's
//! address as the source of locally originated mesh traffic. Closing the device (on shutdown)
//! removes the device, the address and the route.

use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, RawFd};

use anyhow::{Context, Result};

/// An open TUN device.
pub struct TunDevice {
    device: tun_rs::SyncDevice,
    name: String,
    address: Ipv6Addr,
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("name", &self.name)
            .finish()
    }
}

impl TunDevice {
    /// Creates the device `name` with `address/prefix_len` and `mtu`, and brings it up.
    ///
    /// # Errors
    /// The device cannot be created (no CAP_NET_ADMIN, the name is taken by a non-TUN device).
    pub fn create(name: &str, address: Ipv6Addr, prefix_len: u8, mtu: u16) -> Result<Self> {
        let device = tun_rs::DeviceBuilder::new()
            .name(name)
            .ipv6(address, prefix_len)
            .mtu(mtu)
            .build_sync()
            .with_context(|| format!("creating TUN device {name} (needs root or CAP_NET_ADMIN)"))?;
        Ok(Self {
            device,
            name: name.to_owned(),
            address,
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

    /// Returns the file descriptor the dataplane reads and writes.
    pub fn fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }
}
