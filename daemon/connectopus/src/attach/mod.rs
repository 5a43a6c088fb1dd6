//! Attaching applications to the mesh besides the host's TUN device: network namespaces whose
//! only network is the mesh (`holder`, entered with `connectopus nsenter`), the services that
//! run inside them, and inetd-style services on the node's mesh address (`services`).
//!
//! The configuration decides what should run (`connectopus_config::attach`, plain data); the
//! daemon's reconcilers make it so. Whatever the confined node may not do itself (create
//! namespaces, start arbitrary programs) its attach helper does (`helper`), a process started
//! before the node drops its privileges.
//!
//! - `helper`: the attach helper process and the node's client of it.
//! - `holder`: a namespace's process: the namespaces, TUN device, routes, resolver files, and
//!   its services.
//! - `services`: inetd-style listeners.
//! - `nsenter`: the `connectopus nsenter` command.
//! - `sys`: the kernel interfaces (descriptor passing, namespaces, mounts, processes); links
//!   and routes through `connectopus-netlink`.

pub mod helper;
pub mod holder;
pub mod nsenter;
pub mod services;
pub mod sys;
