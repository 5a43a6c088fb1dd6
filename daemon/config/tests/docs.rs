//! docs/config.md documents every key of the schema.
//!
//! The keys come from the schema types themselves, not from a hand list: for every mapping of
//! the schema the test loads a file with an unknown key there, and the loader's error lists the
//! keys that mapping accepts (serde's `expected one of ...`, generated from the
//! `#[derive(Deserialize)]` structs). Keys whose value is itself a mapping, or a map of named
//! mappings, are explored the same way, so a new key or a new nested section anywhere fails this
//! test until docs/config.md has a row for it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

const PROBE: &str = "zzz_undocumented_probe";

/// One step of a path into the schema: a key, or a name in a map of named entries.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    /// A name in a map (`<name>` in the docs), optionally of a backend type.
    Name(Option<String>),
}

/// Returns the YAML that puts `inner` (a flow mapping's entries) at `path`.
fn yaml_at(path: &[Step], inner: &str) -> String {
    let mut body = format!("{{{inner}}}");
    for (i, step) in path.iter().enumerate().rev() {
        body = match step {
            Step::Key(k) => format!("{{{k}: {body}}}"),
            Step::Name(None) => format!("{{x{i}: {body}}}"),
            Step::Name(Some(ty)) => {
                // A backend: the tag first, then the probed entries.
                let entries = body.trim_start_matches('{').trim_end_matches('}');
                let sep = if entries.is_empty() { "" } else { ", " };
                format!("{{x{i}: {{type: {ty}{sep}{entries}}}}}")
            }
        };
    }
    body
}

/// The loader's messages for a file.
fn messages(yaml: &str) -> Vec<String> {
    match connectopus_config::load("probe.yml", yaml.as_bytes()) {
        Ok(_) => Vec::new(),
        Err(diags) => diags.iter().map(|d| d.message.clone()).collect(),
    }
}

/// The keys the mapping at `path` accepts, if it is a mapping with fixed keys.
fn keys_at(path: &[Step]) -> Option<Vec<String>> {
    let yaml = yaml_at(path, &format!("{PROBE}: 1"));
    let message = messages(&yaml)
        .into_iter()
        .find(|m| m.contains(&format!("unknown field `{PROBE}`")))?;
    let list = if let Some((_, list)) = message.split_once("expected one of ") {
        list.split(',')
            .map(|s| s.trim().trim_matches('`').to_owned())
            .collect()
    } else if let Some((_, one)) = message.split_once(", expected ") {
        vec![one.trim().trim_matches('`').to_owned()]
    } else {
        Vec::new()
    };
    Some(list)
}

/// True if the key at `path` is a map of named mappings.
fn is_named_map(path: &[Step]) -> bool {
    let yaml = yaml_at(path, "x: 1");
    messages(&yaml)
        .iter()
        .any(|m| m.contains("expected struct") || m.contains("expected mapping start"))
}

/// The types a map of tagged entries (the backends) accepts, from the loader's
/// `unknown variant` error.
fn tagged_types(path: &[Step]) -> Vec<String> {
    let tagged = messages(&yaml_at(path, "x: 1"))
        .iter()
        .any(|m| m.contains("internally tagged enum"));
    if !tagged {
        return Vec::new();
    }
    let mut named = path.to_vec();
    named.push(Step::Name(Some(PROBE.to_owned())));
    messages(&yaml_at(&named, ""))
        .iter()
        .find_map(|m| {
            let (_, list) = m.split_once("expected one of ")?;
            Some(
                list.split(',')
                    .map(|s| s.trim().trim_matches('`').to_owned())
                    .collect(),
            )
        })
        .unwrap_or_default()
}

/// Every documented location: (the path as docs/config.md writes it, the keys there).
fn walk(path: Vec<Step>, out: &mut Vec<(Vec<Step>, Vec<String>)>) {
    let Some(keys) = keys_at(&path) else {
        return;
    };
    for key in &keys {
        let mut child = path.clone();
        child.push(Step::Key(key.clone()));
        if keys_at(&child).is_some() {
            walk(child, out);
        } else if let types = tagged_types(&child)
            && !types.is_empty()
        {
            for ty in types {
                let mut named = child.clone();
                named.push(Step::Name(Some(ty)));
                walk(named, out);
            }
        } else if is_named_map(&child) {
            child.push(Step::Name(None));
            walk(child, out);
        }
    }
    out.push((path, keys));
}

fn dotted(path: &[Step]) -> String {
    path.iter()
        .map(|s| match s {
            Step::Key(k) => k.clone(),
            Step::Name(_) => "<name>".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The keys named in the first cell of the table rows of the section headed `` `heading` ``.
fn documented(doc: &str, heading: &str) -> Option<BTreeSet<String>> {
    let title = format!("`{heading}`");
    let mut lines = doc.lines();
    lines.find(|l| l.starts_with('#') && l.trim_start_matches('#').trim() == title)?;
    let mut keys = BTreeSet::new();
    for line in lines {
        if line.starts_with("## ") || line.starts_with("### ") {
            break;
        }
        let Some(cell) = line.strip_prefix('|').and_then(|r| r.split('|').next()) else {
            continue;
        };
        for (i, part) in cell.split('`').enumerate() {
            if i % 2 == 1 {
                keys.insert(part.to_owned());
            }
        }
    }
    Some(keys)
}

#[test]
fn every_config_key_has_a_row_in_docs_config_md() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md");
    let doc = std::fs::read_to_string(doc_path).unwrap();
    let mut locations = Vec::new();
    walk(Vec::new(), &mut locations);
    // The walk must have found the schema (guards against a loader whose messages changed).
    let found: Vec<String> = locations.iter().map(|(p, _)| dotted(p)).collect();
    for expected in [
        "global.timers",
        "nodes.<name>.tun",
        "nodes.<name>.backends.<name>",
    ] {
        assert!(
            found.iter().any(|f| f == expected),
            "{expected} in {found:?}"
        );
    }
    let mut missing = Vec::new();
    for (path, keys) in &locations {
        if path.is_empty() {
            // The top level: `global` and `nodes` are sections of their own.
            for key in keys {
                if documented(&doc, key).is_none()
                    && documented(&doc, &format!("{key}.<name>")).is_none()
                {
                    missing.push(format!("section `{key}`"));
                }
            }
            continue;
        }
        let here = dotted(path);
        // Rows of this section, or rows `rest.key` in the nearest documented ancestor.
        let (section, prefix) = (0..path.len())
            .rev()
            .find_map(|cut| {
                let head = dotted(&path[..=cut]);
                let rest = dotted(&path[cut + 1..]);
                documented(&doc, &head).map(|rows| (rows, rest))
            })
            .unwrap_or_default();
        for key in keys {
            let row = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if !section.contains(&row) {
                missing.push(format!("{here}.{key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "config keys without a row in docs/config.md: {missing:?}"
    );
}
