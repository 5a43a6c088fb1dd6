//! `GET /api/v1/nodes/<name>/<view>`: another node's read-only views, fetched from its API
//! through the mesh with the caller's token (that node checks it against its own running
//! configuration). Where each node serves its API comes from this node's running
//! configuration, parsed again only when it changed.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Answer, ApiContext, Request, ask_loop, client};
use crate::control::{ControlReply, ControlRequest};

/// Other nodes' API addresses, parsed from the configuration text they were read from.
#[derive(Debug, Default)]
pub struct Directory {
    source: String,
    nodes: std::collections::HashMap<String, Option<SocketAddr>>,
}

/// How long the proxy waits for another node.
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);

/// Finds where `node` serves its API, re-reading the running configuration when it changed.
fn api_address(context: &ApiContext, node: &str) -> Result<SocketAddr, String> {
    let config = match ask_loop(&context.to_loop, ControlRequest::GetConfig) {
        ControlReply::Config { config, .. } => config,
        ControlReply::Error(message) => return Err(message),
        other => return Err(format!("unexpected answer: {other:?}")),
    };
    let mut directory = context
        .directory
        .lock()
        .map_err(|_| "directory lock poisoned".to_owned())?;
    if directory.source != config {
        let mesh = connectopus_config::load("running configuration", config.as_bytes())
            .map_err(|d| format!("the running configuration does not load: {d}"))?;
        directory.nodes = mesh
            .nodes
            .iter()
            .map(|(name, n)| {
                let addr = n.cpctl.port.map(|p| SocketAddr::new(n.address.into(), p));
                (name.clone(), addr)
            })
            .collect();
        directory.source = config;
    }
    match directory.nodes.get(node) {
        Some(Some(addr)) => Ok(*addr),
        Some(None) => Err(format!("node {node} serves no API (no cpctl.port)")),
        None => Err(format!("no node named {node} in the mesh")),
    }
}

/// Fetches a view from another node's API with the caller's token; that node checks it.
pub(super) fn fetch(context: &ApiContext, request: &Request, node: &str, path: &str) -> Answer {
    let Some(token) = request.head.bearer() else {
        return Answer::error(
            "401 Unauthorized",
            "reaching another node needs a token (paste one on the Token page)",
        );
    };
    let addr = match api_address(context, node) {
        Ok(addr) => addr,
        Err(message) => return Answer::error("404 Not Found", &message),
    };
    match client::http_within(addr, "GET", path, Some(token), b"", PROXY_TIMEOUT) {
        Ok((code, body)) => Answer {
            status: match code {
                200 => "200 OK",
                401 => "401 Unauthorized",
                404 => "404 Not Found",
                503 => "503 Service Unavailable",
                _ => "502 Bad Gateway",
            },
            content_type: "application/json",
            extra: Vec::new(),
            body,
        },
        Err(error) => Answer::error(
            "502 Bad Gateway",
            &format!("node {node} at {addr} did not answer: {error:#}"),
        ),
    }
}
