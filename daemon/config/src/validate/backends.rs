//! Checks of one backend: its parameters against its type, PSK against certificates, TLS and
//! verification settings, and listener ports unique per node.

use std::collections::BTreeMap;

use super::{At, Ctx, cost, strs};
use crate::model::{BackendConfig, RawMesh};
use crate::secret::Secret;

/// Checks one backend at `here` (`nodes.N.backends.B`, or `global.ephemeral.backends.B`).
pub(super) fn backend_checks(
    cx: &mut Ctx<'_>,
    raw: &RawMesh,
    here: [&str; 4],
    backend: &BackendConfig,
    udp_ports: &mut BTreeMap<u16, String>,
    tcp_ports: &mut BTreeMap<u16, String>,
) {
    let path = |key: &'static str| -> [String; 5] {
        [
            here[0].to_owned(),
            here[1].to_owned(),
            here[2].to_owned(),
            here[3].to_owned(),
            key.to_owned(),
        ]
    };
    // The node the backend belongs to; `None` for the backends of ephemeral nodes.
    let node = (here[0] == "nodes").then_some(here[1]);
    let ty = backend.type_name();
    cost(cx, &strs(&path("cost")), backend.cost());
    if let Some(mtu) = backend.mtu()
        && !(1280..=65535).contains(&mtu)
    {
        cx.error(
            &strs(&path("mtu")),
            At::Value,
            format!("mtu {mtu} is out of range: IPv6 needs 1280..=65535"),
        );
    }
    if let Some(peer) = backend.peer_node() {
        if !raw.nodes.contains_key(peer) {
            let known: Vec<&str> = raw.nodes.keys().map(String::as_str).collect();
            cx.error(
                &strs(&path("peer_node")),
                At::Value,
                format!(
                    "peer_node `{peer}` is not a node of this mesh (known nodes: {})",
                    known.join(", ")
                ),
            );
        } else if Some(peer) == node {
            cx.error(
                &strs(&path("peer_node")),
                At::Value,
                format!("peer_node `{peer}` is this node itself"),
            );
        }
    }

    let slots = backend.secret_slots();
    let set = |key: &str| slots.iter().any(|(k, v)| *k == key && v.is_some());
    // Each value may be given inline or as a file, never both.
    for (k, v) in &slots {
        if let Some(base) = k.strip_suffix("_file")
            && v.is_some()
            && set(base)
        {
            cx.error(
                &strs(&path(k)),
                At::Key,
                format!("`{base}` and `{k}` are both set; use exactly one"),
            );
        }
    }
    // Inline confidential values reach every node.
    for (k, v) in &slots {
        if let Some(s) = v
            && s.is_inline()
            && s.kind().is_confidential()
        {
            cx.warn(
                &strs(&path(k)),
                At::Value,
                format!("inline secret `{k}` in a config that is distributed to every node; use {k}_file"),
            );
        }
    }
    let cert_keys: Vec<&'static str> = slots
        .iter()
        .filter(|(k, v)| v.is_some() && !k.starts_with("psk"))
        .map(|(k, _)| *k)
        .collect();

    let (psk_set, psk_cipher) = match backend {
        BackendConfig::DtlsDialer(d) => (d.psk().is_some(), d.psk_cipher.is_some()),
        BackendConfig::DtlsListener(l) => (l.psk().is_some(), l.psk_cipher.is_some()),
        _ => (false, false),
    };
    if psk_cipher && !psk_set {
        cx.error(
            &strs(&path("psk_cipher")),
            At::Key,
            "psk_cipher chooses among PSK suites; it needs psk or psk_file (certificate mode negotiates AES-128-GCM)",
        );
    }

    match backend {
        BackendConfig::DtlsDialer(d) => {
            let psk = d.psk().is_some();
            psk_conflicts(
                cx,
                &here,
                psk,
                &cert_keys,
                d.server_name.is_some(),
                d.insecure_skip_verify,
            );
            pair_required(
                cx,
                &here,
                d.client_cert(),
                "client_cert",
                d.client_key(),
                "client_key",
            );
            if !psk {
                verify_warning(
                    cx,
                    &here,
                    d.insecure_skip_verify,
                    d.root_ca().is_some() || d.pinned_cert().is_some(),
                    "dtls-dialer",
                );
            }
        }
        BackendConfig::DtlsListener(l) => {
            let psk = l.psk().is_some();
            psk_conflicts(cx, &here, psk, &cert_keys, false, false);
            if l.require_client_cert && psk {
                cx.error(
                    &strs(&path("require_client_cert")),
                    At::Key,
                    "require_client_cert needs certificate mode; it cannot be combined with psk",
                );
            }
            listener_port(cx, &here, l.port, "UDP", udp_ports);
            if !psk {
                if l.server_cert().is_none() || l.server_key().is_none() {
                    cx.error(&here, At::Key, "dtls-listener without psk needs server_cert and server_key (or their _file variants)");
                }
                client_ca(cx, &here, l.require_client_cert, l.client_ca().is_some());
            }
        }
        BackendConfig::TcpDialer(d) => {
            pair_required(
                cx,
                &here,
                d.client_cert(),
                "client_cert",
                d.client_key(),
                "client_key",
            );
            if d.tls {
                verify_warning(
                    cx,
                    &here,
                    d.insecure_skip_verify,
                    d.root_ca().is_some() || d.pinned_cert().is_some(),
                    ty,
                );
            } else {
                tls_off(
                    cx,
                    &here,
                    &cert_keys,
                    d.server_name.is_some(),
                    d.insecure_skip_verify,
                );
            }
        }
        // A plaintext link has no credentials to combine: the common checks are all.
        BackendConfig::UdpDialer(_) => {}
        BackendConfig::UdpListener(l) => listener_port(cx, &here, l.port, "UDP", udp_ports),
        BackendConfig::TcpListener(l) => {
            listener_port(cx, &here, l.port, "TCP", tcp_ports);
            if l.tls {
                if l.server_cert().is_none() || l.server_key().is_none() {
                    cx.error(&here, At::Key, "tcp-listener with tls: true needs server_cert and server_key (or their _file variants)");
                }
                client_ca(cx, &here, l.require_client_cert, l.client_ca().is_some());
            } else {
                let mut keys = cert_keys.clone();
                if l.require_client_cert {
                    keys.push("require_client_cert");
                }
                tls_off(cx, &here, &keys, false, false);
            }
        }
    }
}

