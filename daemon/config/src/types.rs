//! Value types that parse from one YAML scalar: IPv6 prefixes, durations, peer addresses and
//! OpenSSH public keys.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer};
use serde::{Serialize, Serializer};

/// Deserializes any `FromStr` type from a YAML string, reporting the parse error at the value.
fn from_str_de<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let s = String::deserialize(d)?;
    s.parse::<T>().map_err(de::Error::custom)
}

/// An IPv6 prefix in CIDR notation, such as `fd00::/16`.
///
/// The address is kept as written; [`Ipv6Net::network`] masks the host bits off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Net {
    addr: Ipv6Addr,
    len: u8,
}

impl Ipv6Net {
    /// Builds a prefix, or returns `None` when `len` exceeds 128.
    pub fn new(addr: Ipv6Addr, len: u8) -> Option<Self> {
        (len <= 128).then_some(Self { addr, len })
    }

    /// Returns the address as written, host bits included.
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// Returns the prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    fn mask(&self) -> u128 {
        if self.len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.len))
        }
    }

    /// Returns the first address of the prefix (host bits cleared).
    pub fn network(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) & self.mask())
    }

    /// Tells whether the written address has host bits set (`fd00::1/64`).
    pub fn has_host_bits(&self) -> bool {
        u128::from(self.addr) & !self.mask() != 0
    }

    /// Tells whether `addr` lies inside the prefix.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & self.mask() == u128::from(self.addr) & self.mask()
    }

    /// Tells whether `other` lies entirely inside this prefix.
    pub fn contains_net(&self, other: &Ipv6Net) -> bool {
        other.len >= self.len && self.contains(other.network())
    }

    /// Tells whether the two prefixes share at least one address.
    pub fn overlaps(&self, other: &Ipv6Net) -> bool {
        self.contains_net(other) || other.contains_net(self)
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv6Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid IPv6 prefix `{s}`: expected ADDRESS/LENGTH"))?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| {
            if addr.parse::<std::net::Ipv4Addr>().is_ok() {
                format!("invalid IPv6 prefix `{s}`: the mesh is IPv6-only")
            } else {
                format!("invalid IPv6 prefix `{s}`: bad address `{addr}`")
            }
        })?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 128)
            .ok_or_else(|| format!("invalid IPv6 prefix `{s}`: length must be 0..=128"))?;
        Ok(Self { addr, len })
    }
}

impl<'de> Deserialize<'de> for Ipv6Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_de(d)
    }
}

impl Serialize for Ipv6Net {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An IPv4 prefix in CIDR notation, such as `198.18.0.0/15` (`global.subnet4`).
///
/// The address is kept as written; [`Ipv4Net::network`] masks the host bits off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: std::net::Ipv4Addr,
    len: u8,
}

impl Ipv4Net {
    /// Builds a prefix, or returns `None` when `len` exceeds 32.
    pub fn new(addr: std::net::Ipv4Addr, len: u8) -> Option<Self> {
        (len <= 32).then_some(Self { addr, len })
    }

    /// Returns the address as written, host bits included.
    pub fn addr(&self) -> std::net::Ipv4Addr {
        self.addr
    }

    /// Returns the prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }

