//! inetd-style services (`nodes.N.services`): a TCP listener on the node's mesh address per
//! service; each connection gets its own process, the command split shell-style (no shell),
//! with the connection as its stdin and stdout. The attach helper starts the processes (the
//! node itself is confined by its seccomp filter, which arbitrary programs would not fit).
//!
//! At most `max_connections` processes of one service run at once: a connection above the
//! limit is accepted and closed at once (the client reads end-of-file), with a warning.
//! `status` shows each service's active, served and refused connections. A process's stderr
//! is logged line by line with the service's name (by the helper, see `helper`).
//! [`Services::apply`] starts, stops and restarts listeners to match the configuration.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use connectopus_config::attach::{ServiceSpec, changes};

use super::helper::Client;

/// How often a listener that could not bind tries again.
const BIND_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Running {
    spec: ServiceSpec,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: JoinHandle<()>,
}

/// What a service's listener counts, for `status`.
#[derive(Debug, Default)]
struct Counters {
    listening: AtomicBool,
    /// Connections whose process runs.
    active: Arc<AtomicU32>,
    served: AtomicU64,
    refused: AtomicU64,
}

/// The node's running inetd services.
#[derive(Debug, Default)]
pub struct Services {
    running: BTreeMap<String, Running>,
}

impl Services {
    /// Starts, stops and restarts listeners so that `desired` runs; without a helper nothing
    /// can run and each service says so.
    pub fn apply(&mut self, desired: &BTreeMap<String, ServiceSpec>, helper: Option<&Arc<Client>>) {
        let specs: BTreeMap<String, ServiceSpec> = self
            .running
            .iter()
            .map(|(n, r)| (n.clone(), r.spec.clone()))
            .collect();
        let plan = changes(&specs, desired, |a, b| a != b);
        for name in &plan.stop {
            if let Some(r) = self.running.remove(name) {
                tracing::info!(service = %name, port = r.spec.port, "service stopping");
                r.stop.store(true, Ordering::Relaxed);
                // The port must be free before a restart binds it again.
                let _ = r.thread.join();
            }
        }
        for name in &plan.start {
            let Some(spec) = desired.get(name) else {
                continue;
            };
            let Some(helper) = helper else {
                tracing::error!(service = %name, "service cannot run: the node has no attach helper");
                continue;
            };
            let stop = Arc::new(AtomicBool::new(false));
            let counters = Arc::new(Counters::default());
            let (s, h, st, c) = (spec.clone(), helper.clone(), stop.clone(), counters.clone());
            match std::thread::Builder::new()
                .name(format!("svc-{name}"))
                .spawn(move || serve(&s, &h, &st, &c))
            {
                Ok(thread) => {
                    self.running.insert(
                        name.clone(),
                        Running {
                            spec: spec.clone(),
                            stop,
                            counters,
                            thread,
                        },
                    );
                }
                Err(error) => {
                    tracing::error!(service = %name, %error, "cannot start the service thread")
                }
            }
        }
    }

    /// Stops every listener (processes already running end with their connections, or with
    /// the helper).
    pub fn stop_all(&mut self) {
        self.apply(&BTreeMap::new(), None);
    }

    /// The services for `status`, by name.
    pub fn report(&self) -> Vec<crate::control::ServiceReport> {
        self.running
            .iter()
            .map(|(name, r)| crate::control::ServiceReport {
                name: name.clone(),
                port: r.spec.port,
                listening: r.counters.listening.load(Ordering::Relaxed),
                active: r.counters.active.load(Ordering::SeqCst),
                max_connections: r.spec.max_connections,
                served: r.counters.served.load(Ordering::Relaxed),
                refused: r.counters.refused.load(Ordering::Relaxed),
            })
            .collect()
    }
}

fn bind(spec: &ServiceSpec, stop: &AtomicBool) -> Option<TcpListener> {
    let addr = SocketAddr::new(spec.address.into(), spec.port);
    let mut said = false;
    while !stop.load(Ordering::Relaxed) {
        match TcpListener::bind(addr) {
            Ok(listener) => {
                tracing::info!(service = %spec.name, listen = %addr, max_connections = spec.max_connections, "service up");
                return Some(listener);
            }
            Err(error) => {
                if !said {
                    tracing::warn!(service = %spec.name, listen = %addr, %error, "service cannot listen yet; retrying");
                    said = true;
                }
                std::thread::sleep(BIND_RETRY);
            }
        }
    }
    None
}

fn serve(spec: &ServiceSpec, helper: &Arc<Client>, stop: &AtomicBool, counters: &Counters) {
    let Some(listener) = bind(spec, stop) else {
        return;
    };
    counters.listening.store(true, Ordering::Relaxed);
    let active = &counters.active;
    while !stop.load(Ordering::Relaxed) {
        if !crate::backends::readable(listener.as_raw_fd(), Duration::from_millis(200)) {
            continue;
        }
        let (stream, remote) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(service = %spec.name, %error, "accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let running = active.load(Ordering::SeqCst);
        if running >= spec.max_connections {
            tracing::warn!(service = %spec.name, %remote, max_connections = spec.max_connections, "connection refused: the service is at max_connections");
            counters.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        tracing::debug!(service = %spec.name, %remote, running, "connection");
        let fd = OwnedFd::from(stream);
        match helper.spawn_connection(&spec.name, &spec.argv, fd, active) {
            Ok(()) => {
                counters.served.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(service = %spec.name, %error, "cannot hand the connection to the attach helper");
            }
        }
    }
    counters.listening.store(false, Ordering::Relaxed);
    tracing::info!(service = %spec.name, "service stopped");
}
