//! Steering of link datagrams to the dataplane worker that owns their peer: the `SO_REUSEPORT`
//! program `cx_udp_steer` (in `connectopus-ebpf`) and its maps.
//!
//! Each dataplane worker has its own UDP socket on every link port, all in one `SO_REUSEPORT`
//! group per port. Without a program the kernel picks a group member by a hash of the 4-tuple:
//! one peer's datagrams stay on one socket, but which one is chance (two busy links may hash to
//! the same worker), and a socket leaving the group re-hashes every peer. With the program the
//! control plane decides: [`MAP_STEER_OWNERS`] maps a peer (its address and port, and our port)
//! to an index in [`MAP_STEER_SOCKETS`], the `REUSEPORT_SOCKARRAY` that holds the workers'
//! sockets. A datagram from a peer without an entry, or whose entry names an empty slot or a
//! socket of another port's group, gets no choice from the program, and the kernel falls back to
//! its hash. Every datagram counts one [`SteerOutcome`] in [`MAP_STEER_OUTCOMES`].
//!
//! The key is [`crate::fastpath::PeerKey`]; an IPv4 peer (on a dual-stack socket) is keyed by its
//! IPv4-mapped IPv6 address ([`v4_mapped`]), which is how userspace sees it.

/// Name of the `sk_reuseport` program.
pub const PROG_UDP_STEER: &str = "cx_udp_steer";

/// `HashMap<PeerKey, u32>`: the peer's socket index in [`MAP_STEER_SOCKETS`].
pub const MAP_STEER_OWNERS: &str = "CX_STEER_OWNERS";

/// `REUSEPORT_SOCKARRAY` of the workers' sockets, indexed by `port slot × workers + worker`
/// (userspace's choice; the program only follows the owner entries).
pub const MAP_STEER_SOCKETS: &str = "CX_STEER_SOCKS";

/// `PerCpuArray<u64>` indexed by [`SteerOutcome::index`].
pub const MAP_STEER_OUTCOMES: &str = "CX_STEER_OUTCOMES";

/// Peers the owner map holds.
pub const MAX_STEER_PEERS: u32 = 4_096;

/// Sockets the socket array holds (port groups × workers).
pub const MAX_STEER_SOCKETS: u32 = 1_024;

/// What the program did with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SteerOutcome {
    /// Sent to the socket its owner entry names.
    Steered = 0,
    /// No owner entry for the peer: the kernel's hash picked the socket.
    NoOwner = 1,
    /// The entry names a slot that is empty or holds a socket of another group: hash.
    OwnerGone = 2,
    /// Not a UDP datagram over IPv4 or IPv6, or too short to read: hash.
    Unparsable = 3,
}

impl SteerOutcome {
    /// Every outcome, in index order.
    pub const ALL: [SteerOutcome; 4] = [
        SteerOutcome::Steered,
        SteerOutcome::NoOwner,
        SteerOutcome::OwnerGone,
        SteerOutcome::Unparsable,
    ];

    /// Number of entries in [`MAP_STEER_OUTCOMES`].
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The outcome's index in [`MAP_STEER_OUTCOMES`].
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// A name for counters: `steered`, `no_owner`, `owner_gone`, `unparsable`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SteerOutcome::Steered => "steered",
            SteerOutcome::NoOwner => "no_owner",
            SteerOutcome::OwnerGone => "owner_gone",
            SteerOutcome::Unparsable => "unparsable",
        }
    }
}

/// The IPv4-mapped IPv6 address `::ffff:a.b.c.d` of an IPv4 address.
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// `skb->protocol` as the program sees it (`sk_reuseport_md.eth_protocol`: the big-endian
/// EtherType widened to 32 bits on a little-endian host), for IPv6.
pub const ETH_PROTOCOL_IPV6: u32 = u16::from_be(0x86dd) as u32;

/// The same for IPv4.
pub const ETH_PROTOCOL_IPV4: u32 = u16::from_be(0x0800) as u32;

/// Offset of the source address in the IPv6 header.
pub const IPV6_SRC_OFFSET: u32 = 8;

/// Offset of the source address in the IPv4 header (options come after the addresses).
pub const IPV4_SRC_OFFSET: u32 = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_matches_the_standard_library() {
        let mapped = core::net::Ipv4Addr::new(198, 18, 0, 7).to_ipv6_mapped();
        assert_eq!(v4_mapped([198, 18, 0, 7]), mapped.octets());
    }

    #[test]
    fn outcomes_index_their_own_slot() {
        for (i, outcome) in SteerOutcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index() as usize, i);
        }
        assert_eq!(SteerOutcome::COUNT, 4);
    }

    #[test]
    fn eth_protocols_are_the_wire_ethertypes_read_as_little_endian() {
        assert_eq!(ETH_PROTOCOL_IPV6.to_le_bytes()[..2], [0x86, 0xdd]);
        assert_eq!(ETH_PROTOCOL_IPV4.to_le_bytes()[..2], [0x08, 0x00]);
    }
}
