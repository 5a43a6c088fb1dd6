//! Starting a node: the TUN devices, the packet I/O, the eBPF programs, the helper threads
//! and the backends, then the main loop ([`Daemon::run`]); and restarting the mesh instance
//! (re-executing the process) after a change that needs it.

use super::*;

/// What `connectopus node` was asked to run.
#[derive(Debug)]
pub struct NodeOptions {
    /// The loaded mesh configuration.
    pub config: MeshConfig,
    /// Its signature (already verified).
    pub signature: Vec<u8>,
    /// Where it was loaded from; newer configurations received later are written there
    /// (and their signature to `<path>.sig`).
    pub config_path: PathBuf,
    /// This node's name in it.
    pub id: String,
    /// Where to serve the control socket (with `serve_control_socket`); the namespace
    /// registry and the control datagram sockets sit beside it either way.
    pub control_socket: PathBuf,
    /// Whether to serve it (not with `cpctl.no_socket`).
    pub serve_control_socket: bool,
    /// The eBPF object file to load instead of the one embedded in the binary.
    pub ebpf_object: Option<PathBuf>,
    /// The node key file, when the node's config entry has an `identity`
    /// [default: /var/lib/connectopus/<id>/identity.key].
    pub identity_file: Option<PathBuf>,
    /// Where to serve Prometheus `/metrics` (`--metrics-listen`), overriding the node's
    /// `metrics.listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// Dataplane workers (`--workers`), overriding the node's `workers`.
    pub workers: Option<u32>,
    /// `--cpu-local`: worker threads pinned, packets kept on the CPU they appeared on.
    pub cpu_local: bool,
    /// The seccomp filter installed once the node runs.
    pub seccomp: crate::privilege::SeccompMode,
    /// Whether to drop the capabilities the node no longer needs after start-up.
    pub drop_capabilities: bool,
    /// `--ephemeral`: the node joins under `id` with an address an issuer grants.
    pub ephemeral: Option<super::leases::EphemeralOptions>,
}

