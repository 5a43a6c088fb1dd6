//! UDP throughput of the DNS server: queries per second answered.
//!
//! ```text
//! cargo run --release -p connectopus-dns --example qps [-- --queries N --sockets K --window W]
//! cargo run --release -p connectopus-dns --example qps -- --serve SECONDS --port PORT
//! ```
//!
//! The first form starts a server on `[::1]` with 1000 names, then `K` client threads
//! (default 4), each with its own UDP socket, send `N` AAAA queries in total (default
//! 400 000) for names spread over the table, keeping up to `W` (default 32) outstanding
//! per socket: send a burst of `W`, then collect its answers (a 200 ms silence counts the
//! rest as lost). Prints answered queries per second. Clients and server share the
//! machine, so on 2 cores the figure is a lower bound of the server's capacity.
//!
//! The second form only serves (UDP and TCP on `[::1]:PORT`, names `n0`…`n999`) for
//! `SECONDS`, for an external load generator such as `dnsperf`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use connectopus_dns::{DnsServer, ZoneConfig};

const NAMES: u16 = 1000;

fn arg(args: &[String], flag: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn start(port: u16) -> DnsServer {
    let udp = UdpSocket::bind(("::1", port)).unwrap();
    let port = udp.local_addr().unwrap().port();
    let tcp = TcpListener::bind(("::1", port)).unwrap();
    let zone = ZoneConfig::new(
        "connectopus.test",
        "fd00::".parse().unwrap(),
        64,
        "node1",
        "fd00::1".parse().unwrap(),
    );
    let server = DnsServer::start(udp, tcp, zone).unwrap();
    server
        .update((0..NAMES).map(|i| (format!("n{i}"), Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, i))));
    server
}

/// An AAAA query for `n<i>.connectopus.test.` with id 0.
fn query(i: u16) -> Vec<u8> {
    let mut q = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in [format!("n{i}").as_str(), "connectopus", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 28, 0, 1]);
    q
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve") {
        let secs = arg(&args, "--serve", 30);
        let server = start(arg(&args, "--port", 5353) as u16);
        eprintln!("serving on {} for {secs} s", server.udp_addr());
        std::thread::sleep(Duration::from_secs(secs));
        eprintln!("{:?}", server.stats());
        return;
    }
    let total = arg(&args, "--queries", 400_000);
    let sockets = arg(&args, "--sockets", 4).max(1);
    let window = arg(&args, "--window", 32).clamp(1, 1000) as usize;
    let server = start(0);
    let addr: SocketAddr = server.udp_addr();
    let queries: Vec<Vec<u8>> = (0..NAMES).map(query).collect();

    let began = Instant::now();
    let clients: Vec<_> = (0..sockets)
        .map(|c| {
            let queries = queries.clone();
            let per_client = total / sockets;
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("[::1]:0").unwrap();
                sock.connect(addr).unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let (mut sent, mut answered, mut lost) = (0u64, 0u64, 0u64);
                let mut buf = [0u8; 1500];
                let mut id: u16 = 0;
                while sent < per_client {
                    let burst = window.min((per_client - sent) as usize);
                    for _ in 0..burst {
                        id = id.wrapping_add(1);
                        let mut q = queries
                            [usize::from(id.wrapping_add(c as u16 * 251)) % queries.len()]
                        .clone();
                        q[..2].copy_from_slice(&id.to_be_bytes());
                        sock.send(&q).unwrap();
                    }
                    sent += burst as u64;
                    for got in 0..burst {
                        match sock.recv(&mut buf) {
                            Ok(n) if n > 12 && buf[3] & 0x0f == 0 => answered += 1,
                            Ok(_) => {}
                            Err(_) => {
                                lost += (burst - got) as u64;
                                break;
                            }
                        }
                    }
                }
                (answered, lost)
            })
        })
        .collect();
    let (mut answered, mut lost) = (0, 0);
    for client in clients {
        let (a, l) = client.join().unwrap();
        answered += a;
        lost += l;
    }
    let elapsed = began.elapsed();
    println!(
        "{answered} answered, {lost} lost, {sockets} sockets x window {window}, {:.2} s: {:.0} queries/s",
        elapsed.as_secs_f64(),
        answered as f64 / elapsed.as_secs_f64()
    );
    eprintln!("{:?}", server.stats());
}
