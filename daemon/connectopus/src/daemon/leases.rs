//! The daemon's side of the dynamic mesh's ephemeral nodes (`docs/dynamic-mesh.md` §1.7,
//! §1.8): what an issuer is configured with and how its table starts, writing the table to
//! `<config>.leases` ([`Command::PersistLeases`]), the ephemeral node's own start-up
//! (`--ephemeral NAME`: its node key, its synthetic config entry) and putting its granted
//! address on the TUN device ([`Command::SetAddress`]). The core decides; this only does I/O.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use connectopus_core::identity::{NodeKey, hex};
use connectopus_core::lease_issuer::{IssuerConfig, JoinPolicy, NamePattern};
use connectopus_core::lease_table::{LeaseTableConfig, PersistedLeases};
use connectopus_core::node::{IssuerSetup, IssuerStart};
use connectopus_wire::Prefix;

use super::lease_file::decode;
use super::lease_writer::{LeaseWriter, WriterReport};
use super::*;

/// What `connectopus node --ephemeral NAME` adds to a node's options.
#[derive(Debug, Clone)]
pub struct EphemeralOptions {
    /// The node key file (made on first run, 0600; keeping it keeps the address).
    pub key_file: PathBuf,
    /// A shared join key (OpenSSH ed25519 private key) to prove, when the node's own key is not
    /// listed in `global.ephemeral.identities`.
    pub join_key_file: Option<PathBuf>,
}

/// Returns `<config>.leases`, where an issuer keeps its table.
pub(super) fn leases_path(config_path: &Path) -> PathBuf {
    let mut p = config_path.as_os_str().to_owned();
    p.push(".leases");
    PathBuf::from(p)
}

fn epoch_path(config_path: &Path) -> PathBuf {
    let mut p = config_path.as_os_str().to_owned();
    p.push(".epoch");
    PathBuf::from(p)
}

/// Names no ephemeral node may take: every static node's and every attachment's.
pub(super) fn reserved_names(config: &MeshConfig) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    // The synthetic entry of an ephemeral node (address `::`) reserves nothing.
    for (name, node) in config
        .nodes
        .iter()
        .filter(|(_, n)| !n.address.is_unspecified())
    {
        names.insert(name.clone());
        names.extend(node.tun_devs.keys().cloned());
        names.extend(node.namespaces.keys().cloned());
    }
    names
}

/// Returns the node's pool as a core prefix, when it has `issue`.
pub(super) fn issue_pool(node: &connectopus_config::NodeConfig) -> Option<Prefix> {
    let issue = node.issue.as_ref()?;
    Prefix::new_truncating(issue.prefix.addr(), issue.prefix.prefix_len()).ok()
}

/// How the issuer's table starts, decided before the routing epoch is recorded (§1.7):
/// `<config>.leases` that parses is `Persisted`; a missing file on a node that never ran
/// with this configuration path (no `<config>.epoch` either) is `Fresh`; anything else
/// (missing after a run, unreadable, corrupt, another pool) is `Lost`, and the pool is
/// quarantined for `lease + grace`. So deleting the table of a node that ran never lets it
/// give out an address a live holder may still use.
pub(super) fn issuer_start(config_path: &Path, pool: Prefix) -> IssuerStart {
    let path = leases_path(config_path);
    match std::fs::read(&path) {
        Ok(bytes) => match decode(&bytes) {
            Ok(table) if table.pool == pool => {
                tracing::info!(path = %path.display(), leases = table.leases.len(), "lease table loaded");
                IssuerStart::Persisted(table)
            }
            Ok(table) => {
                tracing::warn!(path = %path.display(), file_pool = %table.pool, %pool,
                    "lease table is for another pool: quarantining the pool for lease + grace");
                IssuerStart::Lost
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error,
                    "lease table unreadable: quarantining the pool for lease + grace");
                IssuerStart::Lost
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !epoch_path(config_path).exists() => {
            tracing::info!(path = %path.display(), "first start: an empty lease table");
            IssuerStart::Fresh
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error,
                "lease table missing after an earlier run: quarantining the pool for lease + grace");
            IssuerStart::Lost
        }
    }
}