/// Runs a node until SIGINT or SIGTERM.
///
/// # Errors
/// Start-up failures (TUN, control socket, io_uring); a backend that cannot start does not
/// stop the node, which retries it (see `backend_retry`), and a running node logs and
/// survives per-link errors.
pub fn run(options: NodeOptions) -> Result<()> {
    let NodeOptions {
        config,
        signature,
        config_path,
        id,
        control_socket,
        serve_control_socket,
        ebpf_object,
        identity_file,
        metrics_listen,
        workers,
        cpu_local,
        seccomp,
        drop_capabilities,
        ephemeral,
    } = options;
    // A steering program the previous image handed over is taken first, before any process
    // starts (it would inherit it), and whatever this image wants: one it does not use
    // closes instead of staying open for good.
    let handed = crate::cpu_local::steering::Handed::take();
    let mut config = config;
    let (node_key, join) = match &ephemeral {
        None => (
            trust::node_key(&config, &id, identity_file.as_deref())?,
            None,
        ),
        Some(options) => {
            // An ephemeral node is no entry of the file: it runs a synthetic one (address
            // `::`, the `global.ephemeral` backends) under its name.
            let entry = leases::ephemeral_entry(&config, &id)?;
            config.nodes.insert(id.clone(), entry);
            let key = leases::ephemeral_key(options, &id)?;
            let join_key = match &options.join_key_file {
                Some(path) => Some(
                    leases::load_seed(path)
                        .with_context(|| format!("reading the join key {}", path.display()))?,
                ),
                None => None,
            };
            let join = connectopus_core::lease_holder::JoinConfig {
                name: id.clone(),
                join_key,
            };
            (Some(key), Some(join))
        }
    };
    let node_config = config
        .node(&id)
        .map_err(|d| anyhow::anyhow!("{d}"))?
        .clone();

    let offloads = datapath::Offloads::new(!crate::tun::offload_disabled_by_env());
    let mtu = node_mtu(&node_config.backends);
    let wanted_workers = workers::wanted(workers, node_config.workers);
    let mut multi_queue = Err("the node has no TUN device of its own".to_owned());
    let mut tuns = Vec::new();
    match node_config.tun_name(&id) {
        Some(tun_name) => {
            let address4 = config
                .global
                .subnet4
                .zip(node_config.address4)
                .map(|(subnet4, a)| (a, subnet4.prefix_len()));
            let tun = if wanted_workers > 1 {
                let (tun, state) = TunDevice::create_multi_queue(
                    &tun_name,
                    node_config.address,
                    config.global.subnet.prefix_len(),
                    address4,
                    mtu,
                    offloads.wanted,
                )?;
                multi_queue = state;
                tun
            } else {
                TunDevice::create(
                    &tun_name,
                    node_config.address,
                    config.global.subnet.prefix_len(),
                    address4,
                    mtu,
                    offloads.wanted,
                )?
            };
            tracing::info!(
                tun = %tun.name(),
                address = %node_config.address,
                address4 = ?node_config.address4,
                %mtu,
                offload = %tun.offload().describe(),
                "tun device up"
            );
            tuns.push(tun);
        }
        None => tracing::info!("tun disabled: this node only forwards"),
    }
    // Upstream's tun_devs: extra host addresses, each on its own device, advertised as /128s.
    let mut tun_dev_names = Vec::new();
    for (name, dev) in &node_config.tun_devs {
        let address4 = dev.address4.map(|a| (a, 32));
        let tun = TunDevice::create(
            &dev.device,
            dev.address,
            128,
            address4,
            mtu,
            offloads.wanted,
        )
        .with_context(|| format!("tun_devs.{name}"))?;
        tracing::info!(tun = %tun.name(), address = %dev.address, name = %name, "extra tun device up");
        tuns.push(tun);
        tun_dev_names.push(name.clone());
    }
    // With worker threads each reads one queue of the node's own device (worker 0 the first,
    // through a duplicate of its descriptor: the main loop keeps it to write, and reads it if
    // worker 0's thread stops); the main loop reads every other TUN device. Without threads
    // the main loop reads the one queue.
    let (queues, multi_queue) = workers::open_queues(
        node_config.tun_name(&id).and(tuns.first()),
        wanted_workers,
        multi_queue,
    );
    let cpu_local_wanted = cpu_local || node_config.cpu_local;
    // The steering program stays with this function: a restart hands it to the new image.
    let (cpu_local, steering) =
        match choose_cpu_local(cpu_local_wanted, queues.len(), tuns.first(), handed) {
            Ok((cpus, steering)) => {
                tracing::info!(?cpus, "cpu-local data path: worker i on cpus[i]");
                (Ok(cpus), Some(steering))
            }
            Err(why) => {
                if cpu_local_wanted {
                    tracing::warn!(%why, "cpu-local data path asked for but off");
                } else {
                    tracing::debug!(%why, "no cpu-local data path");
                }
                (Err(why), None)
            }
        };
    let (attachments, attachment_names, attachment_names4) =
        tun_devs::attachments(&node_config.tun_devs, |_| true);

    // Before any dataplane thread starts (the measurement pins this thread for ~40 ms).
    let idle_wake = choose_idle_wake();
    tracing::info!(
        idle_wake_us = idle_wake.interval.as_micros() as u64,
        why = %idle_wake.why,
        "idle wake-ups"
    );
    let io = PacketIo::new(datapath::io_config(offloads.wanted, idle_wake.interval))
        .context("starting packet I/O")?;
    match io.fallback_reason() {
        None => tracing::info!(backend = io.backend().as_str(), "dataplane ready"),
        Some(reason) => tracing::warn!(
            backend = io.backend().as_str(),
            reason = %reason,
            "io_uring unavailable; using the syscall fallback"
        ),
    }

    // The attach helper keeps the privileges the node started with (namespaces, processes,
    // and loading eBPF programs: it starts the eBPF helper below): started before they are
    // dropped and before the seccomp filter, or kept from before a re-exec (which runs
    // already confined).
    let helper = match crate::attach::helper::Client::start(&control_socket) {
        Ok(helper) => Some(helper),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "no attach helper: namespaces and services cannot run");
            None
        }
    };

    let ebpf = match tuns.first() {
        Some(tun) => attach_counters(tun.name(), ebpf_object.as_deref(), helper.as_ref()),
        None => Ebpf::Off("no tun device".to_owned()),
    };
    // Loaded before capabilities drop (the helper needs BPF rights); from then on the node
    // only writes its maps and attaches the loaded programs (TCX links by program fd).
    let fastpath = super::fastpath::FastpathState::start(
        node_config.fastpath.disable,
        has_plain_udp_backend(&node_config.backends),
        tuns.first().map(|tun| (tun.name(), mtu)),
        ebpf_object.as_deref(),
        crate::ebpf_helper::start(helper.as_ref()),
    );

    // The API's ping and traceroute socket needs CAP_NET_RAW, which the node drops next.
    let probe = if node_config.cpctl.port.is_some() {
        crate::api::probe::open()
    } else {
        std::sync::Arc::new(std::sync::Mutex::new(Err(
            "ping and traceroute through the API need nodes.<name>.cpctl.port".to_owned(),
        )))
    };

    // The DHCPv6 client's socket (port 546, bound to the upstream interface) opens while the
    // node still has its capabilities.
    let pd_driver = super::mesh_prefix::open_pd(&config, &id, &config_path);

    // Before the first thread starts: capabilities are per thread, later ones inherit these.
    let needs = privilege_needs(
        &node_config,
        config.global.delegated.iter().any(|d| d.node == id),
        matches!(ebpf, Ebpf::Counters(_)) || fastpath.is_on(),
    );
    if drop_capabilities && let Err(error) = crate::privilege::drop_capabilities(needs) {
        tracing::warn!(error = %format!("{error:#}"), "keeping the capabilities the node started with");
    }

    // An ephemeral node starts DNS when it gets its address (`leases::set_address`).
    let dns = if join.is_some() {
        dns::Dns::Off("no address yet (joining)".to_owned())
    } else {
        dns::Dns::start(
            &config,
            &id,
            node_config.address,
            tuns.first().map(TunDevice::name),
        )
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let to_loop = LoopSender::new(tx, io.waker());
    let (saved_delegations, pd_commands) = match pd_driver {
        Some((driver, saved)) => {
            let commands = super::mesh_prefix::spawn_pd(driver, to_loop.clone(), &saved)?;
            (Some(saved), Some(commands))
        }
        None => (None, None),
    };
    let mut threads = Vec::new();
    let api_state = crate::api::ApiState::new(crate::api::AuthKeys::of(&config));
    let api_listen = api_listen(&node_config, !tuns.is_empty());
    let (api_handoff, api_bound, mut api_threads) = crate::api::start(
        crate::api::ApiContext {
            to_loop: to_loop.clone(),
            state: api_state.clone(),
            node: id.clone(),
            probe,
            directory: std::sync::Arc::default(),
        },
        api_listen,
        stop.clone(),
    )?;
    threads.append(&mut api_threads);
    if let Some(bound) = api_bound {
        tracing::info!(listen = %bound, "api and web ui at http://{bound}/ (token required)");
    }
    let api = api_publish::ApiPublisher::new(api_state, &config, api_bound.is_some());
    if serve_control_socket {
        threads.push(control::spawn_server(
            &control_socket,
            to_loop.clone(),
            api_handoff,
            stop.clone(),
        )?);
    } else {
        tracing::info!(path = %control_socket.display(), "no control socket (cpctl.no_socket)");
        control::mark_no_socket(&control_socket, &id);
    }
    let (local_datagrams, datagram_thread) = local_datagrams::start(
        &local_datagrams::base_of(&control_socket),
        to_loop.clone(),
        stop.clone(),
    )?;
    threads.push(datagram_thread);
    let (signals, signal_thread) = spawn_signal_thread(to_loop.clone())?;
    let metrics = match metrics_listen.or_else(|| node_config.metrics.listen_addr()) {
        Some(addr) => {
            let snapshot = crate::metrics::Snapshot::default();
            let (bound, thread) =
                crate::metrics::spawn_server(addr, snapshot.clone(), stop.clone())?;
            tracing::info!(listen = %bound, "metrics at /metrics");
            threads.push(thread);
            Some(snapshot)
        }
        None => None,
    };
    threads.push(signal_thread);
    let (offer_checker, offer_thread) = offer_check::OfferChecker::spawn(to_loop.clone())?;
    threads.push(offer_thread);
    if let Some(helper) = &helper {
        let to_loop = to_loop.clone();
        threads.push(
            helper.spawn_reader(move |received| {
                to_loop.send(LoopMessage::Attach(Box::new(received)))
            })?,
        );
    }
    let started = crate::boot_clock::BootInstant::now();
    let started_wall = SystemTime::now();
    // Before `next_epoch` records `<config>.epoch`: a first start is told from a later one
    // by that file (see `leases::issuer_start`).
    let issuer_start = join
        .is_none()
        .then(|| leases::issuer_setup(&config, &id, &config_path, 0))
        .flatten();
    let epoch = trust::next_epoch(&config_path);
    let timers = &config.global.timers;
    let mut core = NodeConfig::new(
        node_config.address,
        id.clone(),
        epoch,
        epoch ^ u64::from(std::process::id()),
    );
    core.config_version = config.global.version;
    // Hello challenges must be unpredictable: their secret comes from the OS.
    ssh_key::rand_core::RngCore::fill_bytes(
        &mut ssh_key::rand_core::OsRng,
        &mut core.challenge_secret,
    );
    let mesh_has_identities = config.nodes.values().any(|n| n.identity.is_some());
    if let Some(key) = node_key {
        tracing::info!(key = %connectopus_core::identity::hex(&key.public()), "node identity enforced");
        core.identity = Some(key);
        // An ephemeral node checks its peers only in a mesh that has identities.
        if join.is_none() || mesh_has_identities {
            core.trust = Some(trust::policy(&config));
        }
    }
    if let Some(mut setup) = issuer_start {
        setup.config.epoch_floor = epoch;
        // The wall clock at the core's `Time::ZERO` (`started`).
        setup.unix_ms = started_wall
            .duration_since(UNIX_EPOCH)
            .map_or(setup.unix_ms, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
            });
        tracing::info!(pool = %setup.config.table.pool, lease = ?setup.config.table.lease,
            grace = ?setup.config.table.grace, "issuing leases");
        core.issuer = Some(setup);
    }
    core.join = join;
    // Hellos on plaintext udp links advertise eBPF decapsulation, and the core issues the
    // fast path's entries.
    core.fastpath = fastpath.is_on();
    core.prefixes = attachments.clone();
    core.names = attachment_names.clone();
    core.names4 = attachment_names4.clone();
    core.address4 = config.global.subnet4.and(node_config.address4);
    core.mesh_prefix = super::mesh_prefix::core_config(&config);
    core.timers.session.keepalive_idle = timers.keepalive_idle.get();
    core.timers.session.dead_interval = timers.dead_interval.get();
    core.timers.update_interval = timers.update_interval.get();
    core.timers.node_dead_after = timers.node_dead_after.get();

    let icmp_limiter =
        connectopus_core::icmp::IcmpRateLimiter::new(core.icmp_per_second, core.icmp_burst);
    let dataplane = workers::Dataplane::start(
        (queues, multi_queue),
        &offloads,
        &icmp_limiter,
        io.waker(),
        started,
        idle_wake.interval,
        cpu_local,
    )?;
    let node_config_for_attachments = node_config.clone();
    let backend_configs = node_config.backends;
    let subnet = config.global.subnet.to_string();
    let config_path_for_leases = config_path.clone();
    let mut daemon = Daemon {
        id,
        config,
        config_path,
        signature: signature.clone(),
        pending_config: None,
        local_datagrams,
        to_loop,
        backends: BTreeMap::new(),
        failed: BTreeMap::new(),
        threads: Vec::new(),
        mesh_addresses: Default::default(),
        mesh_routes: Default::default(),
        pd_commands,
        code_unmap_at: super::code_unmap_deadline(),
        code_unmapped: Default::default(),
        removed: None,
        restart: false,
        node: Node::new(core, Time::ZERO),
        worker: Worker::new(io, offloads, icmp_limiter),
        dataplane,
        started,
        started_wall,
        tuns: tun_devs::TunSet::new(tuns, &tun_dev_names),
        attachments: attachments::Attachments::new(
            helper,
            (attachments, attachment_names, attachment_names4),
        ),
        ebpf,
        fastpath,
        dns,
        subnet,
        links: BTreeMap::new(),
        dtls_peers: std::collections::HashMap::new(),
        hello_limiter: handshake_limits::HelloLimiter::new(),
        flood_detector: hello_filter::FloodDetector::from_env(),
        limit_counters: handshake_limits::LimitCounters::default(),
        plain_udp_counters: plain_udp::PlainUdpCounters::default(),
        udp: Vec::new(),
        retiring_udp: Vec::new(),
        closing: Vec::new(),
        next_link: 1,
        rx,
        offer_checker,
        stopping: None,
        metrics,
        metrics_published: None,
        api,
        spf_time: Duration::ZERO,
        seccomp: "off: not installed yet".to_owned(),
        idle_wake: idle_wake.why,
        notify: crate::notify::Notifier::from_env(),
        leases: leases::LeaseDriver::new(&config_path_for_leases),
        cni: Default::default(),
    };
    let version = daemon.config.global.version;
    let source = daemon.config.source().clone();
    daemon
        .node
        .set_config(Time::ZERO, version, &source, &signature);
    if let Some(saved) = saved_delegations {
        daemon.on_delegations(saved);
    }
    for (name, backend) in &backend_configs {
        daemon.start_or_retry(name, backend);
    }
    let global = daemon.config.global.clone();
    daemon.apply_attachments(&global, &node_config_for_attachments, mtu);
    daemon.seccomp = crate::privilege::install_seccomp(seccomp, needs);
    let privilege = crate::privilege::report(&daemon.seccomp);
    tracing::info!(%privilege, "privileges");
    // TUN devices, listeners (or their retry timers) and the control socket are up.
    let status = daemon.status_line();
    daemon.notify.ready(status);
    let result = daemon.run();
    // A restart keeps the attach helper (see `attach::helper`); otherwise it stops.
    let kept_helper = if daemon.restart {
        daemon.hand_over_attachments()
    } else {
        daemon.stop_attachments();
        None
    };
    stop.store(true, Ordering::Relaxed);
    for running in daemon.backends.values() {
        if let reconcile::BackendHandle::Thread(stop) = &running.handle {
            stop.store(true, Ordering::Relaxed);
        }
    }
    threads.append(&mut daemon.threads);
    let restart = daemon.restart;
    drop(daemon);
    signals.close();
    if serve_control_socket {
        let _ = std::fs::remove_file(&control_socket);
    } else {
        control::remove_no_socket_marker(&control_socket);
    }
    for thread in threads {
        let _ = thread.join();
    }
    if restart {
        return restart_process(kept_helper, steering.as_ref());
    }
    if let Some((helper, _)) = kept_helper {
        helper.stop();
    }
    tracing::info!("stopped");
    result
}

