//! The client state machine (RFC 8415 §18.2 for one IA_PD).

use std::collections::VecDeque;
use std::fmt;
use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_core::Time;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::codec::{
    self, ClientMessage, INFINITY, IaPd, PrefixHint, ServerMessage, msg, parse_server_message,
    status,
};
use crate::duid::Duid;
use crate::retransmit::{self, Exchange};

/// What the client is configured with.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our DUID (made once and saved by the driver).
    pub duid: Duid,
    /// The IAID of our IA_PD.
    pub iaid: u32,
    /// Prefix length to ask for (a hint, e.g. 56); `None` asks for any.
    pub length_hint: Option<u8>,
    /// A prefix to ask for (e.g. the last one delegated), with the length hint.
    pub prefix_hint: Option<Ipv6Addr>,
}

/// An IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// The address with host bits cleared.
    pub addr: Ipv6Addr,
    /// The length, ≤ 128.
    pub len: u8,
}

impl Prefix {
    /// `addr/len` with the host bits of `addr` cleared (`len` capped at 128).
    pub fn new(addr: Ipv6Addr, len: u8) -> Prefix {
        let len = len.min(128);
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        Prefix {
            addr: Ipv6Addr::from(u128::from(addr) & mask),
            len,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One delegated prefix with its lifetimes as the server gave them and as deadlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// The prefix.
    pub prefix: Prefix,
    /// Preferred lifetime as received (`u32::MAX` seconds = infinity).
    pub preferred: Duration,
    /// Valid lifetime as received.
    pub valid: Duration,
    /// When it stops being preferred.
    pub preferred_until: Time,
    /// When it must no longer be used.
    pub valid_until: Time,
}

/// A binding: the prefixes of our IA_PD and when to renew and rebind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The usable prefixes (never empty).
    pub delegations: Vec<Delegation>,
    /// T1 as used (the server's, or 0.5 of the shortest preferred lifetime when it sent 0).
    pub t1: Duration,
    /// T2 as used (the server's, or 0.8 of the shortest preferred lifetime).
    pub t2: Duration,
    /// The DUID of the server that gave it.
    pub server_id: Vec<u8>,
    /// When the Reply arrived.
    pub bound_at: Time,
}

impl Lease {
    /// The prefixes, in the order the server sent them.
    pub fn prefixes(&self) -> Vec<Prefix> {
        self.delegations.iter().map(|d| d.prefix).collect()
    }

    fn renew_at(&self) -> Time {
        self.bound_at + self.t1
    }

    fn rebind_at(&self) -> Time {
        self.bound_at + self.t2
    }

    fn valid_until(&self) -> Time {
        self.delegations
            .iter()
            .map(|d| d.valid_until)
            .max()
            .unwrap_or(self.bound_at)
    }
}

/// What the driver is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PdEvent {
    /// A Reply to a Request: a new binding.
    Bound(Lease),
    /// A Reply to a Renew (the prefixes may differ: a renumbering).
    Renewed(Lease),
    /// A Reply to a Rebind, possibly from another server.
    Rebound(Lease),
    /// These prefixes are no longer valid (lifetime over, or withdrawn by the server); when
    /// no prefix is left the client Solicits again.
    Expired(Vec<Prefix>),
    /// A Release exchange ended; the client is idle. `acknowledged`: a server answered it
    /// (false after REL_MAX_RC transmissions without a Reply, or with nothing to release).
    Released {
        /// Whether a server's Reply ended the exchange.
        acknowledged: bool,
    },
}

/// The client's state (RFC 8415 §18.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not asking for anything (after a Release).
    Idle,
    /// Sending Solicit, collecting Advertise.
    Soliciting,
    /// Sending Request to the chosen server.
    Requesting,
    /// Holding a lease, waiting for T1.
    Bound,
    /// Sending Renew to the lease's server, until T2.
    Renewing,
    /// Sending Rebind to any server, until the last valid lifetime ends.
    Rebinding,
    /// Sending Release.
    Releasing,
}

