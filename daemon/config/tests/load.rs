//! Loader tests over the fixture files: exact places and message substrings.

#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::time::Duration;

use connectopus_config::{
    BackendConfig, Diagnostic, Diagnostics, PeerHost, PskCipher, SecretKind, Severity, check, load,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap()
}

/// Loads a fixture that must fail and returns its diagnostics.
fn errors(name: &str) -> Diagnostics {
    match load(name, &fixture(name)) {
        Ok(_) => panic!("{name} loaded but should not"),
        Err(d) => d,
    }
}

/// Finds the one diagnostic whose message contains `needle` and checks its place.
fn expect(
    diags: &Diagnostics,
    severity: Severity,
    needle: &str,
    line: u32,
    column: u32,
) -> Diagnostic {
    let found: Vec<&Diagnostic> = diags
        .iter()
        .filter(|d| d.message.contains(needle))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "want one diagnostic with {needle:?} in:\n{diags}"
    );
    let d = found[0].clone();
    assert_eq!(d.severity, severity, "{d}");
    assert_eq!((d.line, d.column), (line, column), "{d}");
    d
}

#[test]
fn valid_three_node_mesh() {
    let bytes = fixture("valid.yml");
    let cfg = load("valid.yml", &bytes).unwrap_or_else(|d| panic!("{d}"));
    // No warnings: every key of the fixture does something.
    let warnings: Vec<String> = cfg.warnings().iter().map(|w| w.to_string()).collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(&cfg.source()[..], &bytes[..]);
    assert_eq!(cfg.file_name(), "valid.yml");

    let g = &cfg.global;
    assert_eq!(g.domain, "connectopus.test");
    assert_eq!(g.subnet.to_string(), "fd00::/16");
    assert_eq!(g.version, 7);
    assert_eq!(g.authorized_keys.len(), 1);
    assert_eq!(g.authorized_keys[0].comment(), Some("alice@laptop"));
    assert_eq!(g.timers.keepalive_idle.get(), Duration::from_millis(500));
    assert_eq!(g.timers.node_dead_after.get(), Duration::from_secs(60));
    assert_eq!(cfg.nodes.keys().collect::<Vec<_>>(), ["bar", "baz", "foo"]);

    let foo = cfg.node("foo").unwrap();
    assert_eq!(foo.address, "fd00::1:1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(foo.prefixes[0].to_string(), "fd00:1::/64");
    assert_eq!(foo.tun_name("foo").as_deref(), Some("cx-foo"));
    assert_eq!(foo.cpctl.port, Some(8123));
    assert_eq!(
        foo.metrics.listen_addr(),
        Some("[::1]:9469".parse().unwrap())
    );
    assert_eq!(cfg.node("bar").unwrap().metrics.listen_addr(), None);
    assert_eq!(foo.tun_devs["host"].device, "ctun");
    assert!((foo.tun_devs["host"].cost - 1.5).abs() < 1e-9);
    assert_eq!(
        foo.namespaces["sandbox"].services["web"].command,
        "python3 -m http.server 8080"
    );
    let BackendConfig::DtlsDialer(b1) = &foo.backends["b1"] else {
        panic!("b1 is {:?}", foo.backends["b1"]);
    };
    assert_eq!(b1.peer.host, PeerHost::Ip("2001:db8::2".parse().unwrap()));
    assert_eq!(b1.peer.port, 4444);
    assert_eq!(b1.peer_node.as_deref(), Some("bar"));
    assert!((b1.cost - 2.0).abs() < 1e-9);
    assert_eq!(b1.mtu, Some(1400));
    let psk = b1.psk().unwrap();
    assert_eq!(psk.kind(), SecretKind::Psk);
    assert_eq!(
        psk.file_path().unwrap().to_str(),
        Some("/etc/connectopus/link.psk")
    );
    assert!(b1.client_key().is_none());

    let bar = cfg.node("bar").unwrap();
    assert!(bar.dns.disable);
    assert_eq!(bar.tun_name("bar").as_deref(), Some("cx-bar"));
    let BackendConfig::DtlsListener(l) = &bar.backends["in"] else {
        panic!()
    };
    assert_eq!(l.port, Some(4444));
    assert_eq!(l.listen_ip, Some("::".parse().unwrap()));
    assert!((l.cost - 1.0).abs() < 1e-9, "cost defaults to 1.0");
    let BackendConfig::TcpListener(t) = &bar.backends["tls-in"] else {
        panic!()
    };
    assert!(t.tls && t.require_client_cert);
    assert_eq!(t.server_key().unwrap().kind(), SecretKind::PrivateKey);
    assert_eq!(bar.services["echo"].port, 7);

    let baz = cfg.node("baz").unwrap();
    assert_eq!(baz.tun_name("baz"), None);
    let BackendConfig::TcpDialer(d) = &baz.backends["up"] else {
        panic!()
    };
    assert_eq!(d.peer.host, PeerHost::Name("bar.example.net".into()));
    assert_eq!(d.server_name.as_deref(), Some("bar.example.net"));
    // `config check` finds nothing either.
    let found = check("valid.yml", &bytes);
    assert!(found.0.is_empty(), "{found}");
}

/// `cpctl.socket_file` and `cpctl.no_socket` do something now: no warning about them. A
/// socket_file that names no file is an error.
#[test]
fn cpctl_socket_keys_are_used_without_warnings() {
    let yaml = "global:\n  domain: a.test\n  subnet: fd00::/64\nnodes:\n  foo:\n    address: \"fd00::1\"\n    cpctl:\n      port: 8123\n      no_socket: true\n      socket_file: foo-admin.sock\n";
    let cfg = load("c.yml", yaml.as_bytes()).unwrap_or_else(|d| panic!("{d}"));
    let warnings: Vec<String> = cfg.warnings().iter().map(|w| w.to_string()).collect();
    assert!(
        !warnings.iter().any(|w| w.contains("cpctl")),
        "{warnings:?}"
    );
    let cpctl = &cfg.nodes["foo"].cpctl;
    assert!(cpctl.no_socket);
    assert_eq!(
        cpctl.socket_file.as_deref(),
        Some(std::path::Path::new("foo-admin.sock"))
    );
    // A relative socket_file is under the control-socket directory, an absolute one as it
    // is, and without one the default.
    let dir = std::path::Path::new("/run/connectopus");
    let default = dir.join("foo.sock");
    assert_eq!(
        cpctl.socket_path(dir, default.clone()),
        dir.join("foo-admin.sock")
    );
    let mut absolute = cpctl.clone();
    absolute.socket_file = Some("/home/a/foo.sock".into());
    assert_eq!(
        absolute.socket_path(dir, default.clone()),
        std::path::PathBuf::from("/home/a/foo.sock")
    );
    absolute.socket_file = None;
    assert_eq!(absolute.socket_path(dir, default.clone()), default);
    for bad in ["\"\"", "/run/connectopus/"] {
        let src = yaml.replace("foo-admin.sock", bad);
        let d = check("c.yml", src.as_bytes());
        expect(&d, Severity::Error, "socket_file", 10, 20);
    }
}

#[test]
fn unknown_key() {
    let d = errors("unknown_key.yml");
    let e = expect(&d, Severity::Error, "unknown field `adress`", 7, 5);
    assert_eq!(e.path, "nodes.foo.adress");
    assert_eq!(e.help.as_deref(), Some("did you mean `address`?"));
}

#[test]
fn duplicate_key_points_at_second_occurrence() {
    let d = errors("duplicate_key.yml");
    expect(&d, Severity::Error, "duplicate mapping key `foo`", 10, 3);
}

#[test]
fn ipv4_address_is_rejected() {
    let d = errors("ipv4_address.yml");
    let e = expect(&d, Severity::Error, "invalid IPv6 address", 7, 14);
    assert!(e.message.contains("198.18.0.1"), "{e}");
    assert_eq!(e.len, "198.18.0.1".len() as u32);
}

#[test]
fn a_dead_interval_past_an_hour_is_refused_where_it_is_written() {
    let d = errors("dead_interval_too_long.yml");
    let e = expect(&d, Severity::Error, "must be at most 1h", 6, 20);
    assert_eq!(e.path, "global.timers.dead_interval");
}

#[test]
fn address_outside_subnet() {
    let d = errors("outside_subnet.yml");
    let e = expect(
        &d,
        Severity::Error,
        "outside global.subnet fd00::/16",
        7,
        14,
    );
    assert_eq!(e.path, "nodes.foo.address");
    assert_eq!(
        e.to_string(),
        "error: address fd01::1 is outside global.subnet fd00::/16\n  --> outside_subnet.yml:7:14 (nodes.foo.address)\n   |\n 7 |     address: fd01::1\n   |              ^^^^^^^"
    );
}

#[test]
fn missing_node_for_id_lists_known_nodes() {
    let cfg = load("valid.yml", &fixture("valid.yml")).unwrap();
    let e = cfg.node("qux").unwrap_err();
    assert!(e.message.contains("no node named `qux`"), "{e}");
    assert!(e.message.contains("bar, baz, foo"), "{e}");
    assert_eq!((e.line, e.column), (13, 1), "points at `nodes:`: {e}");
}

#[test]
fn bad_backend_type() {
    let d = errors("bad_backend_type.yml");
    let e = expect(&d, Severity::Error, "unknown backend type", 10, 15);
    assert!(
        e.message.contains("quic-dialer") && e.message.contains("dtls-listener"),
        "{e}"
    );
}

#[test]
fn key_of_another_backend_type_is_named() {
    let d = errors("wrong_backend_key.yml");
    let e = expect(&d, Severity::Error, "unknown field `port`", 12, 9);
    assert_eq!(e.path, "nodes.foo.backends.b1.port");
    assert!(
        e.help
            .unwrap()
            .contains("dtls-listener, tcp-listener, udp-listener")
    );
}

#[test]
fn psk_with_client_key() {
    let d = errors("psk_with_client_key.yml");
    expect(
        &d,
        Severity::Error,
        "`client_key_file` is a certificate-mode parameter",
        14,
        9,
    );
    expect(
        &d,
        Severity::Error,
        "`client_cert_file` is a certificate-mode parameter",
        13,
        9,
    );
}

#[test]
fn peer_node_unknown() {
    let d = errors("peer_node_unknown.yml");
    let e = expect(&d, Severity::Error, "peer_node `qux` is not a node", 12, 20);
    assert!(e.message.contains("bar, foo"), "{e}");
}

#[test]
fn duplicate_address() {
    let d = errors("duplicate_address.yml");
    let e = expect(&d, Severity::Error, "duplicate address fd00::1:1", 9, 14);
    assert!(
        e.message
            .contains("nodes.bar.address at duplicate_address.yml:7:14"),
        "{e}"
    );
}

#[test]
fn inline_secret_is_a_warning_and_never_printed() {
    let bytes = fixture("inline_secret.yml");
    let cfg = load("inline_secret.yml", &bytes).unwrap_or_else(|d| panic!("{d}"));
    let w = Diagnostics(cfg.warnings().to_vec());
    let d = expect(&w, Severity::Warning, "inline secret `psk`", 12, 14);
    assert!(d.message.contains("distributed to every node"));
    let BackendConfig::DtlsListener(l) = &cfg.node("foo").unwrap().backends["b1"] else {
        panic!()
    };
    let psk = l.psk().unwrap();
    assert!(psk.is_inline());
    assert_eq!(
        psk.resolve().unwrap().expose(),
        b"correct horse battery staple"
    );
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("correct horse"), "Debug leaks the secret");
    assert!(!d.to_string().contains("correct horse"), "{d}");
    assert_eq!(
        d.snippet.as_deref(),
        Some("        psk: ******************************")
    );
}