/// The eBPF programs on the node's TUN device, or why there are none.
pub(super) enum Ebpf {
    Counters(connectopus_fastpath::TunCounters),
    Off(String),
}

impl std::fmt::Debug for Ebpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Ebpf {
    pub(super) fn describe(&self) -> String {
        match self {
            Ebpf::Counters(c) => match c.read() {
                Ok(snapshot) => format!(
                    "tc counters on {} ({}): in {} pkts {} B, out {} pkts {} B",
                    c.ifname(),
                    c.attach_mode().as_str(),
                    snapshot.ingress.packets,
                    snapshot.ingress.bytes,
                    snapshot.egress.packets,
                    snapshot.egress.bytes
                ),
                Err(error) => format!("tc counters unreadable: {error}"),
            },
            Ebpf::Off(why) => format!("not loaded: {why}"),
        }
    }
}

/// Attaches the TUN counters when the eBPF object is available; the node runs without them
/// otherwise and says why. A helper process (`connectopus ebpf-attach`) loads the object, so
/// that aya's parse of the kernel's BTF never touches the node's memory (in process only on
/// kernels without TCX); the attach helper starts it when there is one
/// ([`crate::ebpf_helper::start`]).
fn attach_counters(
    ifname: &str,
    object: Option<&std::path::Path>,
    attach_helper: Option<&Arc<crate::attach::helper::Client>>,
) -> Ebpf {
    let from = object.map_or_else(|| "embedded".to_owned(), |p| p.display().to_string());
    let attached = if object.is_none() && connectopus_fastpath::embedded_object().is_none() {
        Err(connectopus_fastpath::FastpathError::NotEmbedded)
    } else {
        let helper = crate::ebpf_helper::start(attach_helper);
        connectopus_fastpath::TunCounters::attach_via_helper(helper, ifname, object)
    };
    match attached {
        Ok(counters) => {
            tracing::info!(
                object = %from,
                mode = counters.attach_mode().as_str(),
                helper = counters.loaded_by_helper(),
                "ebpf counters attached"
            );
            Ebpf::Counters(counters)
        }
        Err(error) => {
            let error = format!("{:#}", anyhow::Error::from(error));
            tracing::info!(%error, "running without eBPF");
            Ebpf::Off(error)
        }
    }
}

