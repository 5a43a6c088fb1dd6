//! Shared helpers for the Connectopus benchmarks.