#[test]
fn check_reports_every_finding_in_order() {
    let src = "global:\n  domain: Bad_Domain\n  subnet: fd00::/16\n  authorized_keys: []\nnodes:\n  foo:\n    address: fd01::1\n    backends:\n      b:\n        type: tcp-listener\n        cost: -1\n";
    let d = check("m.yml", src.as_bytes());
    let lines: Vec<(u32, Severity)> = d.iter().map(|x| (x.line, x.severity)).collect();
    assert_eq!(
        lines,
        [
            (2, Severity::Error),   // domain
            (4, Severity::Warning), // authorized_keys empty
            (7, Severity::Error),   // outside subnet
            (9, Severity::Error),   // listener without port
            (11, Severity::Error),  // cost
        ],
        "{d}"
    );
    assert!(d.has_errors());
    assert_eq!(d.errors().count(), 4);
}

#[test]
fn json_output() {
    let d = errors("outside_subnet.yml");
    let json = serde_json::to_value(&d).unwrap();
    let first = &json[0];
    assert_eq!(first["severity"], "error");
    assert_eq!(first["path"], "nodes.foo.address");
    assert_eq!(first["line"], 7);
    assert_eq!(first["column"], 14);
    assert_eq!(first["file"], "outside_subnet.yml");
    assert_eq!(first["snippet"], "    address: fd01::1");
}

