//! The control socket's request: one JSON line from a local client, parsed without the node
//! (so `fuzz/fuzz_targets/control_request.rs` compiles this file on its own: serde only).

use serde::{Deserialize, Serialize};

/// A request to a running node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Report the node's state.
    Status,
    /// Return the running configuration: its exact signed bytes and signature.
    GetConfig,
    /// Take a new signed configuration (verified against the running one, then spread).
    SetConfig {
        /// The configuration file's text.
        config: String,
        /// The signature file's text.
        signature: String,
    },
    /// Re-read the configuration file and its signature, like SIGHUP, and say what happened.
    Reload,
    /// Change the log level (`error`, `warning`/`warn`, `info`, `debug`, `trace`).
    LogLevel {
        /// The new level.
        level: String,
    },
    /// List an issuer's lease table (docs/dynamic-mesh.md §1.8).
    Leases,
}

/// Parses one request line (untrusted bytes from the socket, read as UTF-8). Unknown
/// commands, missing fields and anything but one JSON object are errors.
///
/// # Errors
/// The line is not a request; the message says why.
pub fn parse_request(line: &str) -> Result<ControlRequest, serde_json::Error> {
    serde_json::from_str(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse_and_garbage_is_refused() {
        assert_eq!(
            parse_request("{\"cmd\":\"status\"}\n").ok(),
            Some(ControlRequest::Status)
        );
        assert_eq!(
            parse_request(r#"{"cmd":"log_level","level":"debug"}"#).ok(),
            Some(ControlRequest::LogLevel {
                level: "debug".into()
            })
        );
        for bad in [
            "",
            "{}",
            r#"{"cmd":"shutdown"}"#,
            r#"{"cmd":"set_config","config":"x"}"#,
            r#"{"cmd":"status"} {"cmd":"status"}"#,
            "[1,2]",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
    }
}
