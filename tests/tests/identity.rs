//! Node identity end to end: node keys pinned in the signed config, hellos that prove them
//! over the (D)TLS channel, and what happens to impostors, wrong peers and removed nodes.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use connectopus_tests::{
    LinkKind, Mesh, MeshLink, Topology, dig, ping6, require_root, require_tools, run_test,
    wait_until,
};

fn sign(path: &Path, key: &Path) -> Result<()> {
    connectopus_tests::ssh_sign(path, key, "connectopus")
}

fn counter(mesh: &Mesh<'_>, node: &str, name: &str) -> u64 {
    mesh.status(node)
        .ok()
        .and_then(|s| s["counters"][name].as_u64())
        .unwrap_or(0)
}

fn since(mesh: &Mesh<'_>, node: &str, backend: &str) -> Option<f64> {
    let status = mesh.status(node).ok()?;
    status["links"]
        .as_array()?
        .iter()
        .find(|l| l["backend"] == backend && l["state"] == "established")
        .and_then(|l| l["since_unix"].as_f64())
}

#[test]
fn a_keyed_mesh_routes_and_an_impostor_with_the_psk_gets_no_session() {
    require_root!();
    run_test("identity_impostor", |dir| {
        require_tools(&["ping", "ssh-keygen"]);
        // foo listens for bar (d0) and for mallory (d1); mallory knows the link PSK.
        let topo = Topology::builder()
            .node("foo")
            .node("bar")
            .node("mallory")
            .link("foo", "bar")
            .link("foo", "mallory")
            .build(dir)?;
        let mut mesh = Mesh::configure_with_identities(
            &topo,
            &[
                MeshLink::new("foo", "bar", LinkKind::DtlsPsk),
                MeshLink::new("foo", "mallory", LinkKind::DtlsPsk),
            ],
            &[],
        )?;
        mesh.start("foo")?;
        mesh.start("bar")?;
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            mesh.next_hop("foo", "bar").ok().flatten().as_deref() == Some("bar")
        })
        .context("foo and bar should connect with their keys")?;
        let ping = ping6(topo.ns("foo"), mesh.address("bar"), 2, 56, &[])?;
        ensure!(ping.all_received(), "{ping:?}");
        let bar_since = since(&mesh, "foo", "l0").context("foo's link to bar")?;

        // Mallory runs its own copy of the config in which *it* is "bar": bar's address and
        // name, its own node key, signed by its own admin key. It dials foo with the PSK.
        let text = std::fs::read_to_string(mesh.config_path())?;
        let mallory_admin = dir.join("mallory_admin");
        let mallory_admin_pub = connectopus_tests::ssh_keygen(&mallory_admin, "mallory-admin")?;
        let admin_pub = std::fs::read_to_string(format!("{}.pub", mesh.admin_key().display()))?
            .trim()
            .to_owned();
        // Mallory claims bar's address with its own key; in its copy the real bar is moved
        // aside so that the copy is a valid config.
        let forged = text
            .replace(&admin_pub, &mallory_admin_pub)
            .replace(
                &format!("  bar:\n    address: \"{}\"", mesh.address("bar")),
                "  bar:\n    address: \"fd00:cafe::99\"",
            )
            .replace(
                &format!("  mallory:\n    address: \"{}\"", mesh.address("mallory")),
                &format!("  mallory:\n    address: \"{}\"", mesh.address("bar")),
            );
        let forged_path = dir.join("mallory-forged.yml");
        std::fs::write(&forged_path, forged)?;
        sign(&forged_path, &mallory_admin)?;
        std::fs::copy(&forged_path, mesh.node_config_path("mallory"))?;
        std::fs::copy(
            format!("{}.sig", forged_path.display()),
            format!("{}.sig", mesh.node_config_path("mallory").display()),
        )?;
        let _ = mesh.start("mallory");

        wait_until(Duration::from_secs(20), Duration::from_millis(250), || {
            let status = mesh.status("foo");
            status.is_ok_and(|s| {
                s["counters"].as_object().is_some_and(|c| {
                    c.iter()
                        .any(|(k, v)| k.starts_with("hellos_rejected_") && v.as_u64() > Some(0))
                })
            })
        })
        .context("foo should refuse mallory's hello and count it")?;
        // The real bar's session and route are untouched.
        ensure!(
            since(&mesh, "foo", "l0") == Some(bar_since),
            "foo's session with the real bar was disturbed"
        );
        ensure!(mesh.next_hop("foo", "bar")?.as_deref() == Some("bar"));
        let ping = ping6(topo.ns("foo"), mesh.address("bar"), 2, 56, &[])?;
        ensure!(ping.all_received(), "after mallory: {ping:?}");
        ensure!(counter(&mesh, "foo", "hellos_rejected_address_mismatch") > 0);
        Ok(())
    });
}

