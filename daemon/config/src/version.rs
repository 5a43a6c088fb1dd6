//! Config versions and in-place edits of the signed YAML.
//!
//! `global.version` is a counter, not a clock. A node accepts a new config only if it is newer
//! than the running one and at most [`MAX_VERSION_JUMP`] ahead ([`check_version`]), so clock
//! skew between admins cannot let an old config win, and one config with an absurd version
//! cannot lock out every later one.
//!
//! The signed bytes are what the operator wrote, so [`set_version`] and [`add_authorized_key`]
//! edit the text in place: only the edited value or the inserted line changes; comments,
//! quoting, key order and indentation elsewhere stay byte-identical. Every edit is re-loaded
//! with [`crate::load`] to prove the result parses and says what was intended.

use crate::diag::Diagnostics;
use crate::span::{Kind, SNode};
use crate::types::SshPublicKey;

/// The largest accepted step from the running version to a new one: 2^32.
pub const MAX_VERSION_JUMP: u64 = 1 << 32;

/// Why a new config version is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The new version is not greater than the running one.
    #[error("version {new} is not newer than the running version {running}")]
    NotNewer {
        /// The running config's version.
        running: u64,
        /// The offered config's version.
        new: u64,
    },
    /// The new version is more than 2^32 ahead of the running one.
    #[error(
        "implausible version jump from {running} to {new} (more than 2^32 ahead); refusing it so that it cannot lock out every later config"
    )]
    ImplausibleJump {
        /// The running config's version.
        running: u64,
        /// The offered config's version.
        new: u64,
    },
}

/// Decides whether a node running version `running` accepts a config of version `new`:
/// only if `running < new` and `new - running <= 2^32`.
pub fn check_version(running: u64, new: u64) -> Result<(), VersionError> {
    if new <= running {
        Err(VersionError::NotNewer { running, new })
    } else if new - running > MAX_VERSION_JUMP {
        Err(VersionError::ImplausibleJump { running, new })
    } else {
        Ok(())
    }
}

/// Why an in-place edit of the YAML failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// The file does not load before the edit; the diagnostics say why.
    #[error("the file has errors:\n{0}")]
    Invalid(Diagnostics),
    /// The edited text no longer loads (a bug, or YAML too unusual to edit in place).
    #[error(
        "editing {what} in place produced a file that does not load; edit it by hand:\n{diagnostics}"
    )]
    Reload {
        /// What was being edited.
        what: &'static str,
        /// Why the result does not load.
        diagnostics: Diagnostics,
    },
    /// The YAML has a shape this editor does not handle; the message says what to do.
    #[error("{0}")]
    Unsupported(String),
}

/// Returns `source` with `global.version` set to `version`.
///
/// An existing value is replaced where it stands (`version: 7  # note` becomes
/// `version: 8  # note`). Without one, a `version: N` line is inserted right after the
/// `global:` line with the indentation of global's first key (or `version: N, ` after the `{`
/// of a flow mapping). Nothing else changes. The result is re-loaded and must carry `version`.
pub fn set_version(file_name: &str, source: &[u8], version: u64) -> Result<Vec<u8>, EditError> {
    crate::load(file_name, source).map_err(EditError::Invalid)?;
    let text = utf8(source)?;
    let (global_key, global) = global_entry(text)?;
    let edited = match global.entry("version") {
        Some((_, value)) => {
            if !value.pos.is_known() || value.pos.len == 0 {
                return Err(unsupported("global.version has no value to replace"));
            }
            let start = byte_at(text, value.pos.offset);
            let end = byte_at(text, value.pos.offset + value.pos.len as usize);
            splice(text, start, end, &version.to_string())
        }
        None => insert_into_global(text, global_key, &global, &format!("version: {version}"))?,
    };
    match crate::load(file_name, edited.as_bytes()) {
        Ok(cfg) if cfg.global.version == version => Ok(edited.into_bytes()),
        Ok(_) => Err(unsupported(
            "could not set global.version in place (is `global` an alias?); set it by hand",
        )),
        Err(diagnostics) => Err(EditError::Reload {
            what: "global.version",
            diagnostics,
        }),
    }
}

