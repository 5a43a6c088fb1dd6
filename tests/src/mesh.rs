//! Running real `connectopus` nodes on a [`Topology`]: writing the mesh config, starting and
//! stopping node processes, reading their `status --json`, and waiting for convergence.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::process::{ChildGuard, run_ok, run_with_timeout};
use crate::tools::{CertPair, Pki, San};
use crate::topology::Topology;
use crate::wait::wait_until;
use crate::workspace_binary;

/// How a link between two nodes is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// DTLS with a pre-shared key (from a file).
    DtlsPsk,
    /// DTLS with certificates, both sides verified against the test CA.
    DtlsCert,
    /// Plain TCP.
    Tcp,
    /// TCP with TLS 1.3, both sides verified against the test CA.
    TcpTls,
    /// Plaintext IPv6-in-UDP (`udp-dialer`/`udp-listener`).
    Udp,
}

/// One mesh link: `listener` listens on its underlay address facing `dialer`.
#[derive(Debug, Clone)]
pub struct MeshLink {
    /// The node that listens.
    pub listener: String,
    /// The node that dials.
    pub dialer: String,
    /// Transport.
    pub kind: LinkKind,
    /// Cost both ends advertise.
    pub cost: f64,
    /// MTU override for both ends.
    pub mtu: Option<u16>,
    /// Further `key: value` lines of the listener's backend.
    pub listener_keys: Vec<(String, String)>,
}

impl MeshLink {
    /// A link of cost 1 with the default MTU.
    pub fn new(listener: &str, dialer: &str, kind: LinkKind) -> Self {
        Self {
            listener: listener.to_owned(),
            dialer: dialer.to_owned(),
            kind,
            cost: 1.0,
            mtu: None,
            listener_keys: Vec::new(),
        }
    }

    /// Adds a `key: value` line to the listener's backend (a YAML scalar, as written).
    pub fn listener_key(mut self, key: &str, value: &str) -> Self {
        self.listener_keys.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets the cost.
    pub fn cost(mut self, cost: f64) -> Self {
        self.cost = cost;
        self
    }

    /// Sets the MTU.
    pub fn mtu(mut self, mtu: u16) -> Self {
        self.mtu = Some(mtu);
        self
    }
}

/// A mesh of real node processes on a topology.
#[derive(Debug)]
pub struct Mesh<'t> {
    topo: &'t Topology,
    config: PathBuf,
    identities: bool,
    admin_key: PathBuf,
    nodes: Vec<String>,
    processes: BTreeMap<String, ChildGuard>,
    env: Vec<(String, String)>,
    log_level: String,
    extra_args: BTreeMap<String, Vec<String>>,
    common_args: Vec<String>,
}

/// Returns the mesh address of the `i`th node (counting from 0): `fd00:cafe::<i+1>`.
pub fn mesh_address(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xcafe, 0, 0, 0, 0, 0, i as u16 + 1)
}

impl<'t> Mesh<'t> {
    /// Writes the mesh config for `links` (every node of the topology is a mesh node) and
    /// the secrets it references into the topology's test directory.
    ///
    /// # Errors
    /// The certificates or files cannot be made.
    pub fn configure(topo: &'t Topology, links: &[MeshLink]) -> Result<Self> {
        Self::configure_with(topo, links, &[])
    }

    /// Like [`Mesh::configure`], with extra YAML lines for some nodes (indented as keys of the
    /// node, e.g. `"    tun_devs:\n      host: {device: cxh, address: fd00:cafe::1:2}\n"`).
    ///
    /// # Errors
    /// The certificates or files cannot be made.
    pub fn configure_with(
        topo: &'t Topology,
        links: &[MeshLink],
        extra: &[(&str, &str)],
    ) -> Result<Self> {
        Self::configure_full(topo, links, extra, false)
    }

    /// Like [`Mesh::configure_with`], and gives every node a node key (made with
    /// `ssh-keygen -t ed25519`, in `<node>.key`) pinned as its `identity`, so the nodes prove
    /// who they are at every hello and sign their updates.
    ///
    /// # Errors
    /// The keys, certificates or files cannot be made.
    pub fn configure_with_identities(
        topo: &'t Topology,
        links: &[MeshLink],
        extra: &[(&str, &str)],
    ) -> Result<Self> {
        Self::configure_full(topo, links, extra, true)
    }

