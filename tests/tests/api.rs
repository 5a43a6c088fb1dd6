//! The HTTP API and web UI through the mesh: a 3-node line foo—bar—baz whose nodes serve
//! their API on `cpctl.port`. The remote CLI (`--node`), tokens refused for every reason
//! (none, unknown key, expired, another mesh, altered, revoked), a signed config set through
//! the mesh, the UI's pages and live endpoint, and a headless Chromium screenshot
//! (docs/ui.png).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, NetNs, TestDir, Topology, require_root, run_ok, run_test,
    run_with_timeout, ssh_keygen, ssh_sign, tool, wait_until, workspace_binary,
};

const PORT: u16 = 8123;
const CONVERGE: Duration = Duration::from_secs(30);

fn api_config(node: &str) -> (&str, &'static str) {
    (node, "    cpctl:\n      port: 8123\n")
}

/// `connectopus ARGS` run in `ns`; returns (success, stdout, stderr).
fn cli(ns: &NetNs, args: &[&str]) -> Result<(bool, String, String)> {
    let binary = workspace_binary("connectopus")?;
    let command = ns.command(&binary.display().to_string(), args)?;
    let output = run_with_timeout(command, Duration::from_secs(60))?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `curl` in `ns`: returns (HTTP status, body).
fn curl(ns: &NetNs, url: &str, token: Option<&str>, post: Option<&str>) -> Result<(u16, String)> {
    let curl = tool("curl")?.display().to_string();
    let mut args = vec![
        "-sS".to_owned(),
        "-m".to_owned(),
        "20".to_owned(),
        "-w".to_owned(),
        "\n%{http_code}".to_owned(),
    ];
    if let Some(token) = token {
        args.push("-H".to_owned());
        args.push(format!("Authorization: Bearer {token}"));
    }
    if let Some(body) = post {
        args.extend(["--data-binary".to_owned(), body.to_owned()]);
    }
    args.push("-g".to_owned());
    args.push(url.to_owned());
    let output = ns.exec(&curl, &args)?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

fn url(mesh: &Mesh<'_>, node: &str, path: &str) -> String {
    format!("http://[{}]:{PORT}{path}", mesh.address(node))
}

/// `connectopus token` for the mesh config, signed by `key`.
fn make_token(mesh: &Mesh<'_>, key: &Path, duration: &str) -> Result<String> {
    let mut command = Command::new(workspace_binary("connectopus")?);
    command
        .args(["token", "--duration", duration, "--config"])
        .arg(mesh.config_path())
        .arg("--key")
        .arg(key);
    Ok(run_ok(command, Duration::from_secs(20))?.trim().to_owned())
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = STANDARD
            .iter()
            .position(|s| *s == c)
            .context("not base64")? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

fn base64url(bytes: &[u8]) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token with chosen claims, signed by ssh-keygen itself (`-Y sign -n connectopus-token`):
/// how the expired and other-mesh tokens are made, and proof that the format is plain SSHSIG.
fn crafted_token(dir: &TestDir, key: &Path, domain: &str, iat: u64, exp: u64) -> Result<String> {
    let mut keygen = Command::new(tool("ssh-keygen")?);
    keygen.arg("-lf").arg(key);
    let listing = run_ok(keygen, Duration::from_secs(20))?;
    let fingerprint = listing
        .split_whitespace()
        .nth(1)
        .context("ssh-keygen -l printed no fingerprint")?;
    let claims = format!(
        r#"{{"v":1,"domain":"{domain}","subnet":"fd00:cafe::/64","iat":{iat},"exp":{exp},"key":"{fingerprint}","nonce":"00112233445566778899aabbccddeeff"}}"#
    );
    let file = dir.join(format!("claims-{domain}-{exp}.json"));
    std::fs::write(&file, &claims)?;
    ssh_sign(&file, key, "connectopus-token")?;
    let armored = std::fs::read_to_string(format!("{}.sig", file.display()))?;
    let body: String = armored
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    Ok(format!(
        "cxt1.{}.{}",
        base64url(claims.as_bytes()),
        base64url(&base64_decode(&body)?)
    ))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Writes the mesh config with `version` and `edit` applied, signed by the admin key.
fn candidate(
    mesh: &Mesh<'_>,
    dir: &TestDir,
    version: u64,
    edit: impl FnOnce(String) -> String,
) -> Result<PathBuf> {
    let original = std::fs::read_to_string(mesh.config_path())?;
    let text = edit(original.replace("  version: 1\n", &format!("  version: {version}\n")));
    let path = dir.join(format!("v{version}.yml"));
    std::fs::write(&path, text)?;
    ssh_sign(&path, mesh.admin_key(), "connectopus")?;
    Ok(path)
}

#[test]
fn remote_cli_tokens_and_web_ui_through_the_mesh() {
    require_root!();
    run_test("api_remote", |dir| {
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let links = [
            MeshLink::new("bar", "foo", LinkKind::Tcp),
            MeshLink::new("baz", "bar", LinkKind::DtlsPsk),
        ];
        let extra = [api_config("foo"), api_config("bar"), api_config("baz")];
        let mut mesh = Mesh::configure_with(&topo, &links, &extra)?;
        mesh.start_all()?;
        mesh.wait_converged(CONVERGE)?;
        let foo = topo.ns("foo");
        let foo_socket = mesh.socket("foo").display().to_string();
        let admin = mesh.admin_key().display().to_string();

        // The remote CLI: baz's status, asked from foo's namespace with a token made on the fly.
        let (ok, out, err) = cli(
            foo,
            &[
                "status",
                "--socket",
                &foo_socket,
                "--node",
                "baz",
                "--token-key",
                &admin,
                "--json",
            ],
        )?;
        ensure!(ok, "status --node baz failed: {err}");
        let status: serde_json::Value = serde_json::from_str(&out)?;
        ensure!(status["name"] == "baz", "{out}");
        ensure!(
            status["address"] == mesh.address("baz").to_string().as_str(),
            "{out}"
        );
        let (ok, out, err) = cli(
            foo,
            &[
                "status",
                "--socket",
                &foo_socket,
                "--node",
                "baz",
                "--token-key",
                &admin,
            ],
        )?;
        ensure!(ok && out.starts_with("node baz ["), "{out}{err}");

        // ping and traceroute run on baz: its probes to foo cross bar.
        let (ok, out, err) = cli(
            foo,
            &[
                "ping",
                "--socket",
                &foo_socket,
                "--node",
                "baz",
                "--token-key",
                &admin,
                "-c",
                "2",
                "-i",
                "0.2",
                "foo",
            ],
        )?;
        ensure!(
            ok && out.contains("bytes from foo (fd00:cafe::1)"),
            "{out}{err}"
        );
        let (ok, out, err) = cli(
            foo,
            &[
                "traceroute",
                "--socket",
                &foo_socket,
                "--node",
                "baz",
                "--token-key",
                &admin,
                "-q",
                "1",
                "foo",
            ],
        )?;
        ensure!(ok, "traceroute --node baz foo: {out}{err}");
        ensure!(
            out.contains(" 1  bar (fd00:cafe::2)") && out.contains(" 2  foo (fd00:cafe::1)"),
            "{out}"
        );

        // Tokens: a good one reads; every bad one is refused with a clear reason.
        let good = make_token(&mesh, mesh.admin_key(), "1h")?;
        let status_url = url(&mesh, "baz", "/api/v1/status");
        let (code, body) = curl(foo, &status_url, Some(&good), None)?;
        ensure!(
            code == 200 && body.contains("\"name\":\"baz\""),
            "{code} {body}"
        );
        let refused = |token: Option<&str>, why: &str| -> Result<()> {
            let (code, body) = curl(foo, &status_url, token, None)?;
            ensure!(code == 401, "expected 401 ({why}), got {code}: {body}");
            ensure!(body.contains(why), "expected {why:?} in {body}");
            Ok(())
        };
        refused(None, "no token")?;
        let (stranger_key, _) = (
            dir.join("stranger"),
            ssh_keygen(&dir.join("stranger"), "stranger")?,
        );
        refused(
            Some(&make_token(&mesh, &stranger_key, "1h")?),
            "not in this mesh's global.authorized_keys",
        )?;
        let t = now();
        refused(
            Some(&crafted_token(
                dir,
                mesh.admin_key(),
                "connectopus.test",
                t - 7200,
                t - 3600,
            )?),
            "token expired",
        )?;
        refused(
            Some(&crafted_token(
                dir,
                mesh.admin_key(),
                "other.test",
                t,
                t + 600,
            )?),
            "token is for mesh other.test",
        )?;
        // The crafted format is the real one: a fresh crafted token for this mesh is accepted.
        let crafted = crafted_token(dir, mesh.admin_key(), "connectopus.test", t, t + 600)?;
        let (code, _) = curl(foo, &status_url, Some(&crafted), None)?;
        ensure!(
            code == 200,
            "a token signed by ssh-keygen was refused: {code}"
        );
        // Altered claims: a longer life, same signature.
        let (claims, signature) = good
            .strip_prefix("cxt1.")
            .and_then(|r| r.split_once('.'))
            .context("token shape")?;
        let mut decoded: serde_json::Value =
            serde_json::from_slice(&base64_decode(&claims.replace('-', "+").replace('_', "/"))?)?;
        decoded["exp"] = (decoded["exp"].as_u64().unwrap_or(0) + 3600).into();
        let tampered = format!(
            "cxt1.{}.{signature}",
            base64url(decoded.to_string().as_bytes())
        );
        refused(Some(&tampered), "the claims were altered")?;
        refused(Some("cxt1.garbage"), "malformed token")?;
        // A refused request changes nothing: a set_config without a valid token.
        let control_url = url(&mesh, "baz", "/api/v1/control");
        let (code, _) = curl(
            foo,
            &control_url,
            Some(&tampered),
            Some(r#"{"cmd":"reload"}"#),
        )?;
        ensure!(code == 401);
        ensure!(mesh.config_version("baz")? == 1);
        // The CNI plugin's requests and `pd_release` are the node's own root's: refused from
        // the mesh port, even with a valid token (docs/dynamic-mesh.md §3.3).
        for request in [
            r#"{"cmd":"pd_release"}"#,
            r#"{"cmd":"cni_status","network":"mesh"}"#,
            r#"{"cmd":"cni_add","network":"mesh","container_id":"c1","ifname":"eth0","name":"web"}"#,
            r#"{"cmd":"cni_gc","network":"mesh","keep":[]}"#,
        ] {
            let (code, body) = curl(foo, &control_url, Some(&good), Some(request))?;
            ensure!(
                code == 403 && body.contains("local only"),
                "{request}: {code} {body}"
            );
        }

        // A signed configuration set through the mesh, on baz, with the remote CLI: it adds
        // an operator key.
        let ops_key = dir.join("ops");
        let ops_pub = ssh_keygen(&ops_key, "ops")?;
        let v2 = candidate(&mesh, dir, 2, |t| {
            t.replace(
                "  authorized_keys:\n",
                &format!("  authorized_keys:\n    - \"{ops_pub}\"\n"),
            )
        })?;
        let v2_arg = v2.display().to_string();
        let (ok, out, err) = cli(
            foo,
            &[
                "config",
                "set",
                "--socket",
                &foo_socket,
                "--node",
                "baz",
                "--token-key",
                &admin,
                &v2_arg,
            ],
        )?;
        ensure!(ok, "config set --node baz: {out}{err}");
        wait_until(CONVERGE, Duration::from_millis(200), || {
            ["foo", "bar", "baz"]
                .iter()
                .all(|n| mesh.config_version(n).is_ok_and(|v| v == 2))
        })
        .context("version 2 did not reach every node")?;
        let ops_token = make_token(&mesh, &ops_key, "1h")?;
        wait_until(CONVERGE, Duration::from_millis(200), || {
            curl(foo, &status_url, Some(&ops_token), None).is_ok_and(|(c, _)| c == 200)
        })
        .context("the ops key was not accepted after version 2")?;

        // Revoking the ops key refuses its token at once.
        let v3 = candidate(&mesh, dir, 3, |t| {
            t.replace(
                "  authorized_keys:\n",
                &format!("  revoked_keys:\n    - \"{ops_pub}\"\n  authorized_keys:\n"),
            )
        })?;
        let (ok, out) = mesh.config_set("baz", &v3)?;
        ensure!(ok, "config set v3: {out}");
        wait_until(CONVERGE, Duration::from_millis(100), || {
            mesh.config_version("baz").is_ok_and(|v| v == 3)
        })?;
        // A change to `global` restarts the mesh instance: poll through the restart. The
        // token is never accepted once baz runs version 3.
        wait_until(CONVERGE, Duration::from_millis(100), || {
            match curl(foo, &status_url, Some(&ops_token), None) {
                Ok((200, _)) => panic!("baz runs version 3 and still accepts the revoked ops key"),
                Ok((401, body)) => body.contains("revoked_keys"),
                _ => false,
            }
        })
        .context("the revoked key's token was not refused")?;
        wait_until(CONVERGE, Duration::from_millis(100), || {
            curl(foo, &status_url, Some(&good), None).is_ok_and(|(c, _)| c == 200)
        })
        .context("the admin token stopped working")?;

        // The web UI: its pages and the live endpoint, once the restarted mesh is whole.
        mesh.wait_converged(CONVERGE)?;
        let (code, page) = curl(foo, &url(&mesh, "baz", "/"), None, None)?;
        ensure!(
            code == 200 && page.contains("<svg id=\"graph\""),
            "{code} {page}"
        );
        let (code, script) = curl(foo, &url(&mesh, "baz", "/ui.js"), None, None)?;
        ensure!(code == 200 && script.contains("/api/v1/graph"), "{code}");
        refused_graph(foo, &mesh)?;
        // The view is refreshed every second: poll until it shows the whole mesh.
        let graph_url = url(&mesh, "baz", "/api/v1/graph");
        let whole = |body: &str| {
            serde_json::from_str::<serde_json::Value>(body).is_ok_and(|g| {
                g["nodes"].as_array().map(Vec::len) == Some(3)
                    && g["edges"].as_array().map(Vec::len) == Some(2)
            })
        };
        wait_until(CONVERGE, Duration::from_millis(200), || {
            curl(foo, &graph_url, Some(&good), None).is_ok_and(|(c, b)| c == 200 && whole(&b))
        })
        .context("the graph never showed 3 nodes and 2 links")?;
        let (code, body) = curl(foo, &url(&mesh, "baz", "/api/v1/config"), Some(&good), None)?;
        ensure!(code == 200 && body.contains("version: 3"), "{code} {body}");
        // foo's API shows baz's views through the mesh, with the caller's token.
        let via_foo = url(&mesh, "foo", "/api/v1/nodes/baz/status");
        let (code, body) = curl(foo, &via_foo, Some(&good), None)?;
        ensure!(
            code == 200 && body.contains("\"name\":\"baz\""),
            "{code} {body}"
        );
        let (code, body) = curl(foo, &via_foo, Some(&ops_token), None)?;
        ensure!(
            code == 401 && body.contains("revoked_keys"),
            "{code} {body}"
        );
        // The local control socket speaks HTTP too, without a token.
        let curl_bin = tool("curl")?.display().to_string();
        let local = foo.exec_ok(
            &curl_bin,
            &[
                "-sS",
                "-m",
                "10",
                "--unix-socket",
                &foo_socket,
                "http://localhost/api/v1/whoami",
            ],
        )?;
        ensure!(
            local.contains("\"local\":true") && local.contains("\"node\":\"foo\""),
            "{local}"
        );

        screenshot(foo, &mesh, &good)?;
        Ok(())
    });
}

fn refused_graph(ns: &NetNs, mesh: &Mesh<'_>) -> Result<()> {
    let (code, body) = curl(ns, &url(mesh, "baz", "/api/v1/graph"), None, None)?;
    ensure!(code == 401, "{code} {body}");
    Ok(())
}

/// Loads the UI of baz from foo's namespace in headless Chromium: the DOM holds one graph
/// node per mesh node and one edge per link; the screenshot goes to docs/ui.png.
fn screenshot(ns: &NetNs, mesh: &Mesh<'_>, token: &str) -> Result<()> {
    let Ok(chromium) = tool("chromium") else {
        eprintln!(
            "skipping the UI screenshot: chromium is not installed (apt-get install chromium)"
        );
        return Ok(());
    };
    let chromium = chromium.display().to_string();
    let page = url(mesh, "baz", &format!("/#token={token}"));
    let profile = format!(
        "--user-data-dir={}",
        mesh.config_path().with_file_name("chromium").display()
    );
    let common = [
        profile.as_str(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,800",
        "--virtual-time-budget=5000",
    ];
    let mut dom_args: Vec<&str> = common.to_vec();
    dom_args.extend(["--dump-dom", page.as_str()]);
    let output = ns.exec_timeout(&chromium, &dom_args, Duration::from_secs(120))?;
    let dom = String::from_utf8_lossy(&output.stdout);
    let nodes = dom.matches("class=\"node").count();
    let edges = dom.matches("class=\"edge").count();
    if nodes != 3 || edges != 2 {
        bail!(
            "the UI DOM has {nodes} nodes and {edges} edges, not 3 and 2:\n{dom}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for name in ["foo", "bar", "baz"] {
        ensure!(
            dom.contains(&format!("data-name=\"{name}\"")),
            "{name} missing"
        );
    }
    let png = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/ui.png");
    let shot = mesh.config_path().with_file_name("ui.png");
    let target = format!("--screenshot={}", shot.display());
    let mut shot_args: Vec<&str> = common.to_vec();
    shot_args.extend([target.as_str(), page.as_str()]);
    ns.exec_timeout(&chromium, &shot_args, Duration::from_secs(120))?;
    let bytes = std::fs::read(&shot).context("chromium wrote no screenshot")?;
    ensure!(bytes.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    // A test run leaves the checkout as it found it: the screenshot replaces docs/ui.png only
    // when asked (`CONNECTOPUS_UPDATE_DOCS=1 cargo test -p connectopus-tests --test api`).
    if std::env::var_os("CONNECTOPUS_UPDATE_DOCS").is_some() {
        std::fs::write(&png, &bytes).with_context(|| format!("writing {}", png.display()))?;
    }
    Ok(())
}

/// The UI's own files, as the node embeds them.
fn ui_file(name: &str) -> Result<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../daemon/connectopus/src/api/ui")
        .join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A 1,000-node mesh as `/api/v1/graph` describes it: a ring with chords.
fn thousand_node_graph() -> (serde_json::Value, usize) {
    let n = 1000;
    let nodes: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"name": format!("n{i}"), "address": format!("fd00::{:x}", i + 1), "cost": i % 17}))
        .collect();
    let mut pairs = std::collections::BTreeSet::new();
    for i in 0..n {
        for p in [(i + 1) % n, (i * 7 + 3) % n] {
            if p != i {
                pairs.insert((i.min(p), i.max(p)));
            }
        }
    }
    let edges: Vec<serde_json::Value> = pairs
        .iter()
        .map(|(a, b)| serde_json::json!({"a": a, "b": b, "cost": 1.0}))
        .collect();
    let count = edges.len();
    let graph = serde_json::json!({
        "me": 0, "config_version": 7, "uptime_secs": 10.0, "nodes": nodes, "edges": edges,
        "links": [{"peer": 1, "backend": "b", "state": "established", "rtt_ms": 0.4,
                   "cost": 1.0, "bytes_in": 1000, "bytes_out": 2000}]
    });
    (graph, count)
}

/// Serves the UI files and `graph` on 127.0.0.1 until the returned flag is set.
fn serve_fixture(
    graph: String,
) -> Result<(
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
)> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let files = [
        ("/", "text/html", ui_file("index.html")?),
        ("/ui.js", "text/javascript", ui_file("ui.js")?),
        ("/ui.css", "text/css", ui_file("ui.css")?),
        ("/api/v1/graph", "application/json", graph),
    ];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = stop.clone();
    std::thread::spawn(move || {
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let line = String::from_utf8_lossy(&head);
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (status, kind, body) = files
                .iter()
                .find(|(p, _, _)| *p == path)
                .map_or(("404 Not Found", "text/plain", ""), |(_, k, b)| {
                    ("200 OK", *k, b.as_str())
                });
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok((addr, stop))
}

/// The UI at 1,000 nodes: the real page and script, fed a generated graph, in headless
/// Chromium: every node and link is in the DOM, and the level of detail hides the labels of
/// nodes that are not this one, its neighbours or search matches.
#[test]
fn the_ui_draws_a_thousand_node_mesh_with_level_of_detail() {
    run_test("api_ui_1000", |dir| {
        let chromium = tool("chromium")?;
        let (graph, edges) = thousand_node_graph();
        let (addr, stop) = serve_fixture(graph.to_string())?;
        let mut command = Command::new(chromium);
        command.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1280,800",
            "--virtual-time-budget=8000",
        ]);
        command.arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ));
        command.args(["--dump-dom", &format!("http://{addr}/#/graph")]);
        let output = run_with_timeout(command, Duration::from_secs(180))?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let dom = String::from_utf8_lossy(&output.stdout);
        let nodes = dom.matches("class=\"node").count();
        let drawn = dom.matches("class=\"edge").count();
        ensure!(
            nodes == 1000 && drawn == edges,
            "{nodes} nodes and {drawn} edges in the DOM, not 1000 and {edges}; stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        ensure!(
            dom.contains("class=\"lod\""),
            "no level of detail at 1000 nodes"
        );
        ensure!(dom.contains("1000 nodes, "), "no summary");
        ensure!(dom.contains("class=\"node me"), "this node is not marked");
        Ok(())
    });
}
