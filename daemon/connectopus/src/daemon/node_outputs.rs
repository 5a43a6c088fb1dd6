//! Carrying out what the core decided: its transmits, commands and events, drained after
//! every input until it has nothing more to say.

use super::*;

impl Daemon {
    pub(super) fn drain_node(&mut self) {
        // Applying a configuration or taking an offer makes more output: drain until none.
        while self.drain_node_once() {}
    }

    /// Drains the core's outputs once; returns true if any command or event was handled.
    pub(super) fn drain_node_once(&mut self) -> bool {
        let mut handled = false;
        while let Some(transmit) = self.node.poll_transmit() {
            self.send_packet(transmit.link, &transmit.payload);
        }
        while let Some(packet) = self.node.poll_tun_packet() {
            self.write_tun(&packet);
        }
        while let Some(command) = self.node.poll_command() {
            handled = true;
            match command {
                Command::CloseLink { link, reason } => {
                    self.close_link(link, reason.as_str());
                }
                Command::InstallForwarding(_) => self.sync_forwarding(),
                Command::SetFastpathRoutes(entries) => self.apply_fastpath(&entries),
                Command::SetMeshPrefixes(planes) => self.apply_mesh_prefixes(&planes),
                Command::ApplyConfig {
                    version,
                    unacknowledged,
                } => self.apply_pending_config(version, &unacknowledged),
                // Written once per loop turn, the newest only (`persist_leases`).
                Command::PersistLeases { generation, table } => {
                    self.leases.queue(generation, table);
                }
                Command::SetAddress { address, expires } => self.set_address(address, expires),
            }
        }
        while let Some(event) = self.node.poll_event() {
            handled = true;
            log_event(&event);
            if matches!(event, Event::NamesChanged { .. }) {
                self.dns.update(&self.node, &self.config.global.subnet);
            }
            if let Event::ConfigOffered {
                link,
                version,
                config,
                signature,
            } = event
            {
                self.check_offer(link, version, config, signature);
                continue;
            }
            if let Event::ControlDatagram {
                src,
                src_port,
                dst_port,
                payload,
            } = &event
            {
                self.local_datagrams
                    .deliver(*src, *src_port, *dst_port, payload);
                continue;
            }
            if matches!(
                event,
                Event::SessionEstablished { .. } | Event::SessionClosed { .. }
            ) {
                // Peer entries follow the established plaintext links even when no route
                // changed (a link that carries no route still decapsulates here).
                let entries = self.node.fastpath_entries().clone();
                self.apply_fastpath(&entries);
            }
            if let Event::SessionEstablished { link, .. } = event
                && let Some(l) = self.links.get_mut(&link)
            {
                l.had_session = true;
                // A TCP link (and a plaintext udp link) may go to a worker now.
                self.dataplane.links_dirty = true;
                if let Transport::Dtls(d) = &l.transport
                    && self
                        .udp
                        .get(d.endpoint)
                        .and_then(Option::as_ref)
                        .is_some_and(|e| matches!(e.role, UdpRole::Listener(_)))
                {
                    let (remote, now) = (l.remote.ip(), self.started.elapsed());
                    if self.hello_limiter.remember(remote, now) && self.flood_detector.engaged() {
                        self.attach_hello_filters();
                    }
                }
            }
        }
        handled
    }
}
