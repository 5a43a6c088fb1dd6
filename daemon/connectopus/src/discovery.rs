//! Which node a client command (`status`, `config get`, ...) talks to.
//!
//! In order: `--socket PATH`; `--id NAME` (its default socket, `/run/connectopus/NAME.sock`);
//! the `CONNECTOPUS_SOCKET` environment variable; else the only node running on this host,
//! found by trying every `*.sock` in the control-socket directory. Sockets nobody answers on
//! (left by a killed node) do not count; ones this user may not open (not root) do. No node, or more than one, is an error that says
//! what to pass, and lists the running nodes.

use std::ffi::OsString;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The environment variable naming the control socket to use when neither `--socket` nor
/// `--id` is given.
pub const SOCKET_ENV: &str = "CONNECTOPUS_SOCKET";

/// Returns the control socket to talk to (see the module documentation).
///
/// # Errors
/// Nothing names a node and not exactly one node is running.
pub fn resolve(socket: Option<PathBuf>, id: Option<String>) -> Result<PathBuf> {
    resolve_in(socket, id, std::env::var_os(SOCKET_ENV), &socket_dir())
}

/// The directory where nodes serve their control sockets by default.
pub fn socket_dir() -> PathBuf {
    crate::control::default_socket_path("node")
        .parent()
        .map_or_else(|| PathBuf::from("/run/connectopus"), Path::to_path_buf)
}

fn resolve_in(
    socket: Option<PathBuf>,
    id: Option<String>,
    env: Option<OsString>,
    dir: &Path,
) -> Result<PathBuf> {
    if let Some(path) = socket {
        return Ok(path);
    }
    if let Some(id) = id {
        return Ok(crate::control::default_socket_path(&id));
    }
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let running = running_nodes(dir);
    match running.as_slice() {
        [] => bail!(
            "no running node found (no live control socket in {}): start one with \
             `connectopus node`, or say which with --id NAME, --socket PATH or {SOCKET_ENV}",
            dir.display()
        ),
        [(_, path)] => Ok(path.clone()),
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|(name, path)| format!("{name} ({})", path.display()))
                .collect();
            bail!(
                "{} nodes are running on this host: {}; say which with --id NAME (or --socket \
                 PATH, or {SOCKET_ENV})",
                many.len(),
                list.join(", ")
            )
        }
    }
}

/// The nodes whose control socket in `dir` accepts a connection, as (name, socket), by name.
fn running_nodes(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut running: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .filter_map(|e| {
            let path = e.path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".sock")?
                .to_owned();
            Some((name, path))
        })
        // A socket this user may not open still belongs to a running node: the request then
        // fails saying so, rather than "no node".
        .filter(|(_, path)| match UnixStream::connect(path) {
            Ok(_) => true,
            Err(error) => error.kind() == std::io::ErrorKind::PermissionDenied,
        })
        .collect();
    running.sort();
    running
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(label: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("cx-discovery-{label}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn find(dir: &Path) -> Result<PathBuf> {
        resolve_in(None, None, None, dir)
    }

    #[test]
    fn the_only_running_node_is_found_and_stale_sockets_do_not_count() {
        let dir = Dir::new("one");
        let error = find(&dir.0).unwrap_err().to_string();
        assert!(error.contains("no running node found"), "{error}");
        assert!(error.contains("--id NAME"), "{error}");

        let _foo = UnixListener::bind(dir.0.join("foo.sock")).unwrap();
        // A socket left by a killed node: nobody listens on it.
        drop(UnixListener::bind(dir.0.join("gone.sock")).unwrap());
        // Not sockets, or not named like one.
        std::fs::write(dir.0.join("bar.sock"), b"").unwrap();
        let _other = UnixListener::bind(dir.0.join("other")).unwrap();
        assert_eq!(find(&dir.0).unwrap(), dir.0.join("foo.sock"));
    }

    #[test]
    fn two_running_nodes_are_an_error_listing_both() {
        let dir = Dir::new("two");
        let _foo = UnixListener::bind(dir.0.join("foo.sock")).unwrap();
        let _bar = UnixListener::bind(dir.0.join("bar.sock")).unwrap();
        let error = find(&dir.0).unwrap_err().to_string();
        assert!(error.starts_with("2 nodes are running"), "{error}");
        let bar = format!("bar ({})", dir.0.join("bar.sock").display());
        let foo = format!("foo ({})", dir.0.join("foo.sock").display());
        assert!(error.contains(&format!("{bar}, {foo}")), "{error}");
        assert!(error.contains("--id NAME"), "{error}");
    }

    #[test]
    fn socket_then_id_then_the_environment_win_over_the_scan() {
        let dir = Dir::new("order");
        let _foo = UnixListener::bind(dir.0.join("foo.sock")).unwrap();
        let _bar = UnixListener::bind(dir.0.join("bar.sock")).unwrap();
        let env = Some(OsString::from("/elsewhere/env.sock"));
        let given = PathBuf::from("/elsewhere/given.sock");
        assert_eq!(
            resolve_in(Some(given.clone()), Some("baz".into()), env.clone(), &dir.0).unwrap(),
            given
        );
        assert_eq!(
            resolve_in(None, Some("baz".into()), env.clone(), &dir.0).unwrap(),
            crate::control::default_socket_path("baz")
        );
        assert_eq!(
            resolve_in(None, None, env, &dir.0).unwrap(),
            PathBuf::from("/elsewhere/env.sock")
        );
        // An empty variable is as good as none.
        assert!(resolve_in(None, None, Some(OsString::new()), &dir.0).is_err());
    }
}
