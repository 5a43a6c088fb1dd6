//! Per-test temporary directories that survive a failing test.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use crate::env::unique_name;

/// A per-test directory for logs, certificates and configs.
///
/// Cheap to clone; the directory is removed when the last clone is dropped, unless the thread
/// is panicking (a failed test), [`TestDir::keep`] was called, or the environment variable
/// `CONNECTOPUS_KEEP_TMP` is set; then its path is printed to stderr instead.
/// The base is `$CONNECTOPUS_TEST_TMPDIR` or else `/tmp/connectopus-tests`.
#[derive(Clone, Debug)]
pub struct TestDir {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    keep: AtomicBool,
}

impl TestDir {
    /// Creates `<base>/<test>-<unique>`; `test` should name the test (only `[A-Za-z0-9_-]`
    /// is kept of it).
    pub fn new(test: &str) -> Result<TestDir> {
        let base = std::env::var_os("CONNECTOPUS_TEST_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("connectopus-tests"));
        let clean: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = base.join(format!("{clean}-{}", unique_name()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating test directory {}", path.display()))?;
        Ok(TestDir {
            inner: Arc::new(Inner {
                path,
                keep: AtomicBool::new(std::env::var_os("CONNECTOPUS_KEEP_TMP").is_some()),
            }),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// `path()/name`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.inner.path.join(name)
    }

    /// Keeps the directory after the test even if it passes.
    pub fn keep(&self) {
        self.inner.keep.store(true, Ordering::Relaxed);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if std::thread::panicking() || self.keep.load(Ordering::Relaxed) {
            eprintln!("test files kept in {}", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("could not remove {}: {e}", self.path.display());
        }
    }
}

/// Runs a test body that reports failure as an error, turning the error into a panic while
/// `dir` (and every guard the body created) is still alive, so the directory is kept and the
/// guards print their logs.
///
/// ```no_run
/// connectopus_tests::run_test("my_test", |dir| {
///     std::fs::write(dir.join("note"), "hi")?;
///     Ok(())
/// });
/// ```
pub fn run_test<F>(test: &str, body: F)
where
    F: FnOnce(&TestDir) -> Result<()>,
{
    let dir = match TestDir::new(test) {
        Ok(dir) => dir,
        Err(e) => panic!("{test}: {e:#}"),
    };
    if let Err(e) = body(&dir) {
        crate::process::dump_logs(&dir);
        panic!("{test} failed: {e:#}");
    }
}