#[test]
fn a_dialer_expecting_another_node_gets_no_session() {
    require_root!();
    run_test("identity_peer_node", |dir| {
        let topo = Topology::line(dir, &["foo", "bar", "baz"])?;
        let mesh = Mesh::configure_with_identities(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::TcpTls),
                MeshLink::new("bar", "baz", LinkKind::TcpTls),
            ],
            &[],
        )?;
        // foo's dialer says it expects baz; bar is at the other end.
        let text = std::fs::read_to_string(mesh.config_path())?;
        let text = text.replacen(
            "        type: tcp-dialer\n",
            "        type: tcp-dialer\n        peer_node: baz\n",
            1,
        );
        std::fs::write(mesh.config_path(), text)?;
        mesh.sign()?;
        let mut mesh = mesh;
        mesh.start_all()?;
        wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
            counter(&mesh, "foo", "hellos_rejected_unexpected_peer") > 0
        })
        .context("foo should refuse bar as the peer it did not expect")?;
        ensure!(
            mesh.next_hop("foo", "bar")?.is_none(),
            "foo got a route to bar"
        );
        Ok(())
    });
}

#[test]
fn removing_a_node_from_the_config_cuts_it_off_everywhere() {
    require_root!();
    run_test("identity_removal", |dir| {
        require_tools(&["ping", "dig"]);
        let topo = Topology::triangle(dir, ["foo", "bar", "baz"])?;
        let mut mesh = Mesh::configure_with_identities(
            &topo,
            &[
                MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
                MeshLink::new("bar", "baz", LinkKind::DtlsPsk),
                MeshLink::new("baz", "foo", LinkKind::DtlsPsk),
            ],
            &[],
        )?;
        mesh.start_all()?;
        mesh.wait_converged(Duration::from_secs(20))?;
        let bar = mesh.address("bar");
        // Version 2 without bar: every other node drops its grant.
        let text = std::fs::read_to_string(mesh.config_path())?;
        let start = text.find("  bar:\n").context("bar's entry")?;
        let rest = &text[start + 7..];
        let end = rest
            .find("\n  baz:\n")
            .map_or(text.len(), |i| start + 7 + i + 1);
        let mut v2 = text.clone();
        v2.replace_range(start..end, "");
        let v2 = v2.replace("  version: 1\n", "  version: 2\n");
        let v2_path = dir.join("v2.yml");
        std::fs::write(&v2_path, v2)?;
        sign(&v2_path, mesh.admin_key())?;
        let (ok, out) = mesh.config_set("foo", &v2_path)?;
        ensure!(ok, "{out}");
        for node in ["foo", "baz"] {
            wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
                mesh.next_hop(node, "bar").is_ok_and(|h| h.is_none())
                    && mesh.status(node).is_ok_and(|s| {
                        !s["links"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|l| l["peer_name"] == "bar" && l["state"] == "established")
                    })
            })
            .with_context(|| format!("{node} still has a session or a route to bar"))?;
            let answer = dig(
                topo.ns(node),
                IpAddr::V6(mesh.address(node)),
                "bar.connectopus.test",
                "AAAA",
                false,
            )?;
            ensure!(
                answer.rcode.as_deref() == Some("NXDOMAIN"),
                "{node}: {answer:?}"
            );
        }
        let ping = ping6(topo.ns("foo"), bar, 1, 56, &[])?;
        ensure!(
            !ping.all_received() && ping.saw_icmp_error("nreachable"),
            "{ping:?}"
        );
        // The removal reached bar as well (a node offers a new config to its neighbours
        // before applying it): bar knows it is out of the mesh.
        wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
            mesh.status("bar")
                .is_ok_and(|s| s["removed"].as_str().is_some_and(|r| r.contains("not in")))
        })
        .context("bar should know it was removed")?;
        // An old copy of bar, with the files from before the change and no memory of version 2,
        // dials with its key and is refused everywhere.
        mesh.stop("bar")?;
        let own = mesh.node_config_path("bar");
        std::fs::copy(mesh.config_path(), &own)?;
        let mut own_sig = own.clone().into_os_string();
        own_sig.push(".sig");
        let mut mesh_sig = mesh.config_path().clone().into_os_string();
        mesh_sig.push(".sig");
        std::fs::copy(&mesh_sig, &own_sig)?;
        let mut own_version = own.into_os_string();
        own_version.push(".version");
        let _ = std::fs::remove_file(&own_version);
        mesh.start("bar")?;
        wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
            counter(&mesh, "foo", "hellos_rejected_unknown_key")
                + counter(&mesh, "baz", "hellos_rejected_unknown_key")
                > 0
        })
        .context("bar's re-dials should be refused")?;
        Ok(())
    });
}