/// Returns `source` with `key` appended to `global.authorized_keys`, or unchanged when the key
/// (ignoring comments) is already there.
///
/// A block list gets a new `- key` line after its last item, a flow list a new item before
/// `]`; without the list, an `authorized_keys:` entry is inserted right after the `global:`
/// line. Nothing else changes. The result is re-loaded and must hold the key.
pub fn add_authorized_key(
    file_name: &str,
    source: &[u8],
    key: &SshPublicKey,
) -> Result<Vec<u8>, EditError> {
    let before = crate::load(file_name, source).map_err(EditError::Invalid)?;
    if before
        .global
        .authorized_keys
        .iter()
        .any(|k| k.same_key(key))
    {
        return Ok(source.to_vec());
    }
    let text = utf8(source)?;
    let line = key.0.trim();
    let (global_key, global) = global_entry(text)?;
    let edited = match global.entry("authorized_keys") {
        None => {
            let entry = if is_flow(text, &global) {
                format!("authorized_keys: [{}]", quote(line, true))
            } else {
                let indent = " ".repeat(block_indent(&global)?);
                let eol = eol_of_line(text, byte_at(text, global_key.offset));
                format!("authorized_keys:{eol}{indent}  - {}", quote(line, false))
            };
            insert_into_global(text, global_key, &global, &entry)?
        }
        Some((_, list)) => {
            let Kind::Seq(items) = &list.kind else {
                return Err(unsupported(
                    "global.authorized_keys is not a list; add the key by hand",
                ));
            };
            if is_flow(text, list) {
                let open = byte_at(text, list.pos.offset);
                match items.last() {
                    None => splice(text, open + 1, open + 1, &quote(line, true)),
                    Some(last) => {
                        let end = byte_at(text, last.pos.offset + last.pos.len as usize);
                        splice(text, end, end, &format!(", {}", quote(line, true)))
                    }
                }
            } else {
                let Some(last) = items.last() else {
                    return Err(unsupported(
                        "global.authorized_keys is empty; add the key by hand",
                    ));
                };
                let item_start = byte_at(text, last.pos.offset);
                let line_start = text[..item_start].rfind('\n').map_or(0, |i| i + 1);
                let prefix = &text[line_start..item_start];
                let dash = prefix.trim();
                if dash != "-" || !prefix.ends_with(' ') {
                    return Err(unsupported(
                        "global.authorized_keys items are not plain `- key` lines; add the key by hand",
                    ));
                }
                let item_end = byte_at(text, last.pos.offset + last.pos.len as usize);
                let (at, eol) = end_of_line(text, item_end);
                let new_line = format!("{prefix}{}{eol}", quote(line, false));
                if at == text.len() && !text.ends_with('\n') {
                    splice(text, at, at, &format!("\n{}", new_line.trim_end()))
                } else {
                    splice(text, at, at, &new_line)
                }
            }
        }
    };
    match crate::load(file_name, edited.as_bytes()) {
        Ok(cfg) if cfg.global.authorized_keys.iter().any(|k| k.same_key(key)) => {
            Ok(edited.into_bytes())
        }
        Ok(_) => Err(unsupported(
            "could not add to global.authorized_keys in place; add the key by hand",
        )),
        Err(diagnostics) => Err(EditError::Reload {
            what: "global.authorized_keys",
            diagnostics,
        }),
    }
}

fn unsupported(message: &str) -> EditError {
    EditError::Unsupported(message.to_owned())
}

fn utf8(source: &[u8]) -> Result<&str, EditError> {
    std::str::from_utf8(source).map_err(|_| unsupported("the file is not valid UTF-8"))
}

