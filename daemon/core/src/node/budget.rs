//! The node's memory budget for routing streams.
//!
//! Each session's stream is bounded on its own (send buffer, out-of-order segments at most one
//! window, one partial record at most its kind's limit), but a node has many sessions. After
//! every input the node adds up what all of them hold; over the budget, it closes the session
//! that holds the most ([`CloseReason::OverBudget`]) until the rest fits, so a few hostile
//! peers cannot together make it hold more than the budget (plus the one input just handled).

use super::Node;
use crate::LinkId;
use crate::session::CloseReason;
use crate::time::Time;

impl Node {
    /// Returns the bytes all sessions hold for their routing streams together.
    pub fn stream_memory_in_use(&self) -> usize {
        self.sessions.values().map(|s| s.buffered_bytes()).sum()
    }

    /// Closes the largest sessions until the streams fit in the budget.
    pub(super) fn enforce_stream_memory_budget(&mut self, now: Time) {
        let budget = self.config.stream_memory_budget;
        let mut in_use = self.stream_memory_in_use();
        while in_use > budget {
            let Some((link, held)) = self
                .sessions
                .iter()
                .map(|(link, s)| (*link, s.buffered_bytes()))
                .max_by_key(|(link, held): &(LinkId, usize)| (*held, std::cmp::Reverse(*link)))
            else {
                return;
            };
            tracing::warn!(%link, held, budget, "routing streams over the memory budget; closing the largest");
            self.close_session(now, link, CloseReason::OverBudget, true);
            in_use -= held;
        }
    }
}
