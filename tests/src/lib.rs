//! Helpers for multi-node tests in network namespaces.
