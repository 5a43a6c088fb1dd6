//! Parsing: bytes → location index → typed model → validation, with parser errors mapped to
//! the most precise place the index knows.

use std::sync::Arc;

use serde_saphyr::MessageFormatter;

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{BACKEND_KEYS, RawMesh};
use crate::span::{Kind, Pos, SNode, Scalar};
use crate::{MeshConfig, validate};

pub(crate) fn load(file: &str, bytes: &[u8]) -> Result<MeshConfig, Diagnostics> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => return Err(single(utf8_error(file, bytes, e.valid_up_to()))),
    };
    let tree: SNode = match serde_saphyr::from_str(text) {
        Ok(tree) => tree,
        Err(e) => return Err(single(parse_error(file, text, None, &e))),
    };
    if !matches!(tree.kind, Kind::Map(..)) {
        return Err(single(
            Diagnostic::error("expected a mapping with the keys `global` and `nodes`").at(
                file,
                text,
                tree.pos.line.max(1),
                tree.pos.column.max(1),
                tree.pos.len,
            ),
        ));
    }
    let raw: RawMesh = match serde_saphyr::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let mut d = single(parse_error(file, text, Some(&tree), &e));
            redact(&mut d, text, &tree);
            return Err(d);
        }
    };
    let mut diags = validate::validate(file, text, &tree, &raw);
    redact(&mut diags, text, &tree);
    diags.sort();
    if diags.has_errors() {
        return Err(diags);
    }
    let nodes_key = tree
        .entry("nodes")
        .map(|(k, _)| k.pos)
        .unwrap_or(Pos::UNKNOWN);
    Ok(MeshConfig {
        global: raw.global,
        nodes: raw.nodes,
        source: Arc::from(bytes),
        file_name: file.to_owned(),
        warnings: diags.0,
        nodes_key,
    })
}

/// Backend keys whose inline values must never be shown.
const CONFIDENTIAL_KEYS: &[&str] = &["psk", "server_key", "client_key"];

/// Masks inline confidential values in every snippet (a finding on the same line as a PSK
/// would otherwise print it).
fn redact(diags: &mut Diagnostics, text: &str, tree: &SNode) {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for (_, node) in tree.find(&["nodes"]).map_or(&[][..], SNode::entries) {
        for (_, backend) in node.find(&["backends"]).map_or(&[][..], SNode::entries) {
            for (k, v) in backend.entries() {
                if CONFIDENTIAL_KEYS.contains(&k.name.as_str()) && v.pos.is_known() {
                    ranges.push((v.pos.offset, v.pos.offset + v.pos.len as usize));
                }
            }
        }
    }
    if ranges.is_empty() {
        return;
    }
    // Character offset at which each line starts.
    let mut starts = vec![0usize];
    let mut n = 0usize;
    for c in text.chars() {
        n += 1;
        if c == '\n' {
            starts.push(n);
        }
    }
    for d in &mut diags.0 {
        let (Some(snippet), Some(start)) =
            (&d.snippet, starts.get((d.line as usize).wrapping_sub(1)))
        else {
            continue;
        };
        let masked: String = snippet
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let at = start + i;
                if ranges.iter().any(|(a, b)| (*a..*b).contains(&at)) {
                    '*'
                } else {
                    c
                }
            })
            .collect();
        d.snippet = Some(masked);
    }
}

fn single(d: Diagnostic) -> Diagnostics {
    Diagnostics(vec![d])
}

fn utf8_error(file: &str, bytes: &[u8], valid_up_to: usize) -> Diagnostic {
    let good = String::from_utf8_lossy(&bytes[..valid_up_to]);
    let line = good.matches('\n').count() + 1;
    let column = good.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let text = String::from_utf8_lossy(bytes);
    Diagnostic::error("the file is not valid UTF-8").at(
        file,
        &text,
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
        1,
    )
}

