//! Runs a simulated 8-node mesh and prints what it does: convergence, routes, a cut link
//! rerouting, and a node crashing and coming back.
//!
//! `cargo run --release -p connectopus-core --example mesh_demo`

use std::time::Duration;

use connectopus_core::forward::RouteTarget;
use connectopus_core::sim::{LinkParams, NodeIdx, Sim};

fn main() {
    let mut sim = Sim::new(2026);
    let names = [
        "foo", "bar", "baz", "qux", "quux", "corge", "grault", "garply",
    ];
    let v: Vec<NodeIdx> = names.iter().map(|n| sim.add_node(n)).collect();
    let wan = LinkParams {
        latency: Duration::from_millis(15),
        jitter: Duration::from_millis(5),
        loss: 0.05,
        ..LinkParams::default()
    };
    for w in v.windows(2) {
        sim.connect(w[0], w[1], wan);
    }
    let shortcut = sim.connect(v[1], v[6], wan.with_cost(2.0));
    println!("8 nodes in a line (5 % loss, 15 ms) plus a cost-2 shortcut bar—grault");

    let took = sim.run_until_converged(Duration::from_millis(50), Duration::from_secs(30));
    println!("converged after {took:?} of virtual time\n");
    print_routes(&sim, v[0], &names);
    print_trace(&sim, v[0], v[7], &names);

    println!("\ncutting the shortcut...");
    sim.cut(shortcut);
    sim.run_for(Duration::from_secs(9));
    print_trace(&sim, v[0], v[7], &names);

    println!("\nrestoring the shortcut and crashing qux...");
    sim.restore(shortcut);
    sim.crash(v[3]);
    sim.run_for(Duration::from_secs(9));
    print_trace(&sim, v[0], v[4], &names);

    println!("\nrestarting qux with a new epoch...");
    sim.restart(v[3]);
    let took = sim.run_until_converged(Duration::from_millis(50), Duration::from_secs(30));
    println!("converged again after {took:?}");
    print_trace(&sim, v[2], v[4], &names);
    let stats = sim.stats();
    println!(
        "\n{} link messages sent, {} lost",
        stats.messages_sent, stats.messages_lost
    );
}

fn print_routes(sim: &Sim, at: NodeIdx, names: &[&str]) {
    let Some(node) = sim.node(at) else {
        return;
    };
    println!("forwarding table of {}:", names[at.0]);
    for (prefix, target) in node.forwarding_table().routes.iter() {
        let via = match target {
            RouteTarget::Local => "local".to_owned(),
            RouteTarget::Link { link, mtu } => format!("{link} (mtu {mtu})"),
        };
        let cost = node
            .routes()
            .nodes
            .get(&prefix.addr())
            .map_or(String::new(), |r| {
                format!(" cost {:.1}", r.cost as f64 / 1000.0)
            });
        println!("  {prefix:<16} -> {via}{cost}");
    }
}

fn print_trace(sim: &Sim, from: NodeIdx, to: NodeIdx, names: &[&str]) {
    match sim.trace(from, to) {
        Ok(path) => {
            let hops: Vec<&str> = path.iter().map(|n| names[n.0]).collect();
            println!(
                "path {} -> {}: {}",
                names[from.0],
                names[to.0],
                hops.join(" -> ")
            );
        }
        Err(error) => println!("path {} -> {}: {error:?}", names[from.0], names[to.0]),
    }
}