/// Where the API listens on the mesh: the node's address at `cpctl.port`, when set and the
/// node has its TUN device (which holds the address).
fn api_listen(node: &connectopus_config::NodeConfig, has_tun: bool) -> Option<SocketAddr> {
    let port = node.cpctl.port?;
    if !has_tun {
        tracing::warn!(
            port,
            "cpctl.port is set but the node has no tun device: no mesh api"
        );
        return None;
    }
    Some(SocketAddr::new(node.address.into(), port))
}

/// What the node needs once it runs: low ports for DNS (port 53), a listener below 1024, or
/// the DHCPv6 client's port 546 on a node `global.delegated` names (`delegating`): a change
/// that restarts the mesh instance re-executes the node already confined, and the client
/// must bind its port again then.
fn privilege_needs(
    node: &connectopus_config::NodeConfig,
    delegating: bool,
    ebpf_maps: bool,
) -> crate::privilege::Needs {
    let low_listener = node.backends.values().any(|b| match b {
        BackendConfig::DtlsListener(l) => l.port.is_some_and(|p| p < 1024),
        BackendConfig::TcpListener(l) => l.port.is_some_and(|p| p < 1024),
        BackendConfig::UdpListener(l) => l.port.is_some_and(|p| p < 1024),
        _ => false,
    }) || node.cpctl.port.is_some_and(|p| p < 1024);
    crate::privilege::Needs {
        bind_low_ports: !node.dns.disable || low_listener || delegating,
        ebpf_at_runtime: false,
        ebpf_maps,
    }
}