fn psk_conflicts(
    cx: &mut Ctx<'_>,
    here: &[&str; 4],
    psk: bool,
    cert_keys: &[&str],
    server_name: bool,
    insecure: bool,
) {
    if !psk {
        return;
    }
    let mut keys: Vec<&str> = cert_keys.to_vec();
    if server_name {
        keys.push("server_name");
    }
    if insecure {
        keys.push("insecure_skip_verify");
    }
    for k in keys {
        let path = [here[0], here[1], here[2], here[3], k];
        cx.error(
            &path,
            At::Key,
            format!("`{k}` is a certificate-mode parameter and cannot be combined with psk"),
        );
    }
}

fn tls_off(
    cx: &mut Ctx<'_>,
    here: &[&str; 4],
    cert_keys: &[&str],
    server_name: bool,
    insecure: bool,
) {
    let mut keys: Vec<&str> = cert_keys.to_vec();
    if server_name {
        keys.push("server_name");
    }
    if insecure {
        keys.push("insecure_skip_verify");
    }
    for k in keys {
        let path = [here[0], here[1], here[2], here[3], k];
        cx.error(
            &path,
            At::Key,
            format!("`{k}` is a TLS parameter but tls is off; set `tls: true` or remove it"),
        );
    }
}

fn pair_required(
    cx: &mut Ctx<'_>,
    here: &[&str; 4],
    a: Option<&Secret>,
    a_name: &str,
    b: Option<&Secret>,
    b_name: &str,
) {
    let (set, missing) = match (a.is_some(), b.is_some()) {
        (true, false) => (a_name, b_name),
        (false, true) => (b_name, a_name),
        _ => return,
    };
    let path = [here[0], here[1], here[2], here[3], set];
    cx.error(
        &path,
        At::Key,
        format!("`{set}` needs `{missing}` (or `{missing}_file`) as well"),
    );
}

fn verify_warning(cx: &mut Ctx<'_>, here: &[&str; 4], insecure: bool, anchor: bool, ty: &str) {
    if insecure {
        let path = [here[0], here[1], here[2], here[3], "insecure_skip_verify"];
        cx.warn(
            &path,
            At::Key,
            format!("{ty} does not verify the listener's certificate; anyone on the path can impersonate it"),
        );
    } else if !anchor {
        cx.warn(
            here,
            At::Key,
            "no root_ca or pinned_cert: the listener is verified against the system trust store",
        );
    }
}

fn client_ca(cx: &mut Ctx<'_>, here: &[&str; 4], require: bool, ca: bool) {
    if require && !ca {
        let path = [here[0], here[1], here[2], here[3], "require_client_cert"];
        cx.error(
            &path,
            At::Key,
            "require_client_cert needs client_ca (or client_ca_file) to verify clients with",
        );
    }
}

fn listener_port(
    cx: &mut Ctx<'_>,
    here: &[&str; 4],
    port: Option<u16>,
    proto: &str,
    used: &mut BTreeMap<u16, String>,
) {
    let path = [here[0], here[1], here[2], here[3], "port"];
    match port {
        None => cx.error(
            here,
            At::Key,
            "listener without port: add `port: <1-65535>`",
        ),
        Some(0) => cx.error(&path, At::Value, "port must be 1..=65535"),
        Some(p) => {
            if let Some(first) = used.get(&p) {
                cx.error(
                    &path,
                    At::Value,
                    format!("{proto} port {p} is already used by {first}"),
                );
            } else {
                used.insert(p, here.join("."));
            }
        }
    }
}
