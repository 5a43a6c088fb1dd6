//! `connectopus-cni`: reads the CNI environment and stdin, runs the verb, prints the result
//! (exit 0) or the error object (exit 1) on stdout.

use std::io::{Read, Write};

use connectopus_cni::spec::{CniError, code};
use connectopus_cni::verbs::{Env, run};

/// A network configuration is a few kilobytes; a conflist with a large `prevResult` still
/// far below this.
const STDIN_LIMIT: u64 = 16 * 1024 * 1024;

fn main() {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().take(STDIN_LIMIT).read_to_end(&mut stdin) {
        Ok(_) => run(&env, &stdin),
        Err(e) => Err(CniError::new(
            code::UNDECODABLE,
            format!("reading stdin: {e}"),
        )),
    };
    let mut out = std::io::stdout().lock();
    let (text, status) = match outcome {
        Ok(Some(result)) => (result, 0),
        Ok(None) => (String::new(), 0),
        Err(error) => (
            serde_json::to_string(&error).unwrap_or_else(|_| {
                format!(
                    r#"{{"cniVersion":"1.0.0","code":{},"msg":"error"}}"#,
                    error.code
                )
            }),
            1,
        ),
    };
    if !text.is_empty() {
        let _ = writeln!(out, "{text}");
    }
    let _ = out.flush();
    std::process::exit(status);
}