/// Builds `NodeConfig.issuer` for node `id`, when its entry has `issue` (call before
/// `trust::next_epoch`, which records `<config>.epoch`).
pub(super) fn issuer_setup(
    config: &MeshConfig,
    id: &str,
    config_path: &Path,
    epoch: u64,
) -> Option<IssuerSetup> {
    let node = config.nodes.get(id)?;
    let issue = node.issue.as_ref()?;
    let pool = issue_pool(node)?;
    let ephemeral = config.global.ephemeral.as_ref();
    let lease = issue.lease(ephemeral);
    let grace = config.global.timers.dead_interval.get() + lease / 1000;
    let mut policy = JoinPolicy::default();
    if issue.serves_joins(ephemeral)
        && let Some(e) = ephemeral
    {
        policy.identities = e.identities.iter().filter_map(trust::ed25519_key).collect();
        policy.join_keys = e.join_keys.iter().filter_map(trust::ed25519_key).collect();
        policy.names = e
            .names
            .iter()
            .chain(&issue.names)
            .filter_map(|p| NamePattern::new(p))
            .collect();
    }
    policy.reserved_names = reserved_names(config);
    let start = issuer_start(config_path, pool);
    Some(IssuerSetup {
        config: IssuerConfig {
            address: node.address,
            table: LeaseTableConfig { pool, lease, grace },
            policy,
            epoch_floor: epoch,
        },
        start,
        unix_ms: unix_ms(),
    })
}

/// The wall clock in Unix milliseconds.
pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The config entry an ephemeral node runs with: no address of its own (`::` until a grant),
/// `global.ephemeral.backends` as its backends, defaults for the rest.
///
/// # Errors
/// No `global.ephemeral`, no backends there, or the name belongs to a static node.
pub(crate) fn ephemeral_entry(
    config: &MeshConfig,
    name: &str,
) -> Result<connectopus_config::NodeConfig> {
    let Some(ephemeral) = config.global.ephemeral.as_ref() else {
        anyhow::bail!(
            "--ephemeral needs a `global.ephemeral` section in the configuration (without it \
             nobody may join)"
        );
    };
    if reserved_names(config).contains(name) {
        anyhow::bail!(
            "--ephemeral {name}: `{name}` is a static node's or attachment's name in this \
             configuration; ephemeral nodes take names no static node holds"
        );
    }
    if ephemeral.backends.is_empty() {
        anyhow::bail!("--ephemeral needs `global.ephemeral.backends` to dial an issuer");
    }
    let mut entry: connectopus_config::NodeConfig =
        serde_json::from_value(serde_json::json!({ "address": "::" }))
            .context("building the ephemeral node's entry")?;
    entry.backends = ephemeral.backends.clone();
    Ok(entry)
}

/// Loads the ephemeral node's key, making it (0600) when the file is missing.
pub(super) fn ephemeral_key(options: &EphemeralOptions, name: &str) -> Result<NodeKey> {
    if !options.key_file.exists() {
        let line = crate::identity::create(&options.key_file, name)?;
        tracing::info!(path = %options.key_file.display(), public = %line, "ephemeral node key created");
    }
    load_seed(&options.key_file)
}

/// Loads an OpenSSH ed25519 private key as a core key.
pub(super) fn load_seed(path: &Path) -> Result<NodeKey> {
    let key = crate::identity::load(path)?;
    let seed = crate::identity::seed(&key)?;
    Ok(NodeKey::from_seed(&seed))
}

/// The driver's lease state: the newest table waiting to be handed to the writer thread, and
/// the ephemeral node's address as the TUN device carries it.
#[derive(Debug, Default)]
pub(super) struct LeaseDriver {
    /// The newest `PersistLeases` of this turn (older ones are superseded).
    pending: Option<(u64, Arc<PersistedLeases>)>,
    /// Where the table goes.
    path: Option<PathBuf>,
    /// The `lease-writer` thread, started with the first table.
    writer: Option<LeaseWriter>,
    /// Tables written, and failed writes.
    pub(super) written: u64,
    pub(super) write_errors: u64,
    /// The ephemeral node's address on the TUN device and when its lease ends (core time).
    pub(super) address: Option<(Ipv6Addr, Option<Time>)>,
}

impl LeaseDriver {
    pub(super) fn new(config_path: &Path) -> Self {
        Self {
            path: Some(leases_path(config_path)),
            ..Self::default()
        }
    }

    /// Keeps the newest table of the turn.
    pub(super) fn queue(&mut self, generation: u64, table: Arc<PersistedLeases>) {
        if self.pending.as_ref().is_none_or(|(g, _)| *g < generation) {
            self.pending = Some((generation, table));
        }
    }

    /// Tables handed to the writer thread.
    pub(super) fn submitted(&self) -> u64 {
        self.writer.as_ref().map_or(0, |w| w.submitted)
    }
}