/// Whether the node has a `udp-dialer` or `udp-listener` backend: only then it loads the eBPF
/// fast path (its DTLS and TCP links go through userspace either way).
pub(super) fn has_plain_udp_backend(backends: &BTreeMap<String, BackendConfig>) -> bool {
    backends.values().any(|b| {
        matches!(
            b,
            BackendConfig::UdpDialer(_) | BackendConfig::UdpListener(_)
        )
    })
}

/// Returns the smallest MTU among the node's backends (1500 without any).
pub(crate) fn node_mtu(backends: &BTreeMap<String, BackendConfig>) -> u16 {
    backends
        .values()
        .map(backend_mtu)
        .min()
        .unwrap_or(TCP_LINK_MTU)
}

pub(super) fn backend_mtu(backend: &BackendConfig) -> u16 {
    let default = match backend {
        BackendConfig::DtlsDialer(_)
        | BackendConfig::DtlsListener(_)
        | BackendConfig::UdpDialer(_)
        | BackendConfig::UdpListener(_) => crate::DTLS_LINK_MTU,
        BackendConfig::TcpDialer(_) | BackendConfig::TcpListener(_) => TCP_LINK_MTU,
    };
    backend
        .mtu()
        .and_then(|m| u16::try_from(m).ok())
        .unwrap_or(default)
}