const HEAD: &str = "global:\n  domain: connectopus.test\n  subnet: fd00::/16\n  authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA a]\nnodes:\n  foo:\n    address: fd00::1:1\n";
const ID1: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB";

/// Every other semantic rule: (YAML appended after `nodes.foo.address`, severity, message
/// substring, line, column).
#[test]
fn semantic_rules() {
    let id_line =
        format!("    identity: {ID1} x\n  bar:\n    address: fd00::2:1\n    identity: {ID1} y\n");
    let cases: Vec<(String, Severity, &str, u32, u32)> = vec![
        ("    prefixes: [fd01::/64]\n".into(), Severity::Error, "prefix fd01::/64 is outside global.subnet", 8, 16),
        ("    prefixes: [fd00:1::/64]\n  bar:\n    address: fd00::2:1\n    prefixes: [fd00:1:0:0:8000::/65]\n".into(), Severity::Error, "overlaps fd00:1::/64 of node foo", 11, 16),
        ("  bar:\n    address: fd00::2:1\n    tun_devs:\n      host: {device: ctun, address: fd00::1:1}\n".into(), Severity::Error, "duplicate address fd00::1:1", 11, 37),
        (id_line, Severity::Error, "duplicate identity", 11, 15),
        (format!("  bar:\n    address: fd00::2:1\n    identity: {ID1} bar\n"), Severity::Error, "node foo has no identity, but 1 node(s) of this mesh have one (nodes.bar.identity at m.yml:10:15)", 6, 3),
        ("    identity: ssh-ed25519 AAAA\n".into(), Severity::Error, "malformed identity", 8, 15),
        ("    backends:\n      b: {type: tcp-dialer, peer: \"h:1\", client_key_file: /k, client_cert_file: /c}\n".into(), Severity::Error, "`client_key_file` is a TLS parameter but tls is off", 9, 42),
        ("    backends:\n      b: {type: tcp-dialer, peer: \"h:1\", cost: 0}\n".into(), Severity::Error, "cost must be a finite number > 0", 9, 48),
        ("    backends:\n      b: {type: dtls-listener}\n".into(), Severity::Error, "listener without port", 9, 7),
        ("    backends:\n      b: {type: dtls-listener, port: 1}\n".into(), Severity::Error, "needs server_cert and server_key", 9, 7),
        ("    backends:\n      b: {type: tcp-listener, port: 1, tls: true, server_cert_file: /c, server_key: k}\n".into(), Severity::Warning, "inline secret `server_key`", 9, 85),
        ("    backends:\n      b: {type: dtls-dialer, peer: \"h:1\", psk: a, psk_file: /p}\n".into(), Severity::Error, "`psk` and `psk_file` are both set", 9, 51),
        ("    backends:\n      x: {type: dtls-dialer, peer: \"h:1\", psk_file: /p}\n    services:\n      x: {port: 7, command: cat}\n".into(), Severity::Error, "name `x` is already used by nodes.foo.backends.x", 11, 7),
        ("    backends:\n      b: {type: dtls-dialer, peer: \"h:1\", psk_file: /p, peer_node: foo}\n".into(), Severity::Error, "is this node itself", 9, 68),
        ("    metrics:\n      listen: \"::1:9469\"\n".into(), Severity::Error, "metrics listen `::1:9469` is not an address and port", 9, 15),
        ("    metrics: {listen: \"[::1]:0\"}\n".into(), Severity::Error, "metrics port must be 1..=65535", 8, 23),
        ("    workers: 0\n".into(), Severity::Error, "workers must be 1..=64 (dataplane threads), not 0", 8, 14),
        ("    workers: 65\n".into(), Severity::Error, "workers must be 1..=64", 8, 14),
        ("    workers: 1\n    cpu_local: true\n".into(), Severity::Warning, "cpu_local needs worker threads", 9, 16),
        ("    backends:\n      b: {type: tcp-listener, port: 9469}\n    metrics: {listen: \"[::1]:9469\"}\n".into(), Severity::Error, "tcp port 9469 is already used by nodes.foo.backends.b", 10, 23),
        ("    backends:\n      b: {type: udp-listener}\n".into(), Severity::Error, "listener without port", 9, 7),
        ("    backends:\n      a: {type: dtls-listener, port: 7, psk_file: /p}\n      b: {type: udp-listener, port: 7}\n".into(), Severity::Error, "UDP port 7 is already used by nodes.foo.backends.a", 10, 37),
        ("    backends:\n      b: {type: udp-dialer, peer: \"h:1\", mtu: 1000}\n".into(), Severity::Error, "mtu 1000 is out of range", 9, 47),
        ("    backends:\n      b: {type: udp-dialer, peer: \"h:1\", psk_file: /p}\n".into(), Severity::Error, "unknown field `psk_file`", 9, 42),
        ("    backends:\n      b: {type: dtls-dialer, peer: \"h:1\", psk_file: /p, psk_cipher: chacha20}\n".into(), Severity::Error, "unknown variant `chacha20`", 9, 69),
        ("    backends:\n      b: {type: dtls-listener, port: 1, server_cert_file: /c, server_key_file: /k, psk_cipher: aes-128-gcm}\n".into(), Severity::Error, "psk_cipher chooses among PSK suites; it needs psk or psk_file", 9, 84),
    ];
    for (tail, severity, needle, line, column) in cases {
        let src = format!("{HEAD}{tail}");
        let d = check("m.yml", src.as_bytes());
        let found: Vec<&Diagnostic> = d.iter().filter(|x| x.message.contains(needle)).collect();
        assert_eq!(
            found.len(),
            1,
            "want {needle:?} once for\n{tail}\ngot:\n{d}"
        );
        assert_eq!(
            (found[0].severity, found[0].line, found[0].column),
            (severity, line, column),
            "{}",
            found[0]
        );
    }
}