/// A man in the middle with certificates the mesh CA signed: it terminates foo's TLS session
/// and opens its own to bar, relaying the plaintext.
fn mitm_script(
    listen: std::net::Ipv6Addr,
    port: u16,
    upstream: std::net::Ipv6Addr,
    upstream_port: u16,
    dir: &Path,
) -> String {
    let p = |name: &str| dir.join("pki").join(name).display().to_string();
    format!(
        r#"
import socket, ssl, threading
srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
srv.load_cert_chain("{relay_cert}", "{relay_key}")
cli = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cli.load_verify_locations("{ca}")
cli.load_cert_chain("{relay_cert}", "{relay_key}")
cli.check_hostname = False
def pump(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except Exception:
        pass
    for s in (a, b):
        try:
            s.close()
        except Exception:
            pass
ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("{listen}", {port}))
ls.listen(8)
print("relay ready", flush=True)
while True:
    c, _ = ls.accept()
    try:
        down = srv.wrap_socket(c, server_side=True)
        up = cli.wrap_socket(socket.create_connection(("{upstream}", {upstream_port})))
    except Exception as e:
        print("relay:", e, flush=True)
        continue
    threading.Thread(target=pump, args=(down, up), daemon=True).start()
    threading.Thread(target=pump, args=(up, down), daemon=True).start()
"#,
        relay_cert = p("relay-mitm.pem"),
        relay_key = p("relay-mitm.key"),
        ca = p("ca.pem"),
    )
}

#[test]
fn a_relay_bridging_two_tls_sessions_fails_the_hello_on_both_sides() {
    require_root!();
    run_test("identity_relay", |dir| {
        require_tools(&["python3", "ssh-keygen", "openssl"]);
        let topo = Topology::line(dir, &["foo", "relay", "bar"])?;
        // bar listens for "relay"; the dialer entry is then moved to foo and pointed at the
        // man in the middle, which holds a certificate from the same CA for its own address.
        let mesh = Mesh::configure_with_identities(
            &topo,
            &[MeshLink::new("bar", "relay", LinkKind::TcpTls)],
            &[],
        )?;
        let relay_ip = topo.link_addr("relay", "foo");
        let bar_ip = topo.link_addr("bar", "relay");
        let pki = connectopus_tests::Pki::new(dir)?;
        pki.issue("relay-mitm", &[connectopus_tests::San::Ip(relay_ip.into())])?;
        let text = std::fs::read_to_string(mesh.config_path())?;
        let start = text
            .find("    backends:\n      d0:")
            .context("relay's dialer")?;
        let end = text[start..]
            .find("\n  bar:\n")
            .map_or(text.len(), |i| start + i + 1);
        let dialer = text[start..end].replace(
            &format!("peer: \"[{bar_ip}]:4000\""),
            &format!("peer: \"[{relay_ip}]:4000\""),
        );
        let mut moved = text;
        moved.replace_range(start..end, "");
        let foo_entry = "  foo:\n";
        let foo_at = moved.find(foo_entry).context("foo's entry")?;
        let foo_end = moved[foo_at + foo_entry.len()..]
            .find("\n  relay:\n")
            .map_or(moved.len(), |i| foo_at + foo_entry.len() + i + 1);
        moved.insert_str(foo_end, &dialer);
        std::fs::write(mesh.config_path(), moved)?;
        mesh.sign()?;
        let mut mesh = mesh;
        let relay = topo.ns("relay").spawn(
            "python3",
            &["-c", &mitm_script(relay_ip, 4000, bar_ip, 4000, dir.path())],
        )?;
        relay.wait_for_output("relay ready", Duration::from_secs(10))?;
        mesh.start("bar")?;
        mesh.start("foo")?;
        wait_until(Duration::from_secs(20), Duration::from_millis(250), || {
            counter(&mesh, "foo", "hellos_rejected_bad_signature") > 0
                && counter(&mesh, "bar", "hellos_rejected_bad_signature") > 0
        })
        .context("both ends should refuse the relayed hello")?;
        ensure!(
            mesh.next_hop("foo", "bar")?.is_none(),
            "foo got a route to bar"
        );
        drop(relay);
        Ok(())
    });
}