impl Daemon {
    /// Hands the newest lease table of the turn to the `lease-writer` thread (never waits for
    /// the disk); the core answers the grants and renewals it records when the thread reports
    /// it durable ([`Daemon::on_lease_writer`]).
    pub(super) fn persist_leases(&mut self) {
        let Some((generation, table)) = self.leases.pending.take() else {
            return;
        };
        let Some(path) = self.leases.path.clone() else {
            return;
        };
        if self.leases.writer.is_none() {
            let to_loop = self.to_loop.clone();
            match LeaseWriter::spawn(
                super::lease_file::encode,
                LeaseWriter::file_writer(path.clone()),
                Box::new(move |report| to_loop.send(LoopMessage::LeaseWriter(report))),
            ) {
                Ok(writer) => self.leases.writer = Some(writer),
                Err(error) => {
                    // The grants stay unanswered (joiners retry) and the table stays pending:
                    // the core does not hand out the same generation again, so the next turn
                    // tries to start the writer with it.
                    self.leases.write_errors += 1;
                    tracing::warn!(path = %path.display(), error = %format!("{error:#}"), generation, "cannot write the lease table");
                    self.leases.pending = Some((generation, table));
                    return;
                }
            }
        }
        if let Some(writer) = self.leases.writer.as_mut() {
            writer.submit(generation, table);
        }
    }

    /// The writer thread wrote a table (the core answers what it records), or failed to (it
    /// tries again by itself).
    pub(super) fn on_lease_writer(&mut self, report: WriterReport) {
        match report {
            WriterReport::Persisted(generation) => {
                self.leases.written += 1;
                let now = self.now();
                self.node.leases_persisted(now, generation);
                self.drain_node();
            }
            WriterReport::Failed {
                generation,
                error,
                retry_in,
            } => {
                self.leases.write_errors += 1;
                // Retries of one failure double their wait: log the first few, then seldom.
                if self.leases.write_errors <= 3 || self.leases.write_errors.is_power_of_two() {
                    let path = self.leases.path.as_deref().map(Path::display);
                    tracing::warn!(path = ?path.map(|p| p.to_string()), %error, generation, retry_in_ms = retry_in.as_millis() as u64, errors = self.leases.write_errors, "cannot write the lease table; trying again");
                }
            }
        }
    }

    /// Puts the granted address on the node's TUN device (with the subnet's prefix route) and
    /// starts DNS on it, or takes both away on `None`.
    pub(super) fn set_address(&mut self, address: Option<Ipv6Addr>, expires: Option<Time>) {
        let Some(tun) = self.tuns.indexed().next().map(|(_, t)| t.name().to_owned()) else {
            tracing::warn!("no tun device for the leased address");
            return;
        };
        let prefix_len = self.config.global.subnet.prefix_len();
        let old = self.leases.address.take();
        if let Some((old, _)) = old
            && Some(old) != address
        {
            self.dns = dns::Dns::Off("no address (lease lost)".to_owned());
            match connectopus_netlink::Netlink::open()
                .and_then(|mut nl| nl.delete_address(tun.as_str(), old.into(), prefix_len))
            {
                Ok(()) => tracing::info!(%old, %tun, "leased address removed"),
                Err(error) => {
                    tracing::warn!(%old, %tun, %error, "cannot remove the leased address")
                }
            }
        }
        // Mirror addresses follow the node's address (`mesh_prefix`): φ(old) off, φ(new) on.
        let planes = self.node.mesh_prefixes().clone();
        self.apply_mesh_prefixes(&planes);
        let Some(address) = address else {
            return;
        };
        if old.is_none_or(|(a, _)| a != address) {
            let result = connectopus_netlink::Netlink::open().and_then(|mut nl| {
                nl.set_up(tun.as_str())?;
                nl.add_address(tun.as_str(), address.into(), prefix_len, true)
            });
            match result {
                Ok(()) => tracing::info!(%address, %tun, "leased address up"),
                Err(error) if error.is_exists() => {}
                Err(error) => {
                    tracing::warn!(%address, %tun, %error, "cannot add the leased address");
                }
            }
            self.dns = dns::Dns::start(&self.config, &self.id, address, Some(&tun));
            self.dns.update(&self.node, &self.config.global.subnet);
        }
        self.leases.address = Some((address, expires));
    }
}

impl Daemon {
    /// The lease part of `status`: an ephemeral node's holder state or an issuer's table.
    pub(super) fn lease_report(&self, now: Time) -> Option<control::LeaseReport> {
        use connectopus_core::lease_holder::HolderState;
        let mut report = control::LeaseReport {
            tables_written: self.leases.written,
            tables_submitted: self.leases.submitted(),
            table_write_errors: self.leases.write_errors,
            ..control::LeaseReport::default()
        };
        if let Some(table) = self.node.leases() {
            report.state = "issuing".to_owned();
            report.pool = Some(table.config().pool.to_string());
            report.leases = Some(table.leases().count() as u64);
            return Some(report);
        }
        let state = self.node.lease_state()?;
        let (name, cert, expires) = match state {
            HolderState::Unbound | HolderState::Requesting { .. } => ("joining", None, None),
            HolderState::Bound { cert, expires, .. } => ("bound", Some(cert), Some(*expires)),
            HolderState::Renewing { cert, expires, .. } => ("renewing", Some(cert), Some(*expires)),
        };
        report.state = name.to_owned();
        if let Some(cert) = cert {
            report.address = Some(cert.address.to_string());
            report.issuer = Some(cert.issuer.to_string());
        }
        report.expires_in_secs = expires.map(|e| e.saturating_since(now).as_secs_f64());
        Some(report)
    }
}