    /// Returns the first address of the prefix (host bits cleared).
    pub fn network(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// Tells whether the written address has host bits set (`198.18.0.1/15`).
    pub fn has_host_bits(&self) -> bool {
        u32::from(self.addr) & !self.mask() != 0
    }

    /// Tells whether `addr` lies inside the prefix.
    pub fn contains(&self, addr: std::net::Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid IPv4 prefix `{s}`: expected ADDRESS/LENGTH"))?;
        let addr: std::net::Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("invalid IPv4 prefix `{s}`: bad address `{addr}`"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("invalid IPv4 prefix `{s}`: length must be 0..=32"))?;
        Ok(Self { addr, len })
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_de(d)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A duration written with units: `500ms`, `3s`, `1m`, `1h`, or a sum such as `1m30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// Returns the duration.
    pub fn get(&self) -> Duration {
        self.0
    }
}

impl FromStr for ConfigDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid duration `{s}`: expected e.g. `500ms`, `3s`, `1m`, `1h`");
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let mut total = Duration::ZERO;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
                format!("invalid duration `{s}`: a unit is required (ms, s, m, h)")
            })?;
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = match &rest[..unit_len] {
                "ms" => Duration::from_millis(1),
                "s" => Duration::from_secs(1),
                "m" => Duration::from_secs(60),
                "h" => Duration::from_secs(3600),
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            let part = u32::try_from(n)
                .ok()
                .and_then(|n| unit.checked_mul(n))
                .ok_or_else(bad)?;
            total = total.checked_add(part).ok_or_else(bad)?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else if !ms.is_multiple_of(60_000) || ms == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{}m", ms / 60_000)
        }
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_de(d)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The host part of a dialer's `peer`: an IP literal or a DNS name (resolved at each dial).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerHost {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A DNS name, resolved when dialing (never cached for the life of the backend).
    Name(String),
}

impl fmt::Display for PeerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerHost::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            PeerHost::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            PeerHost::Name(n) => f.write_str(n),
        }
    }
}

/// A dialer's underlay target, `host:port` or `[ipv6]:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// Where to connect.
    pub host: PeerHost,
    /// UDP or TCP port, never 0.
    pub port: u16,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for PeerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, port) = rest
                .split_once("]:")
                .ok_or_else(|| format!("invalid peer `{s}`: expected [IPV6]:PORT"))?;
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| format!("invalid peer `{s}`: bad IPv6 address `{ip}`"))?;
            (PeerHost::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| format!("invalid peer `{s}`: expected HOST:PORT"))?;
            if host.contains(':') {
                return Err(format!(
                    "invalid peer `{s}`: write IPv6 literals in brackets, as [ADDRESS]:PORT"
                ));
            }
            let host = match host.parse::<IpAddr>() {
                Ok(ip) => PeerHost::Ip(ip),
                Err(_) if is_dns_name(host, false) => PeerHost::Name(host.to_owned()),
                Err(_) => return Err(format!("invalid peer `{s}`: bad host name `{host}`")),
            };
            (host, port)
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid peer `{s}`: port must be 1..=65535"))?;
        Ok(Self { host, port })
    }
}

impl<'de> Deserialize<'de> for PeerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str_de(d)
    }
}

impl Serialize for PeerAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Tells whether `s` is a DNS name: dot-separated labels of letters, digits and `-`, 1..=63
/// each, no label starting or ending with `-`, 253 bytes at most. With `lowercase`, upper-case
/// letters are refused.
pub fn is_dns_name(s: &str, lowercase: bool) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| is_dns_label(l, lowercase))
}

/// Tells whether `s` is one DNS label (see [`is_dns_name`]).
pub fn is_dns_label(s: &str, lowercase: bool) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b == b'-'
                || (!lowercase && b.is_ascii_uppercase())
        })
}

/// Key types accepted in `authorized_keys`, `revoked_keys` and `identity`.
pub const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// An OpenSSH public key line, `<type> <base64> [comment]`, kept as written.
///
/// Deserialization accepts any string; [`SshPublicKey::check`] validates the format, so that
/// `config check` can report every malformed line instead of stopping at the first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize, Serialize)]
#[serde(transparent)]
pub struct SshPublicKey(pub String);

impl SshPublicKey {
    /// Returns the key type (first field), such as `ssh-ed25519`.
    pub fn key_type(&self) -> &str {
        self.0.split_whitespace().next().unwrap_or("")
    }

    /// Returns the base64 key material (second field).
    pub fn key_data(&self) -> &str {
        self.0.split_whitespace().nth(1).unwrap_or("")
    }

    /// Returns the comment (everything after the key material), if any.
    pub fn comment(&self) -> Option<&str> {
        let s = self.0.trim();
        let mut it = s.splitn(3, char::is_whitespace);
        it.next();
        it.next();
        it.next().map(str::trim).filter(|c| !c.is_empty())
    }

    /// Tells whether two lines hold the same key, ignoring the comment.
    pub fn same_key(&self, other: &SshPublicKey) -> bool {
        self.key_type() == other.key_type() && self.key_data() == other.key_data()
    }

