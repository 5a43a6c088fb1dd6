//! The harness cleans up after panicking tests and never reuses a name. Needs root.

#![allow(clippy::unwrap_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use anyhow::{Context, ensure};
use connectopus_tests::{
    NetNs, TestDir, Topology, netns_exists, ping6, process_exists, require_root, require_tools,
    run_test, wait_until,
};

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn panic_with_guards_in_scope_cleans_up() {
    require_root!();
    require_tools(&["ip", "sleep"]);
    let dir = TestDir::new("panic_cleanup").unwrap();
    let mut seen = None;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let topo = Topology::line(&dir, &["foo", "bar"]).unwrap();
        let ns = topo.ns("foo");
        let sleeper = ns.spawn("sleep", &["30"]).unwrap();
        // A process that escapes our process group still dies with the namespace.
        let daemon = ns
            .exec_ok("sh", &["-c", "setsid sleep 30 >/dev/null 2>&1 & echo $!"])
            .unwrap();
        let daemon: u32 = daemon.trim().parse().unwrap();
        seen = Some((
            topo.ns("foo").name().to_owned(),
            topo.ns("bar").name().to_owned(),
            sleeper.pid(),
            daemon,
        ));
        assert!(process_exists(sleeper.pid()) && process_exists(daemon));
        panic!("deliberate panic with guards alive");
    }));
    assert!(outcome.is_err(), "the closure panicked");
    let (foo, bar, sleeper, daemon) = seen.expect("the closure got far enough");
    let list = netns_list();
    assert!(!list.contains(&foo) && !list.contains(&bar), "{list}");
    assert!(!netns_exists(&foo) && !netns_exists(&bar));
    assert!(
        !process_exists(sleeper),
        "spawned process {sleeper} survived"
    );
    // The daemon's parent is gone, so init reaps it; give it a moment.
    assert!(
        wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
            !process_exists(daemon)
        })
        .is_ok(),
        "escaped process {daemon} survived"
    );
}

#[test]
fn dropped_child_guard_kills_its_process_group() {
    require_root!();
    require_tools(&["ip", "sh"]);
    run_test("child_guard_group", |dir| {
        let ns = NetNs::new(dir, "solo")?;
        let child = ns.spawn(
            "sh",
            &["-c", "sleep 30 & echo child $!; trap '' TERM; wait"],
        )?;
        let line = child.wait_for_output("child ", Duration::from_secs(5))?;
        let grandchild: u32 = line.trim_start_matches("child ").trim().parse()?;
        let pid = child.pid();
        ensure!(child.is_running() && process_exists(grandchild));
        // sh ignores SIGTERM, so this also checks the SIGKILL after the grace period.
        drop(child);
        ensure!(!process_exists(pid), "the shell survived");
        wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
            !process_exists(grandchild)
        })
        .context("the sleep in the shell's group survived")?;
        Ok(())
    });
}

#[test]
fn kill_hard_and_exit_status() {
    require_root!();
    require_tools(&["ip", "sleep", "sh"]);
    run_test("kill_hard", |dir| {
        let ns = NetNs::new(dir, "solo")?;
        let child = ns.spawn("sleep", &["30"])?;
        let status = child.kill_hard()?;
        ensure!(
            connectopus_tests::describe(status) == "signal 9",
            "{status:?}"
        );
        let quick = ns.spawn("sh", &["-c", "echo ready; exit 3"])?;
        ensure!(quick.wait_timeout(Duration::from_secs(5))?.code() == Some(3));
        ensure!(quick.stdout().contains("ready"));
        let err = quick
            .wait_for_output("never printed", Duration::from_secs(5))
            .expect_err("it exited");
        ensure!(err.to_string().contains("exited"), "{err:#}");
        Ok(())
    });
}

#[test]
fn parallel_topologies_get_distinct_names_and_both_work() {
    require_root!();
    require_tools(&["ip", "ping"]);
    run_test("parallel_topologies", |dir| {
        let results: Vec<anyhow::Result<(Vec<String>, Vec<String>)>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..2)
                    .map(|_| {
                        scope.spawn(|| {
                            let topo = Topology::triangle(dir, ["foo", "bar", "baz"])?;
                            let r =
                                ping6(topo.ns("foo"), topo.link_addr("bar", "foo"), 2, 56, &[])?;
                            ensure!(r.all_received(), "{r:?}");
                            let r =
                                ping6(topo.ns("foo"), topo.link_addr("baz", "foo"), 2, 56, &[])?;
                            ensure!(r.all_received(), "{r:?}");
                            let names =
                                topo.nodes().map(|n| topo.ns(n).name().to_owned()).collect();
                            let ifaces = topo
                                .links()
                                .iter()
                                .flat_map(|l| [l.veth.a.ifname.clone(), l.veth.b.ifname.clone()])
                                .collect();
                            Ok((names, ifaces))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))
                    })
                    .collect()
            });
        let mut all_names = Vec::new();
        let mut all_ifaces = Vec::new();
        for result in results {
            let (names, ifaces) = result?;
            all_names.extend(names);
            all_ifaces.extend(ifaces);
        }
        for list in [&mut all_names, &mut all_ifaces] {
            let n = list.len();
            list.sort();
            list.dedup();
            ensure!(list.len() == n, "duplicate names: {list:?}");
        }
        ensure!(all_ifaces.iter().all(|i| i.len() <= 15), "{all_ifaces:?}");
        ensure!(
            all_names.iter().all(|n| !netns_exists(n)),
            "namespaces left over"
        );
        Ok(())
    });
}

#[test]
fn exec_is_bounded() {
    require_root!();
    require_tools(&["ip", "sh", "sleep"]);
    run_test("exec_is_bounded", |dir| {
        let ns = NetNs::new(dir, "solo")?;
        let started = std::time::Instant::now();
        let err = ns
            .exec_timeout("sleep", &["10"], Duration::from_millis(300))
            .expect_err("times out");
        ensure!(format!("{err:#}").contains("timed out"), "{err:#}");
        ensure!(started.elapsed() < Duration::from_secs(3));
        // An escaped background process holding stdout open does not hang exec.
        let started = std::time::Instant::now();
        let out = ns.exec_ok("sh", &["-c", "setsid sleep 5 & echo hi"])?;
        ensure!(out.contains("hi"), "{out}");
        ensure!(started.elapsed() < Duration::from_secs(4));
        Ok(())
    });
}