/// Parses the location index and returns the `global` key's place and its value.
fn global_entry(text: &str) -> Result<(crate::span::Pos, SNode), EditError> {
    let tree: SNode = serde_saphyr::from_str(text)
        .map_err(|e| unsupported(&format!("the file does not parse: {e}")))?;
    let (key, value) = tree
        .entry("global")
        .ok_or_else(|| unsupported("the file has no `global` mapping"))?;
    if !matches!(value.kind, Kind::Map(..)) || !key.pos.is_known() || !value.pos.is_known() {
        return Err(unsupported("`global` is not a mapping"));
    }
    Ok((key.pos, value.clone()))
}

/// Tells whether the node is written in flow style (`{...}` or `[...]`).
fn is_flow(text: &str, node: &SNode) -> bool {
    matches!(
        text[byte_at(text, node.pos.offset)..].chars().next(),
        Some('{' | '[')
    )
}

/// The indentation (in spaces) of the first key of a block mapping.
fn block_indent(map: &SNode) -> Result<usize, EditError> {
    map.entries()
        .first()
        .map(|(k, _)| k.pos.column.saturating_sub(1) as usize)
        .filter(|&n| n > 0)
        .ok_or_else(|| unsupported("cannot tell the indentation of `global`"))
}

/// Inserts `entry` (a `key: value` text) as the first entry of the `global` mapping.
fn insert_into_global(
    text: &str,
    global_key: crate::span::Pos,
    global: &SNode,
    entry: &str,
) -> Result<String, EditError> {
    if is_flow(text, global) {
        let open = byte_at(text, global.pos.offset);
        return Ok(splice(text, open + 1, open + 1, &format!("{entry}, ")));
    }
    let indent = " ".repeat(block_indent(global)?);
    let key_start = byte_at(text, global_key.offset);
    let (at, eol) = end_of_line(text, key_start);
    if at == text.len() {
        return Err(unsupported("`global:` is the last line of the file"));
    }
    Ok(splice(text, at, at, &format!("{indent}{entry}{eol}")))
}

/// From byte `from`, returns the byte just after the end of that line and its line ending.
fn end_of_line(text: &str, from: usize) -> (usize, &'static str) {
    match text[from..].find('\n') {
        Some(i) => (from + i + 1, eol_of_line(text, from)),
        None => (text.len(), "\n"),
    }
}

/// The line ending (`\n` or `\r\n`) of the line holding byte `at`.
fn eol_of_line(text: &str, at: usize) -> &'static str {
    match text[at..].find('\n') {
        Some(i) if i > 0 && text.as_bytes()[at + i - 1] == b'\r' => "\r\n",
        _ => "\n",
    }
}

/// Converts a character offset (as the location index reports) into a byte offset.
fn byte_at(text: &str, chars: usize) -> usize {
    text.char_indices()
        .nth(chars)
        .map_or(text.len(), |(byte, _)| byte)
}

fn splice(text: &str, start: usize, end: usize, with: &str) -> String {
    let mut out = String::with_capacity(text.len() + with.len());
    out.push_str(&text[..start]);
    out.push_str(with);
    out.push_str(&text[end..]);
    out
}

/// Writes `s` as a YAML string scalar: plain when that is unambiguous in block and flow
/// context alike (letters, digits, ` +/=@._-`, starting with a letter or digit), double-quoted
/// otherwise. Plain text that YAML reads as a number or boolean stays plain, so callers that
/// need a string there must quote it themselves.
pub fn yaml_scalar(s: &str) -> String {
    quote(s, false)
}

