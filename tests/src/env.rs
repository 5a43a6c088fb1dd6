//! Root detection, required tools and unique names.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Result, bail};

/// The external tools the harness drives, each with the Debian package that provides it.
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("ping", "iputils-ping"),
    ("traceroute", "traceroute"),
    ("iperf3", "iperf3"),
    ("openssl", "openssl"),
    ("dig", "dnsutils"),
    ("nft", "nftables"),
    ("sh", "dash"),
    ("ssh-keygen", "openssh-client"),
    ("ssh-agent", "openssh-client"),
    ("python3", "python3"),
    ("promtool", "prometheus"),
    ("curl", "curl"),
    ("dpkg", "dpkg"),
    ("dpkg-deb", "dpkg"),
    ("setpriv", "util-linux"),
    ("unshare", "util-linux"),
    ("systemd-analyze", "systemd"),
    ("chromium", "chromium"),
    ("kea-dhcp6", "kea-dhcp6-server"),
    ("dhcpd", "isc-dhcp-server"),
    ("podman", "podman"),
    ("runc", "runc"),
    ("busybox", "busybox-static"),
    ("nsenter", "util-linux"),
    // Builds `minicni`, the libcni driver of the CNI runtime tests (libcni itself comes from
    // `golang-github-appc-cni-dev`).
    ("go", "golang-go"),
    ("containerd", "containerd"),
    ("ctr", "containerd"),
];

/// Whether this process runs with effective user id 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns `true` when running as root; otherwise prints a skip message naming `test` to
/// stderr and returns `false`, so the caller can `return` early.
///
/// Prefer the [`require_root!`](crate::require_root!) macro, which does the `return` too.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: needs root (it creates network namespaces and veth links); \
         run the tests as root, e.g. `sudo -E cargo test -p connectopus-tests`"
    );
    false
}

/// Returns from the calling test (with `()` or the given value) after printing a skip
/// message when not running as root.
///
/// ```no_run
/// #[test]
/// fn needs_namespaces() {
///     connectopus_tests::require_root!();
///     // ... create namespaces ...
/// }
/// ```
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require_root!(())
    };
    ($ret:expr) => {
        if !$crate::is_root() {
            // The enclosing function's path, e.g. `tools::ping_between_two_namespaces`.
            fn here() {}
            let name = ::std::any::type_name_of_val(&here);
            $crate::require_root(name.strip_suffix("::here").unwrap_or(name));
            return $ret;
        }
    };
}

/// The Debian package that provides `tool`, if it is one of [`TOOLS`].
pub fn package_for(tool: &str) -> Option<&'static str> {
    TOOLS.iter().find(|(t, _)| *t == tool).map(|(_, p)| *p)
}

/// Finds `name` in `PATH`, falling back to the sbin directories a non-login root shell may
/// lack. The error names the Debian package to install.
pub fn tool(name: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    if let Some(found) = dirs.iter().map(|d| d.join(name)).find(|c| c.is_file()) {
        return Ok(found);
    }
    match package_for(name) {
        Some(package) => bail!(
            "required tool `{name}` is missing: install the Debian package `{package}` \
             (apt-get install {package}; `cargo xtask install-deps` installs all of them)"
        ),
        None => bail!("required tool `{name}` is missing from PATH"),
    }
}

/// Panics, naming the Debian packages to install, unless every tool in `names` is present.
///
/// Call it at the top of a test after [`require_root!`](crate::require_root!): a missing
/// tool is a broken test machine, not a reason to skip.
pub fn require_tools(names: &[&str]) {
    let missing: Vec<String> = names
        .iter()
        .filter_map(|n| tool(n).err().map(|e| e.to_string()))
        .collect();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// Base-36 digits, lowercase, of `n` (at least one digit).
fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// A fresh name `cx` + 5-character process tag + counter: unique among the threads of this
/// process (counter) and among concurrent processes (the tag is the pid in base 36, and pids
/// fit in 5 base-36 digits). At most 13 characters until the counter passes 36^6, which
/// leaves room for a one-character suffix within the 15-character interface name limit.
pub fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "cx{:0>5}{}",
        base36(u64::from(std::process::id())),
        base36(u64::from(n))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_distinct() {
        let a = unique_name();
        let b = unique_name();
        assert_ne!(a, b);
        assert!(
            a.starts_with("cx") && a.len() < 15,
            "{a} leaves room for a suffix"
        );
        assert_eq!(base36(0), "0");
        assert_eq!(
            base36(4_194_304).len(),
            5,
            "the largest Linux pid fits the tag"
        );
    }

    #[test]
    fn missing_tool_names_its_package() {
        let err = tool("dig-not-a-real-tool").expect_err("no such tool");
        assert!(err.to_string().contains("missing"));
        assert_eq!(package_for("dig"), Some("dnsutils"));
    }
}
