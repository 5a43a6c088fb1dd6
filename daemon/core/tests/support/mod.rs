//! Helpers shared by integration tests.

pub mod lease_world;
