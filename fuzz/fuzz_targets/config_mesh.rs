//! Structure-aware: `arbitrary` builds a mesh (nodes, addresses, backends of every type,
//! timers, prefixes, the odd wrong key or value), it is written out as YAML in block or flow
//! style, and a few byte edits make it near-valid. The loader must never panic, every
//! diagnostic must point inside the file, and a file that loads must answer for its nodes.

#![no_main]

use std::fmt::Write as _;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[path = "../src/config_check.rs"]
mod config_check;

const NAMES: &[&str] = &["foo", "bar", "baz", "qux", "a-b", "x_1", "Foo", "n0"];
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDodzYj57OZmELq22KpYeJKA9uGTjFaBuWl+X9dGUYcr fuzz";
const TIMERS: &[&str] = &[
    "keepalive_idle",
    "dead_interval",
    "update_interval",
    "node_dead_after",
    "spf_delay",
    "bogus_timer",
];
const DURATIONS: &[&str] = &[
    "500ms",
    "2s",
    "1m",
    "0s",
    "-1s",
    "10",
    "1h",
    "3x",
    "99999999999s",
];
const TYPES: &[&str] = &[
    "dtls-dialer",
    "dtls-listener",
    "tcp-dialer",
    "tcp-listener",
    "udp-dialer",
    "udp-listener",
    "quic-dialer",
    "",
];

#[derive(Arbitrary, Debug)]
struct Mesh {
    flow_style: bool,
    subnet_len: u8,
    version: Option<u64>,
    keys: u8,
    timers: Vec<(u8, u8)>,
    nodes: Vec<Node>,
    edits: Vec<Edit>,
}

#[derive(Arbitrary, Debug)]
struct Node {
    name: u8,
    address: u16,
    outside_subnet: bool,
    prefixes: Vec<(u16, u8)>,
    tun_disable: Option<bool>,
    dns_disable: Option<bool>,
    backends: Vec<Backend>,
    stray_key: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct Backend {
    kind: u8,
    port: u16,
    peer_node: Option<u8>,
    cost: Option<i16>,
    mtu: Option<u16>,
    tls: Option<bool>,
    psk_inline: bool,
    host_peer: bool,
}

#[derive(Arbitrary, Debug)]
enum Edit {
    Replace(u16, u8),
    Delete(u16),
    Insert(u16, u8),
    Truncate(u16),
}

fn yaml(mesh: &Mesh) -> String {
    let mut y = String::from("global:\n  domain: connectopus.test\n");
    let _ = writeln!(y, "  subnet: fd00::/{}", mesh.subnet_len % 130);
    if let Some(v) = mesh.version {
        let _ = writeln!(y, "  version: {v}");
    }
    match mesh.keys % 3 {
        0 => {
            let _ = writeln!(y, "  authorized_keys:\n    - {KEY}");
        }
        1 => y.push_str("  authorized_keys: []\n"),
        _ => {}
    }
    if !mesh.timers.is_empty() {
        y.push_str("  timers:\n");
        for (t, d) in mesh.timers.iter().take(8) {
            let _ = writeln!(
                y,
                "    {}: {}",
                TIMERS[usize::from(*t) % TIMERS.len()],
                DURATIONS[usize::from(*d) % DURATIONS.len()]
            );
        }
    }
    y.push_str("nodes:\n");
    for (i, node) in mesh.nodes.iter().take(8).enumerate() {
        let name = NAMES[usize::from(node.name) % NAMES.len()];
        let _ = writeln!(y, "  {name}:");
        let top = if node.outside_subnet { 0xfd01 } else { 0xfd00 };
        let _ = writeln!(
            y,
            "    address: \"{top:x}::{:x}:{:x}\"",
            i + 1,
            node.address
        );
        if !node.prefixes.is_empty() {
            let list: Vec<String> = node
                .prefixes
                .iter()
                .take(4)
                .map(|(p, l)| format!("fd00:{p:x}::/{}", l % 130))
                .collect();
            let _ = writeln!(y, "    prefixes: [{}]", list.join(", "));
        }
        if let Some(d) = node.tun_disable {
            let _ = writeln!(y, "    tun: {{disable: {d}}}");
        }
        if let Some(d) = node.dns_disable {
            let _ = writeln!(y, "    dns: {{disable: {d}}}");
        }
        if let Some(k) = node.stray_key {
            let _ = writeln!(y, "    extra_{k}: 1");
        }
        if node.backends.is_empty() {
            continue;
        }
        y.push_str("    backends:\n");
        for (j, b) in node.backends.iter().take(4).enumerate() {
            let kind = TYPES[usize::from(b.kind) % TYPES.len()];
            let mut fields = vec![format!("type: {kind}")];
            if kind.ends_with("listener") {
                fields.push(format!("port: {}", b.port));
            } else if b.host_peer {
                fields.push(format!("peer: \"host{}.example.net:{}\"", j, b.port));
            } else {
                fields.push(format!("peer: \"[2001:db8::{j}]:{}\"", b.port));
            }
            if let Some(p) = b.peer_node {
                fields.push(format!(
                    "peer_node: {}",
                    NAMES[usize::from(p) % NAMES.len()]
                ));
            }
            if let Some(c) = b.cost {
                fields.push(format!("cost: {}", f64::from(c) / 4.0));
            }
            if let Some(m) = b.mtu {
                fields.push(format!("mtu: {m}"));
            }
            if let Some(t) = b.tls {
                fields.push(format!("tls: {t}"));
            }
            if kind.starts_with("dtls") {
                fields.push(if b.psk_inline {
                    "psk: correct-horse-battery-staple".to_owned()
                } else {
                    "psk_file: /etc/connectopus/link.psk".to_owned()
                });
            }
            if mesh.flow_style {
                let _ = writeln!(y, "      b{j}: {{{}}}", fields.join(", "));
            } else {
                let _ = writeln!(y, "      b{j}:");
                for f in fields {
                    let _ = writeln!(y, "        {f}");
                }
            }
        }
    }
    y
}

fuzz_target!(|mesh: Mesh| {
    let mut bytes = yaml(&mesh).into_bytes();
    for edit in mesh.edits.iter().take(4) {
        if bytes.is_empty() {
            break;
        }
        let at = |i: &u16| usize::from(*i) % bytes.len();
        match edit {
            Edit::Replace(i, b) => {
                let i = at(i);
                bytes[i] = *b;
            }
            Edit::Delete(i) => {
                let i = at(i);
                bytes.remove(i);
            }
            Edit::Insert(i, b) => {
                let i = at(i);
                bytes.insert(i, *b);
            }
            Edit::Truncate(i) => {
                let i = at(i);
                bytes.truncate(i);
            }
        }
    }
    config_check::exercise(&bytes);
});
