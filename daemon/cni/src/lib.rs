//! `connectopus-cni`: the CNI plugin of type `connectopus` (dynamic-mesh.md §3). A runtime
//! runs it in the node's network namespace with the verb and the container in the
//! environment and the network configuration on stdin; it asks the local node for the
//! container's address (`node`), sets up the veth pair, addresses and routes
//! (`netns`, over `connectopus-netlink`), and prints the result or an error (`spec`).
//!
//! ADD, DEL, CHECK, STATUS, GC and VERSION at CNI 1.0.0 and 1.1.0 (steps 10 and 11). A node
//! with `issue` answers the `cni_*` requests (the node's `daemon/cni.rs`); any other node
//! answers them like unknown requests, and ADD then fails with code 101, STATUS with 50.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod netns;
pub mod node;
pub mod spec;
pub mod verbs;
