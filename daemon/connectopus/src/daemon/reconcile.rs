//! Backends as the running node manages them, and applying a new mesh configuration live.
//!
//! A new configuration restarts only what changed: a new backend starts, a removed one stops
//! (closing its links), a backend whose only change is its cost keeps its links and sessions
//! and gets the new cost, any other change to a backend restarts that backend. A change to
//! `global` (other than its version) or to any other key of this node (address, identity,
//! prefixes, its own TUN device, DNS) restarts the node's mesh instance; `tun_devs` changes
//! apply live (see `tun_devs`). Changes to other nodes'
//! entries need nothing here: their own nodes apply them. A configuration without this node
//! stops it forwarding. A backend that fails to start is retried (see `backend_retry`).

use super::*;

/// A backend the node runs.
#[derive(Debug)]
pub(super) struct RunningBackend {
    pub(super) config: BackendConfig,
    pub(super) handle: BackendHandle,
}

/// How a running backend is stopped.
#[derive(Debug)]
pub(super) enum BackendHandle {
    /// A TCP accept or dial thread.
    Thread(Arc<AtomicBool>),
    /// A DTLS UDP endpoint of the main loop.
    Udp(usize),
}

/// What applying a configuration requires.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ApplyOutcome {
    /// Applied in place.
    Applied,
    /// The node's mesh instance must restart with the new configuration.
    Restart,
    /// The configuration no longer contains this node.
    Removed,
}

impl Daemon {
    /// Starts one backend.
    pub(super) fn start_backend(&mut self, name: &str, backend: &BackendConfig) -> Result<()> {
        let settings = TcpBackend {
            name: name.to_owned(),
            cost: Cost::from_f64(backend.cost()),
            mtu: backend_mtu(backend),
        };
        let handle = match backend {
            BackendConfig::TcpListener(l) => {
                let tls = if l.tls {
                    let (Some(server_cert), Some(server_key)) = (l.server_cert(), l.server_key())
                    else {
                        anyhow::bail!("backend {name}: tls needs server_cert and server_key");
                    };
                    Some(
                        tls::server_config(&tls::ListenerTls {
                            server_cert,
                            server_key,
                            client_ca: l.client_ca(),
                            require_client_cert: l.require_client_cert,
                        })
                        .with_context(|| format!("backend {name}"))?,
                    )
                } else {
                    None
                };
                let ip = l
                    .listen_ip
                    .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
                let port = l
                    .port
                    .with_context(|| format!("backend {name}: a listener needs a port"))?;
                let stop = Arc::new(AtomicBool::new(false));
                self.threads.push(backends::spawn_tcp_listener(
                    settings,
                    SocketAddr::new(ip, port),
                    tls,
                    self.to_loop.clone(),
                    stop.clone(),
                )?);
                BackendHandle::Thread(stop)
            }
            BackendConfig::TcpDialer(d) => {
                let tls = if d.tls {
                    let server_name = d.server_name.clone().unwrap_or_else(|| match &d.peer.host {
                        connectopus_config::PeerHost::Ip(ip) => ip.to_string(),
                        connectopus_config::PeerHost::Name(n) => n.clone(),
                    });
                    Some(
                        tls::client_config(&tls::DialerTls {
                            server_name,
                            root_ca: d.root_ca(),
                            pinned_cert: d.pinned_cert(),
                            client_cert: d.client_cert(),
                            client_key: d.client_key(),
                            insecure_skip_verify: d.insecure_skip_verify,
                        })
                        .with_context(|| format!("backend {name}"))?,
                    )
                } else {
                    None
                };
                let stop = Arc::new(AtomicBool::new(false));
                self.threads.push(backends::spawn_tcp_dialer(
                    settings,
                    d.peer.clone(),
                    tls,
                    self.to_loop.clone(),
                    stop.clone(),
                )?);
                BackendHandle::Thread(stop)
            }
            BackendConfig::DtlsListener(l) => {
                let config = dtls_link::listener_config(l, settings.mtu)
                    .with_context(|| format!("backend {name}"))?;
                let ip = l
                    .listen_ip
                    .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
                let port = l
                    .port
                    .with_context(|| format!("backend {name}: a listener needs a port"))?;
                let bind = SocketAddr::new(ip, port);
                let socket = dtls_link::bind_listener(bind, self.dataplane.has_threads())
                    .with_context(|| format!("backend {name}"))?;
                tracing::info!(backend = %name, %bind, "dtls listener up");
                let endpoint = self.add_udp(UdpEndpoint {
                    socket: Arc::new(socket),
                    backend: name.to_owned(),
                    cost: settings.cost,
                    mtu: settings.mtu,
                    role: UdpRole::Listener(Box::new(config)),
                })?;
                BackendHandle::Udp(endpoint)
            }
            BackendConfig::DtlsDialer(d) => {
                let config = dtls_link::dialer_config(d, settings.mtu)
                    .with_context(|| format!("backend {name}"))?;
                let socket = dtls_link::bind_dialer(self.dataplane.has_threads())
                    .with_context(|| format!("backend {name}"))?;
                let endpoint = self.add_udp(UdpEndpoint {
                    socket: Arc::new(socket),
                    backend: name.to_owned(),
                    cost: settings.cost,
                    mtu: settings.mtu,
                    role: UdpRole::Dialer(Box::new(DialerState {
                        peer: d.peer.clone(),
                        config: Some(config),
                        backoff: Backoff::new(),
                        next_attempt: Some(Instant::now()),
                    })),
                })?;
                BackendHandle::Udp(endpoint)
            }
            BackendConfig::UdpListener(l) => {
                let endpoint = self.start_plain_udp_listener(name, l, &settings)?;
                BackendHandle::Udp(endpoint)
            }
            BackendConfig::UdpDialer(d) => {
                let endpoint = self.start_plain_udp_dialer(name, d, &settings)?;
                BackendHandle::Udp(endpoint)
            }
        };
        self.backends.insert(
            name.to_owned(),
            RunningBackend {
                config: backend.clone(),
                handle,
            },
        );
        Ok(())
    }

