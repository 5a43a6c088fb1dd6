//! Where and how the node logs: `--log-format text|json|journald`.
//!
//! - `text`: human-readable lines on stderr; without timestamps and colours when stderr is
//!   connected to the journal (systemd sets `JOURNAL_STREAM` to stderr's `device:inode`),
//!   which stamps every line itself.
//! - `json`: one JSON object per line on stderr (`timestamp`, `level`, `target`, `fields` with
//!   `message`, and the current `span`s), for log collectors.
//! - `journald`: native journal entries (`tracing-journald`) with the priority, the message and
//!   every field as a journal field (`F_LINK=…`, upper-cased), syslog priorities (info is 6,
//!   debug 7); falls back to `text` with a
//!   warning when the journal's socket is missing.
//!
//! Messages printed before the node gives up at start (bad config, secrets) go through
//! [`startup_error`], [`startup_fatal`] and [`startup_warning`], so in `json` mode they are JSON lines too.

use std::fmt::Display;
use std::sync::OnceLock;

use anyhow::Result;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The formats `--log-format` takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines on stderr (the default); no timestamps under journald.
    #[default]
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// Native journal entries, with structured fields.
    Journald,
}

/// The format in use, once [`init`] ran.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format in use (the default before [`init`] ran), as `--log-format` spells it.
pub fn format_name() -> &'static str {
    match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
        LogFormat::Journald => "journald",
    }
}

/// The level filter, reloadable at run time (`connectopus log-level`, see `log_level`).
type LevelLayer =
    tracing_subscriber::reload::Layer<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;
type Filtered = tracing_subscriber::layer::Layered<LevelLayer, tracing_subscriber::Registry>;
type BoxedLayer = Box<dyn Layer<Filtered> + Send + Sync>;

/// Installs the global subscriber: `filter`, then the output of `format`.
///
/// # Errors
/// A global subscriber is already installed.
pub fn init(filter: LevelLayer, format: LogFormat) -> Result<()> {
    let mut fallback = None;
    let layer: BoxedLayer = match format {
        LogFormat::Text => text_layer(),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .with_ansi(false)
                .with_writer(std::io::stderr),
        ),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(journal) => Box::new(
                journal
                    .with_syslog_identifier("connectopus".to_owned())
                    .with_priority_mappings(syslog_priorities()),
            ),
            Err(error) => {
                fallback = Some(error);
                text_layer()
            }
        },
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()?;
    let used = if fallback.is_some() {
        LogFormat::Text
    } else {
        format
    };
    let _ = FORMAT.set(used);
    if let Some(error) = fallback {
        tracing::warn!(%error, "cannot reach the journal's socket; logging text to stderr");
    }
    Ok(())
}

/// Syslog's meaning of the levels (`journalctl -p info` shows info and above, not debug):
/// error 3, warning 4, info 6, debug and trace 7.
fn syslog_priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    let mut mappings = tracing_journald::PriorityMappings::new();
    mappings.info = Priority::Informational;
    mappings.debug = Priority::Debug;
    mappings.trace = Priority::Debug;
    mappings
}

/// Text on stderr: timestamps and colours unless stderr goes to the journal (or, for colours,
/// is not a terminal).
fn text_layer() -> BoxedLayer {
    let to_journal = stderr_is_journal();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(!to_journal && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if to_journal {
        Box::new(layer.without_time())
    } else {
        Box::new(layer)
    }
}

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` (set by systemd) names its
/// `device:inode`.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    journal_stream_matches(&stream, meta.dev(), meta.ino())
}

/// Whether `JOURNAL_STREAM` (`"<dev>:<ino>"`, decimal) names the file `(dev, ino)`.
fn journal_stream_matches(stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = stream.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().is_ok_and(|d| d == dev) && i.parse::<u64>().is_ok_and(|i| i == ino)
}

/// Reports why the node cannot start: `error: <message>` on stderr, or an error event when
/// logging is structured (`json`, `journald`).
pub fn startup_error(message: impl Display) {
    if structured() {
        tracing::error!(target: "connectopus", "{message}");
    } else {
        eprintln!("error: {message}");
    }
}

/// Reports a diagnostic found at start (already formatted, ending in a newline): as it is on
/// stderr, or a warning event when logging is structured.
pub fn startup_warning(diagnostic: impl Display) {
    if structured() {
        tracing::warn!(target: "connectopus", "{}", diagnostic.to_string().trim_end());
    } else {
        eprint!("{diagnostic}");
    }
}

/// Like [`startup_warning`] for a diagnostic that stops the node: an error event when logging
/// is structured.
pub fn startup_fatal(diagnostic: impl Display) {
    if structured() {
        tracing::error!(target: "connectopus", "{}", diagnostic.to_string().trim_end());
    } else {
        eprint!("{diagnostic}");
    }
}

fn structured() -> bool {
    matches!(FORMAT.get(), Some(LogFormat::Json | LogFormat::Journald))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_the_same_device_and_inode() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(journal_stream_matches("8:1234\n", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("9:1234", 8, 1234));
        assert!(!journal_stream_matches("8", 8, 1234));
        assert!(!journal_stream_matches("x:y", 8, 1234));
    }
}