/// Turns a serde-saphyr error into a diagnostic, moving it to the offending key when serde
/// reported it at the enclosing backend (internally tagged enums lose positions).
fn parse_error(
    file: &str,
    text: &str,
    tree: Option<&SNode>,
    e: &serde_saphyr::Error,
) -> Diagnostic {
    let mut message = serde_saphyr::UserMessageFormatter
        .format_message(e)
        .into_owned();
    let mut pos = e
        .location()
        .map_or(Pos::UNKNOWN, |l| Pos::from_location(&l));
    let mut path: Vec<String> = Vec::new();
    let mut help = None;
    if let Some(tree) = tree
        && pos.is_known()
        && let Some(p) = tree.path_at((pos.line, pos.column))
    {
        path = p;
        // serde reports a missing field at the start of the mapping, which for a block
        // mapping is its first key; point at the key that owns the mapping instead.
        if message.starts_with("missing field")
            && path.len() > 1
            && tree
                .find(&path[..path.len() - 1])
                .is_some_and(|m| (m.pos.line, m.pos.column) == (pos.line, pos.column))
        {
            path.pop();
            if let Some(kpos) = tree.key_pos(&path) {
                pos = kpos;
            }
        }
        let is_backend = path.len() == 4 && path[0] == "nodes" && path[2] == "backends";
        if is_backend && let Some(backend) = tree.find(&path) {
            if let Some((key, kpos)) = refine_backend_error(&message, backend) {
                pos = kpos;
                path.push(key);
            }
            if let Some(field) = quoted_after(&message, "unknown field `") {
                help = backend_key_help(field, backend);
            }
        }
    }
    if help.is_none()
        && let Some(field) = quoted_after(&message, "unknown field `")
    {
        help = did_you_mean(field, &expected_list(&message));
    }
    if message.starts_with("unknown variant")
        && path.last().is_some_and(|k| k == "type")
        && let Some(v) = tree.and_then(|t| t.find(&path))
    {
        message = format!("unknown backend type: {message}");
        pos = v.pos;
    }
    // Quote the rejected address; never any other value, which might be a secret.
    if message.contains("address")
        && let Some(Kind::Scalar(Scalar::Str(v))) =
            tree.and_then(|t| t.find(&path)).map(|n| &n.kind)
        && !message.contains(v.as_str())
        && v.len() <= 64
    {
        message = format!("{message}: `{v}`");
    }
    if let Some(key) = path.last()
        && CONFIDENTIAL_KEYS.contains(&key.as_str())
    {
        message = format!("invalid value for `{key}` (not shown): expected a string");
    }
    let mut d = Diagnostic::error(message)
        .at(file, text, pos.line, pos.column, pos.len)
        .with_path(path.join("."));
    if let Some(h) = help {
        d = d.with_help(h);
    }
    d
}

/// Finds the key inside a backend mapping that a positionless serde error is about.
fn refine_backend_error(message: &str, backend: &SNode) -> Option<(String, Pos)> {
    if let Some(field) = quoted_after(message, "unknown field `") {
        return backend.entry(field).map(|(k, _)| (k.name.clone(), k.pos));
    }
    if !message.starts_with("missing field") {
        // serde does not say which key; the first value that does not fit its key's type is it.
        for (k, v) in backend.entries() {
            if !fits(&k.name, v) {
                return Some((k.name.clone(), v.pos));
            }
        }
    }
    None
}

/// Tells whether a backend value has the YAML type its key needs.
fn fits(key: &str, v: &SNode) -> bool {
    let Kind::Scalar(s) = &v.kind else {
        return false;
    };
    match key {
        "port" => matches!(s, Scalar::Int(i) if (0..=i128::from(u16::MAX)).contains(i)),
        "mtu" => matches!(s, Scalar::Int(i) if (0..=i128::from(u32::MAX)).contains(i)),
        "cost" => matches!(s, Scalar::Int(_) | Scalar::Float(_)),
        "tls" | "require_client_cert" | "insecure_skip_verify" => matches!(s, Scalar::Bool(_)),
        "listen_ip" => matches!(s, Scalar::Str(x) if x.parse::<std::net::IpAddr>().is_ok()),
        "psk_cipher" => {
            matches!(s, Scalar::Str(x) if crate::model::PskCipher::NAMES.contains(&x.as_str()))
        }
        "peer" => matches!(s, Scalar::Str(x) if x.parse::<crate::types::PeerAddr>().is_ok()),
        _ => matches!(s, Scalar::Str(_)),
    }
}

/// Explains an unknown backend key: a near miss, or which backend types accept it.
fn backend_key_help(field: &str, backend: &SNode) -> Option<String> {
    let ty = match backend.entry("type").map(|(_, v)| &v.kind) {
        Some(Kind::Scalar(Scalar::Str(t))) => t.as_str(),
        _ => "",
    };
    let own: Vec<&str> = BACKEND_KEYS
        .iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, keys)| keys.to_vec())
        .unwrap_or_default();
    let others: Vec<&str> = BACKEND_KEYS
        .iter()
        .filter(|(_, keys)| keys.contains(&field))
        .map(|(t, _)| *t)
        .collect();
    if others.is_empty() {
        did_you_mean(field, &own)
    } else {
        Some(format!(
            "`{field}` is a key of {} backends, not of `{ty}`",
            others.join(", ")
        ))
    }
}

/// Returns the text between `prefix` and the next backtick.
fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    rest.split('`').next()
}

/// Parses serde's "expected one of a, b, c" tail.
fn expected_list(message: &str) -> Vec<&str> {
    message
        .split_once("expected one of ")
        .map(|(_, list)| {
            list.split(',')
                .map(|s| s.trim().trim_matches('`'))
                .collect()
        })
        .or_else(|| {
            message
                .split_once("expected ")
                .map(|(_, one)| vec![one.trim().trim_matches('`')])
        })
        .unwrap_or_default()
}

/// Suggests the closest candidate within a small edit distance.
pub(crate) fn did_you_mean(word: &str, candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d * 3 <= word.len() && *d < c.len())
        .min()
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("adress", &["address", "backends"]),
            Some("did you mean `address`?".into())
        );
        assert_eq!(did_you_mean("zzz", &["address"]), None);
        assert_eq!(
            expected_list("unknown field `x`, expected one of address, backends"),
            vec!["address", "backends"]
        );
    }
}
