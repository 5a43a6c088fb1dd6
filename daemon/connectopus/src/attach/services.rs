//! inetd-style services (`nodes.N.services`): a TCP listener on the node's mesh address per
//! service; each connection gets its own process, the command split shell-style (no shell),
//! with the connection as its stdin and stdout. The attach helper starts the processes (the
//! node itself is confined by its seccomp filter, which arbitrary programs would not fit).
//!
//! At most `max_connections` processes of one service run at once: a connection above the
//! limit is accepted and closed at once (the client reads end-of-file), with a warning.
//! [`Services::apply`] starts, stops and restarts listeners to match the configuration.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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
    thread: JoinHandle<()>,
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
            let (s, h, st) = (spec.clone(), helper.clone(), stop.clone());
            match std::thread::Builder::new()
                .name(format!("svc-{name}"))
                .spawn(move || serve(&s, &h, &st))
            {
                Ok(thread) => {
                    self.running.insert(
                        name.clone(),
                        Running {
                            spec: spec.clone(),
                            stop,
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

fn serve(spec: &ServiceSpec, helper: &Arc<Client>, stop: &AtomicBool) {
    let Some(listener) = bind(spec, stop) else {
        return;
    };
    let active = Arc::new(AtomicU32::new(0));
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
            drop(stream);
            continue;
        }
        tracing::debug!(service = %spec.name, %remote, running, "connection");
        let fd = OwnedFd::from(stream);
        if let Err(error) = helper.spawn_connection(&spec.name, &spec.argv, fd, &active) {
            tracing::warn!(service = %spec.name, %error, "cannot hand the connection to the attach helper");
        }
    }
    tracing::info!(service = %spec.name, "service stopped");
}
