//! The main loop's channel: what helper threads, workers, the control socket and the API hand
//! the loop (`LoopMessage`), taken once a turn.

use super::*;

impl Daemon {
    pub(super) fn handle_messages(&mut self) {
        while let Ok(message) = self.rx.try_recv() {
            match message {
                LoopMessage::TcpConnected(connected) => self.add_tcp_link(connected),
                LoopMessage::Control { request, reply } if request.is_cni() => {
                    self.cni_request(request, reply);
                }
                LoopMessage::Control { request, reply } => {
                    let answer = match request {
                        ControlRequest::Status => ControlReply::Status(Box::new(self.status())),
                        ControlRequest::GetConfig => self.get_config(),
                        ControlRequest::SetConfig { config, signature } => {
                            // Checked on the config-check thread; the answer goes out from
                            // there (`offer_checked`), so a large config never stalls the links.
                            self.check_candidate(
                                offer_check::Candidate::ConfigSet(reply),
                                0,
                                config.into_bytes(),
                                signature.into_bytes(),
                            );
                            continue;
                        }
                        ControlRequest::Reload => ControlReply::Reloaded(self.reload_with_notify()),
                        ControlRequest::Leases => self.lease_entries(),
                        ControlRequest::PdRelease => match &self.pd_commands {
                            // The client's thread answers once the Release is done.
                            Some(commands) => match commands
                                .send(mesh_prefix::PdCommand::Release(reply))
                            {
                                Ok(()) => continue,
                                Err(std::sync::mpsc::SendError(
                                    mesh_prefix::PdCommand::Release(reply),
                                )) => {
                                    let _ = reply.send(ControlReply::Error(
                                        "the DHCPv6 client's thread has stopped".to_owned(),
                                    ));
                                    continue;
                                }
                            },
                            None => ControlReply::Error(
                                "this node runs no DHCPv6 prefix delegation client: global.delegated does not name it, or its interface or port 546 could not be opened at start".to_owned(),
                            ),
                        },
                        ControlRequest::CniAdd { .. }
                        | ControlRequest::CniDel { .. }
                        | ControlRequest::CniCheck { .. }
                        | ControlRequest::CniGc { .. }
                        | ControlRequest::CniStatus { .. } => {
                            ControlReply::Error("cni requests are answered apart".to_owned())
                        }
                        ControlRequest::LogLevel { level } => match crate::log_level::set(&level) {
                            Ok(said) => ControlReply::Done(said),
                            Err(error) => ControlReply::Error(format!("{error:#}")),
                        },
                    };
                    let _ = reply.send(answer);
                }
                LoopMessage::LocalDatagram(d) => {
                    let now = self.now();
                    if let Err(reason) = self
                        .node
                        .send_control_datagram(now, d.src_port, d.dst, d.dst_port, &d.payload)
                    {
                        tracing::debug!(dst = %d.dst, dst_port = d.dst_port, reason = ?reason, "control datagram dropped");
                    }
                }
                LoopMessage::DtlsPeerResolved { endpoint, result } => {
                    self.on_dtls_peer_resolved(endpoint, result);
                }
                LoopMessage::Shutdown => self.begin_shutdown(),
                LoopMessage::Reload => {
                    self.reload_with_notify();
                }
                LoopMessage::OfferChecked(checked) => self.offer_checked(*checked),
                LoopMessage::Attach(received) => self.on_attach_message(*received),
                LoopMessage::Delegations(update) => self.on_delegations(update),
                LoopMessage::LeaseWriter(report) => self.on_lease_writer(report),
                LoopMessage::TestStall(how_long) => {
                    // Only a test asks for this: the control plane blocked, established
                    // traffic on the worker threads must keep flowing meanwhile.
                    tracing::warn!(
                        ms = how_long.as_millis() as u64,
                        "test stall: the control loop sleeps"
                    );
                    std::thread::sleep(how_long);
                    tracing::warn!("test stall over: the control loop runs again");
                    // What the workers handed over meanwhile (the peer's keepalives, their
                    // counters) reaches the node before its timers run.
                    self.drain_workers();
                }
            }
        }
    }

    /// Reloads (SIGHUP, `connectopus reload`) between systemd's `RELOADING=1` and `READY=1`.
    pub(super) fn reload_with_notify(&mut self) -> control::ReloadOutcome {
        self.notify.reloading();
        let outcome = self.reload();
        // A change that restarts the mesh instance is ready when the re-executed process says
        // so.
        if !self.restart {
            let status = self.status_line();
            self.notify.ready(status);
        }
        outcome
    }
}