/// The environment variable (tests only) that makes SIGUSR2 stall the main loop for that many
/// milliseconds: the control plane blocked, the worker threads must carry established traffic.
pub(crate) const TEST_STALL_ENV: &str = "CONNECTOPUS_TEST_STALL_CONTROL_MS";

/// Turns SIGINT and SIGTERM into a shutdown and SIGHUP into a reload (and, in tests, SIGUSR2
/// into a stall of the main loop); the returned handle ends the thread when closed.
fn spawn_signal_thread(
    to_loop: LoopSender,
) -> Result<(signal_hook::iterator::Handle, JoinHandle<()>)> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
    // Tests only: SIGUSR2 stalls the main loop this long (`LoopMessage::TestStall`).
    let stall = std::env::var(TEST_STALL_ENV)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis);
    let mut wanted = vec![SIGINT, SIGTERM, SIGHUP];
    if stall.is_some() {
        tracing::warn!("{TEST_STALL_ENV} is set: SIGUSR2 stalls the control loop (tests only)");
        wanted.push(SIGUSR2);
    }
    let mut signals =
        signal_hook::iterator::Signals::new(&wanted).context("installing signal handlers")?;
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let message = if signal == SIGHUP {
                    tracing::info!("SIGHUP: re-reading the configuration");
                    LoopMessage::Reload
                } else if let (SIGUSR2, Some(how_long)) = (signal, stall) {
                    LoopMessage::TestStall(how_long)
                } else {
                    tracing::info!(signal, "shutting down");
                    LoopMessage::Shutdown
                };
                if !to_loop.send(message) {
                    return;
                }
            }
        })
        .context("spawning signal thread")?;
    Ok((handle, thread))
}

