//! `connectopus-dhcp6`: a sans-IO DHCPv6 client for prefix delegation (RFC 8415, one IA_PD).
//!
//! Like the protocol core it never touches a socket or the clock: every input takes `now`,
//! and what it wants sent or reported leaves as data.
//!
//! | Input | Meaning |
//! | --- | --- |
//! | [`Client::new`] / [`Client::resume`] | start Soliciting, or Rebind held delegations after a restart |
//! | [`Client::handle_datagram`] | a UDP payload received on port 546 |
//! | [`Client::handle_timeout`] | [`Client::poll_timeout`] is due |
//! | [`Client::handle_link`] | the interface came back up (→ Rebind) |
//! | [`Client::release`] | give the prefixes back |
//!
//! | Output | Meaning |
//! | --- | --- |
//! | [`Client::poll_transmit`] | a datagram for `ff02::1:2` port 547 on the interface |
//! | [`Client::poll_event`] | [`PdEvent`]: `Bound`, `Renewed`, `Rebound`, `Expired`, `Released` |
//! | [`Client::poll_timeout`] | when to call `handle_timeout`, and why |
//!
//! States and retransmission follow RFC 8415 §18.2 and §15 (IRT/MRT/MRC/MRD, RAND from the
//! seeded RNG); see `docs/dynamic-mesh.md` §2.3. The DUID ([`Duid`]) is made once by the
//! driver and saved as bytes, with the delegations, in a [`PdState`]. Received bytes go through a total parser ([`codec`]).

mod client;
pub mod codec;
mod duid;
pub mod retransmit;
mod state;

pub use client::{Client, ClientConfig, Delegation, Lease, PdEvent, Prefix, State};
pub use connectopus_core::Time;
pub use duid::{Duid, DuidError, iaid_for_interface};
pub use state::{PdState, SavedDelegation, StateError};
