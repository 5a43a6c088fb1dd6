//! `connectopus-netlink`: what the attach helper and the CNI plugin do to links, addresses
//! and routes, over rtnetlink, in this network namespace or another.
//!
//! - [`message`], [`link`], [`address`], [`route`]: sans-IO. Requests are built as bytes;
//!   what the kernel sends is parsed by total parsers (malformed input is an error, never a
//!   panic).
//! - [`Netlink`]: a socket and the operations: veth pairs (the peer made straight into
//!   another namespace, or moved there later), up/down, MTU, rename, delete; addresses with
//!   `nodad`; routes through a device, via a gateway, host routes; listings to verify.
//! - [`Netns`]: a namespace by descriptor. A socket belongs to the namespace it is opened
//!   in, so [`Netlink::open_in`] opens one on a thread that entered the namespace (`setns`)
//!   and the caller's threads never move. [`Netns::run`] does other work there (sysctls).
//!
//! Errors ([`Error`]) say what was being done to which link or address, with the kernel's
//! errno and its extended-ack message, e.g. ``adding fd00::1/128 to link `veth0`: File
//! exists (os error 17)``.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod address;
pub mod link;
pub mod message;
mod netns;
pub mod route;
mod socket;

use std::fmt;
use std::io;
use std::net::IpAddr;

pub use address::{Address, IFA_F_DEPRECATED, IFA_F_NODAD, LIFETIME_INFINITE};
pub use link::{Link, VethSpec};
pub use message::ParseError;
pub use netns::{Netns, read_sysctl, write_sysctl};
pub use route::Route;

use link::LinkChange;
use socket::Socket;

/// A failed operation: what it was doing, and why (an errno from the kernel or a system
/// call, or a malformed reply).
#[derive(Debug)]
pub struct Error {
    what: String,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    Kernel { errno: i32, message: Option<String> },
    Io(io::Error),
    Parse(ParseError),
    Invalid(String),
}

impl Error {
    fn kernel(what: String, errno: i32, message: Option<String>) -> Error {
        Error {
            what,
            cause: Cause::Kernel { errno, message },
        }
    }

    fn io(what: String, e: io::Error) -> Error {
        Error {
            what,
            cause: Cause::Io(e),
        }
    }

    fn parse(what: String, e: ParseError) -> Error {
        Error {
            what,
            cause: Cause::Parse(e),
        }
    }

    fn invalid(what: String, why: String) -> Error {
        Error {
            what,
            cause: Cause::Invalid(why),
        }
    }

    /// An error of a system call made while doing `what` (for callers that combine
    /// netlink with other kernel interfaces, such as sysctls).
    pub fn from_io(what: String, e: io::Error) -> Error {
        Error::io(what, e)
    }

    /// The errno, when the kernel or a system call refused.
    pub fn errno(&self) -> Option<i32> {
        match &self.cause {
            Cause::Kernel { errno, .. } => Some(*errno),
            Cause::Io(e) => e.raw_os_error(),
            Cause::Parse(_) | Cause::Invalid(_) => None,
        }
    }

    /// Whether the thing acted on does not exist: no such link, address or route. A delete
    /// that finds nothing to delete fails with this.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV | libc::ESRCH | libc::ENOENT | libc::EADDRNOTAVAIL)
        )
    }

    /// Whether the thing to add is there already.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The kernel's extended-ack message, if it gave one.
    pub fn kernel_message(&self) -> Option<&str> {
        match &self.cause {
            Cause::Kernel { message, .. } => message.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.what)?;
        match &self.cause {
            Cause::Kernel { errno, message } => {
                if let Some(message) = message {
                    write!(f, "{message}: ")?;
                }
                write!(f, "{}", io::Error::from_raw_os_error(*errno))
            }
            Cause::Io(e) => write!(f, "{e}"),
            Cause::Parse(e) => write!(f, "{e}"),
            Cause::Invalid(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e.errno() {
            Some(errno) => io::Error::from_raw_os_error(errno).kind(),
            None => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e.to_string())
    }
}

/// A link named by the caller: an index, or a name looked up first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRef<'a> {
    Index(u32),
    Name(&'a str),
}

impl fmt::Display for LinkRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkRef::Index(i) => write!(f, "link #{i}"),
            LinkRef::Name(n) => write!(f, "link `{n}`"),
        }
    }
}

