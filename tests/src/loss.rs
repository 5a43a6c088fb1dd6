//! Random packet loss on an interface with nftables (kernel netem is not available on the
//! test machines).

use anyhow::{Context, Result, bail};

use std::process::{Command, Output};
use std::time::Duration;

use crate::env::tool;
use crate::netns::{NetNs, netns_exists};
use crate::process::{check_status, run_with_timeout};
use crate::tempdir::TestDir;

/// Which packets of the interface a [`Loss`] drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Packets the interface receives.
    Ingress,
    /// Packets the interface sends.
    Egress,
    /// Both, each dropped independently (a round trip then survives with (1-p)^2).
    Both,
}

/// Drops a percentage of an interface's packets, chosen at random per packet, with an
/// nftables `netdev` table inside the interface's namespace
/// (`numgen random mod 100 < N drop`). It catches every packet on the device, neighbour
/// discovery included, like a lossy cable. Dropped (or the namespace deleted) removes it.
#[derive(Debug)]
pub struct Loss {
    ns: String,
    label: String,
    dir: TestDir,
    iface: String,
    table: String,
    direction: Direction,
    percent: u8,
}

impl Loss {
    /// Starts dropping `percent` (0..=100) of `iface`'s packets in `direction`.
    pub fn new(ns: &NetNs, iface: &str, direction: Direction, percent: u8) -> Result<Loss> {
        let mut loss = Loss {
            ns: ns.name().to_owned(),
            label: ns.label().to_owned(),
            dir: ns.dir().clone(),
            iface: iface.to_owned(),
            table: format!("cxloss_{iface}"),
            direction,
            percent: 0,
        };
        loss.apply(percent, false)?;
        Ok(loss)
    }

    /// The current loss percentage.
    pub fn percent(&self) -> u8 {
        self.percent
    }

    /// Changes the loss percentage (atomically: one nft transaction).
    pub fn set(&mut self, percent: u8) -> Result<()> {
        self.apply(percent, true)
    }

    /// Runs `nft args` in the namespace.
    fn nft(&self, args: &[&str]) -> Result<Output> {
        let mut command = Command::new(tool("ip")?);
        command
            .args(["netns", "exec", &self.ns])
            .arg(tool("nft")?)
            .args(args);
        run_with_timeout(command, Duration::from_secs(10))
    }

    fn apply(&mut self, percent: u8, replace: bool) -> Result<()> {
        if percent > 100 {
            bail!("loss percentage {percent} is over 100");
        }
        let rule = match percent {
            0 => String::new(),
            100 => "drop;".to_owned(),
            p => format!("numgen random mod 100 < {p} drop;"),
        };
        let hooks: &[&str] = match self.direction {
            Direction::Ingress => &["ingress"],
            Direction::Egress => &["egress"],
            Direction::Both => &["ingress", "egress"],
        };
        let mut script = String::new();
        if replace {
            script.push_str(&format!("delete table netdev {}\n", self.table));
        }
        script.push_str(&format!("table netdev {} {{\n", self.table));
        for hook in hooks {
            script.push_str(&format!(
                "  chain {hook} {{ type filter hook {hook} device \"{}\" priority 0; {rule} }}\n",
                self.iface
            ));
        }
        script.push_str("}\n");
        let path = self.dir.join(format!("{}.{}.nft", self.label, self.table));
        std::fs::write(&path, &script).with_context(|| format!("writing {path:?}"))?;
        let path = path.to_string_lossy().into_owned();
        let output = self.nft(&["-f", &path])?;
        check_status(&format!("nft -f {path} (in {})", self.ns), &output)
            .with_context(|| format!("nft script:\n{script}"))?;
        self.percent = percent;
        Ok(())
    }
}

impl Drop for Loss {
    fn drop(&mut self) {
        if !netns_exists(&self.ns) {
            return;
        }
        match self.nft(&["delete", "table", "netdev", &self.table]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "removing loss table {} in {}: {}",
                self.table,
                self.ns,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("removing loss table {}: {e:#}", self.table),
        }
    }
}