    pub(super) fn add_udp(&mut self, endpoint: UdpEndpoint) -> Result<usize> {
        let index = self.udp.len();
        let fd = endpoint.socket.as_raw_fd();
        if self.worker.offloads.wanted
            && let Err(error) = dtls_link::enable_gro(&endpoint.socket)
        {
            tracing::info!(backend = %endpoint.backend, %error, "UDP GRO unavailable");
            self.worker.offloads.udp_gro = Err(error.to_string());
        }
        if !endpoint.is_plain() {
            let gro = self.worker.offloads.udp_gro.is_ok();
            self.dataplane.open_ports(index, &endpoint.socket, gro);
        }
        self.udp.push(Some(endpoint));
        if let Err(error) = self
            .worker
            .io
            .recv_datagrams(fd, Token(TOKEN_UDP_RECV | index as u64))
        {
            // Nothing is armed on it: close the socket (and the workers' on its port); the
            // backend is retried.
            self.dataplane.forget_ports(index);
            if let Some(slot) = self.udp.get_mut(index) {
                *slot = None;
            }
            return Err(error).context("arming UDP receive");
        }
        Ok(index)
    }

    /// Stops a backend and closes its links (or stops retrying it, if it failed to start).
    pub(super) fn stop_backend(&mut self, name: &str) {
        if self.forget_failed_backend(name) {
            return;
        }
        let Some(running) = self.backends.remove(name) else {
            return;
        };
        tracing::info!(backend = %name, "stopping backend");
        let links: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.backend == name)
            .map(|(id, _)| *id)
            .collect();
        for link in links {
            self.close_link(link, "backend removed");
        }
        match running.handle {
            BackendHandle::Thread(stop) => stop.store(true, Ordering::Relaxed),
            BackendHandle::Udp(endpoint) => {
                self.dataplane.forget_ports(endpoint);
                if let Some(e) = self.udp.get_mut(endpoint).and_then(Option::take)
                    && self
                        .worker
                        .io
                        .disarm(Token(TOKEN_UDP_RECV | endpoint as u64))
                {
                    self.retiring_udp.push((endpoint, e));
                }
            }
        }
    }

    /// Applies a configuration that was verified and is newer than the running one.
    pub(super) fn apply_config(&mut self, new: &MeshConfig) -> ApplyOutcome {
        let Ok(new_node) = new.node(&self.id) else {
            return ApplyOutcome::Removed;
        };
        let Ok(old_node) = self.config.node(&self.id) else {
            return ApplyOutcome::Restart;
        };
        let mut old_global = self.config.global.clone();
        old_global.version = new.global.version;
        // Everything but the backends (and the version) needs a new mesh instance: global,
        // the node's address, identity, prefixes, TUN devices, DNS.
        let mut old_rest = old_node.clone();
        old_rest.backends = new_node.backends.clone();
        old_rest.tun_devs = new_node.tun_devs.clone();
        old_rest.namespaces = new_node.namespaces.clone();
        old_rest.services = new_node.services.clone();
        if old_global != new.global || &old_rest != new_node {
            return ApplyOutcome::Restart;
        }
        // The eBPF fast path is loaded at start for nodes with a plaintext udp backend only.
        if super::start::has_plain_udp_backend(&old_node.backends)
            != super::start::has_plain_udp_backend(&new_node.backends)
        {
            return ApplyOutcome::Restart;
        }
        let old_backends = old_node.backends.clone();
        let new_backends = new_node.backends.clone();
        let (old_devs, new_devs) = (old_node.tun_devs.clone(), new_node.tun_devs.clone());
        let attachments_changed = old_node.namespaces != new_node.namespaces
            || old_node.services != new_node.services
            || node_mtu(&old_backends) != node_mtu(&new_backends);
        for name in old_backends.keys() {
            if !new_backends.contains_key(name) {
                self.stop_backend(name);
            }
        }
        for (name, backend) in &new_backends {
            match old_backends.get(name) {
                Some(old) if old == backend => {}
                Some(old) if same_but_cost(old, backend) => self.set_backend_cost(name, backend),
                Some(_) => {
                    self.stop_backend(name);
                    self.start_or_retry(name, backend);
                }
                None => self.start_or_retry(name, backend),
            }
        }
        if old_devs != new_devs {
            self.apply_tun_devs(&old_devs, &new_devs, node_mtu(&new_backends));
        }
        if attachments_changed {
            let new_node = new_node.clone();
            self.apply_attachments(&new.global, &new_node, node_mtu(&new_backends));
        }
        ApplyOutcome::Applied
    }

    fn set_backend_cost(&mut self, name: &str, backend: &BackendConfig) {
        let cost = Cost::from_f64(backend.cost());
        tracing::info!(backend = %name, cost = %cost, "backend cost changed");
        self.update_failed_backend(name, backend);
        if let Some(running) = self.backends.get_mut(name) {
            running.config = backend.clone();
            if let BackendHandle::Udp(endpoint) = running.handle
                && let Some(Some(e)) = self.udp.get_mut(endpoint)
            {
                e.cost = cost;
            }
        }
        let now = self.now();
        let links: Vec<LinkId> = self
            .links
            .iter_mut()
            .filter(|(_, l)| l.backend == name)
            .map(|(id, l)| {
                l.cost = cost;
                *id
            })
            .collect();
        for link in links {
            self.node.set_link_cost(now, link, cost);
        }
        // TCP threads hand new connections the cost they started with; restarting them would
        // drop the links, so they keep it until the backend changes otherwise.
    }
}

