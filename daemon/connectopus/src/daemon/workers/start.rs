//! Starting the worker threads: how many, the TUN queues they read, each thread pinned
//! (the CPU-local data path) before start-up goes on.

use super::*;

/// The environment variable that makes worker threads fail (tests only):
/// `<index>:<packets>[,<index>:<packets>…]`, the worker `index` (as `status` numbers it) ends
/// after reading that many TUN packets.
pub(crate) const FAIL_WORKER_ENV: &str = "CONNECTOPUS_TEST_FAIL_WORKER";

/// The TUN queue a worker thread reads.
#[derive(Debug)]
pub(in crate::daemon) enum TunQueue {
    /// A queue of its own ([`TunDevice::clone_queue`]): closing it moves its flows to the
    /// other queues.
    Own(TunDevice),
    /// Queue 0, whose device the main loop keeps (it writes what it delivers through it):
    /// a second descriptor of the same queue ([`TunDevice::share_queue`]). When this thread
    /// stops, the main loop reads the queue again ([`Dataplane::queue_zero_orphaned`]).
    Shared {
        fd: std::os::fd::OwnedFd,
        offload: crate::tun::Offload,
    },
}

impl TunQueue {
    pub(in crate::daemon) fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Self::Own(tun) => tun.fd(),
            Self::Shared { fd, .. } => fd.as_raw_fd(),
        }
    }

    pub(in crate::daemon) fn offload(&self) -> &crate::tun::Offload {
        match self {
            Self::Own(tun) => tun.offload(),
            Self::Shared { offload, .. } => offload,
        }
    }
}

/// How many workers a node runs: `--workers`, else the node's `workers`, else one per CPU
/// (at most [`connectopus_config::DEFAULT_MAX_WORKERS`]).
pub(in crate::daemon) fn wanted(flag: Option<u32>, config: Option<u32>) -> usize {
    match flag.or(config) {
        Some(n) => n.max(1) as usize,
        None => std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, connectopus_config::DEFAULT_MAX_WORKERS),
    }
}

/// The queues of the node's TUN device `tun` (made multi-queue when `multi_queue` is `Ok`)
/// for `wanted` worker threads: queue 0 shared with the main loop (which keeps `tun` for its
/// writes), and `wanted - 1` more; or why the node runs one worker (on the main loop).
pub(in crate::daemon) fn open_queues(
    tun: Option<&TunDevice>,
    wanted: usize,
    multi_queue: std::result::Result<(), String>,
) -> (Vec<TunQueue>, std::result::Result<usize, String>) {
    let (more, result) = open_more_queues(tun, wanted, multi_queue);
    let (Some(tun), Ok(n)) = (tun, &result) else {
        return (Vec::new(), result);
    };
    let shared = match tun.share_queue() {
        Ok(fd) => fd,
        Err(error) => {
            let why = format!("{error:#}");
            tracing::warn!(%why, "one dataplane worker, on the main loop");
            return (Vec::new(), Err(why));
        }
    };
    let n = *n;
    let mut queues = vec![TunQueue::Shared {
        fd: shared,
        offload: tun.offload().clone(),
    }];
    queues.extend(more.into_iter().map(TunQueue::Own));
    (queues, Ok(n))
}

/// Opens `wanted - 1` more queues of the node's TUN device `tun` (made multi-queue when
/// `multi_queue` is `Ok`); returns them, or why there are fewer.
fn open_more_queues(
    tun: Option<&TunDevice>,
    wanted: usize,
    multi_queue: std::result::Result<(), String>,
) -> (Vec<TunDevice>, std::result::Result<usize, String>) {
    if wanted <= 1 {
        return (
            Vec::new(),
            Err("one dataplane worker (workers: 1)".to_owned()),
        );
    }
    let Some(tun) = tun else {
        return (
            Vec::new(),
            Err("the node has no TUN device of its own".to_owned()),
        );
    };
    if let Err(why) = multi_queue {
        return (Vec::new(), Err(why));
    }
    let mut queues = Vec::new();
    for _ in 1..wanted {
        match tun.clone_queue() {
            Ok(queue) => queues.push(queue),
            Err(error) => {
                let why = format!("{} of {wanted} TUN queues: {error:#}", queues.len() + 1);
                tracing::warn!(%why, "fewer dataplane workers");
                if queues.is_empty() {
                    return (queues, Err(why));
                }
                break;
            }
        }
    }
    let n = queues.len() + 1;
    (queues, Ok(n))
}