/// Replaces this process with a fresh run of the same command line: how a node restarts its
/// mesh instance (new epoch, new TUN, new links) after a configuration change that requires
/// it. The new configuration was persisted first, so the new process loads it.
///
/// The attach helper and the CPU-local steering program go to the new image, which runs
/// confined and could not start or load them again.
fn restart_process(
    helper: Option<(Arc<crate::attach::helper::Client>, String)>,
    steering: Option<&crate::cpu_local::steering::Steering>,
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the node binary")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    tracing::info!(exe = %exe.display(), "restarting the mesh instance");
    let mut command = std::process::Command::new(exe);
    command.args(args);
    match &helper {
        // The helper's socket stays open across the exec (`Client::hand_over`).
        Some((_, env)) => command.env(crate::attach::helper::HANDOVER_ENV, env),
        None => command.env_remove(crate::attach::helper::HANDOVER_ENV),
    };
    use crate::cpu_local::steering::HANDOVER_ENV as STEERING_ENV;
    match steering.map(crate::cpu_local::steering::Steering::hand_over) {
        Some(Ok(env)) => command.env(STEERING_ENV, env),
        Some(Err(error)) => {
            tracing::warn!(%error, "the steering program cannot cross the restart: cpu-local off after it");
            command.env_remove(STEERING_ENV)
        }
        None => command.env_remove(STEERING_ENV),
    };
    let error = command.exec();
    if let Some((helper, _)) = helper {
        helper.stop();
    }
    Err(error).context("restarting the node")
}

/// The CPU of each worker thread for `--cpu-local` and the TUN steering program attached to
/// the node's device, or why the data path is not CPU-local.
fn choose_cpu_local(
    wanted: bool,
    threads: usize,
    tun: Option<&TunDevice>,
    handed: Option<std::result::Result<crate::cpu_local::steering::Handed, String>>,
) -> std::result::Result<(Vec<usize>, crate::cpu_local::steering::Steering), String> {
    use crate::cpu_local::{choose, steering::Steering};
    let cpus = choose(wanted, threads)?;
    let tun = tun.ok_or_else(|| "the node has no TUN device of its own".to_owned())?;
    let queues: Vec<(u32, u32)> = cpus
        .iter()
        .enumerate()
        .map(|(queue, &cpu)| (cpu as u32, queue as u32))
        .collect();
    let steering =
        Steering::obtain(&queues, handed).map_err(|e| format!("TUN steering program: {e}"))?;
    steering
        .attach(tun.fd())
        .map_err(|e| format!("TUNSETSTEERINGEBPF: {e}"))?;
    Ok((cpus, steering))
}

/// Whether the dataplane's rings keep their CPUs warm after a receive: measured
/// (`crate::wake_cost`) unless `CONNECTOPUS_IDLE_WAKE_US` decides. Measured once per process
/// image: a restart of the mesh instance re-executes the node, which measures again under its
/// seccomp filter (which allows `sched_setaffinity` for this).
fn choose_idle_wake() -> crate::wake_cost::IdleWakeChoice {
    static MEASURED: std::sync::OnceLock<crate::wake_cost::IdleWakeChoice> =
        std::sync::OnceLock::new();
    if std::env::var_os(uring_io::IDLE_WAKE_ENV).is_some() {
        return crate::wake_cost::IdleWakeChoice {
            interval: datapath::IDLE_WAKE,
            why: format!("set by {}", uring_io::IDLE_WAKE_ENV),
        };
    }
    MEASURED
        .get_or_init(|| crate::wake_cost::choose(crate::wake_cost::measure(), datapath::IDLE_WAKE))
        .clone()
}