/// Returns true if two backend configurations differ only in their cost.
fn same_but_cost(a: &BackendConfig, b: &BackendConfig) -> bool {
    let mut a = a.clone();
    match (&mut a, b) {
        (BackendConfig::DtlsDialer(x), BackendConfig::DtlsDialer(y)) => x.cost = y.cost,
        (BackendConfig::DtlsListener(x), BackendConfig::DtlsListener(y)) => x.cost = y.cost,
        (BackendConfig::TcpDialer(x), BackendConfig::TcpDialer(y)) => x.cost = y.cost,
        (BackendConfig::TcpListener(x), BackendConfig::TcpListener(y)) => x.cost = y.cost,
        (BackendConfig::UdpDialer(x), BackendConfig::UdpDialer(y)) => x.cost = y.cost,
        (BackendConfig::UdpListener(x), BackendConfig::UdpListener(y)) => x.cost = y.cost,
        _ => return false,
    }
    &a == b
}

/// Where a candidate configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConfigSource {
    /// A neighbour offered it on the routing stream.
    Mesh,
    /// `connectopus config set` on the control socket.
    Control,
    /// SIGHUP: the file on disk.
    Reload,
}

impl ConfigSource {
    fn as_str(self) -> &'static str {
        match self {
            ConfigSource::Mesh => "mesh",
            ConfigSource::Control => "control socket",
            ConfigSource::Reload => "reload",
        }
    }
}

impl Daemon {
    /// Takes a candidate configuration: checks its signature against the keys of the running
    /// configuration (never the candidate's own), checks the version rule, persists it, then
    /// hands it to the core, which offers it to the neighbours and says when to apply it
    /// (`apply_pending_config`). Returns the version on success; a refusal leaves everything
    /// as it was.
    pub(super) fn accept_config(
        &mut self,
        bytes: &[u8],
        signature: &[u8],
        source: ConfigSource,
    ) -> Result<u64> {
        let file_name = self.config_path.display().to_string();
        // Against the newest configuration taken: its keys decide, since it is the one that
        // will run.
        let newest = self.newest_config();
        let (new, signer) = offer_check::check_candidate(
            bytes,
            signature,
            newest.global.version,
            &newest.global.authorized_keys,
            &newest.global.revoked_keys,
            &file_name,
        )?;
        self.commit_config(bytes, signature, new, &signer, source)
    }

