//! The CNI plugin's untrusted inputs (`daemon/cni`), through the plugin's own parsers: the
//! bytes are the network configuration on stdin (with its `prevResult` and
//! `cni.dev/valid-attachments`), VERSION's stdin, the values of `CNI_CONTAINERID`,
//! `CNI_IFNAME` and `CNI_ARGS`, and a reply line from the node's control socket. Never a
//! panic; a configuration that parses re-serialises to JSON that parses to the same
//! configuration; a `prevResult` that parses round-trips; the names made from the
//! environment are names the kernel takes.

#![no_main]

use connectopus_cni::netns::host_ifname;
use connectopus_cni::node::{self, NodeError};
use connectopus_cni::spec::{CniError, CniResult, NetConf, SUPPORTED_VERSIONS, code};
use connectopus_cni::verbs::{self, Env};
use connectopus_netlink::link::check_name;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    stdin_config(data);
    version(data);
    verbs_without_a_container(data);
    environment_values(data);
    if let Ok(line) = std::str::from_utf8(data) {
        // The plugin reads the reply with `read_line` into a String: UTF-8 or an I/O error.
        node_reply(line);
    }
});

fn stdin_config(data: &[u8]) {
    let conf = match verbs::parse_conf(data) {
        Ok(conf) => conf,
        Err(error) => {
            assert!(
                [
                    code::UNDECODABLE,
                    code::INVALID_CONFIG,
                    code::INCOMPATIBLE_VERSION
                ]
                .contains(&error.code),
                "{error:?}"
            );
            printable(&error);
            return;
        }
    };
    assert!(SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
    assert!(matches!(
        conf.routes.as_deref(),
        None | Some("mesh" | "default")
    ));
    // What the runtime sent, re-serialised, is the same configuration.
    let value: Value = serde_json::from_slice(data).expect("parse_conf took it as JSON");
    let again = verbs::parse_conf(value.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("re-serialised configuration refused: {e:?}"));
    same_conf(&conf, &again);
    if let Some(prev) = &conf.prev_result {
        prev_result(prev);
    }
}

fn same_conf(a: &NetConf, b: &NetConf) {
    assert_eq!(a.cni_version, b.cni_version);
    assert_eq!(a.name, b.name);
    assert_eq!(a.plugin_type, b.plugin_type);
    assert_eq!(a.node, b.node);
    assert_eq!(a.socket, b.socket);
    assert_eq!(a.routes, b.routes);
    assert_eq!(a.valid_attachments, b.valid_attachments);
    match (&a.prev_result, &b.prev_result) {
        (None, None) => {}
        (Some(x), Some(y)) => assert!(same_json(x, y), "{x} != {y}"),
        (x, y) => panic!("prevResult {x:?} became {y:?}"),
    }
}

/// JSON equality, with floats equal to within the default float parsing of serde_json,
/// which is best-effort (a unit in the last place off), not exact (its `float_roundtrip`).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || ulps_apart(x, y) <= 2,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same_json(vx, vy))
        }
        _ => a == b,
    }
}

/// How many representable doubles lie between `x` and `y` (of one sign).
fn ulps_apart(x: f64, y: f64) -> u64 {
    if x.is_sign_negative() != y.is_sign_negative() {
        return u64::MAX;
    }
    x.to_bits().abs_diff(y.to_bits())
}

/// CHECK's `prevResult`: as the plugin reads it, and the /128 it looks for.
fn prev_result(prev: &Value) {
    let Ok(result) = verbs::parse_prev_result(prev) else {
        return;
    };
    let text = serde_json::to_string(&result).expect("a result serialises");
    let again: CniResult = serde_json::from_str(&text).expect("a serialised result parses");
    assert_eq!(again, result);
    for ip in &result.ips {
        if let Some((address, len)) = verbs::parse_prefix(&ip.address) {
            assert!(len <= 128);
            let back = verbs::parse_prefix(&format!("{address}/{len}"));
            assert_eq!(back, Some((address, len)));
        }
    }
}

fn version(data: &[u8]) {
    let answer: Value =
        serde_json::from_str(&verbs::version(data)).expect("VERSION answers with JSON");
    let asked = answer["cniVersion"].as_str().expect("a cniVersion");
    assert!(SUPPORTED_VERSIONS.contains(&asked));
}

/// `run` as the runtime calls it, but without `CNI_CONTAINERID`: every verb that needs the
/// container stops there, after parsing stdin, before any socket or namespace (GC and STATUS
/// ask the node first, so they are left to `stdin_config`).
fn verbs_without_a_container(data: &[u8]) {
    let parsed = verbs::parse_conf(data).map(drop).map_err(|e| e.code);
    for command in ["ADD", "DEL", "CHECK", "VERSION", "NOPE"] {
        let env = Env {
            command: Some(command.to_owned()),
            ..Env::default()
        };
        match verbs::run(&env, data) {
            Ok(Some(_)) => assert_eq!(command, "VERSION"),
            Ok(None) => panic!("{command} succeeded without a container"),
            Err(error) => {
                assert_ne!(command, "VERSION");
                printable(&error);
                match parsed {
                    Err(code) => assert_eq!(error.code, code, "{command}: {error:?}"),
                    // CHECK may refuse the `prevResult` first; the others want the container.
                    Ok(()) if command == "CHECK" => assert!(
                        [code::INVALID_CONFIG, code::MISSING_ENV].contains(&error.code),
                        "{error:?}"
                    ),
                    Ok(()) => assert_eq!(error.code, code::MISSING_ENV, "{command}: {error:?}"),
                }
            }
        }
    }
}

/// The same bytes as the values of `CNI_CONTAINERID`, `CNI_IFNAME` and `CNI_ARGS`.
fn environment_values(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let name = verbs::container_name(&text, Some(&text));
    assert!(!name.is_empty() && name.len() <= 63, "{name:?}");
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "{name:?}"
    );
    let host = host_ifname(&text, &text);
    assert_eq!(host.len(), 10);
    assert!(check_name(&host).is_ok(), "{host:?}");
    if check_name(&text).is_ok() {
        assert!((1..=15).contains(&text.len()));
        assert!(!text.contains(['/', ':', ' ', '\0']));
    }
}

fn node_reply(line: &str) {
    let reply = match node::parse_reply(line) {
        Ok(reply) => reply,
        Err(NodeError::Refused { msg, .. }) => {
            let _ = msg.len();
            return;
        }
        Err(NodeError::Garbled(why)) => {
            assert!(!why.is_empty());
            return;
        }
        Err(e @ NodeError::Unreachable(_)) => panic!("parsing cannot be unreachable: {e}"),
    };
    assert!(reply.get("error").is_none() && reply.get("cni_error").is_none());
    if let Ok(lease) = node::parse_lease(&reply) {
        for route in &lease.routes {
            let _ = verbs::parse_prefix(route);
        }
    }
    if let Ok(released) = node::parse_released(&reply) {
        for gone in released {
            // GC deletes only links this plugin names.
            let _ = gone.host_ifname.starts_with("cx") && check_name(&gone.host_ifname).is_ok();
        }
    }
}

fn printable(error: &CniError) {
    assert!(!error.msg.is_empty());
    let text = serde_json::to_string(error).expect("an error serialises");
    let back: CniError = serde_json::from_str(&text).expect("a printed error parses");
    assert_eq!(&back, error);
}
