//! Raw links and wiretaps: the simulator's hooks for tests that play a hostile peer.
//!
//! A raw link is a link of one simulated node whose other end is the test itself: the test
//! hands the node arbitrary bytes ([`Sim::send_raw`]) and reads what the node sent back
//! ([`Sim::take_raw`]). A wiretap records every message that crosses a simulated link, so a
//! test can capture a node's hellos and replay them elsewhere.

use std::collections::BTreeMap;

use super::{NodeIdx, Sim, SimLinkIdx};
use crate::LinkId;
use crate::session::LinkInfo;

/// The raw links and taps of a simulation.
#[derive(Debug, Default)]
pub(super) struct RawLinks {
    /// Messages each node sent on each of its raw links, not yet taken; `None` once the node
    /// closed the link.
    open: BTreeMap<(NodeIdx, LinkId), Option<Vec<Vec<u8>>>>,
    /// Links being tapped, and what crossed them: (sender, message).
    taps: BTreeMap<SimLinkIdx, Vec<(NodeIdx, Vec<u8>)>>,
}

impl RawLinks {
    /// Keeps `bytes` if `link` of `from` is a raw link; returns true if it was.
    pub(super) fn absorb(&mut self, from: NodeIdx, link: LinkId, bytes: &[u8]) -> bool {
        match self.open.get_mut(&(from, link)) {
            Some(Some(out)) => {
                out.push(bytes.to_vec());
                true
            }
            Some(None) => true,
            None => false,
        }
    }

    /// Marks a raw link closed at the node's request; returns true if it was one.
    pub(super) fn close(&mut self, by: NodeIdx, link: LinkId) -> bool {
        match self.open.get_mut(&(by, link)) {
            Some(slot) => {
                *slot = None;
                true
            }
            None => false,
        }
    }

    /// Records a message crossing a tapped link.
    pub(super) fn tap(&mut self, link: SimLinkIdx, from: NodeIdx, bytes: &[u8]) {
        if let Some(log) = self.taps.get_mut(&link) {
            log.push((from, bytes.to_vec()));
        }
    }
}

impl Sim {
    /// Opens a link on `node` whose other end is the test; returns the node's id for it.
    pub fn open_raw_link(&mut self, node: NodeIdx, info: LinkInfo) -> LinkId {
        let link = self.new_link_id(node);
        self.raw.open.insert((node, link), Some(Vec::new()));
        let now = self.now;
        if let Some(n) = self.nodes[node.0].node.as_mut() {
            n.handle_link_up(now, link, info);
        }
        self.drain(node);
        link
    }

    /// Hands `bytes` to `node` as a message that arrived on its raw link `link`, now.
    pub fn send_raw(&mut self, node: NodeIdx, link: LinkId, mut bytes: Vec<u8>) {
        if !self.raw_link_open(node, link) {
            return;
        }
        let now = self.now;
        if let Some(n) = self.nodes[node.0].node.as_mut() {
            n.handle_link_message(now, link, &mut bytes);
        }
        self.drain(node);
    }

    /// Takes the messages `node` sent on its raw link `link` so far.
    pub fn take_raw(&mut self, node: NodeIdx, link: LinkId) -> Vec<Vec<u8>> {
        match self.raw.open.get_mut(&(node, link)) {
            Some(Some(out)) => std::mem::take(out),
            _ => Vec::new(),
        }
    }

    /// Returns true while the node keeps its raw link `link` open.
    pub fn raw_link_open(&self, node: NodeIdx, link: LinkId) -> bool {
        matches!(self.raw.open.get(&(node, link)), Some(Some(_)))
    }

    /// Starts recording every message sent on `link` (by either end).
    pub fn tap(&mut self, link: SimLinkIdx) {
        self.raw.taps.entry(link).or_default();
    }

    /// Takes what crossed a tapped link so far: (sender, message), in order.
    pub fn take_tapped(&mut self, link: SimLinkIdx) -> Vec<(NodeIdx, Vec<u8>)> {
        self.raw
            .taps
            .get_mut(&link)
            .map(std::mem::take)
            .unwrap_or_default()
    }
}
