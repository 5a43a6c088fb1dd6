//! Authoritative DNS for the mesh zone, answering from a name table the node updates live.
//!
//! Every Connectopus node serves the mesh domain (`global.domain`, e.g.
//! `connectopus.test.`) so people can use names instead of addresses. The node binds a UDP
//! socket and a TCP listener (its mesh address, port 53, inside its network namespace),
//! hands them to [`DnsServer::start`] with a [`ZoneConfig`], and calls
//! [`DnsServer::update`] (or [`NameTable::update`] from another thread) with every name
//! the routing protocol currently knows.
//!
//! # What it does
//!
//! - Serves the domain zone and the reverse zone(s) of the mesh subnet under `ip6.arpa.`
//!   (see [`reverse_zones`] for prefixes that are not a multiple of 4).
//! - With an IPv4 subnet ([`ZoneConfig::subnet4`]), also its `in-addr.arpa.` zones (see
//!   [`reverse_zones4`]).
//! - `AAAA` for `<name>.<domain>.`, `A` for names given an IPv4 address (a name without one
//!   answers `A` with NODATA), `PTR` for the reverse names of addresses inside the
//!   subnets (→ `<name>.<domain>.`), `SOA` and `NS` at each zone apex. The name server is
//!   the node itself, `<node_name>.<domain>.`, whose AAAA is always served and is added
//!   as glue to NS answers. `ANY` returns every record at the name.
//! - Answers are authoritative (AA) with a short TTL ([`ZoneConfig::ttl`], default 10 s,
//!   also the SOA minimum so negative answers are cached just as briefly).
//! - Other types at an existing name → NOERROR with no answers and the SOA in the
//!   authority section (NODATA); names between a record and the apex (`b` of `a.b`, the
//!   nibbles above an address) exist and also give NODATA; other names in a zone →
//!   NXDOMAIN with the SOA; anything outside the zones, other classes than IN, and zone
//!   transfers → REFUSED. No recursion: RA is never set.
//! - Names are lower-cased and matched case-insensitively.
//! - [`NameTable::update`] replaces the whole set atomically; the SOA serial (shared by
//!   all the zones, started at the Unix time) goes up by one on every change and only on
//!   a change.
//! - EDNS(0): an OPT in the query gets one back (payload 1232); UDP responses are kept
//!   within the client's payload size (at most 1232, at least 512) and are truncated with
//!   TC set otherwise; EDNS versions above 0 get BADVERS.
//! - Robustness: datagrams shorter than a header and messages with QR set are dropped;
//!   other unparsable messages get FORMERR, other opcodes NOTIMP. UDP is served one
//!   datagram at a time, so a flood costs no memory (the kernel drops what does not fit in
//!   the socket buffer). TCP: at most [`ZoneConfig::tcp_max_connections`] connections
//!   (default 64; more are closed at once), each closed after
//!   [`ZoneConfig::tcp_idle_timeout`] without a complete query or when a length prefix is
//!   below 12 or above [`MAX_TCP_QUERY`] (4096) bytes, so a connection buffers at most
//!   4 KiB.
//!
//! # What it does not do
//!
//! - No recursion or forwarding, no DNSSEC, no zone transfers, no dynamic UPDATE, no
//!   DNS over TLS/HTTPS, no A records (IPv4 is not carried by the mesh).
//! - No wildcards; names are restricted to ASCII letters, digits, `-` and `_` per label.
//! - It does not learn names itself or withdraw stale ones: the caller passes the full
//!   current set, so withdrawing a name is leaving it out of the next update (upstream
//!   Connectopus never withdrew learned names).
//! - It does not bind sockets or enter network namespaces; the caller does.
//! - No logging; [`DnsServer::stats`] exposes counters instead.
//!
//! # Layout
//!
//! - `config.rs`: [`ZoneConfig`], name validation, reverse-zone computation.
//! - `table.rs`: [`NameTable`] (the live, atomically replaced name set) and the immutable
//!   snapshots of records queries are answered from.
//! - `answer.rs`: one query message in, one response message out (pure, synchronous).
//! - `server.rs`: [`DnsServer`], its thread and current-thread tokio runtime, the UDP loop
//!   and the TCP accept loop with its connection limit and timeouts.
//! - `error.rs`: [`Error`] and [`NameError`].
//! - `tests/dig.rs`: end-to-end tests with `dig` against a server on `[::1]`.
//! - `examples/qps.rs`: UDP throughput measurement, and a serve-only mode for `dnsperf`.
//!
//! # Example
//!
//! ```no_run
//! use connectopus_dns::{DnsServer, ZoneConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let me = "fd00::1".parse()?;
//! let udp = std::net::UdpSocket::bind("[fd00::1]:53")?;
//! let tcp = std::net::TcpListener::bind("[fd00::1]:53")?;
//! let server = DnsServer::start(udp, tcp, ZoneConfig::new("connectopus.test", "fd00::".parse()?, 64, "node1", me))?;
//! let v6: std::net::IpAddr = "fd00::2".parse()?;
//! let v4: std::net::IpAddr = "198.18.0.2".parse()?;
//! server.update([("bar", v6), ("bar", v4)]);
//! // ... later, when the routing protocol's view changes:
//! server.update([("bar", v6)]);
//! server.stop()?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod answer;
mod config;
mod error;
mod server;
mod table;

pub use config::{
    DEFAULT_TCP_IDLE_TIMEOUT, DEFAULT_TCP_MAX_CONNECTIONS, DEFAULT_TTL, ZoneConfig, reverse_zones,
    reverse_zones4,
};
pub use error::{Error, NameError, Result};
pub use server::{DnsServer, MAX_TCP_QUERY, Stats};
pub use table::{NameTable, UpdateOutcome};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