fn quote(s: &str, _flow: bool) -> String {
    let plain_ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " +/=@._-".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && !s.ends_with(' ');
    if plain_ok {
        return s.to_owned();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA alice@laptop";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB bob";

    #[test]
    fn version_rule_table() {
        let jump = MAX_VERSION_JUMP;
        let cases: &[(u64, u64, Result<(), VersionError>)] = &[
            (5, 5, Err(VersionError::NotNewer { running: 5, new: 5 })),
            (0, 0, Err(VersionError::NotNewer { running: 0, new: 0 })),
            (5, 4, Err(VersionError::NotNewer { running: 5, new: 4 })),
            (5, 0, Err(VersionError::NotNewer { running: 5, new: 0 })),
            (5, 6, Ok(())),
            (0, 1, Ok(())),
            (5, 5 + jump, Ok(())),
            (0, jump, Ok(())),
            (
                5,
                5 + jump + 1,
                Err(VersionError::ImplausibleJump {
                    running: 5,
                    new: 5 + jump + 1,
                }),
            ),
            (
                0,
                u64::MAX,
                Err(VersionError::ImplausibleJump {
                    running: 0,
                    new: u64::MAX,
                }),
            ),
            (u64::MAX - jump, u64::MAX, Ok(())),
            (
                u64::MAX - jump - 1,
                u64::MAX,
                Err(VersionError::ImplausibleJump {
                    running: u64::MAX - jump - 1,
                    new: u64::MAX,
                }),
            ),
            (
                u64::MAX,
                0,
                Err(VersionError::NotNewer {
                    running: u64::MAX,
                    new: 0,
                }),
            ),
            (
                u64::MAX,
                u64::MAX,
                Err(VersionError::NotNewer {
                    running: u64::MAX,
                    new: u64::MAX,
                }),
            ),
        ];
        for &(running, new, expected) in cases {
            assert_eq!(check_version(running, new), expected, "{running} -> {new}");
        }
    }

    /// A config full of comments, odd spacing and a non-ASCII comment before the version.
    const COMMENTED: &str = "\
# Mesh config — maintained by ops (ünïcode in comments is fine)
# second comment line

global:            # the global section
  # the domain
  domain: connectopus.test   # trailing comment
  subnet: fd00::/16
  authorized_keys:
    # alice
    - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA alice@laptop
  version:    41     # bumped by `connectopus config sign`
  timers: {keepalive_idle: 3s}   # flow map

nodes:
  # the only node
  foo:
    address: fd00::1   # its address
";

    #[test]
    fn replacing_the_version_changes_only_the_number() {
        let out = set_version("mesh.yml", COMMENTED.as_bytes(), 42).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            COMMENTED.replace("version:    41     # bumped", "version:    42     # bumped")
        );
        let cfg = crate::load("mesh.yml", out.as_bytes()).unwrap();
        assert_eq!(cfg.global.version, 42);
        // A much longer number still only touches that span.
        let out = set_version("mesh.yml", COMMENTED.as_bytes(), u64::MAX).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            COMMENTED.replace("    41  ", &format!("    {}  ", u64::MAX))
        );
    }

    #[test]
    fn a_missing_version_is_inserted_after_the_global_line() {
        let without = COMMENTED.replace(
            "  version:    41     # bumped by `connectopus config sign`\n",
            "",
        );
        let out =
            String::from_utf8(set_version("mesh.yml", without.as_bytes(), 1).unwrap()).unwrap();
        assert_eq!(
            out,
            without.replace(
                "global:            # the global section\n",
                "global:            # the global section\n  version: 1\n"
            )
        );
        assert_eq!(crate::load("m", out.as_bytes()).unwrap().global.version, 1);
    }

    #[test]
    fn insertion_follows_indentation_and_line_endings() {
        let four = "global:\n    domain: x.test\n    subnet: fd00::/16\nnodes:\n    a:\n        address: fd00::1\n";
        let out = String::from_utf8(set_version("m", four.as_bytes(), 3).unwrap()).unwrap();
        assert_eq!(out, four.replace("global:\n", "global:\n    version: 3\n"));
        let crlf = four.replace('\n', "\r\n");
        let out = String::from_utf8(set_version("m", crlf.as_bytes(), 3).unwrap()).unwrap();
        assert_eq!(
            out,
            crlf.replace("global:\r\n", "global:\r\n    version: 3\r\n")
        );
    }

    #[test]
    fn flow_style_global_is_edited_in_place() {
        let flow =
            "global: {domain: x.test, subnet: \"fd00::/16\"}\nnodes: {a: {address: \"fd00::1\"}}\n";
        let out = String::from_utf8(set_version("m", flow.as_bytes(), 9).unwrap()).unwrap();
        assert_eq!(out, flow.replace("{domain", "{version: 9, domain"));
        let out2 = String::from_utf8(set_version("m", out.as_bytes(), 10).unwrap()).unwrap();
        assert_eq!(out2, flow.replace("{domain", "{version: 10, domain"));
    }

    #[test]
    fn a_tagged_version_keeps_its_tag_and_comment() {
        // `!!int 7` is an integer with an explicit tag; only the digits change.
        let src = "global:\n  domain: x.test\n  subnet: fd00::/16\n  version: !!int 7 # t\nnodes:\n  a:\n    address: fd00::1\n";
        assert_eq!(crate::load("m", src.as_bytes()).unwrap().global.version, 7);
        let out = String::from_utf8(set_version("m", src.as_bytes(), 8).unwrap()).unwrap();
        assert_eq!(out, src.replace("!!int 7 # t", "!!int 8 # t"));
        // The loader reads a quoted "7" as 7 too; the whole scalar, quotes included, becomes 8.
        let quoted = src.replace("!!int 7", "\"7\"");
        assert_eq!(
            crate::load("m", quoted.as_bytes()).unwrap().global.version,
            7
        );
        let out = String::from_utf8(set_version("m", quoted.as_bytes(), 8).unwrap()).unwrap();
        assert_eq!(out, src.replace("!!int 7 # t", "8 # t"));
    }

    #[test]
    fn an_invalid_file_is_not_edited() {
        let bad = COMMENTED.replace("domain:", "domian:");
        assert!(matches!(
            set_version("mesh.yml", bad.as_bytes(), 1),
            Err(EditError::Invalid(_))
        ));
    }

    #[test]
    fn adding_a_key_to_a_block_list_appends_one_line() {
        let key = SshPublicKey(KEY_B.into());
        let out = add_authorized_key("m", COMMENTED.as_bytes(), &key).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            COMMENTED.replace("alice@laptop\n", &format!("alice@laptop\n    - {KEY_B}\n"))
        );
        // Already present (even with another comment): unchanged.
        let again = SshPublicKey(KEY_A.replace("alice@laptop", "other"));
        assert_eq!(
            add_authorized_key("m", COMMENTED.as_bytes(), &again).unwrap(),
            COMMENTED.as_bytes()
        );
    }

    #[test]
    fn adding_a_key_to_flow_lists_and_missing_lists() {
        let key = SshPublicKey(KEY_B.into());
        let empty = "global:\n  domain: x.test\n  subnet: fd00::/16\n  authorized_keys: []  # none yet\nnodes:\n  a:\n    address: fd00::1\n";
        let out =
            String::from_utf8(add_authorized_key("m", empty.as_bytes(), &key).unwrap()).unwrap();
        assert_eq!(out, empty.replace("[]", &format!("[{KEY_B}]")));

        let one = empty.replace("[]", &format!("[{KEY_A}]"));
        let out =
            String::from_utf8(add_authorized_key("m", one.as_bytes(), &key).unwrap()).unwrap();
        assert_eq!(out, empty.replace("[]", &format!("[{KEY_A}, {KEY_B}]")));

        let none = empty.replace("  authorized_keys: []  # none yet\n", "");
        let out =
            String::from_utf8(add_authorized_key("m", none.as_bytes(), &key).unwrap()).unwrap();
        assert_eq!(
            out,
            none.replace(
                "global:\n",
                &format!("global:\n  authorized_keys:\n    - {KEY_B}\n")
            )
        );
        // A comment that YAML would misread is quoted.
        let odd = SshPublicKey(KEY_B.replace("bob", "bob: #1"));
        let out =
            String::from_utf8(add_authorized_key("m", none.as_bytes(), &odd).unwrap()).unwrap();
        let cfg = crate::load("m", out.as_bytes()).unwrap();
        assert_eq!(cfg.global.authorized_keys[0].0, odd.0);
    }
}
