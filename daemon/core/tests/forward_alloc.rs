//! The per-packet path allocates nothing, for IPv6 and IPv4 alike: `Node::forward_packet` on a
//! converged node, counted with a global allocator (the only test in this binary, so nothing
//! else allocates meanwhile).

#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use connectopus_core::forward::Ingress;
use connectopus_core::icmp4::header_checksum;
use connectopus_core::node::{Forwarded, NodeConfig};
use connectopus_core::sim::{LinkParams, Sim, udp_packet};

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: every call is passed on to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn udp4(src: Ipv4Addr, dst: Ipv4Addr, total: usize) -> Vec<u8> {
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = header_checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.resize(total, 0);
    p
}

#[test]
fn forwarding_ipv6_and_ipv4_allocates_nothing() {
    let mut sim = Sim::new(50);
    let nodes: Vec<_> = (0..2u8)
        .map(|i| {
            let address = Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i + 1));
            let mut config = NodeConfig::new(address, format!("n{i}"), 1, 7 + u64::from(i));
            config.address4 = Some(Ipv4Addr::new(198, 18, 0, i + 1));
            sim.add_node_with(config)
        })
        .collect();
    sim.connect(nodes[0], nodes[1], LinkParams::default());
    assert!(
        sim.run_until_converged(Duration::from_millis(100), Duration::from_secs(5))
            .is_some()
    );
    sim.run_for(Duration::from_secs(1));
    let mut v6 = udp_packet(sim.address(nodes[0]), sim.address(nodes[1]), 64, &[0; 1000]);
    let mut v4 = udp4(
        Ipv4Addr::new(198, 18, 0, 1),
        Ipv4Addr::new(198, 18, 0, 2),
        1000,
    );
    sim.with_node(nodes[0], |node, now| {
        // Warm up (counters' map entries), then count.
        for packet in [&mut v6, &mut v4] {
            assert!(matches!(
                node.forward_packet(now, packet, Ingress::Tun, None),
                Forwarded::Send(_)
            ));
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..1000 {
            for packet in [&mut v6, &mut v4] {
                let forwarded = node.forward_packet(now, packet, Ingress::Tun, None);
                assert!(matches!(forwarded, Forwarded::Send(_)));
            }
        }
        assert_eq!(ALLOCATIONS.load(Ordering::Relaxed) - before, 0);
    });
}