impl Daemon {
    /// Answers `{"cmd":"leases"}`: the issuer's active leases, or an error on other nodes.
    pub(super) fn lease_entries(&self) -> ControlReply {
        let Some(table) = self.node.leases() else {
            return ControlReply::Error("this node issues no leases (no `issue`)".to_owned());
        };
        let now = self.now();
        ControlReply::Leases(
            table
                .leases()
                .map(|l| control::LeaseEntry {
                    address: l.address.to_string(),
                    name: l.name.clone(),
                    key: hex(&l.key),
                    epoch: l.epoch,
                    renewal: l.renewal,
                    expires_in_secs: l.expires.saturating_since(now).as_secs_f64(),
                    container: l
                        .container
                        .as_ref()
                        .map(|c| format!("{}/{}/{}", c.network, c.container_id, c.ifname)),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::lease_file::{encode, test_table as table, write_atomically};
    use super::*;

    #[test]
    fn the_table_starts_fresh_only_on_a_first_start() {
        let dir = std::env::temp_dir().join(format!("cx-leases-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("mesh.yml");
        let pool = table().pool;
        let _ = std::fs::remove_file(leases_path(&config));
        let _ = std::fs::remove_file(epoch_path(&config));
        assert!(matches!(issuer_start(&config, pool), IssuerStart::Fresh));
        // The node ran before (its epoch file exists) but the table is gone: lost.
        std::fs::write(epoch_path(&config), "1\n").unwrap();
        assert!(matches!(issuer_start(&config, pool), IssuerStart::Lost));
        write_atomically(&leases_path(&config), &encode(&table()).unwrap()).unwrap();
        assert!(matches!(issuer_start(&config, pool), IssuerStart::Persisted(t) if t == table()));
        // Another pool's table, or garbage: lost.
        let other = Prefix::new("fd00:cafe:0:e2::".parse().unwrap(), 112).unwrap();
        assert!(matches!(issuer_start(&config, other), IssuerStart::Lost));
        std::fs::write(leases_path(&config), b"{\"version\": 1").unwrap();
        assert!(matches!(issuer_start(&config, pool), IssuerStart::Lost));
        let _ = std::fs::remove_dir_all(&dir);
    }
    #[test]
    fn a_restart_from_the_file_keeps_container_leases_whatever_the_clock() {
        use connectopus_core::lease_table::{ContainerKey, LeaseTable};
        let dir = std::env::temp_dir().join(format!("cx-leases-c-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("mesh.yml");
        let table_config = LeaseTableConfig {
            pool: table().pool,
            lease: Duration::from_secs(20),
            grace: Duration::from_secs(7),
        };
        let web = ContainerKey {
            network: "mesh".to_owned(),
            container_id: "0123456789abcdef".repeat(4),
            ifname: "eth0".to_owned(),
        };
        let at = |secs: u64| Time::from_duration(Duration::from_secs(secs));
        let mut t = LeaseTable::new(table_config, 1_796_556_438_859_683_087);
        let (lease, _) = t.attach_container(at(1), &web, "web", |_| false).unwrap();
        let written_unix_ms = 1_796_556_440_961;
        write_atomically(
            &leases_path(&config),
            &encode(&t.persisted(at(2), written_unix_ms)).unwrap(),
        )
        .unwrap();
        let IssuerStart::Persisted(p) = issuer_start(&config, table_config.pool) else {
            panic!("the table with a container's lease was not loaded");
        };
        // Started a month later, and with the clock a day behind the write: the container
        // keeps its address and name, and no amount of time expires it.
        let day_ms = 24 * 3600 * 1000;
        for unix_ms in [written_unix_ms + 30 * day_ms, written_unix_ms - day_ms] {
            let mut restored = LeaseTable::restore(table_config, Some(&p), 1, at(5), unix_ms);
            let kept = restored
                .container_lease(&web)
                .expect("container lease kept");
            assert_eq!((kept.address, kept.name.as_str()), (lease.address, "web"));
            assert!(restored.expire(at(5 + 365 * 24 * 3600)).is_empty());
            assert!(restored.container_lease(&web).is_some());
            // Written again by the restarted node, it still loads.
            let again = encode(&restored.persisted(at(6), unix_ms)).unwrap();
            assert_eq!(
                super::super::lease_file::decode(&again)
                    .unwrap()
                    .leases
                    .len(),
                1
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