impl State {
    /// A lower-case name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Soliciting => "soliciting",
            State::Requesting => "requesting",
            State::Bound => "bound",
            State::Renewing => "renewing",
            State::Rebinding => "rebinding",
            State::Releasing => "releasing",
        }
    }
}

/// An Advertise worth requesting from.
#[derive(Debug, Clone)]
struct Advert {
    server_id: Vec<u8>,
    preference: u8,
    prefixes: Vec<PrefixHint>,
}

/// The sans-IO DHCPv6 prefix-delegation client.
///
/// The driver sends every [`poll_transmit`](Client::poll_transmit) datagram to
/// `ff02::1:2` port 547 on the interface (from port 546), feeds every datagram received on
/// port 546 to [`handle_datagram`](Client::handle_datagram), and calls
/// [`handle_timeout`](Client::handle_timeout) at [`poll_timeout`](Client::poll_timeout).
/// Nothing received can panic it: malformed or unexpected messages are counted and ignored
/// ([`ignored`](Client::ignored)).
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    rng: SmallRng,
    state: State,
    exchange: Option<Exchange>,
    /// Request/Release: the server; Solicit: the adverts collected during the first RT.
    server_id: Option<Vec<u8>>,
    adverts: Vec<Advert>,
    /// Whether the first Solicit RT is over (then the first good Advertise is taken at once).
    first_rt_over: bool,
    /// SOL_MAX_RT as last set by a server.
    sol_max_rt: Duration,
    /// What a Request asks for (the chosen advert's prefixes).
    request_prefixes: Vec<PrefixHint>,
    lease: Option<Lease>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<PdEvent>,
    ignored: u64,
    last_ignored: Option<&'static str>,
}

/// Usable prefixes of an IA_PD and the prefixes it withdraws (valid lifetime 0).
fn usable(ia: &IaPd) -> (Vec<codec::IaPrefix>, Vec<Prefix>) {
    let mut ok = Vec::new();
    let mut withdrawn = Vec::new();
    for p in &ia.prefixes {
        if p.status.is_some_and(|s| s != status::SUCCESS) || p.preferred > p.valid {
            continue;
        }
        if p.valid == 0 {
            withdrawn.push(Prefix::new(p.prefix, p.len));
        } else {
            ok.push(p.clone());
        }
    }
    (ok, withdrawn)
}

fn lifetime(secs: u32) -> Duration {
    // Infinity is kept as u32::MAX seconds (136 years): `Time` saturates far beyond it.
    Duration::from_secs(u64::from(secs))
}

impl Client {
    /// A client that starts Soliciting at `now` (after the random first delay). `seed` drives
    /// the transaction ids and the retransmission randomisation.
    pub fn new(config: ClientConfig, now: Time, seed: u64) -> Client {
        let mut c = Client {
            config,
            rng: SmallRng::seed_from_u64(seed),
            state: State::Idle,
            exchange: None,
            server_id: None,
            adverts: Vec::new(),
            first_rt_over: false,
            sol_max_rt: retransmit::SOLICIT.mrt,
            request_prefixes: Vec::new(),
            lease: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            ignored: 0,
            last_ignored: None,
        };
        c.solicit(now);
        c
    }

