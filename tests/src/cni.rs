//! The CNI plugin's harness, shared by `tests/tests/cni.rs` (the plugin executed directly, as
//! a runtime would) and `tests/tests/cni_runtimes.rs` (real runtimes: libcni, podman,
//! containerd): running the plugin, a mesh whose nodes serve containers, the node's leases,
//! a busybox image and the `minicni` libcni driver.

use std::io::Write;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::{
    DigResult, LinkKind, Mesh, MeshLink, NetNs, TestDir, Topology, tool, wait_until,
    workspace_binary,
};

/// The pool node foo issues container addresses from.
pub const POOL_FOO: &str = "fd00:cafe::a:0/112";
/// The pool node bar issues container addresses from.
pub const POOL_BAR: &str = "fd00:cafe::b:0/112";
/// The mesh's DNS domain, under which containers are named.
pub const DOMAIN: &str = "connectopus.test";

/// Runs the plugin with exactly `env` (nothing inherited) and `stdin`; inside `ns` if given.
pub fn plugin(ns: Option<&NetNs>, env: &[(&str, &str)], stdin: &str) -> Result<Output> {
    let binary = workspace_binary("connectopus-cni")?;
    let mut command = match ns {
        Some(ns) => ns.command(&binary.display().to_string(), &[] as &[&str])?,
        None => Command::new(&binary),
    };
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("starting connectopus-cni")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

/// The error object of a failed run: its code and message.
pub fn error_of(out: &Output) -> Result<(u64, String)> {
    ensure!(
        out.status.code() == Some(1),
        "expected exit 1, got {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("error output: {}", String::from_utf8_lossy(&out.stdout)))?;
    ensure!(v["cniVersion"].is_string(), "{v}");
    Ok((
        v["code"].as_u64().context("no code")?,
        v["msg"].as_str().context("no msg")?.to_owned(),
    ))
}

/// The path a runtime passes as `CNI_NETNS` for a namespace of the harness.
pub fn netns_path(ns: &NetNs) -> String {
    format!("/run/netns/{}", ns.name())
}

/// Whether `address` lies in `pool` (`addr/len`) and is not its base.
pub fn in_pool(address: Ipv6Addr, pool: &str) -> bool {
    let Some((base, len)) = pool.split_once('/') else {
        return false;
    };
    let (Ok(base), Ok(len)) = (base.parse::<Ipv6Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(address) & mask == u128::from(base) & mask && address != base
}

/// A mesh foo—bar whose nodes issue from [`POOL_FOO`] and [`POOL_BAR`], both running.
pub fn serving_mesh(topo: &Topology) -> Result<Mesh<'_>> {
    let foo_issue = format!("    issue: {{prefix: \"{POOL_FOO}\"}}\n");
    let bar_issue = format!("    issue: {{prefix: \"{POOL_BAR}\"}}\n");
    let mut mesh = Mesh::configure_with(
        topo,
        &[MeshLink::new("bar", "foo", LinkKind::Tcp)],
        &[("foo", foo_issue.as_str()), ("bar", bar_issue.as_str())],
    )?;
    mesh.start_all()?;
    for node in ["foo", "bar"] {
        let socket = mesh.socket(node);
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        })
        .with_context(|| format!("{node}'s control socket"))?;
    }
    Ok(mesh)
}

/// Sends one control request line to a node's socket and returns its JSON answer.
pub fn control(socket: &Path, request: &str) -> Result<Value> {
    use std::io::BufRead;
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    (&stream).write_all(format!("{request}\n").as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream).read_line(&mut answer)?;
    Ok(serde_json::from_str(&answer)?)
}

/// The node's container leases, as `{"cmd":"leases"}` lists them: (container key, address).
pub fn container_leases(socket: &Path) -> Result<Vec<(String, Ipv6Addr)>> {
    let listed = control(socket, r#"{"cmd":"leases"}"#)?;
    let leases = listed["leases"]
        .as_array()
        .with_context(|| format!("leases: {listed}"))?;
    Ok(leases
        .iter()
        .filter_map(|l| {
            Some((
                l["container"].as_str()?.to_owned(),
                l["address"].as_str()?.parse().ok()?,
            ))
        })
        .collect())
}

/// One container runtime's view for direct exec: the node's namespace and socket.
#[derive(Debug)]
pub struct Runtime<'a> {
    pub node: &'a NetNs,
    pub socket: String,
}

