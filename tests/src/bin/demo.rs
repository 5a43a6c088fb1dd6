//! The Connectopus demo: a three-node mesh foo—bar—baz in network namespaces on this machine,
//! foo—bar over DTLS (pre-shared key) and bar—baz over TCP with TLS 1.3. It shows `status`,
//! a ping, a traceroute and an iperf3 run across the mesh, then keeps the mesh up until Ctrl-C
//! (or exits at once with `--once`), and removes every namespace and process it made.
//!
//! Run it with `cargo xtask demo` (as root).

use std::net::IpAddr;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use connectopus_tests::{
    IperfOptions, LinkKind, Mesh, MeshLink, TestDir, Topology, iperf3_client, iperf3_server,
    is_root, ping6, require_tools, traceroute6, workspace_binary,
};

fn main() -> ExitCode {
    if !is_root() {
        eprintln!("the demo creates network namespaces and TUN devices: run it as root");
        return ExitCode::FAILURE;
    }
    let once = std::env::args().any(|a| a == "--once");
    match run(once) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(once: bool) -> Result<()> {
    require_tools(&["ping", "traceroute", "iperf3"]);
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let dir = TestDir::new("demo")?;
    let topo = Topology::line(&dir, &["foo", "bar", "baz"])?;
    let mut mesh = Mesh::configure(
        &topo,
        &[
            MeshLink::new("bar", "foo", LinkKind::DtlsPsk),
            MeshLink::new("bar", "baz", LinkKind::TcpTls),
        ],
    )?;
    println!("== mesh config ({})", mesh.config_path().display());
    print!("{}", std::fs::read_to_string(mesh.config_path())?);
    mesh.start_all()?;
    mesh.wait_converged(Duration::from_secs(20))?;

    let binary = workspace_binary("connectopus")?;
    for node in ["foo", "bar", "baz"] {
        println!("\n== connectopus status ({node})");
        let out = Command::new(&binary)
            .args(["status", "--socket"])
            .arg(mesh.socket(node))
            .output()
            .context("running connectopus status")?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }

    let baz_addr = mesh.address("baz");
    println!("\n== ping foo -> baz ({baz_addr})");
    let ping = ping6(topo.ns("foo"), baz_addr, 5, 56, &[])?;
    println!(
        "{}/{} received, rtt {:?} ms",
        ping.received, ping.transmitted, ping.rtts_ms
    );
    println!("\n== traceroute foo -> baz");
    for (i, hop) in traceroute6(topo.ns("foo"), baz_addr)?.iter().enumerate() {
        let hop = hop.map_or("*".to_owned(), |h| h.to_string());
        println!("{:>2}  {hop}", i + 1);
    }
    println!("\n== iperf3 foo -> baz, 5 s (DTLS then TCP+TLS hop)");
    let server = iperf3_server(topo.ns("baz"), Some(IpAddr::V6(baz_addr)), 5201)?;
    let result = iperf3_client(
        topo.ns("foo"),
        baz_addr,
        &IperfOptions {
            seconds: 5,
            ..IperfOptions::default()
        },
    )?;
    drop(server);
    println!("{:.0} Mbit/s", result.bits_per_second() / 1e6);

    if once {
        return Ok(());
    }
    println!("\nThe mesh is up. Try, in another terminal:");
    for node in ["foo", "bar", "baz"] {
        println!(
            "  ip netns exec {} ping -6 {}     # from {node}",
            topo.ns(node).name(),
            mesh.address(if node == "foo" { "baz" } else { "foo" })
        );
        println!(
            "  {} status --socket {}",
            binary.display(),
            mesh.socket(node).display()
        );
    }
    println!("Press Ctrl-C to stop and remove everything.");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping...");
    Ok(())
}