    /// The version of the newest configuration taken: applied, or still being offered to the
    /// neighbours before it is applied. Candidates must be newer.
    pub(super) fn newest_config_version(&self) -> u64 {
        self.newest_config().global.version
    }

    /// The newest configuration taken: the pending one while it is being offered, else the
    /// running one.
    pub(super) fn newest_config(&self) -> &MeshConfig {
        self.pending_config
            .as_ref()
            .map_or(&self.config, |(p, _)| p)
    }

    /// Persists a configuration that [`offer_check::check_candidate`] accepted and hands it to
    /// the core, which offers it to the neighbours and says when to apply it.
    pub(super) fn commit_config(
        &mut self,
        bytes: &[u8],
        signature: &[u8],
        new: MeshConfig,
        signer: &str,
        source: ConfigSource,
    ) -> Result<u64> {
        crate::state::persist_pair(&self.config_path, bytes, signature)?;
        // After the pair: a crash in between leaves the record behind the file, never ahead.
        if let Err(error) = crate::state::record_version(&self.config_path, new.global.version) {
            tracing::error!(error = %format!("{error:#}"), "cannot record the applied configuration version");
        }
        tracing::info!(
            version = new.global.version,
            signer = %signer,
            source = source.as_str(),
            "configuration accepted"
        );
        let version = new.global.version;
        // Offer it to every neighbour first: the core says when to apply it (every neighbour
        // acknowledged it, or the wait timed out), so a change that removes a link still
        // reaches the node at its other end.
        self.pending_config = Some((new, signature.to_vec()));
        let now = self.now();
        self.node.propose_config(now, version, bytes, signature);
        Ok(version)
    }

    /// Applies the pending configuration once the core has rolled it out
    /// ([`Command::ApplyConfig`]).
    pub(super) fn apply_pending_config(
        &mut self,
        version: u64,
        unacknowledged: &[std::net::Ipv6Addr],
    ) {
        let Some((new, signature)) = self
            .pending_config
            .take_if(|(p, _)| p.global.version == version)
        else {
            return;
        };
        self.signature = signature;
        let mut new = new;
        // An ephemeral node is no entry of the file: it keeps running its synthetic one
        // (the new file's `global.ephemeral.backends`), unless the file no longer lets it.
        if self.node.lease_state().is_some() {
            match super::leases::ephemeral_entry(&new, &self.id) {
                Ok(entry) => {
                    new.nodes.insert(self.id.clone(), entry);
                }
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "the new configuration has no place for this ephemeral node")
                }
            }
        }
        if unacknowledged.is_empty() {
            tracing::info!(
                version,
                "every neighbour has the configuration; applying it"
            );
        } else {
            tracing::warn!(
                version,
                ?unacknowledged,
                "neighbours did not acknowledge the configuration in time; applying it anyway"
            );
        }
        match self.apply_config(&new) {
            ApplyOutcome::Applied => {
                let now = self.now();
                if self.node.enforces_identity() {
                    // Grants and revocations of other nodes take effect at once.
                    self.node.set_trust(now, Some(trust::policy(&new)));
                }
                self.config = new;
                self.code_unmap_at = super::code_unmap_deadline();
            }
            ApplyOutcome::Restart => {
                tracing::info!(version, "the change needs a restart of the mesh instance");
                self.release_ending_delegation(&new);
                self.config = new;
                self.restart = true;
                self.begin_shutdown();
            }
            ApplyOutcome::Removed => {
                self.release_ending_delegation(&new);
                let reason = format!("node {} is not in configuration version {version}", self.id);
                tracing::error!(%reason, "stopping forwarding");
                for name in self.backend_names() {
                    self.stop_backend(&name);
                }
                let now = self.now();
                self.node.shutdown(now);
                self.removed = Some(reason);
                self.config = new;
            }
        }
    }
}

impl Daemon {
    /// Answers `config get`: the running configuration's exact bytes and signature, from
    /// memory (the file may already hold a newer pair still being offered to the neighbours),
    /// so every way of asking gets the same answer.
    pub(super) fn get_config(&self) -> ControlReply {
        let config = String::from_utf8_lossy(self.config.source()).into_owned();
        let signature = String::from_utf8_lossy(&self.signature).into_owned();
        ControlReply::Config { config, signature }
    }
}