#[test]
fn psk_cipher_is_read_on_both_dtls_backend_types() {
    let src = format!(
        "{HEAD}    backends:\n      d: {{type: dtls-dialer, peer: \"h:1\", psk_file: /p, psk_cipher: chacha20-poly1305}}\n      l: {{type: dtls-listener, port: 7, psk_file: /p, psk_cipher: aes-128-gcm}}\n      n: {{type: dtls-listener, port: 8, psk_file: /p}}\n"
    );
    let d = check("m.yml", src.as_bytes());
    assert!(d.iter().all(|x| x.severity != Severity::Error), "{d}");
    let mesh = load("m.yml", src.as_bytes()).unwrap();
    let backends = &mesh.nodes["foo"].backends;
    let cipher = |name: &str| match &backends[name] {
        BackendConfig::DtlsDialer(b) => b.psk_cipher,
        BackendConfig::DtlsListener(b) => b.psk_cipher,
        other => panic!("{other:?}"),
    };
    assert_eq!(cipher("d"), Some(PskCipher::ChaCha20Poly1305));
    assert_eq!(cipher("l"), Some(PskCipher::Aes128Gcm));
    assert_eq!(cipher("n"), None);
}

#[test]
fn cpu_local_is_off_unless_asked_for_and_a_bool() {
    let mesh = load("m.yml", HEAD.as_bytes()).unwrap();
    assert!(!mesh.nodes["foo"].cpu_local);
    let src = format!("{HEAD}    cpu_local: true\n");
    let mesh = load("m.yml", src.as_bytes()).unwrap();
    assert!(mesh.nodes["foo"].cpu_local);
    let src = format!("{HEAD}    cpu_local: sometimes\n");
    let d = check("m.yml", src.as_bytes());
    let error = d
        .iter()
        .find(|x| x.severity == Severity::Error)
        .unwrap_or_else(|| panic!("no error: {d}"));
    assert_eq!(error.line, 8, "{error}");
    assert!(error.message.contains("bool"), "{error}");
}

