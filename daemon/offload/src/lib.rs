//! TUN offloads as pure byte transformations: the virtio-net header that a TUN device opened
//! with `IFF_VNET_HDR` puts in front of every packet, splitting TSO/USO super-packets into
//! link-MTU segments, and coalescing received TCP segments back into one super-packet.
//!
//! No I/O, no allocation, no clock: callers hand in the buffers (see `docs/architecture.md`).
//! Every function is total on arbitrary bytes: malformed input gives an [`OffloadError`] (or
//! `None`/`false`), never a panic. The rules follow the kernel's `tcp_gso_segment` and GRO
//! (reference: linerate.md §3–§9).
//!
//! # Layout
//!
//! - `vnet`: `struct virtio_net_hdr` ([`VnetHeader`], [`GsoType`],
//!   [`VNET_HDR_LEN`]) and [`complete_checksum`] for a single packet that arrives with
//!   `NEEDS_CSUM` (normal once `TUN_F_CSUM` is on, even for ACKs and SYNs).
//! - [`checksum`]: the Internet checksum summed in the little-endian domain, the pseudo-header,
//!   and [`checksum_valid`] for a whole TCP/UDP packet.
//! - `split` ([`Segments`]): transmit side. A TUN read gives `[vnet header | IP packet]`;
//!   `Segments::new(&VnetHeader::parse(buf)?, &buf[VNET_HDR_LEN..])` validates it, and
//!   `write(i, slot)` builds complete segment `i` (own lengths, sequence number, flags, full
//!   checksum) straight into its record slot.
//! - `received` ([`received_super_packet`]): a TCP/UDP super-packet that arrived whole from a
//!   link (a peer's eBPF fast path encapsulates GSO packets as they are), described by the
//!   virtio-net header a TUN read of it would have had, so that it is cut by [`Segments`] or
//!   written whole to a TUN device with offloads.
//! - `coalesce` ([`Coalescer`], [`Append`], [`is_coalescable`]): receive side. Decrypted
//!   segments of one TCP flow are merged in a caller buffer laid out as
//!   `[vnet header | IP packet …]`; [`Coalescer::finish`] writes the `GSO_TCPV6`/`GSO_TCPV4`
//!   header and returns the length to write to the TUN device.
//!
//! # Receive loop
//!
//! ```
//! use connectopus_offload::{Append, Coalescer};
//! # fn write_tun(_: &[u8]) {}
//! # let segments: Vec<Vec<u8>> = Vec::new();
//! let mut buf = vec![0u8; 65_535 + connectopus_offload::VNET_HDR_LEN];
//! let mut single = vec![0u8; 65_535 + connectopus_offload::VNET_HDR_LEN];
//! let mut open: Option<Coalescer> = None;
//! for pkt in &segments {
//!     if let Some(c) = open.as_mut() {
//!         match c.try_append(&mut buf, pkt) {
//!             Append::Appended => continue,
//!             // A single open super-packet: flush it either way, in order.
//!             Append::NotSameFlow | Append::Flush => {
//!                 let n = c.finish(&mut buf);
//!                 write_tun(&buf[..n]);
//!             }
//!         }
//!     }
//!     open = Coalescer::start(&mut buf, pkt);
//!     if open.is_none() {
//!         // Not a candidate (or a bad checksum): written alone with an all-zero header.
//!         single[..10].fill(0);
//!         single[10..10 + pkt.len()].copy_from_slice(pkt);
//!         write_tun(&single[..10 + pkt.len()]);
//!     }
//! }
//! if let Some(c) = open {
//!     let n = c.finish(&mut buf);
//!     write_tun(&buf[..n]);
//! }
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bytes;
pub mod checksum;
mod coalesce;
mod error;
mod ip;
mod received;
mod split;
mod vnet;

#[cfg(test)]
mod tests;

pub use checksum::{checksum_valid, complete_partial_checksum};
pub use coalesce::{Append, Coalescer, MAX_IP_LEN, MAX_SEGMENTS, is_coalescable};
pub use error::OffloadError;
pub use received::received_super_packet;
pub use split::Segments;
pub use vnet::{GsoType, VNET_HDR_LEN, VnetHeader, complete_checksum};