impl Dataplane {
    /// Starts one worker thread per queue in `queues` (`status`'s workers 0.., indices 1..
    /// here); each wakes the main loop through `main` when it hands it something.
    pub(in crate::daemon) fn start(
        (queues, multi_queue): (Vec<TunQueue>, std::result::Result<usize, String>),
        offloads: &datapath::Offloads,
        icmp: &IcmpRateLimiter,
        main: Waker,
        started: crate::boot_clock::BootInstant,
        idle_wake: Duration,
        cpu_local: std::result::Result<Vec<usize>, String>,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            snapshot: Slot::new(Arc::default()),
            links: Slot::new(Arc::default()),
            dtls_peers: Slot::new(Arc::default()),
            stop: AtomicBool::new(false),
            hairpin: AtomicBool::new(false),
            fastpath: AtomicBool::new(false),
            tun_mtu: AtomicU32::new(0),
        });
        let (tx, from_workers) = mpsc::sync_channel(CHANNEL_BOUND);
        let channel_drops = Arc::new(AtomicU64::new(0));
        let fail = fault_from_env();
        let mut threads = Vec::new();
        let queue_zero_on_thread = matches!(queues.first(), Some(TunQueue::Shared { .. }));
        // Each thread pins itself first thing; start-up waits for that (below), so that every
        // pin is in place, and in `status`, before the node says it is ready.
        let (pinned_tx, pinned_rx) = mpsc::channel::<()>();
        for (i, tun) in queues.into_iter().enumerate() {
            let index = i + 1;
            let label = Self::label(index);
            let io = PacketIo::new(datapath::io_config(offloads.wanted, idle_wake))
                .with_context(|| format!("starting packet I/O of worker {label}"))?;
            let status = Arc::new(Mutex::new(ThreadStatus {
                io_uring: match io.fallback_reason() {
                    None => "on".to_owned(),
                    Some(why) => format!("off: {why}"),
                },
                stopped: None,
                udp_gso: datapath::Offloads::describe(&offloads.udp_gso),
                waiting: io.waiting(),
                ..ThreadStatus::default()
            }));
            let waker = io.waker();
            let (to_thread, from_main) = mpsc::channel();
            let door = Arc::new(Door::opened());
            let tcp_queued = Arc::new(AtomicUsize::new(0));
            let thread = WorkerThread {
                index,
                worker: Worker::new(io, offloads.clone(), icmp.clone()),
                vnet: tun.offload().vnet_hdr(),
                tun,
                shared: shared.clone(),
                snapshot_seen: 0,
                links_seen: 0,
                peers_seen: 0,
                peers: Arc::default(),
                links: HashMap::new(),
                to_main: tx.clone(),
                main: main.clone(),
                channel_drops: channel_drops.clone(),
                started,
                reported: Instant::now(),
                woke_main: false,
                status: status.clone(),
                fail_after: fail.iter().find(|(w, _)| *w == label).map(|(_, n)| *n),
                handed_to_main: 0,
                hairpin: false,
                from_main,
                receiving: Vec::new(),
                ports: Vec::new(),
                shared_rx: HashMap::new(),
                records_opened: 0,
                received_for_main: 0,
                transit: Vec::new(),
                fastpath: false,
                tun_mtu: 0,
                datagrams_received: 0,
                plain_counters: PlainUdpCounters::default(),
                door: door.clone(),
                tcp_queued: tcp_queued.clone(),
                tcp: Vec::new(),
                tcp_stopping: false,
            };
            let pin = cpu_local
                .as_ref()
                .ok()
                .and_then(|cpus| cpus.get(i).copied());
            let pinned_tx = pinned_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("worker-{label}"))
                .spawn(move || {
                    let cpu = WorkerThread::pin(index, pin);
                    let _ = pinned_tx.send(());
                    thread.run(cpu);
                })
                .with_context(|| format!("spawning worker {label}"))?;
            threads.push(ThreadHandle {
                thread: Some(handle),
                waker,
                status,
                to_thread,
                door,
                tcp_queued,
                wake_due: AtomicBool::new(false),
            });
        }
        let n = threads.len();
        for _ in 0..n {
            if pinned_rx.recv_timeout(Duration::from_secs(5)).is_err() {
                tracing::warn!("a worker thread did not start within 5 s");
                break;
            }
        }
        Ok(Self {
            shared,
            threads,
            from_workers,
            channel_drops,
            multi_queue,
            published: None,
            links_dirty: true,
            offload: vec![datapath::OffloadCounters::default(); n],
            receive_load: vec![0; n + 1],
            tcp_load: vec![0; n + 1],
            tcp_held: HashMap::new(),
            queue_zero_on_thread,
            cpu_local,
            ports: Default::default(),
        })
    }
}

/// `CONNECTOPUS_TEST_FAIL_WORKER=<index>:<packets>[,…]` (tests only).
fn fault_from_env() -> Vec<(usize, u64)> {
    let value = std::env::var(FAIL_WORKER_ENV).unwrap_or_default();
    value
        .split(',')
        .filter_map(|fault| {
            let (index, packets) = fault.split_once(':')?;
            Some((index.trim().parse().ok()?, packets.trim().parse().ok()?))
        })
        .collect()
}