/// `global.subnet4` and `address4`: outside the subnet, without a subnet, duplicated.
#[test]
fn ipv4_rules() {
    let head4 = HEAD.replace(
        "  subnet: fd00::/16\n",
        "  subnet: fd00::/16\n  subnet4: 198.18.0.0/15\n",
    );
    let cases: Vec<(String, &str, u32, u32)> = vec![
        (
            format!("{head4}    address4: 10.0.0.1\n"),
            "address4 10.0.0.1 is outside global.subnet4 198.18.0.0/15",
            9,
            15,
        ),
        (
            format!("{HEAD}    address4: 198.18.0.1\n"),
            "address4 198.18.0.1 needs global.subnet4",
            8,
            15,
        ),
        (
            format!(
                "{head4}    address4: 198.18.0.1\n  bar:\n    address: fd00::2:1\n    tun_devs:\n      host: {{device: ctun, address: fd00::2:2, address4: 198.18.0.1}}\n"
            ),
            "duplicate address4 198.18.0.1: already used by nodes.foo.address4 at m.yml:9:15",
            13,
            58,
        ),
        // A namespace's address4: outside subnet4, without subnet4, the same as a tun_dev's.
        (
            format!(
                "{head4}    namespaces:\n      sandbox: {{address: fd00::1:3, address4: 10.1.2.3}}\n"
            ),
            "address4 10.1.2.3 is outside global.subnet4 198.18.0.0/15",
            10,
            47,
        ),
        (
            format!(
                "{HEAD}    namespaces:\n      sandbox:\n        address: fd00::1:3\n        address4: 198.18.0.3\n"
            ),
            "address4 198.18.0.3 needs global.subnet4",
            11,
            19,
        ),
        (
            format!(
                "{head4}    tun_devs:\n      host: {{device: ctun, address: fd00::1:2, address4: 198.18.0.7}}\n    namespaces:\n      sandbox: {{address: fd00::1:3, address4: 198.18.0.7}}\n"
            ),
            "duplicate address4 198.18.0.7: already used by nodes.foo.tun_devs.host.address4 at m.yml:10:58",
            12,
            47,
        ),
    ];
    for (src, needle, line, column) in cases {
        let d = check("m.yml", src.as_bytes());
        let found: Vec<&Diagnostic> = d.iter().filter(|x| x.message.contains(needle)).collect();
        assert_eq!(found.len(), 1, "want {needle:?} once for\n{src}\ngot:\n{d}");
        assert_eq!(
            (found[0].severity, found[0].line, found[0].column),
            (Severity::Error, line, column),
            "{}",
            found[0]
        );
    }
    let ok = format!(
        "{head4}    address4: 198.18.0.1\n    tun_devs:\n      host: {{device: ctun, address: fd00::1:2, address4: 198.19.255.254}}\n    namespaces:\n      sandbox: {{address: fd00::1:3, address4: 198.18.0.3}}\n"
    );
    let cfg = load("m.yml", ok.as_bytes()).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(cfg.global.subnet4.unwrap().to_string(), "198.18.0.0/15");
    assert_eq!(
        cfg.nodes["foo"].address4,
        Some("198.18.0.1".parse().unwrap())
    );
    assert_eq!(
        cfg.nodes["foo"].namespaces["sandbox"].address4,
        Some("198.18.0.3".parse().unwrap())
    );
    let d = check(
        "m.yml",
        head4.replace("198.18.0.0/15", "198.18.0.0/33").as_bytes(),
    );
    expect(&d, Severity::Error, "length must be 0..=32", 4, 12);
    let d = check(
        "m.yml",
        head4.replace("198.18.0.0/15", "198.18.0.1/15").as_bytes(),
    );
    expect(
        &d,
        Severity::Warning,
        "subnet4 198.18.0.1/15 has host bits set",
        4,
        12,
    );
    // Without subnet4 nothing changes.
    assert!(
        load("m.yml", HEAD.as_bytes())
            .unwrap()
            .global
            .subnet4
            .is_none()
    );
}