    /// Checks the line format: a known type, base64 that decodes to an SSH key blob whose
    /// embedded type name matches the first field.
    pub fn check(&self) -> Result<(), String> {
        let ty = self.key_type();
        if ty.is_empty() {
            return Err("empty SSH public key".to_owned());
        }
        if !SSH_KEY_TYPES.contains(&ty) {
            return Err(format!(
                "unknown SSH key type `{ty}` (expected one of {})",
                SSH_KEY_TYPES.join(", ")
            ));
        }
        let data = self.key_data();
        if data.is_empty() {
            return Err(format!(
                "SSH public key of type `{ty}` has no key material; expected `<type> <base64> [comment]`"
            ));
        }
        let blob =
            base64_decode(data).ok_or_else(|| "SSH public key is not valid base64".to_owned())?;
        let inner = blob
            .get(..4)
            .and_then(|n| <[u8; 4]>::try_from(n).ok())
            .map(|n| u32::from_be_bytes(n) as usize)
            .and_then(|n| blob.get(4..4 + n));
        match inner {
            Some(t) if t == ty.as_bytes() => Ok(()),
            Some(t) => Err(format!(
                "SSH public key says `{ty}` but its key material is `{}`",
                String::from_utf8_lossy(t)
            )),
            None => Err("SSH public key material is truncated".to_owned()),
        }
    }
}

impl fmt::Display for SshPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes standard padded base64, or returns `None`.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let chunks = bytes.chunks(4);
    let n = chunks.len();
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != n) {
            return None;
        }
        let mut acc = 0u32;
        for &c in &chunk[..4 - pad] {
            acc = (acc << 6) | val(c)?;
        }
        acc <<= 6 * pad as u32;
        let b = acc.to_be_bytes();
        out.extend_from_slice(&b[1..4 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A syntactically valid ed25519 public key (32 zero bytes of key material).
    pub(crate) const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA test";

    #[test]
    fn nets() {
        let n: Ipv6Net = "fd00::/16".parse().unwrap();
        assert!(n.contains("fd00::1:1".parse().unwrap()));
        assert!(!n.contains("fd01::1".parse().unwrap()));
        let m: Ipv6Net = "fd00:1::/64".parse().unwrap();
        assert!(n.contains_net(&m) && n.overlaps(&m) && m.overlaps(&n));
        assert!(!m.contains_net(&n));
        assert!("fd00::1/64".parse::<Ipv6Net>().unwrap().has_host_bits());
        assert!("198.18.0.0/15".parse::<Ipv6Net>().is_err());
        assert!("::/129".parse::<Ipv6Net>().is_err());
        assert_eq!(
            "::/0".parse::<Ipv6Net>().unwrap().network(),
            Ipv6Addr::UNSPECIFIED
        );
    }

    #[test]
    fn durations() {
        let d = |s: &str| s.parse::<ConfigDuration>().map(|d| d.0);
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("2h"), Ok(Duration::from_secs(7200)));
        assert!(d("3").is_err() && d("s").is_err() && d("3d").is_err() && d("").is_err());
        assert_eq!(ConfigDuration(Duration::from_secs(60)).to_string(), "1m");
        assert_eq!(
            ConfigDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
    }

    #[test]
    fn peers() {
        let p: PeerAddr = "[2001:db8::1]:4444".parse().unwrap();
        assert_eq!(p.port, 4444);
        assert_eq!(p.to_string(), "[2001:db8::1]:4444");
        let p: PeerAddr = "hub.example.net:1".parse().unwrap();
        assert_eq!(p.host, PeerHost::Name("hub.example.net".into()));
        assert!("2001:db8::1:4444".parse::<PeerAddr>().is_err());
        assert!("198.51.100.1:0".parse::<PeerAddr>().is_err());
        assert!("host".parse::<PeerAddr>().is_err());
        assert!("bad_host:1".parse::<PeerAddr>().is_err());
    }

    #[test]
    fn ssh_keys() {
        let k = SshPublicKey(ED25519.into());
        assert_eq!(k.check(), Ok(()));
        assert_eq!(k.comment(), Some("test"));
        assert!(SshPublicKey("ssh-ed25519".into()).check().is_err());
        assert!(
            SshPublicKey(
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                    .into()
            )
            .check()
            .is_err()
        );
        assert!(
            SshPublicKey("ssh-ed25519 not*base64".into())
                .check()
                .is_err()
        );
        assert!(SshPublicKey("foo AAAA".into()).check().is_err());
        assert_eq!(base64_decode("aGk="), Some(b"hi".to_vec()));
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("connectopus.test", true));
        assert!(!is_dns_name("Connectopus.test", true));
        assert!(!is_dns_name("-a.test", true));
        assert!(!is_dns_name("a..b", true));
    }
}
