//! `global.ephemeral` and `nodes.<name>.issue` (docs/dynamic-mesh.md §1.1): the values a valid
//! file gives, and every rule with the exact place of its diagnostic.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use connectopus_config::{BackendConfig, Diagnostic, Severity, check, load};

const K1: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIC ci-7";
const K2: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMD fleet";

/// A valid mesh with two issuers; line numbers are in the comments of the tests below.
fn base() -> String {
    format!(
        "global:
  domain: connectopus.test
  subnet: fd00:cafe::/48
  ephemeral:
    lease: 2m
    identities: [{K1}]
    names: [\"job-*\"]
    backends:
      hub1: {{type: dtls-dialer, peer: \"[2001:db8::1]:4444\", peer_node: hub1, psk_file: /etc/psk}}
nodes:
  hub1:
    address: fd00:cafe::1
    issue: {{prefix: \"fd00:cafe:0:e1::/112\", lease: 1m}}
  hub2:
    address: fd00:cafe::2
    issue:
      prefix: fd00:cafe:0:e2::/112
"
    )
}

#[test]
fn a_valid_file_gives_pools_leases_and_keys() {
    let cfg = load("m.yml", base().as_bytes()).unwrap_or_else(|d| panic!("{d}"));
    let e = cfg.global.ephemeral.as_ref().unwrap();
    assert_eq!(e.lease(), Duration::from_secs(120));
    assert_eq!(e.identities.len(), 1);
    assert!(e.join_keys.is_empty());
    assert_eq!(e.names, ["job-*"]);
    assert!(matches!(e.backends["hub1"], BackendConfig::DtlsDialer(_)));
    let hub1 = cfg.nodes["hub1"].issue.as_ref().unwrap();
    let hub2 = cfg.nodes["hub2"].issue.as_ref().unwrap();
    assert_eq!(hub1.prefix.to_string(), "fd00:cafe:0:e1::/112");
    assert_eq!(hub1.lease(Some(e)), Duration::from_secs(60));
    assert_eq!(hub2.lease(Some(e)), Duration::from_secs(120));
    assert_eq!(hub2.lease(None), Duration::from_secs(300));
    assert!(hub1.serves_joins(Some(e)) && hub1.containers);
    assert!(!hub1.serves_joins(None));
    // A mesh without the keys is unchanged.
    let plain = "global:\n  domain: connectopus.test\n  subnet: fd00:cafe::/48\nnodes:\n  a:\n    address: fd00:cafe::1\n";
    let cfg = load("m.yml", plain.as_bytes()).unwrap_or_else(|d| panic!("{d}"));
    assert!(cfg.global.ephemeral.is_none() && cfg.nodes["a"].issue.is_none());
}

/// Applies `edit` to the base file and expects exactly one diagnostic containing `needle`, at
/// `line:column`, with `severity`.
fn expect(
    edit: &dyn Fn(String) -> String,
    severity: Severity,
    needle: &str,
    line: u32,
    column: u32,
) {
    let src = edit(base());
    let d = check("m.yml", src.as_bytes());
    let found: Vec<&Diagnostic> = d.iter().filter(|x| x.message.contains(needle)).collect();
    assert_eq!(found.len(), 1, "want {needle:?} once for\n{src}\ngot:\n{d}");
    assert_eq!(
        (found[0].severity, found[0].line, found[0].column),
        (severity, line, column),
        "{}",
        found[0]
    );
}

fn replace(from: &'static str, to: &'static str) -> impl Fn(String) -> String {
    move |s: String| {
        assert!(s.contains(from), "{from:?} not in the base file");
        s.replacen(from, to, 1)
    }
}

#[test]
fn pool_rules() {
    use Severity::Error;
    expect(
        &replace(
            "prefix: fd00:cafe:0:e2::/112",
            "prefix: fd00:cafe:0:e1::8000/113",
        ),
        Error,
        "pool fd00:cafe:0:e1::8000/113 overlaps fd00:cafe:0:e1::/112, the pool of node hub1 (m.yml:13:21)",
        17,
        15,
    );
    expect(
        &replace("prefix: fd00:cafe:0:e2::/112", "prefix: fd00:beef::/112"),
        Error,
        "pool fd00:beef::/112 is outside global.subnet fd00:cafe::/48",
        17,
        15,
    );
    expect(
        &replace(
            "prefix: fd00:cafe:0:e2::/112",
            "prefix: fd00:cafe:0:e2::/127",
        ),
        Error,
        "is too small",
        17,
        15,
    );
    expect(
        &replace("prefix: fd00:cafe:0:e2::/112", "prefix: fd00:cafe::/112"),
        Error,
        "pool fd00:cafe::/112 contains fd00:cafe::1, the static address of nodes.hub1.address (m.yml:12:14)",
        17,
        15,
    );
    expect(
        &replace(
            "    address: fd00:cafe::1\n",
            "    address: fd00:cafe::1\n    prefixes: [fd00:cafe:0:e2::/120]\n",
        ),
        Error,
        "pool fd00:cafe:0:e2::/112 overlaps fd00:cafe:0:e2::/120, a prefix of node hub1 (m.yml:13:16)",
        18,
        15,
    );
    expect(
        &replace(
            "prefix: fd00:cafe:0:e2::/112",
            "prefix: fd00:cafe:0:e2::1/112",
        ),
        Severity::Warning,
        "pool fd00:cafe:0:e2::1/112 has host bits set",
        17,
        15,
    );
}

#[test]
fn key_rules() {
    use Severity::Error;
    expect(
        &replace("    identities: [", "    other: ["),
        Error,
        "unknown field `other`",
        6,
        5,
    );
    let no_keys = |s: String| {
        let start = s.find("    identities").unwrap();
        let end = start + s[start..].find('\n').unwrap() + 1;
        format!("{}{}", &s[..start], &s[end..])
    };
    expect(&no_keys, Error, "joining is never anonymous", 4, 3);
    expect(
        &replace(
            "identities: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIC ci-7]",
            "identities: [ssh-rsa AAAAB3NzaC1yc2EAAAABAQ==]",
        ),
        Error,
        "identities keys must be ssh-ed25519",
        6,
        18,
    );
    expect(
        &|s: String| {
            s.replace(
                "  ephemeral:\n",
                &format!("  revoked_keys: [{K1}]\n  ephemeral:\n"),
            )
        },
        Error,
        "key is listed in global.revoked_keys",
        7,
        18,
    );
    expect(
        &|s: String| {
            s.replace(
                "    identities:",
                &format!("    join_keys: [{K2}]\n    identities:"),
            )
            .replace(
                "    address: fd00:cafe::2\n",
                &format!("    address: fd00:cafe::2\n    identity: {K1}\n"),
            )
        },
        Error,
        "key is the identity of static node hub2 (m.yml:17:15)",
        7,
        18,
    );
    expect(
        &replace(
            "identities: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIC ci-7]",
            "identities: [ssh-ed25519 AAAA]",
        ),
        Error,
        "malformed key in identities",
        6,
        18,
    );
}

#[test]
fn name_lease_and_backend_rules() {
    use Severity::{Error, Warning};
    expect(
        &replace("names: [\"job-*\"]", "names: [\"job\"]"),
        Error,
        "name pattern `job` must hold exactly one `*` (it has 0)",
        7,
        13,
    );
    expect(
        &replace(
            "      prefix: fd00:cafe:0:e2::/112\n",
            "      prefix: fd00:cafe:0:e2::/112\n      names: [\"*-H2\"]\n",
        ),
        Error,
        "name pattern `*-H2` holds `H`",
        18,
        15,
    );
    expect(
        &replace("lease: 2m", "lease: 5s"),
        Error,
        "lease 5s is out of range: 10s..=1h",
        5,
        12,
    );
    expect(
        &replace("lease: 1m}", "lease: 2h}"),
        Error,
        "lease 120m is out of range",
        13,
        52,
    );
    expect(
        &replace("lease: 2m", "lease: 15s"),
        Error,
        "lease 15s must be at least twice timers.update_interval (10s)",
        5,
        12,
    );
    expect(
        &replace(
            "type: dtls-dialer, peer: \"[2001:db8::1]:4444\", peer_node: hub1,",
            "type: dtls-listener, port: 4444,",
        ),
        Error,
        "an ephemeral node only dials: `dtls-listener` is not a dialer",
        9,
        20,
    );
    expect(
        &replace("peer_node: hub1", "peer_node: hub9"),
        Error,
        "peer_node `hub9` is not a node of this mesh",
        9,
        72,
    );
    expect(
        &replace(
            "psk_file: /etc/psk}",
            "psk_file: /etc/psk, client_cert_file: /c}",
        ),
        Error,
        "`client_cert_file` is a certificate-mode parameter and cannot be combined with psk",
        9,
        98,
    );
    expect(
        &|s: String| {
            s.replace("lease: 1m}", "lease: 1m, ephemeral: false}")
                .replace(
                    "      prefix: fd00:cafe:0:e2::/112\n",
                    "      prefix: fd00:cafe:0:e2::/112\n      ephemeral: false\n",
                )
        },
        Warning,
        "nobody can join yet",
        4,
        3,
    );
    let without_ephemeral = |s: String| {
        let start = s.find("  ephemeral:").unwrap();
        let end = s.find("nodes:").unwrap();
        format!("{}{}", &s[..start], &s[end..]).replace(
            "      prefix: fd00:cafe:0:e2::/112\n",
            "      prefix: fd00:cafe:0:e2::/112\n      ephemeral: true\n",
        )
    };
    expect(
        &without_ephemeral,
        Error,
        "issue.ephemeral needs global.ephemeral",
        12,
        7,
    );
}

/// The base mesh with `global.delegated` (line 10 is its first entry's `node`).
fn with_delegated(entries: &str) -> String {
    base().replace("nodes:\n", &format!("  delegated:\n{entries}nodes:\n"))
}

#[test]
fn delegated_values_and_rules() {
    let src = with_delegated(
        "    - node: hub1\n      interface: wan0\n      length: 40\n      use: 255\n    - {node: hub2, interface: up1}\n",
    );
    let cfg = load("m.yml", src.as_bytes()).unwrap_or_else(|d| panic!("{d}"));
    let d = &cfg.global.delegated;
    assert_eq!(d.len(), 2);
    assert_eq!(
        (
            d[0].node.as_str(),
            d[0].interface.as_str(),
            d[0].length,
            d[0].use_,
            d[0].egress
        ),
        ("hub1", "wan0", Some(40), 255, false)
    );
    assert_eq!((d[1].length, d[1].use_), (None, 0));
    assert!(
        load("m.yml", base().as_bytes())
            .unwrap()
            .global
            .delegated
            .is_empty()
    );

    let one = |src: String, severity: Severity, needle: &str, line: u32, column: u32| {
        let diags = check("m.yml", src.as_bytes());
        let found: Vec<&Diagnostic> = diags
            .iter()
            .filter(|x| x.message.contains(needle))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "want {needle:?} once for\n{src}\ngot:\n{diags}"
        );
        assert_eq!(
            (found[0].severity, found[0].line, found[0].column),
            (severity, line, column),
            "{}",
            found[0]
        );
    };
    one(
        with_delegated("    - node: gw\n      interface: wan0\n"),
        Severity::Error,
        "`gw` is not a node of this mesh",
        11,
        13,
    );
    one(
        with_delegated(
            "    - {node: hub1, interface: wan0}\n    - {node: hub1, interface: wan1}\n",
        ),
        Severity::Error,
        "already delegates in global.delegated[0]",
        12,
        14,
    );
    one(
        with_delegated("    - node: hub1\n      interface: a/b\n"),
        Severity::Error,
        "is not an interface name",
        12,
        18,
    );
    one(
        with_delegated("    - node: hub1\n      interface: wan0\n      length: 56\n"),
        Severity::Error,
        "length 56 must be 1..=48",
        13,
        15,
    );
    one(
        with_delegated(
            "    - node: hub1\n      interface: wan0\n      length: 40\n      use: 256\n",
        ),
        Severity::Error,
        "use 256 is past the last /48 inside a /40: at most 255",
        14,
        12,
    );
    // `egress` is implemented: no warning, and it parses.
    let src = with_delegated("    - node: hub1\n      interface: wan0\n      egress: true\n");
    let diags = check("m.yml", src.as_bytes());
    assert!(
        !diags.iter().any(|x| x.message.contains("egress")),
        "{diags}"
    );
    let cfg = load("m.yml", src.as_bytes()).unwrap_or_else(|d| panic!("{d}"));
    assert!(cfg.global.delegated[0].egress);
}
