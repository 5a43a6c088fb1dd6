//! The node's log level, changeable while it runs (`connectopus log-level --id foo debug`).
//!
//! Logging filters through a `tracing_subscriber` reload layer: the level is the default
//! directive of an `EnvFilter` that RUST_LOG, when set, refines; changing the level rebuilds
//! that filter with the same RUST_LOG directives and swaps it in.

use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The words a level is given in: upstream's (`warning`) and tracing's (`warn`).
pub const LEVEL_WORDS: [&str; 6] = ["error", "warning", "warn", "info", "debug", "trace"];

static HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Returns the level a word names (case-insensitive), if it names one.
pub fn parse(word: &str) -> Option<LevelFilter> {
    match word.to_ascii_lowercase().as_str() {
        "error" => Some(LevelFilter::ERROR),
        "warning" | "warn" => Some(LevelFilter::WARN),
        "info" => Some(LevelFilter::INFO),
        "debug" => Some(LevelFilter::DEBUG),
        "trace" => Some(LevelFilter::TRACE),
        _ => None,
    }
}

/// The filter for `level`, refined by RUST_LOG when it is set.
fn filter(level: LevelFilter) -> Result<EnvFilter> {
    let directives = std::env::var("RUST_LOG").unwrap_or_default();
    EnvFilter::builder()
        .with_default_directive(level.into())
        .parse(&directives)
        .with_context(|| format!("invalid RUST_LOG {directives:?}"))
}

/// Returns the filter layer to put first on the registry, and keeps its handle so that
/// [`set`] can change the level later.
///
/// # Errors
/// RUST_LOG holds invalid directives.
pub fn reloadable(level: LevelFilter) -> Result<reload::Layer<EnvFilter, Registry>> {
    let (layer, handle) = reload::Layer::new(filter(level)?);
    // Logging is set up once per process; a second call keeps the first handle.
    let _ = HANDLE.set(handle);
    Ok(layer)
}

/// Changes the running process's level to the one `word` names; returns what it says now.
///
/// # Errors
/// The word names no level, or logging was not set up with [`reloadable`].
pub fn set(word: &str) -> Result<String> {
    let level = parse(word).ok_or_else(|| {
        anyhow!(
            "unknown log level {word:?}: use one of {}",
            LEVEL_WORDS.join(", ")
        )
    })?;
    let handle = HANDLE
        .get()
        .ok_or_else(|| anyhow!("this node's log level cannot be changed"))?;
    handle
        .reload(filter(level)?)
        .context("changing the log level")?;
    tracing::info!(%level, "log level changed");
    Ok(format!("log level {}", level.to_string().to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_are_upstreams_and_tracings() {
        assert_eq!(parse("warning"), Some(LevelFilter::WARN));
        assert_eq!(parse("WARN"), Some(LevelFilter::WARN));
        assert_eq!(parse("debug"), Some(LevelFilter::DEBUG));
        assert_eq!(parse("verbose"), None);
        for word in LEVEL_WORDS {
            assert!(parse(word).is_some(), "{word}");
        }
    }
}