#[test]
fn authorized_keys_rules() {
    let src = "global:\n  domain: connectopus.test\n  subnet: fd00::/16\n  authorized_keys: []\nnodes:\n  foo: {address: fd00::1}\n";
    let d = check("m.yml", src.as_bytes());
    expect(&d, Severity::Warning, "no authorized_keys", 4, 3);
    assert!(!d.has_errors());
    let src = src.replace("[]", "[ssh-ed25519 AAAA@@ x]");
    let d = check("m.yml", src.as_bytes());
    expect(
        &d,
        Severity::Error,
        "malformed key in authorized_keys",
        4,
        21,
    );
}

#[test]
fn non_utf8_and_non_mapping_inputs() {
    let d = check("m.yml", b"global:\n  domain: \xff\n");
    expect(&d, Severity::Error, "not valid UTF-8", 2, 11);
    let d = check("m.yml", b"- 1\n");
    expect(&d, Severity::Error, "expected a mapping", 1, 1);
    let d = check("m.yml", b"");
    assert!(d.has_errors());
}

#[test]
fn docs_example_loads_cleanly() {
    let doc = include_str!("../../../docs/config.md");
    let start = doc.find("```yaml\n").unwrap() + "```yaml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let cfg = load("config.md", &doc.as_bytes()[start..end]).unwrap_or_else(|d| panic!("{d}"));
    assert!(cfg.warnings().is_empty(), "{:?}", cfg.warnings());
    assert_eq!(cfg.nodes.len(), 3);
}

/// Found by the `config_bytes` fuzzer: the YAML parser ends a line at a lone `\r`, so a
/// diagnostic's line number counted those lines while its snippet was looked up by `\n`
/// only: `line 54` of a 12-line file, without a snippet.
#[test]
fn a_diagnostic_after_lone_carriage_returns_shows_the_line_it_names() {
    let bytes =
        b"global:\r  domain: connectopus.test\r  subnet: fd00::/16\r  bogus: 1\rnodes: {}\n";
    let diags = connectopus_config::check("cr.yml", bytes);
    let d = diags
        .iter()
        .find(|d| d.message.contains("bogus"))
        .unwrap_or_else(|| panic!("no diagnostic names the unknown key: {diags}"));
    assert_eq!(d.line, 4, "{d}");
    assert_eq!(d.snippet.as_deref(), Some("  bogus: 1"), "{d}");
}
