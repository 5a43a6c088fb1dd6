//! DTLS dialers' host names, resolved off the loop: a lookup may block for as long as the
//! system resolver wants (seconds per server and attempt, or forever with a resolver that never
//! answers), and the loop forwards every link's packets meanwhile.
//!
//! Each lookup runs on a short-lived thread (at most one per dialer: the dialer starts no other
//! attempt until the answer is back) and hands the answer to the loop as
//! [`LoopMessage::DtlsPeerResolved`].

use connectopus_config::PeerAddr;

use super::*;

/// Resolves `peer` on a thread of its own and sends the result to the loop.
pub(super) fn spawn(to_loop: &LoopSender, endpoint: usize, backend: &str, peer: &PeerAddr) {
    let (sender, peer_name) = (to_loop.clone(), peer.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("resolve-{backend}"))
        .spawn(move || {
            let result = dtls_link::resolve(&peer_name).map_err(|e| format!("{e:#}"));
            sender.send(LoopMessage::DtlsPeerResolved { endpoint, result });
        });
    if let Err(error) = spawned {
        // Reported like a failed lookup, so the dialer backs off and tries again.
        let result = Err(format!("starting a resolver thread for {peer}: {error}"));
        to_loop.send(LoopMessage::DtlsPeerResolved { endpoint, result });
    }
}

impl Daemon {
    /// Continues a dial once its peer's name resolved; a failure backs the dialer off.
    pub(super) fn on_dtls_peer_resolved(
        &mut self,
        endpoint: usize,
        result: std::result::Result<SocketAddr, String>,
    ) {
        let stopping = self.stopping.is_some();
        let Some(UdpEndpoint {
            role: UdpRole::Dialer(dialer),
            backend,
            ..
        }) = self.udp.get_mut(endpoint).and_then(Option::as_mut)
        else {
            // The backend was stopped meanwhile.
            return;
        };
        match result {
            Ok(remote) if !stopping => self.dial_dtls(endpoint, remote),
            Ok(_) => {}
            Err(error) => {
                let delay = dialer.backoff.failure();
                tracing::debug!(backend = %backend, %error, retry_in = ?delay, "dial failed");
                dialer.next_attempt = Some(Instant::now() + delay);
            }
        }
    }
}
