//! `POST /api/v1/ping` and `POST /api/v1/traceroute`: the node itself sends the probes, on a
//! raw ICMPv6 socket it opened at start (before dropping its capabilities), one run at a
//! time, each bounded so that a worker is never held for more than about 30 s.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::ping::{IcmpSocket, Names, NodeSocket, PingArgs, TracerouteArgs};

/// The node's probe socket, or why it has none.
pub type ProbeSocket = Arc<Mutex<Result<IcmpSocket, String>>>;

/// Opens the probe socket (needs CAP_NET_RAW: call it before the node drops capabilities).
pub fn open() -> ProbeSocket {
    Arc::new(Mutex::new(IcmpSocket::open(true).map_err(|e| {
        format!("the node has no raw ICMPv6 socket (it started without CAP_NET_RAW): {e:#}")
    })))
}

/// Longest time one run may take.
const MAX_RUN_SECS: f64 = 30.0;

/// A ping request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingRequest {
    /// A node name or mesh address.
    pub target: String,
    /// Echo requests (1..=20).
    #[serde(default = "default_count")]
    pub count: u16,
    /// Seconds between them (0.2..=5).
    #[serde(default = "default_interval")]
    pub interval: f64,
    /// Seconds to wait for the last reply (0.1..=10).
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    /// Payload bytes (0..=1400).
    #[serde(default = "default_size")]
    pub size: u16,
}

fn default_count() -> u16 {
    4
}
fn default_interval() -> f64 {
    1.0
}
fn default_timeout() -> f64 {
    2.0
}
fn default_size() -> u16 {
    56
}
fn default_hops() -> u8 {
    16
}
fn default_probes() -> u8 {
    3
}

/// A traceroute request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracerouteRequest {
    /// A node name or mesh address.
    pub target: String,
    /// Largest hop limit (1..=32).
    #[serde(default = "default_hops")]
    pub max_hops: u8,
    /// Probes per hop (1..=5).
    #[serde(default = "default_probes")]
    pub probes: u8,
    /// Seconds to wait per probe (0.1..=5).
    #[serde(default = "default_interval")]
    pub wait: f64,
}

/// What a run printed and whether it reached the target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeOutcome {
    /// The lines, as the local command prints them.
    pub output: String,
    /// A reply came back (ping) or the destination answered (traceroute).
    pub ok: bool,
}

fn within(value: f64, low: f64, high: f64, what: &str) -> Result<(), String> {
    if value.is_finite() && (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(format!("{what} must be between {low} and {high}"))
    }
}

impl PingRequest {
    /// Checks the bounds.
    pub fn check(&self) -> Result<(), String> {
        within(f64::from(self.count), 1.0, 20.0, "count")?;
        within(self.interval, 0.2, 5.0, "interval")?;
        within(self.timeout, 0.1, 10.0, "timeout")?;
        within(f64::from(self.size), 0.0, 1400.0, "size")?;
        let total = f64::from(self.count) * self.interval + self.timeout;
        within(total, 0.0, MAX_RUN_SECS, "count × interval + timeout")
    }
}

impl TracerouteRequest {
    /// Checks the bounds.
    pub fn check(&self) -> Result<(), String> {
        within(f64::from(self.max_hops), 1.0, 32.0, "max_hops")?;
        within(f64::from(self.probes), 1.0, 5.0, "probes")?;
        within(self.wait, 0.1, 5.0, "wait")?;
        let total = f64::from(self.max_hops) * f64::from(self.probes) * self.wait;
        within(total, 0.0, MAX_RUN_SECS, "max_hops × probes × wait")
    }
}

fn no_socket() -> NodeSocket {
    NodeSocket {
        id: None,
        socket: None,
    }
}

/// Runs a ping; `Err` is a message for a 4xx/5xx answer.
pub fn ping(
    socket: &ProbeSocket,
    names: &Names,
    request: &PingRequest,
) -> Result<ProbeOutcome, String> {
    request.check()?;
    let args = PingArgs {
        node: request.target.clone(),
        local: no_socket(),
        count: request.count,
        interval: request.interval,
        timeout: request.timeout,
        size: request.size,
    };
    run(socket, |icmp, out| {
        crate::ping::run_ping(&args, names, icmp, out)
    })
}

/// Runs a traceroute; `Err` is a message for a 4xx/5xx answer.
pub fn traceroute(
    socket: &ProbeSocket,
    names: &Names,
    request: &TracerouteRequest,
) -> Result<ProbeOutcome, String> {
    request.check()?;
    let args = TracerouteArgs {
        node: request.target.clone(),
        local: no_socket(),
        max_hops: request.max_hops,
        probes: request.probes,
        wait: request.wait,
    };
    run(socket, |icmp, out| {
        crate::ping::run_traceroute(&args, names, icmp, out)
    })
}

fn run(
    socket: &ProbeSocket,
    f: impl FnOnce(&IcmpSocket, &mut Vec<u8>) -> anyhow::Result<bool>,
) -> Result<ProbeOutcome, String> {
    let guard = match socket.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::WouldBlock) => {
            return Err("another ping or traceroute is running on this node; try again".into());
        }
        Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
    };
    let icmp = guard.as_ref().map_err(Clone::clone)?;
    icmp.drain();
    let mut out = Vec::new();
    let ok = f(icmp, &mut out).map_err(|e| format!("{e:#}"))?;
    Ok(ProbeOutcome {
        output: String::from_utf8_lossy(&out).into_owned(),
        ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_bounded() {
        let ok: PingRequest = serde_json::from_str(r#"{"target":"baz"}"#).unwrap();
        assert!(ok.check().is_ok());
        let long: PingRequest =
            serde_json::from_str(r#"{"target":"baz","count":20,"interval":5}"#).unwrap();
        assert!(long.check().unwrap_err().contains("count × interval"));
        let nan = PingRequest {
            interval: f64::NAN,
            ..ok
        };
        assert!(nan.check().is_err());
        let trace: TracerouteRequest =
            serde_json::from_str(r#"{"target":"baz","max_hops":32,"probes":5,"wait":5}"#).unwrap();
        assert!(trace.check().is_err());
        assert!(serde_json::from_str::<PingRequest>(r#"{"target":"a","x":1}"#).is_err());
    }
}