    fn configure_full(
        topo: &'t Topology,
        links: &[MeshLink],
        extra: &[(&str, &str)],
        identities: bool,
    ) -> Result<Self> {
        let dir = topo.dir();
        let nodes: Vec<String> = topo.nodes().map(str::to_owned).collect();
        let psk = dir.join("link.psk");
        write_secret(&psk, b"correct horse battery staple")?;
        let needs_pki = links
            .iter()
            .any(|l| matches!(l.kind, LinkKind::DtlsCert | LinkKind::TcpTls));
        let pki = if needs_pki {
            Some(Pki::new(dir)?)
        } else {
            None
        };
        let mut backends: BTreeMap<String, String> = BTreeMap::new();
        for (k, link) in links.iter().enumerate() {
            let port = 4000 + k as u16;
            let listen_ip = topo.link_addr(&link.listener, &link.dialer);
            let mtu = link
                .mtu
                .map(|m| format!("        mtu: {m}\n"))
                .unwrap_or_default();
            let cost = format!("        cost: {}\n", link.cost);
            let (listener_extra, dialer_extra, transport) = match link.kind {
                LinkKind::DtlsPsk => (
                    format!("        psk_file: {}\n", psk.display()),
                    format!("        psk_file: {}\n", psk.display()),
                    "dtls",
                ),
                LinkKind::Tcp => (String::new(), String::new(), "tcp"),
                LinkKind::Udp => (String::new(), String::new(), "udp"),
                LinkKind::DtlsCert | LinkKind::TcpTls => {
                    let Some(pki) = &pki else {
                        bail!("no pki");
                    };
                    let server = pki.issue(
                        &format!("{}-l{k}", link.listener),
                        &[San::Ip(listen_ip.into())],
                    )?;
                    let client = pki.issue(
                        &format!("{}-d{k}", link.dialer),
                        &[San::Dns(link.dialer.clone())],
                    )?;
                    let tls = if link.kind == LinkKind::TcpTls {
                        "        tls: true\n"
                    } else {
                        ""
                    };
                    (
                        cert_listener(tls, &server, pki),
                        cert_dialer(tls, &client, pki),
                        if link.kind == LinkKind::TcpTls {
                            "tcp"
                        } else {
                            "dtls"
                        },
                    )
                }
            };
            let l = backends.entry(link.listener.clone()).or_default();
            let _ = write!(
                l,
                "      l{k}:\n        type: {transport}-listener\n        port: {port}\n        listen_ip: \"{listen_ip}\"\n{cost}{mtu}{listener_extra}"
            );
            for (key, value) in &link.listener_keys {
                let _ = writeln!(l, "        {key}: {value}");
            }
            let d = backends.entry(link.dialer.clone()).or_default();
            let _ = write!(
                d,
                "      d{k}:\n        type: {transport}-dialer\n        peer: \"[{listen_ip}]:{port}\"\n{cost}{mtu}{dialer_extra}"
            );
        }
        let admin_key = dir.join("admin_key");
        let admin_pub = ssh_keygen(&admin_key, "mesh-admin")?;
        let mut yaml = format!(
            "global:\n  domain: connectopus.test\n  subnet: fd00:cafe::/64\n  version: 1\n  authorized_keys:\n    - \"{}\"\n  timers: {{keepalive_idle: 3s, dead_interval: 7s}}\nnodes:\n",
            admin_pub
        );
        for (i, name) in nodes.iter().enumerate() {
            let _ = writeln!(yaml, "  {name}:\n    address: \"{}\"", mesh_address(i));
            if identities {
                let public = ssh_keygen(&dir.join(format!("{name}.key")), name)?;
                let _ = writeln!(yaml, "    identity: \"{public}\"");
            }
            for (node, lines) in extra {
                if node == name {
                    yaml.push_str(lines);
                }
            }
            if let Some(b) = backends.get(name) {
                let _ = write!(yaml, "    backends:\n{b}");
            }
        }
        let config = dir.join("mesh.yml");
        std::fs::write(&config, yaml)?;
        // A node keeps its own copy of the config (made at its first start, see `start`) and
        // the highest version it applied. A new mesh on a topology that ran another one (the
        // benchmark starts every subject on the same namespaces) must not inherit them: the
        // nodes would run the previous mesh's links.
        for name in &nodes {
            for suffix in ["yml", "yml.sig", "yml.version", "yml.epoch"] {
                match std::fs::remove_file(dir.join(format!("{name}.{suffix}"))) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
        }
        let mesh = Self {
            topo,
            config,
            identities,
            admin_key,
            nodes,
            processes: BTreeMap::new(),
            env: Vec::new(),
            log_level: "debug".to_owned(),
            extra_args: BTreeMap::new(),
            common_args: Vec::new(),
        };
        mesh.sign()?;
        Ok(mesh)
    }

    /// Signs the config file with the mesh's admin key (`ssh-keygen -Y sign -n connectopus`),
    /// writing `mesh.yml.sig`; call it again after editing the file.
    ///
    /// # Errors
    /// ssh-keygen failed.
    pub fn sign(&self) -> Result<()> {
        ssh_sign(&self.config, &self.admin_key, "connectopus")
    }

    /// Returns the private key (OpenSSH, unencrypted) that signs this mesh's config.
    pub fn admin_key(&self) -> &PathBuf {
        &self.admin_key
    }

    /// Sets an environment variable for nodes started from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Adds command-line arguments for nodes started from now on (after the ones the mesh
    /// passes), e.g. `["--log-format", "json"]`.
    pub fn add_args_all(&mut self, args: &[&str]) {
        self.common_args
            .extend(args.iter().map(|a| (*a).to_owned()));
    }

    /// Sets the `--log-level` of nodes started from now on (default `debug`, which tests
    /// want; benchmarks use `info` so logging stays off the data path).
    pub fn set_log_level(&mut self, level: &str) {
        level.clone_into(&mut self.log_level);
    }

    /// Adds command-line arguments for `node` when it starts from now on (after the ones
    /// the mesh gives every node).
    pub fn add_args(&mut self, node: &str, args: &[&str]) {
        self.extra_args
            .entry(node.to_owned())
            .or_default()
            .extend(args.iter().map(|a| (*a).to_owned()));
    }

    /// Returns the config file.
    pub fn config_path(&self) -> &PathBuf {
        &self.config
    }

    /// Returns the mesh address of `node`.
    pub fn address(&self, node: &str) -> Ipv6Addr {
        let i = self
            .nodes
            .iter()
            .position(|n| n == node)
            .unwrap_or(usize::MAX);
        mesh_address(i)
    }

    /// Returns the configuration file `node` runs (its own copy of the mesh config, made at
    /// its first start).
    pub fn node_config_path(&self, node: &str) -> PathBuf {
        self.topo.dir().join(format!("{node}.yml"))
    }

    /// Returns the version of the configuration `node` runs (`status --json`).
    ///
    /// # Errors
    /// The node does not answer.
    pub fn config_version(&self, node: &str) -> Result<u64> {
        let status = self.status(node)?;
        status["config_version"]
            .as_u64()
            .context("status has no config_version")
    }

    /// Runs `connectopus config set` against `node` with `file` (signed as `file.sig`) and
    /// returns whether the node accepted it, with its output.
    ///
    /// # Errors
    /// The command could not run.
    pub fn config_set(&self, node: &str, file: &std::path::Path) -> Result<(bool, String)> {
        let binary = workspace_binary("connectopus")?;
        let mut command = Command::new(binary);
        command
            .args(["config", "set", "--socket"])
            .arg(self.socket(node))
            .arg(file);
        let output = run_with_timeout(command, Duration::from_secs(60))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output.status.success(), text))
    }

    /// Signs and gives `node` version 2 of the mesh configuration with one more authorized
    /// key: a change to `global`, after which every node restarts its mesh instance (it
    /// re-executes itself, same pid, confined). Returns once every node runs version 2 with an
    /// established link, `node` has a new epoch, and every node routes to every other.
    ///
    /// # Errors
    /// The configuration has no `version: 1` or `authorized_keys` line, ssh-keygen or the
    /// change failed, or the nodes did not come back within 30 s.
    pub fn restart_instances_with_a_global_change(&self, node: &str) -> Result<()> {
        let dir = self.topo.dir();
        let epoch_before = self.status(node)?["epoch"].as_u64();
        let extra = crate::ssh_keygen(&dir.join("extra-admin"), "extra-admin")?;
        let original = std::fs::read_to_string(&self.config)?;
        let text = original
            .replace("  version: 1\n", "  version: 2\n")
            .replace(
                "  authorized_keys:\n",
                &format!("  authorized_keys:\n    - \"{extra}\"\n"),
            );
        anyhow::ensure!(
            text != original,
            "the test config has no version or authorized_keys line"
        );
        let v2 = dir.join("v2.yml");
        std::fs::write(&v2, text)?;
        ssh_sign(&v2, &self.admin_key, "connectopus")?;
        let (ok, out) = self.config_set(node, &v2)?;
        anyhow::ensure!(ok, "config set: {out}");
        crate::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            self.nodes.iter().all(|n| {
                self.status(n).is_ok_and(|s| {
                    s["config_version"] == 2
                        && s["links"]
                            .as_array()
                            .is_some_and(|l| l.iter().any(|l| l["state"] == "established"))
                })
            }) && self
                .status(node)
                .is_ok_and(|s| s["epoch"].as_u64() != epoch_before)
        })
        .context("the nodes did not come back at version 2 with an established link")?;
        // And every node routes to every other again.
        self.wait_converged(Duration::from_secs(20))
    }

    /// Returns the control socket path of `node`.
    pub fn socket(&self, node: &str) -> PathBuf {
        self.topo.dir().join(format!("{node}.sock"))
    }

    /// Starts every node.
    ///
    /// # Errors
    /// A node could not be spawned.
    pub fn start_all(&mut self) -> Result<()> {
        for node in self.nodes.clone() {
            self.start(&node)?;
        }
        Ok(())
    }

    /// Starts (or restarts) one node.
    ///
    /// # Errors
    /// The binary is missing or the process could not be spawned.
    pub fn start(&mut self, node: &str) -> Result<()> {
        self.processes.remove(node);
        let binary = workspace_binary("connectopus")?;
        let socket = self.socket(node);
        // Each node keeps its own copy: it writes newer configurations it accepts there.
        let own = self.node_config_path(node);
        if !own.exists() {
            std::fs::copy(&self.config, &own)?;
            std::fs::copy(
                format!("{}.sig", self.config.display()),
                format!("{}.sig", own.display()),
            )?;
        }
        let config = own.display().to_string();
        let socket_arg = socket.display().to_string();
        let ns = self.topo.ns(node);
        let mut command = ns.command(
            &binary.display().to_string(),
            &[
                "node",
                "--config",
                config.as_str(),
                "--id",
                node,
                "--control-socket",
                socket_arg.as_str(),
                "--log-level",
                self.log_level.as_str(),
            ],
        )?;
        if self.identities {
            command
                .arg("--identity-file")
                .arg(self.topo.dir().join(format!("{node}.key")));
        }
        command.args(&self.common_args);
        command.args(self.extra_args.get(node).into_iter().flatten());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let child = ns.spawn_with(command, node, crate::StdinMode::Null)?;
        self.processes.insert(node.to_owned(), child);
        Ok(())
    }

    /// Returns a node's process.
    pub fn process(&self, node: &str) -> Option<&ChildGuard> {
        self.processes.get(node)
    }

    /// Kills a node with SIGKILL (no goodbyes).
    ///
    /// # Errors
    /// The node is not running.
    pub fn kill(&mut self, node: &str) -> Result<()> {
        let child = self
            .processes
            .remove(node)
            .with_context(|| format!("{node} is not running"))?;
        child.kill_hard()?;
        Ok(())
    }

    /// Stops a node with SIGTERM and returns its exit status.
    ///
    /// # Errors
    /// The node is not running or did not stop.
    pub fn stop(&mut self, node: &str) -> Result<std::process::ExitStatus> {
        let child = self
            .processes
            .remove(node)
            .with_context(|| format!("{node} is not running"))?;
        child.terminate()
    }

    /// Returns `connectopus status --json` of a node.
    ///
    /// # Errors
    /// The node does not answer.
    pub fn status(&self, node: &str) -> Result<Value> {
        let binary = workspace_binary("connectopus")?;
        let mut command = Command::new(binary);
        command
            .args(["status", "--json", "--socket"])
            .arg(self.socket(node));
        let output = run_with_timeout(command, Duration::from_secs(10))?;
        if !output.status.success() {
            bail!(
                "status of {node} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        serde_json::from_slice(&output.stdout).context("parsing status --json")
    }

    /// Returns `connectopus status` of a node as text (what an operator reads).
    ///
    /// # Errors
    /// The node does not answer.
    pub fn status_text(&self, node: &str) -> Result<String> {
        let mut command = Command::new(workspace_binary("connectopus")?);
        command.args(["status", "--socket"]).arg(self.socket(node));
        run_ok(command, Duration::from_secs(10))
    }

    /// Returns the first hop's name in `node`'s route to `dst`'s address, or `None`.
    ///
    /// # Errors
    /// The node does not answer.
    pub fn next_hop(&self, node: &str, dst: &str) -> Result<Option<String>> {
        let status = self.status(node)?;
        let prefix = format!("{}/128", self.address(dst));
        Ok(status["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["prefix"] == prefix.as_str())
            .and_then(|r| r["next_hop"].as_str().map(str::to_owned)))
    }

    /// Waits until every running node has a route to every other running node.
    ///
    /// # Errors
    /// Not within `timeout`; the error shows every node's routes.
    pub fn wait_converged(&self, timeout: Duration) -> Result<()> {
        let running: Vec<&String> = self.processes.keys().collect();
        let result = wait_until(timeout, Duration::from_millis(100), || {
            running.iter().all(|node| {
                let Ok(status) = self.status(node) else {
                    return false;
                };
                running.iter().all(|other| {
                    let prefix = format!("{}/128", self.address(other));
                    status["routes"]
                        .as_array()
                        .is_some_and(|routes| routes.iter().any(|r| r["prefix"] == prefix.as_str()))
                })
            })
        });
        if result.is_err() {
            let mut report = String::new();
            for node in &running {
                let _ = writeln!(
                    report,
                    "{node}: {:?}",
                    self.status(node).map(|s| s["routes"].clone())
                );
            }
            bail!("mesh did not converge within {timeout:?}:\n{report}");
        }
        Ok(())
    }
}

/// Writes a secret file (a PSK, a private key) as the node demands: mode 0600, owned by the
/// caller. An old file is replaced.
///
/// # Errors
/// The file cannot be written.
pub fn write_secret(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // The mode given to open is filtered by the umask; make sure it is exactly 0600.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Makes an ed25519 key without a passphrase with `ssh-keygen` at `path` (and `path.pub`) and
/// returns its public line.
///
/// # Errors
/// ssh-keygen failed.
pub fn ssh_keygen(path: &std::path::Path, comment: &str) -> Result<String> {
    let _ = std::fs::remove_file(path);
    let mut command = Command::new(crate::tool("ssh-keygen")?);
    command
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path);
    run_ok(command, Duration::from_secs(20))?;
    let public = std::fs::read_to_string(format!("{}.pub", path.display()))?;
    Ok(public.trim().to_owned())
}

/// Signs `path` with the private key `key` in `namespace` (`ssh-keygen -Y sign`), writing
/// `path.sig` (an old one is replaced).
///
/// # Errors
/// ssh-keygen failed.
pub fn ssh_sign(path: &std::path::Path, key: &std::path::Path, namespace: &str) -> Result<()> {
    let _ = std::fs::remove_file(format!("{}.sig", path.display()));
    let mut command = Command::new(crate::tool("ssh-keygen")?);
    command
        .args(["-Y", "sign", "-n", namespace, "-f"])
        .arg(key)
        .arg(path);
    run_ok(command, Duration::from_secs(20))?;
    Ok(())
}

fn cert_listener(tls: &str, server: &CertPair, pki: &Pki) -> String {
    format!(
        "{tls}        server_cert_file: {}\n        server_key_file: {}\n        client_ca_file: {}\n        require_client_cert: true\n",
        server.cert.display(),
        server.key.display(),
        pki.ca_cert().display()
    )
}

fn cert_dialer(tls: &str, client: &CertPair, pki: &Pki) -> String {
    format!(
        "{tls}        root_ca_file: {}\n        client_cert_file: {}\n        client_key_file: {}\n",
        pki.ca_cert().display(),
        client.cert.display(),
        client.key.display()
    )
}