    /// A client resuming after a restart with delegations it held from the server
    /// `server_id` (from the driver's saved state, deadlines mapped onto `now`'s clock; an
    /// empty id if unknown): it Rebinds at once (§18.2.12) until the last of them ends, and
    /// can Release them meanwhile; with none still valid it Solicits, asking for the first
    /// again.
    pub fn resume(
        mut config: ClientConfig,
        delegations: Vec<Delegation>,
        server_id: Vec<u8>,
        now: Time,
        seed: u64,
    ) -> Client {
        let valid: Vec<Delegation> = delegations
            .iter()
            .filter(|d| d.valid_until > now)
            .cloned()
            .collect();
        if valid.is_empty() {
            if let Some(d) = delegations.first() {
                config.prefix_hint = Some(d.prefix.addr);
                config.length_hint = Some(d.prefix.len);
            }
            return Client::new(config, now, seed);
        }
        let mut c = Client::new(config, now, seed);
        c.exchange = None;
        c.transmits.clear();
        c.lease = Some(Lease {
            delegations: valid,
            t1: Duration::ZERO,
            t2: Duration::ZERO,
            server_id,
            bound_at: now,
        });
        c.rebind(now);
        c
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The current lease, if any (also while Renewing and Rebinding).
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// The configuration (DUID, IAID, hints).
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// How many received datagrams were ignored, and why the last one was.
    pub fn ignored(&self) -> (u64, Option<&'static str>) {
        (self.ignored, self.last_ignored)
    }

    /// The next datagram to send to `ff02::1:2` port 547.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PdEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Client::handle_timeout) is next due, and why.
    pub fn poll_timeout(&self) -> Option<(Time, &'static str)> {
        let mut best: Option<(Time, &'static str)> = None;
        let mut consider = |t: Time, why: &'static str| {
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, why));
            }
        };
        if let Some(x) = &self.exchange {
            consider(x.next, "dhcp6 retransmission");
        }
        if let Some(lease) = &self.lease {
            match self.state {
                State::Bound => consider(lease.renew_at(), "dhcp6 T1"),
                State::Renewing => consider(lease.rebind_at(), "dhcp6 T2"),
                _ => {}
            }
            if let Some(first) = lease.delegations.iter().map(|d| d.valid_until).min() {
                consider(first, "dhcp6 valid lifetime");
            }
        }
        best
    }

    /// Timers due at `now`: lifetimes, T1, T2, retransmissions, exchange failures.
    pub fn handle_timeout(&mut self, now: Time) {
        self.expire(now);
        if let Some(lease) = &self.lease {
            if self.state == State::Bound && now >= lease.renew_at() {
                self.renew(now);
            } else if self.state == State::Renewing && now >= lease.rebind_at() {
                self.rebind(now);
            }
        }
        let Some(x) = &self.exchange else { return };
        if now < x.next {
            return;
        }
        if x.failed(now) {
            self.exchange_failed(now);
            return;
        }
        if self.state == State::Soliciting && self.exchange.as_ref().is_some_and(|x| x.sent > 0) {
            self.first_rt_over = true;
            if let Some(best) = self.best_advert() {
                self.request(now, best);
                return;
            }
        }
        self.send(now);
    }

    /// The interface went down or came back up. Back up while holding a lease, the client
    /// Rebinds (§18.2.12: it may have moved to another link).
    pub fn handle_link(&mut self, now: Time, up: bool) {
        if up
            && matches!(
                self.state,
                State::Bound | State::Renewing | State::Rebinding
            )
        {
            self.rebind(now);
        }
    }

    /// Gives the prefixes back: the lease is dropped now (the driver must stop using it) and
    /// a Release is sent; [`PdEvent::Released`] follows at its Reply or after REL_MAX_RC.
    /// Without a lease the client just stops.
    pub fn release(&mut self, now: Time) {
        let lease = self.lease.take();
        self.adverts.clear();
        match lease {
            Some(lease) if !lease.server_id.is_empty() => {
                self.state = State::Releasing;
                self.server_id = Some(lease.server_id.clone());
                self.request_prefixes = lease
                    .delegations
                    .iter()
                    .map(|d| PrefixHint {
                        len: d.prefix.len,
                        prefix: d.prefix.addr,
                    })
                    .collect();
                self.start(now, msg::RELEASE, retransmit::RELEASE, None);
            }
            _ => {
                self.state = State::Idle;
                self.exchange = None;
                self.events.push_back(PdEvent::Released {
                    acknowledged: false,
                });
            }
        }
    }

    /// A datagram received on port 546 (`bytes` is the UDP payload).
    pub fn handle_datagram(&mut self, now: Time, bytes: &[u8]) {
        if let Err(why) = self.process(now, bytes) {
            self.ignored += 1;
            self.last_ignored = Some(why);
        }
    }

    fn process(&mut self, now: Time, bytes: &[u8]) -> Result<(), &'static str> {
        let m = parse_server_message(bytes).ok_or("malformed message")?;
        match m.msg_type {
            msg::ADVERTISE | msg::REPLY => {}
            msg::RECONFIGURE => return Err("reconfigure is not supported"),
            _ => return Err("not a server-to-client message"),
        }
        let x = self.exchange.as_ref().ok_or("no exchange in progress")?;
        if m.xid != x.xid {
            return Err("wrong transaction id");
        }
        if m.client_id.as_deref() != Some(self.config.duid.as_bytes()) {
            return Err("client id missing or not ours");
        }
        let server_id = m.server_id.clone().ok_or("no server id")?;
        if server_id.is_empty() {
            return Err("no server id");
        }
        if let Some(rt) = m.sol_max_rt
            && (60..=86_400).contains(&rt)
        {
            self.sol_max_rt = Duration::from_secs(u64::from(rt));
            if self.state == State::Soliciting
                && let Some(x) = &mut self.exchange
            {
                x.set_mrt(self.sol_max_rt);
            }
        }
        match (self.state, m.msg_type) {
            (State::Soliciting, msg::ADVERTISE) => self.advertise(now, &m, server_id),
            (State::Releasing, msg::REPLY) => {
                self.state = State::Idle;
                self.exchange = None;
                self.events
                    .push_back(PdEvent::Released { acknowledged: true });
                Ok(())
            }
            (State::Requesting | State::Renewing | State::Rebinding, msg::REPLY) => {
                self.reply(now, &m, server_id)
            }
            _ => Err("message not expected in this state"),
        }
    }

    /// Our IA_PD in `m`, if well-formed (§21.21: T1 > T2 > 0 discards it).
    fn our_ia<'m>(&self, m: &'m ServerMessage) -> Result<&'m IaPd, &'static str> {
        let ia = m
            .ia_pds
            .iter()
            .find(|ia| ia.iaid == self.config.iaid)
            .ok_or("no IA_PD with our IAID")?;
        if ia.t1 > ia.t2 && ia.t2 > 0 {
            return Err("IA_PD with T1 > T2");
        }
        Ok(ia)
    }

    fn advertise(
        &mut self,
        now: Time,
        m: &ServerMessage,
        server_id: Vec<u8>,
    ) -> Result<(), &'static str> {
        if m.status.is_some_and(|s| s != status::SUCCESS) {
            return Err("advertise with an error status");
        }
        let ia = self.our_ia(m)?;
        if ia.status.is_some_and(|s| s != status::SUCCESS) {
            return Err("advertise: no prefix available");
        }
        let (ok, _) = usable(ia);
        if ok.is_empty() {
            return Err("advertise offers no usable prefix");
        }
        let advert = Advert {
            server_id,
            preference: m.preference,
            prefixes: ok
                .iter()
                .map(|p| PrefixHint {
                    len: p.len,
                    prefix: p.prefix,
                })
                .collect(),
        };
        // Preference 255, or any good Advertise after the first RT, is taken at once (§18.2.1).
        if advert.preference == 255 || self.first_rt_over {
            self.request(now, advert);
        } else {
            self.adverts.push(advert);
        }
        Ok(())
    }

    fn reply(
        &mut self,
        now: Time,
        m: &ServerMessage,
        server_id: Vec<u8>,
    ) -> Result<(), &'static str> {
        match m.status {
            None | Some(status::SUCCESS) => {}
            // UnspecFail, UseMulticast and the rest: keep retransmitting (§18.2.10).
            Some(_) => return Err("reply with an error status"),
        }
        let ia = self.our_ia(m)?.clone();
        match ia.status {
            None | Some(status::SUCCESS) => {}
            Some(status::NO_BINDING) if self.state != State::Requesting => {
                // The server lost our binding: ask for it again (§18.2.10.1).
                let prefixes = self.lease_hints();
                self.request(
                    now,
                    Advert {
                        server_id,
                        preference: 0,
                        prefixes,
                    },
                );
                return Ok(());
            }
            Some(status::NO_PREFIX_AVAIL) | Some(status::NO_BINDING)
                if self.state == State::Requesting =>
            {
                self.solicit(now);
                return Ok(());
            }
            Some(_) => return Err("reply: IA_PD with an error status"),
        }
        let (ok, withdrawn) = usable(&ia);
        let old = self.lease.take();
        let lost: Vec<Prefix> = old
            .iter()
            .flat_map(|l| l.delegations.iter().map(|d| d.prefix))
            .filter(|p| {
                withdrawn.contains(p) || !ok.iter().any(|q| Prefix::new(q.prefix, q.len) == *p)
            })
            .collect();
        if !lost.is_empty() {
            self.events.push_back(PdEvent::Expired(lost));
        }
        if ok.is_empty() {
            // Nothing usable: start over (§18.2.10.1 "try again later").
            self.solicit(now);
            return Ok(());
        }
        let delegations: Vec<Delegation> = ok
            .iter()
            .map(|p| Delegation {
                prefix: Prefix::new(p.prefix, p.len),
                preferred: lifetime(p.preferred),
                valid: lifetime(p.valid),
                preferred_until: now + lifetime(p.preferred),
                valid_until: now + lifetime(p.valid),
            })
            .collect();
        // The client's own T1/T2 go by the shortest preferred lifetime, or by the shortest
        // valid one when a prefix is already deprecated (preferred 0): never 0, which would
        // Renew again the moment each Reply arrives.
        let shortest = ok
            .iter()
            .map(|p| {
                if p.preferred == 0 {
                    p.valid
                } else {
                    p.preferred
                }
            })
            .min()
            .unwrap_or(INFINITY);
        let (t1, t2) = timers(ia.t1, ia.t2, shortest);
        let lease = Lease {
            delegations,
            t1,
            t2,
            server_id,
            bound_at: now,
        };
        let event = match self.state {
            State::Renewing => PdEvent::Renewed(lease.clone()),
            State::Rebinding => PdEvent::Rebound(lease.clone()),
            _ => PdEvent::Bound(lease.clone()),
        };
        self.events.push_back(event);
        self.lease = Some(lease);
        self.state = State::Bound;
        self.exchange = None;
        self.adverts.clear();
        Ok(())
    }

    fn lease_hints(&self) -> Vec<PrefixHint> {
        self.lease
            .iter()
            .flat_map(|l| l.delegations.iter())
            .map(|d| PrefixHint {
                len: d.prefix.len,
                prefix: d.prefix.addr,
            })
            .collect()
    }

    /// Drops delegations past their valid lifetime; with none left, Solicits again.
    fn expire(&mut self, now: Time) {
        let Some(lease) = &mut self.lease else { return };
        let (gone, kept): (Vec<Delegation>, Vec<Delegation>) = lease
            .delegations
            .drain(..)
            .partition(|d| d.valid_until <= now);
        lease.delegations = kept;
        if gone.is_empty() {
            return;
        }
        let last = gone.first().map(|d| d.prefix);
        self.events
            .push_back(PdEvent::Expired(gone.iter().map(|d| d.prefix).collect()));
        if lease.delegations.is_empty() {
            self.lease = None;
            if let Some(p) = last {
                self.config.prefix_hint = Some(p.addr);
                self.config.length_hint = Some(p.len);
            }
            self.solicit(now);
        }
    }

    fn best_advert(&mut self) -> Option<Advert> {
        // Highest preference; the first received among equals (§18.2.9).
        let mut best: Option<usize> = None;
        for (i, a) in self.adverts.iter().enumerate() {
            if best.is_none_or(|b| a.preference > self.adverts[b].preference) {
                best = Some(i);
            }
        }
        let advert = self.adverts.get(best?).cloned();
        self.adverts.clear();
        advert
    }

    fn exchange_failed(&mut self, now: Time) {
        match self.state {
            State::Requesting => self.solicit(now),
            // Renew's MRD is T2 and Rebind's the last valid lifetime: the timers above act.
            State::Renewing => self.rebind(now),
            State::Rebinding => {
                // Only reached when the lease is already gone (expire ran first).
                if self.lease.is_none() {
                    self.solicit(now);
                } else {
                    self.exchange = None;
                }
            }
            State::Releasing => {
                self.state = State::Idle;
                self.exchange = None;
                self.events.push_back(PdEvent::Released {
                    acknowledged: false,
                });
            }
            State::Soliciting | State::Bound | State::Idle => self.exchange = None,
        }
    }

    fn start(&mut self, now: Time, msg_type: u8, params: retransmit::Params, mrd: Option<Time>) {
        // What the replaced exchange queued and the driver has not sent yet is void.
        self.transmits.clear();
        let x = Exchange::new(msg_type, params, mrd, now, &mut self.rng);
        let immediate = x.next <= now;
        self.exchange = Some(x);
        if immediate {
            self.send(now);
        }
    }

    fn solicit(&mut self, now: Time) {
        self.state = State::Soliciting;
        self.server_id = None;
        self.adverts.clear();
        self.first_rt_over = false;
        self.request_prefixes = match self.config.length_hint {
            Some(len) => vec![PrefixHint {
                len,
                prefix: self.config.prefix_hint.unwrap_or(Ipv6Addr::UNSPECIFIED),
            }],
            None => Vec::new(),
        };
        let mut params = retransmit::SOLICIT;
        params.mrt = self.sol_max_rt;
        self.start(now, msg::SOLICIT, params, None);
    }

    fn request(&mut self, now: Time, advert: Advert) {
        self.state = State::Requesting;
        self.server_id = Some(advert.server_id);
        self.request_prefixes = advert.prefixes;
        self.adverts.clear();
        self.start(now, msg::REQUEST, retransmit::REQUEST, None);
    }

    fn renew(&mut self, now: Time) {
        let Some(lease) = &self.lease else { return };
        self.state = State::Renewing;
        self.server_id = Some(lease.server_id.clone());
        let t2 = lease.rebind_at();
        self.request_prefixes = self.lease_hints();
        self.start(now, msg::RENEW, retransmit::RENEW, Some(t2));
    }

    fn rebind(&mut self, now: Time) {
        let Some(lease) = &self.lease else { return };
        self.state = State::Rebinding;
        self.server_id = None;
        let end = lease.valid_until();
        self.request_prefixes = self.lease_hints();
        self.start(now, msg::REBIND, retransmit::REBIND, Some(end));
    }

    fn send(&mut self, now: Time) {
        let Some(x) = &mut self.exchange else { return };
        let elapsed_cs = x.transmitted(now, &mut self.rng);
        let with_server = matches!(x.msg_type, msg::REQUEST | msg::RENEW | msg::RELEASE);
        let bytes = ClientMessage {
            msg_type: x.msg_type,
            xid: x.xid,
            client_id: self.config.duid.as_bytes(),
            server_id: if with_server {
                self.server_id.as_deref()
            } else {
                None
            },
            elapsed_cs,
            iaid: self.config.iaid,
            prefixes: &self.request_prefixes,
        }
        .encode();
        self.transmits.push_back(bytes);
    }
}

/// T1 and T2 as used: the server's, or 0.5 and 0.8 of the shortest lifetime where it sent 0
/// (§21.21, and ISC dhcpd's default of 0); T1 never above T2.
fn timers(t1: u32, t2: u32, shortest_preferred: u32) -> (Duration, Duration) {
    let pick = |t: u32, share: f64| {
        if t != 0 {
            lifetime(t)
        } else if shortest_preferred == INFINITY {
            lifetime(INFINITY)
        } else {
            lifetime(shortest_preferred).mul_f64(share)
        }
    };
    let t2 = pick(t2, 0.8);
    let t1 = pick(t1, 0.5).min(t2);
    (t1, t2)
}
