//! `connectopus-cni`: the CNI plugin of type `connectopus` (dynamic-mesh.md §3). A runtime
//! runs it in the node's network namespace with the verb and the container in the
//! environment and the network configuration on stdin; it asks the local node for the
//! container's address (`node`), sets up the veth pair, addresses and routes
//! (`netns`, over `connectopus-netlink`), and prints the result or an error (`spec`).
//!
//! Today: ADD, DEL, CHECK and VERSION at CNI 1.0.0 (step 10). STATUS, GC and 1.1.0 come with
//! step 11; the node's side of `cni_*` with steps 8 and 10.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod netns;
pub mod node;
pub mod spec;
pub mod verbs;
