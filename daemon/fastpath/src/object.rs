//! The eBPF object that `cargo xtask build-ebpf` writes: embedded in the binary when it existed
//! at build time ([`embedded_object`], [`node_object`]), or found and read on disk
//! ([`find_object`], [`load_object`]) for tests and the `--ebpf-object` override.

use std::path::{Path, PathBuf};

use crate::FastpathError;

/// Where `cargo xtask build-ebpf` writes the object, relative to the workspace root.
pub const DEFAULT_OBJECT_PATH: &str = "target/ebpf/connectopus-ebpf.o";

/// The eBPF object embedded at build time (see `build.rs`): present when
/// `cargo xtask build-ebpf` had written it before this crate was compiled.
pub fn embedded_object() -> Option<&'static [u8]> {
    #[cfg(connectopus_embedded_ebpf)]
    {
        Some(include_bytes!(env!("CONNECTOPUS_EMBEDDED_EBPF")))
    }
    #[cfg(not(connectopus_embedded_ebpf))]
    {
        None
    }
}

/// The object a node loads: the file `configured` (`--ebpf-object`) when given, else the
/// embedded one. Returns where it came from (the path, or `"embedded"`) and its bytes; the node
/// never looks for an object on disk by itself.
///
/// # Errors
///
/// [`load_object`]'s errors for `configured`; [`FastpathError::NotEmbedded`] without it when
/// the binary was built without the object.
pub fn node_object(
    configured: Option<&Path>,
) -> Result<(String, std::borrow::Cow<'static, [u8]>), FastpathError> {
    match configured {
        Some(path) => {
            let bytes = load_object(path)?;
            Ok((path.display().to_string(), std::borrow::Cow::Owned(bytes)))
        }
        None => embedded_object()
            .map(|bytes| ("embedded".to_owned(), std::borrow::Cow::Borrowed(bytes)))
            .ok_or(FastpathError::NotEmbedded),
    }
}

/// Returns the path of the eBPF object to load from disk (tests, tools).
///
/// With `configured` (from the daemon's configuration or command line), returns it if it exists.
/// Without, tries [`DEFAULT_OBJECT_PATH`] relative to the current directory, then relative to
/// the workspace this crate was compiled in (so `cargo run` and `cargo test` find it from any
/// directory).
///
/// # Errors
///
/// [`FastpathError::ObjectNotFound`] if `configured` does not exist;
/// [`FastpathError::NotBuilt`] (see [`FastpathError::is_not_built`]) if no default path exists.
pub fn find_object(configured: Option<&Path>) -> Result<PathBuf, FastpathError> {
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(FastpathError::ObjectNotFound {
                path: path.to_path_buf(),
            })
        };
    }
    let searched = default_candidates();
    match searched.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(FastpathError::NotBuilt { searched }),
    }
}

/// Reads the eBPF object at `path` (from [`find_object`]), checking that it is an ELF file.
///
/// # Errors
///
/// [`FastpathError::ObjectNotFound`] if it does not exist, [`FastpathError::ReadObject`] if it
/// cannot be read, [`FastpathError::BadObject`] if it is not an ELF file.
pub fn load_object(path: &Path) -> Result<Vec<u8>, FastpathError> {
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            FastpathError::ObjectNotFound {
                path: path.to_path_buf(),
            }
        } else {
            FastpathError::ReadObject {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    if !bytes.starts_with(b"\x7fELF") {
        return Err(FastpathError::BadObject {
            what: path.display().to_string(),
            source: None,
        });
    }
    Ok(bytes)
}

/// The default places, in search order.
fn default_candidates() -> Vec<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let in_workspace = workspace
        .canonicalize()
        .unwrap_or(workspace)
        .join(DEFAULT_OBJECT_PATH);
    vec![PathBuf::from(DEFAULT_OBJECT_PATH), in_workspace]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_takes_the_configured_file_over_the_embedded_object() {
        let dir = std::env::temp_dir().join(format!("cx-fastpath-node-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let elf = dir.join("mine.o");
        std::fs::write(&elf, b"\x7fELF mine").unwrap();
        let (from, bytes) = node_object(Some(&elf)).unwrap();
        assert_eq!(from, elf.display().to_string());
        assert_eq!(&*bytes, b"\x7fELF mine");
        match (node_object(None), embedded_object()) {
            (Ok((from, bytes)), Some(embedded)) => {
                assert_eq!(from, "embedded");
                assert!(bytes.starts_with(b"\x7fELF"));
                assert_eq!(&*bytes, embedded);
            }
            (Err(error), None) => {
                assert!(matches!(error, FastpathError::NotEmbedded), "{error}");
                assert!(
                    error.to_string().contains("no embedded eBPF object"),
                    "{error}"
                );
            }
            (result, embedded) => {
                panic!("{result:?} with embedded {:?}", embedded.map(<[u8]>::len))
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_candidates_are_cwd_then_workspace() {
        let candidates = default_candidates();
        assert_eq!(candidates[0], Path::new(DEFAULT_OBJECT_PATH));
        assert!(candidates[1].is_absolute());
        assert!(candidates[1].ends_with(DEFAULT_OBJECT_PATH));
        assert!(
            candidates[1]
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("Cargo.toml")
                .is_file()
        );
    }

    #[test]
    fn configured_path_that_does_not_exist_names_the_fix() {
        let missing = Path::new("/nonexistent/connectopus-ebpf.o");
        let error = find_object(Some(missing)).unwrap_err();
        assert!(!error.is_not_built());
        let message = error.to_string();
        assert!(
            message.contains("/nonexistent/connectopus-ebpf.o"),
            "{message}"
        );
        assert!(message.contains("cargo xtask build-ebpf"), "{message}");
    }

    #[test]
    fn not_built_message_names_the_command_and_the_paths() {
        let error = FastpathError::NotBuilt {
            searched: vec![PathBuf::from("a.o"), PathBuf::from("/b/c.o")],
        };
        assert!(error.is_not_built());
        assert_eq!(
            error.to_string(),
            "eBPF object not built (looked for a.o, /b/c.o): run `cargo xtask build-ebpf`"
        );
    }

    #[test]
    fn configured_path_is_read_and_must_be_elf() {
        let dir = std::env::temp_dir().join(format!("cx-fastpath-object-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let elf = dir.join("ok.o");
        std::fs::write(&elf, b"\x7fELF rest").unwrap();
        let text = dir.join("bad.o");
        std::fs::write(&text, b"not an object").unwrap();

        assert_eq!(find_object(Some(&elf)).unwrap(), elf);
        assert_eq!(load_object(&elf).unwrap(), b"\x7fELF rest");
        let error = load_object(&text).unwrap_err();
        assert!(matches!(error, FastpathError::BadObject { .. }), "{error}");

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
