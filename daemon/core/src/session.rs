//! Per-link session state machine.