impl Runtime<'_> {
    /// The network configuration of network `mesh` in `version`, plus `extra` keys.
    pub fn conf(&self, version: &str, extra: &[(&str, Value)]) -> String {
        let mut conf = serde_json::json!({"cniVersion": version, "name": "mesh",
            "type": "connectopus", "socket": self.socket});
        for (k, v) in extra {
            conf[*k] = v.clone();
        }
        conf.to_string()
    }

    /// Runs `verb` for container `id` (interface eth0) in `netns` with `stdin`.
    pub fn run(
        &self,
        verb: &str,
        id: &str,
        netns: Option<&str>,
        args: &str,
        stdin: &str,
    ) -> Result<Output> {
        let mut env = vec![
            ("CNI_COMMAND", verb),
            ("CNI_CONTAINERID", id),
            ("CNI_IFNAME", "eth0"),
        ];
        if let Some(path) = netns {
            env.push(("CNI_NETNS", path));
        }
        if !args.is_empty() {
            env.push(("CNI_ARGS", args));
        }
        plugin(Some(self.node), &env, stdin)
    }

    /// ADD: the result, which must be a success.
    pub fn add(&self, version: &str, id: &str, netns: &str, args: &str) -> Result<Value> {
        let out = self.run("ADD", id, Some(netns), args, &self.conf(version, &[]))?;
        ensure!(
            out.status.success(),
            "ADD {id}: {:?} {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// DEL, which must succeed with no output.
    pub fn del(&self, id: &str, netns: Option<&str>) -> Result<()> {
        let out = self.run("DEL", id, netns, "", &self.conf("1.0.0", &[]))?;
        ensure!(
            out.status.success() && out.stdout.is_empty(),
            "DEL {id}: {out:?}"
        );
        Ok(())
    }
}

/// The container address in an ADD result (a /128).
pub fn result_address(result: &Value) -> Result<Ipv6Addr> {
    let ip = result["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("no address in {result}"))?;
    let (addr, len) = ip.split_once('/').context("no length")?;
    ensure!(len == "128", "{ip}");
    Ok(addr.parse()?)
}

/// The AAAA records of a `dig` answer.
pub fn aaaa(answer: &DigResult) -> Vec<Ipv6Addr> {
    answer
        .answers
        .iter()
        .filter(|r| r.rtype == "AAAA")
        .filter_map(|r| r.data.parse().ok())
        .collect()
}

/// A busybox root filesystem (the host's static busybox with a link per applet, and an
/// `/etc/passwd`) as an uncompressed tar under `dir`, the one layer of the test image.
pub fn busybox_rootfs_tar(dir: &Path) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    let busybox = tool("busybox")?;
    std::fs::copy(&busybox, rootfs.join("bin/busybox"))?;
    let list = Command::new(&busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("--numeric-owner")
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    ensure!(status.success(), "tar: {status:?}");
    Ok(tar)
}

/// Where Debian's `golang-github-appc-cni-dev` puts libcni (a GOPATH tree).
pub const LIBCNI_GOPATH: &str = "/usr/share/gocode";

/// Builds `minicni` (tests/minicni/main.go, a libcni driver) with Debian's Go in GOPATH mode,
/// offline, into `dir`, and returns its path. Fails naming the package when libcni or Go is
/// missing.
pub fn build_minicni(dir: &TestDir) -> Result<PathBuf> {
    let go = tool("go")?;
    let libcni = Path::new(LIBCNI_GOPATH).join("src/github.com/containernetworking/cni/libcni");
    ensure!(
        libcni.is_dir(),
        "{} is missing: install the Debian package `golang-github-appc-cni-dev` \
         (`cargo xtask install-deps` installs it)",
        libcni.display()
    );
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("minicni/main.go");
    let gopath = dir.join("gopath");
    let package = gopath.join("src/minicni");
    std::fs::create_dir_all(&package)?;
    std::fs::copy(&source, package.join("main.go"))
        .with_context(|| format!("copying {}", source.display()))?;
    let binary = dir.join("minicni");
    let out = Command::new(go)
        .args(["build", "-o"])
        .arg(&binary)
        .arg("minicni")
        .env("GO111MODULE", "off")
        .env("GOPATH", format!("{}:{LIBCNI_GOPATH}", gopath.display()))
        .env("GOCACHE", dir.join("gocache"))
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0")
        .stdin(Stdio::null())
        .output()
        .context("running go build")?;
    ensure!(
        out.status.success(),
        "go build minicni: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(binary)
}

/// The `sha256:<hex>` digest of `bytes` (with coreutils' `sha256sum`).
fn digest(dir: &Path, bytes: &[u8]) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg("-b")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .current_dir(dir)
        .spawn()
        .and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(bytes)?;
            }
            child.wait_with_output()
        })
        .context("running sha256sum")?;
    ensure!(out.status.success(), "sha256sum: {:?}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default();
    ensure!(hex.len() == 64, "sha256sum printed `{text}`");
    Ok(format!("sha256:{hex}"))
}

/// The busybox root filesystem as a one-layer OCI image archive under `dir`, named `name`
/// (e.g. `localhost/cx-busybox:latest`), for `ctr images import` (no registry, no podman).
pub fn busybox_oci_archive(dir: &Path, name: &str) -> Result<PathBuf> {
    let layer = std::fs::read(busybox_rootfs_tar(dir)?)?;
    let layout = dir.join("oci");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let blob = |bytes: &[u8]| -> Result<(String, usize)> {
        let d = digest(dir, bytes)?;
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes)?;
        Ok((d, bytes.len()))
    };
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let (layer_digest, layer_size) = blob(&layer)?;
    let config = serde_json::json!({"architecture": architecture, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}, "config": {"Cmd": ["sh"]}});
    let (config_digest, config_size) = blob(config.to_string().as_bytes())?;
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}]});
    let (manifest_digest, manifest_size) = blob(manifest.to_string().as_bytes())?;
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_size,
        "annotations": {"io.containerd.image.name": name}}]});
    std::fs::write(layout.join("index.json"), index.to_string())?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let archive = dir.join("image.oci.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()?;
    ensure!(status.success(), "tar: {status:?}");
    Ok(archive)
}
