//! Delay with jitter on an interface, in user space: the test kernel has no netem (and no
//! `fq` qdisc for departure times), so `tc` alone cannot delay packets. `tc` redirects the
//! interface's egress to a TAP device that the `link_delay` program (`src/bin/link_delay.rs`)
//! reads, holds each frame for the delay plus a random jitter, and sends it out of the
//! interface around the `tc` hook.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::{NetNs, netns_exists};
use crate::process::{ChildGuard, check_status};

/// Frames sent by an interface arrive `delay_ms ± jitter_ms` later (uniform; frames may
/// overtake each other). Put one on each end of a link to delay both directions. Dropping it
/// removes the redirect first, then stops the program, so no frame is ever redirected to a
/// TAP device that is gone.
#[derive(Debug)]
pub struct Delay<'a> {
    ns: &'a NetNs,
    iface: String,
    relay: Option<ChildGuard>,
}

impl<'a> Delay<'a> {
    /// Starts delaying what `iface` (in `ns`) sends; `seed` drives the jitter.
    pub fn new(
        ns: &'a NetNs,
        iface: &str,
        delay_ms: u32,
        jitter_ms: u32,
        seed: u64,
    ) -> Result<Delay<'a>> {
        let program = crate::workspace_binary("link_delay")?;
        // The TAP's name: the interface's with a `d` in front, within 15 characters.
        let tap: String = format!("d{iface}").chars().take(15).collect();
        let relay = ns.spawn(
            &program.to_string_lossy(),
            &[
                iface.to_owned(),
                tap.clone(),
                delay_ms.to_string(),
                jitter_ms.to_string(),
                seed.to_string(),
            ],
        )?;
        relay.wait_for_output("ready", Duration::from_secs(10))?;
        let delay = Delay {
            ns,
            iface: iface.to_owned(),
            relay: Some(relay),
        };
        let redirect = format!("mirred egress redirect dev {tap}");
        for args in [
            format!("qdisc add dev {iface} clsact"),
            format!(
                "filter add dev {iface} egress protocol all prio 1 u32 match u32 0 0 action {redirect}"
            ),
        ] {
            let args: Vec<&str> = args.split(' ').collect();
            let output = delay.ns.exec("tc", &args)?;
            check_status(&format!("tc {}", args.join(" ")), &output)?;
        }
        // `delay` is dropped on an error above, which removes whatever was installed.
        Ok(delay)
    }
}

impl Drop for Delay<'_> {
    fn drop(&mut self) {
        if netns_exists(self.ns.name()) {
            match self
                .ns
                .exec("tc", &["qdisc", "del", "dev", &self.iface, "clsact"])
            {
                Ok(out) if out.status.success() => {}
                Ok(out) => {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    // Nothing installed yet (an error while starting): nothing to remove.
                    if !stderr.contains("Cannot find") && !stderr.contains("Invalid handle") {
                        eprintln!("removing the delay on {}: {}", self.iface, stderr.trim());
                    }
                }
                Err(e) => eprintln!("removing the delay on {}: {e:#}", self.iface),
            }
        }
        if let Some(relay) = self.relay.take()
            && let Err(e) = relay.terminate().context("stopping link_delay")
        {
            eprintln!("{e:#}");
        }
    }
}