impl From<u32> for LinkRef<'_> {
    fn from(index: u32) -> Self {
        LinkRef::Index(index)
    }
}

impl<'a> From<&'a str> for LinkRef<'a> {
    fn from(name: &'a str) -> Self {
        LinkRef::Name(name)
    }
}

impl<'a> From<&'a String> for LinkRef<'a> {
    fn from(name: &'a String) -> Self {
        LinkRef::Name(name)
    }
}

/// An rtnetlink socket in one network namespace and the operations on that namespace's
/// links, addresses and routes. One request at a time (`&mut self`).
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, Error> {
        Socket::open()
            .map(|socket| Netlink { socket })
            .map_err(|e| Error::io("opening a netlink socket".into(), e))
    }

    /// Opens a socket in `netns`, from a thread that enters it; the caller stays where it is.
    pub fn open_in(netns: &Netns) -> Result<Netlink, Error> {
        netns
            .run(Netlink::open)
            .map_err(|e| Error::io("opening a netlink socket in a namespace".into(), e))?
    }

    /// The link named `name`.
    pub fn link(&mut self, name: &str) -> Result<Link, Error> {
        let what = || format!("finding link `{name}`");
        link::check_name(name).map_err(|why| Error::invalid(what(), why))?;
        let payloads = self
            .socket
            .dump(|| link::get_request(name), link::RTM_NEWLINK, what)?;
        let payload = payloads
            .first()
            .ok_or_else(|| Error::invalid(what(), "the kernel answered without the link".into()))?;
        Link::parse(payload).map_err(|e| Error::parse(what(), e))
    }

    /// The link named `name`, or `None` when there is none.
    pub fn find_link(&mut self, name: &str) -> Result<Option<Link>, Error> {
        match self.link(name) {
            Ok(link) => Ok(Some(link)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The index of `link`.
    pub fn index(&mut self, link: LinkRef<'_>) -> Result<u32, Error> {
        match link {
            LinkRef::Index(i) => Ok(i),
            LinkRef::Name(name) => self.link(name).map(|l| l.index),
        }
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, Error> {
        let what = || "listing links".to_owned();
        self.socket
            .dump(link::dump_request, link::RTM_NEWLINK, what)?
            .iter()
            .map(|p| Link::parse(p).map_err(|e| Error::parse(what(), e)))
            .collect()
    }

    /// Creates a veth pair: `spec.name` here, `spec.peer` here or straight in
    /// `spec.peer_netns` (so the peer's name may be taken here, as `eth0` usually is).
    pub fn add_veth(&mut self, spec: &VethSpec<'_>) -> Result<(), Error> {
        let what = || format!("creating veth pair `{}`/`{}`", spec.name, spec.peer);
        for name in [spec.name, spec.peer] {
            link::check_name(name).map_err(|why| Error::invalid(what(), why))?;
        }
        self.socket.ack(link::veth_request(spec), what)
    }

    fn change(
        &mut self,
        target: LinkRef<'_>,
        change: &LinkChange<'_>,
        what: impl Fn() -> String,
    ) -> Result<(), Error> {
        let index = self.index(target)?;
        self.socket.ack(change.request(index), what)
    }

    /// Brings `link` up.
    pub fn set_up<'a>(&mut self, link: impl Into<LinkRef<'a>>) -> Result<(), Error> {
        let link: LinkRef<'a> = link.into();
        let change = LinkChange {
            up: Some(true),
            ..LinkChange::default()
        };
        self.change(link, &change, || format!("bringing {} up", link))
    }

    /// Takes `link` down.
    pub fn set_down<'a>(&mut self, link: impl Into<LinkRef<'a>>) -> Result<(), Error> {
        let link: LinkRef<'a> = link.into();
        let change = LinkChange {
            up: Some(false),
            ..LinkChange::default()
        };
        self.change(link, &change, || format!("taking {} down", link))
    }

    /// Sets the MTU of `link`.
    pub fn set_mtu<'a>(&mut self, link: impl Into<LinkRef<'a>>, mtu: u32) -> Result<(), Error> {
        let link: LinkRef<'a> = link.into();
        let change = LinkChange {
            mtu: Some(mtu),
            ..LinkChange::default()
        };
        self.change(link, &change, || {
            format!("setting the MTU of {} to {mtu}", link)
        })
    }

    /// Moves `link` into `netns`, renamed to `new_name` there if given (a name taken there is
    /// an error, [`Error::is_exists`], and the link stays here).
    pub fn move_to_netns<'a>(
        &mut self,
        link: impl Into<LinkRef<'a>>,
        netns: &Netns,
        new_name: Option<&str>,
    ) -> Result<(), Error> {
        let link: LinkRef<'a> = link.into();
        let what = || format!("moving {} to another network namespace", link);
        if let Some(name) = new_name {
            link::check_name(name).map_err(|why| Error::invalid(what(), why))?;
            // The kernel moves first and renames after: a name taken there would leave the
            // link moved under its old name. Look first.
            if Netlink::open_in(netns)?.find_link(name)?.is_some() {
                return Err(Error::kernel(
                    what(),
                    libc::EEXIST,
                    Some(format!("`{name}` exists there")),
                ));
            }
        }
        let change = LinkChange {
            netns: Some(netns.raw_fd()),
            rename: new_name,
            ..LinkChange::default()
        };
        self.change(link, &change, what)
    }

    /// Renames `link` (it must be down).
    pub fn rename<'a>(
        &mut self,
        link: impl Into<LinkRef<'a>>,
        new_name: &str,
    ) -> Result<(), Error> {
        let link: LinkRef<'a> = link.into();
        let what = || format!("renaming {} to `{new_name}`", link);
        link::check_name(new_name).map_err(|why| Error::invalid(what(), why))?;
        let change = LinkChange {
            rename: Some(new_name),
            ..LinkChange::default()
        };
        self.change(link, &change, what)
    }

    /// Deletes `link` (a veth takes its peer along, wherever that is).
    pub fn delete_link<'a>(&mut self, link: impl Into<LinkRef<'a>>) -> Result<(), Error> {
        let link: LinkRef<'a> = link.into();
        let index = self.index(link)?;
        self.socket
            .ack(link::delete_request(index), || format!("deleting {}", link))
    }

    /// Adds `address/prefix_len` to `link`, without duplicate address detection when `nodad`
    /// (IPv6). An address present already is an error ([`Error::is_exists`]).
    pub fn add_address<'a>(
        &mut self,
        link: impl Into<LinkRef<'a>>,
        address: IpAddr,
        prefix_len: u8,
        nodad: bool,
    ) -> Result<(), Error> {
        let link: LinkRef<'a> = link.into();
        let what = || format!("adding {address}/{prefix_len} to {}", link);
        check_prefix(address, prefix_len).map_err(|why| Error::invalid(what(), why))?;
        let index = self.index(link)?;
        let flags = if nodad && address.is_ipv6() {
            IFA_F_NODAD
        } else {
            0
        };
        self.socket.ack(
            address::add_request(index, address, prefix_len, flags),
            what,
        )
    }

    /// Deprecates `address/prefix_len` on `link` (preferred lifetime 0: existing connections
    /// keep it, new ones pick another source) or makes it preferred again (forever); the valid
    /// lifetime stays infinite. `nodad` as when it was added. An absent address is added with
    /// that lifetime.
    pub fn set_address_deprecated<'a>(
        &mut self,
        link: impl Into<LinkRef<'a>>,
        address: IpAddr,
        prefix_len: u8,
        nodad: bool,
        deprecated: bool,
    ) -> Result<(), Error> {
        let link: LinkRef<'a> = link.into();
        let what = || {
            let how = if deprecated {
                "deprecating"
            } else {
                "preferring"
            };
            format!("{how} {address}/{prefix_len} on {}", link)
        };
        check_prefix(address, prefix_len).map_err(|why| Error::invalid(what(), why))?;
        let index = self.index(link)?;
        let flags = if nodad && address.is_ipv6() {
            IFA_F_NODAD
        } else {
            0
        };
        let preferred = if deprecated {
            0
        } else {
            address::LIFETIME_INFINITE
        };
        self.socket.ack(
            address::change_lifetime_request(index, address, prefix_len, flags, preferred),
            what,
        )
    }

    /// Deletes `address/prefix_len` from `link`.
    pub fn delete_address<'a>(
        &mut self,
        link: impl Into<LinkRef<'a>>,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<(), Error> {
        let link: LinkRef<'a> = link.into();
        let what = || format!("deleting {address}/{prefix_len} from {}", link);
        check_prefix(address, prefix_len).map_err(|why| Error::invalid(what(), why))?;
        let index = self.index(link)?;
        self.socket
            .ack(address::delete_request(index, address, prefix_len), what)
    }

    /// Every IPv4 and IPv6 address of the namespace.
    pub fn addresses(&mut self) -> Result<Vec<Address>, Error> {
        let what = || "listing addresses".to_owned();
        let payloads = self
            .socket
            .dump(|| address::dump_request(0), address::RTM_NEWADDR, what)?;
        let mut out = Vec::with_capacity(payloads.len());
        for p in &payloads {
            if let Some(a) = Address::parse(p).map_err(|e| Error::parse(what(), e))? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Adds `route` (an equal one present is an error, [`Error::is_exists`]).
    pub fn add_route(&mut self, route: &Route) -> Result<(), Error> {
        let what = || format!("adding the route {}", describe(route));
        check_route(route).map_err(|why| Error::invalid(what(), why))?;
        self.socket.ack(route.add_request(), what)
    }

    /// Deletes `route` (matched by destination, table, and the device and gateway if given).
    pub fn delete_route(&mut self, route: &Route) -> Result<(), Error> {
        let what = || format!("deleting the route {}", describe(route));
        check_route(route).map_err(|why| Error::invalid(what(), why))?;
        self.socket.ack(route.delete_request(), what)
    }

    /// Every IPv4 and IPv6 route of the namespace, in all tables (the kernel's cached clones
    /// left out).
    pub fn routes(&mut self) -> Result<Vec<Route>, Error> {
        let what = || "listing routes".to_owned();
        let payloads = self
            .socket
            .dump(|| route::dump_request(0), route::RTM_NEWROUTE, what)?;
        let mut out = Vec::with_capacity(payloads.len());
        for p in &payloads {
            if let Some(r) = Route::parse(p).map_err(|e| Error::parse(what(), e))? {
                out.push(r);
            }
        }
        Ok(out)
    }
}

fn check_prefix(address: IpAddr, prefix_len: u8) -> Result<(), String> {
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(format!("prefix length {prefix_len} is longer than {max}"));
    }
    Ok(())
}

fn check_route(route: &Route) -> Result<(), String> {
    check_prefix(route.destination, route.prefix_len)?;
    for other in [route.gateway, route.source].into_iter().flatten() {
        if other.is_ipv4() != route.destination.is_ipv4() {
            return Err(format!(
                "{other} and {} are of different families",
                route.destination
            ));
        }
    }
    Ok(())
}

fn describe(route: &Route) -> String {
    let mut s = route.destination_string();
    if let Some(gateway) = route.gateway {
        s.push_str(&format!(" via {gateway}"));
    }
    if let Some(device) = route.device {
        s.push_str(&format!(" dev #{device}"));
    }
    s
}
