//! Deterministic multi-node simulator.
