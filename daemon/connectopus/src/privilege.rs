//! Least privilege for a running node: once its TUN devices, sockets and eBPF programs exist,
//! the node keeps only the capabilities it still needs, sets `no_new_privs`, and confines
//! itself to an allow-list of system calls (seccomp). See docs/security.md, "Least privilege".
//!
//! Capabilities are per thread in Linux, so [`drop_capabilities`] runs on the main thread
//! before the node starts any other thread; every later thread inherits the reduced sets.
//! The seccomp filter is installed with `SECCOMP_FILTER_FLAG_TSYNC` (all threads at once)
//! once start-up is done, and is inherited by everything the node starts or becomes: its
//! helper processes (`resolvectl`) and its own re-exec after a configuration change, so the
//! allow-list covers a node's start-up too.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context, Result, bail};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use serde::{Deserialize, Serialize};

/// Linux capability numbers (linux/capability.h) the node may keep.
const CAP_SETPCAP: u32 = 8;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Capability names by number, as `capabilities(7)` spells them (lower case).
const CAP_NAMES: [&str; 41] = [
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

/// Environment variable with the same meaning as `--seccomp`.
pub const SECCOMP_ENV: &str = "CONNECTOPUS_SECCOMP";

/// What the node does about system calls outside its allow-list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// Refuse them with EPERM, and have the kernel log each refusal (audit, dmesg).
    #[default]
    Enforce,
    /// Allow them but have the kernel log each one: for finding what the list misses.
    Log,
    /// No filter (debugging).
    Off,
}

/// What the node still needs after start-up.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// It binds ports below 1024 at run time (DNS on port 53, or a listener on a low port
    /// that a configuration reload may restart).
    pub bind_low_ports: bool,
    /// It loads eBPF programs after start-up (CAP_BPF, CAP_PERFMON, and CAP_SYS_ADMIN for
    /// attaching them), so it keeps those and the `bpf` system call.
    pub ebpf_at_runtime: bool,
    /// It reads the maps of eBPF programs it attached at start (the TUN counters): the `bpf`
    /// system call on map fds it holds, which needs no capability.
    pub ebpf_maps: bool,
}

/// How the node runs, for `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrivilegeReport {
    /// Effective capabilities of the node's threads, e.g. `["cap_net_admin"]`.
    pub capabilities: Vec<String>,
    /// Whether `no_new_privs` is set.
    pub no_new_privs: bool,
    /// `on (N syscalls)`, `log (N syscalls)`, or `off: <why>`.
    pub seccomp: String,
}

impl fmt::Display for PrivilegeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caps = if self.capabilities.is_empty() {
            "none".to_owned()
        } else {
            self.capabilities.join(",")
        };
        write!(
            f,
            "capabilities {caps}  no_new_privs {}  seccomp {}",
            if self.no_new_privs { "on" } else { "off" },
            self.seccomp
        )
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Capability sets of the calling thread, as 64-bit masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CapSets {
    effective: u64,
    permitted: u64,
    inheritable: u64,
}

fn capget() -> Result<CapSets> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) with a version-3 header writes two CapData entries, which `data` holds.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("capget");
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

fn capset(sets: CapSets) -> Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |v: u64| (v as u32, (v >> 32) as u32);
    let (e0, e1) = split(sets.effective);
    let (p0, p1) = split(sets.permitted);
    let (i0, i1) = split(sets.inheritable);
    let data = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: capset(2) with a version-3 header reads two CapData entries from `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("capset");
    }
    Ok(())
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> std::io::Result<libc::c_int> {
    // SAFETY: the prctl options used here take integer arguments only.
    let rc = unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn bit(cap: u32) -> u64 {
    1u64 << cap
}

/// Returns the names of the capabilities in `mask`.
fn names(mask: u64) -> Vec<String> {
    (0..64u32)
        .filter(|c| mask & bit(*c) != 0)
        .map(|c| {
            CAP_NAMES
                .get(c as usize)
                .map_or_else(|| format!("cap_{c}"), |n| (*n).to_owned())
        })
        .collect()
}

/// Returns the capabilities a node keeps for `needs`.
fn wanted(needs: Needs) -> u64 {
    let mut keep = bit(CAP_NET_ADMIN);
    if needs.bind_low_ports {
        keep |= bit(CAP_NET_BIND_SERVICE);
    }
    if needs.ebpf_at_runtime {
        keep |= bit(CAP_BPF) | bit(CAP_PERFMON) | bit(CAP_SYS_ADMIN);
    }
    keep
}

/// Drops every capability the node no longer needs (effective, permitted, inheritable,
/// ambient and bounding sets) and sets `no_new_privs`, for the calling thread and the
/// threads it starts later. Call it before starting any thread.
///
/// # Errors
/// A system call that should not fail did.
pub fn drop_capabilities(needs: Needs) -> Result<()> {
    let current = capget()?;
    let keep = wanted(needs) & current.permitted;
    // The bounding set limits what any later execve can grant (our own re-exec included).
    // Dropping from it needs CAP_SETPCAP, which goes last.
    if current.effective & bit(CAP_SETPCAP) != 0 {
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(40)
            .min(63);
        for cap in 0..=last {
            if keep & bit(cap) == 0 {
                prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap)).with_context(|| {
                    format!(
                        "dropping {} from the bounding set",
                        names(bit(cap)).join("")
                    )
                })?;
            }
        }
    }
    // Ambient capabilities would survive an execve; the node wants none there.
    let _ = prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    );
    capset(CapSets {
        effective: keep,
        permitted: keep,
        inheritable: 0,
    })?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).context("setting no_new_privs")?;
    let after = capget()?;
    if after.effective != keep || after.permitted != keep {
        bail!(
            "capabilities are {:?} after dropping to {:?}",
            names(after.effective),
            names(keep)
        );
    }
    Ok(())
}

/// Returns what the calling thread runs with; `seccomp` is the state [`install_seccomp`]
/// reported.
pub fn report(seccomp: &str) -> PrivilegeReport {
    PrivilegeReport {
        capabilities: capget().map(|c| names(c.effective)).unwrap_or_default(),
        no_new_privs: prctl(libc::PR_GET_NO_NEW_PRIVS, 0).is_ok_and(|v| v == 1),
        seccomp: seccomp.to_owned(),
    }
}

/// The system calls a node makes, from start-up (it may re-exec itself) to exit: Rust's
/// standard library and allocator, io_uring and its syscall fallback, sockets, TUN and
/// netlink, OpenSSL and aws-lc, signal handling, threads, and starting processes.
/// Found by tracing the node through the end-to-end tests (`strace -f`) and kept with a
/// margin for the same families.
#[cfg(target_arch = "x86_64")]
const ARCH_SPECIFIC: &[libc::c_long] = &[
    libc::SYS_access,
    libc::SYS_arch_prctl,
    libc::SYS_chmod,
    libc::SYS_epoll_wait,
    libc::SYS_fork,
    libc::SYS_getdents,
    libc::SYS_lstat,
    libc::SYS_mkdir,
    libc::SYS_open,
    libc::SYS_pipe,
    libc::SYS_poll,
    libc::SYS_readlink,
    libc::SYS_rename,
    libc::SYS_rmdir,
    libc::SYS_stat,
    libc::SYS_unlink,
    libc::SYS_vfork,
];

#[cfg(not(target_arch = "x86_64"))]
const ARCH_SPECIFIC: &[libc::c_long] = &[];

const ALLOWED: &[libc::c_long] = &[
    // memory, threads, time, process
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    // Only for the calling thread (`OWN_THREAD_ONLY`).
    libc::SYS_sched_setaffinity,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getpgid,
    libc::SYS_setpgid,
    libc::SYS_setsid,
    libc::SYS_getrlimit,
    libc::SYS_prlimit64,
    libc::SYS_getrusage,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_prctl,
    libc::SYS_capget,
    libc::SYS_capset,
    // a re-executed node installs its filter again on top of the inherited one (a filter
    // can only narrow what is allowed)
    libc::SYS_seccomp,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_restart_syscall,
    libc::SYS_membarrier,
    // signals
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    libc::SYS_kill,
    libc::SYS_tgkill,
    libc::SYS_tkill,
    // files
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_chdir,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_umask,
    libc::SYS_memfd_create,
    libc::SYS_flock,
    // polling and event notification
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    // sockets (UDP, TCP, unix control socket, netlink)
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
];

/// Installs the seccomp allow-list on every thread of the process, and returns what
/// `status` shows: `on (N syscalls)`, `log (N syscalls)` or `off: <why>`.
pub fn install_seccomp(mode: SeccompMode, needs: Needs) -> String {
    let verb = match mode {
        SeccompMode::Off => return "off: disabled by --seccomp off".to_owned(),
        SeccompMode::Enforce => "on",
        SeccompMode::Log => "log",
    };
    match build_and_install(mode, needs) {
        Ok(n) => format!("{verb} ({n} syscalls)"),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "running without a seccomp filter");
            format!("off: {error:#}")
        }
    }
}

/// Calls allowed only with a first argument of 0, the calling thread: a node pins its own
/// threads at every start, also the start of a re-executed image, which runs under this
/// filter (the wake-up measurement, `wake_cost`, and the CPU-local workers). A node running
/// as root could otherwise re-pin every other root process.
const OWN_THREAD_ONLY: &[libc::c_long] = &[libc::SYS_sched_setaffinity];

/// The rules of `n`: none (allowed whatever its arguments) or, for [`OWN_THREAD_ONLY`], a
/// first argument of 0.
fn rules_of(n: libc::c_long) -> Result<Vec<seccompiler::SeccompRule>> {
    if !OWN_THREAD_ONLY.contains(&n) {
        return Ok(Vec::new());
    }
    let this_thread = seccompiler::SeccompCondition::new(
        0,
        seccompiler::SeccompCmpArgLen::Dword,
        seccompiler::SeccompCmpOp::Eq,
        0,
    )
    .context("a seccomp condition")?;
    Ok(vec![
        seccompiler::SeccompRule::new(vec![this_thread]).context("a seccomp rule")?,
    ])
}

fn allow_list(needs: Needs) -> Vec<libc::c_long> {
    let mut list: Vec<libc::c_long> = ALLOWED.iter().chain(ARCH_SPECIFIC).copied().collect();
    if needs.ebpf_at_runtime {
        list.extend([libc::SYS_bpf, libc::SYS_perf_event_open]);
    }
    if needs.ebpf_maps {
        list.push(libc::SYS_bpf);
    }
    list.sort_unstable();
    list.dedup();
    list
}

/// A system call number as seccompiler takes it (`c_long` is 32 bits on 32-bit targets).
#[allow(clippy::useless_conversion)]
fn syscall_number(n: libc::c_long) -> i64 {
    i64::from(n)
}

fn build_and_install(mode: SeccompMode, needs: Needs) -> Result<usize> {
    let list = allow_list(needs);
    install(&compile(&list, mode)?)?;
    Ok(list.len())
}

/// The filter allowing `list` (with the argument rules of [`rules_of`]); any other call is
/// refused with EPERM or, in `Log` mode, logged and allowed.
fn compile(list: &[libc::c_long], mode: SeccompMode) -> Result<BpfProgram> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| anyhow::anyhow!("unsupported architecture: {e}"))?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = list
        .iter()
        .map(|n| Ok((syscall_number(*n), rules_of(*n)?)))
        .collect::<Result<_>>()?;
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Errno(libc::EPERM as u32),
    };
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .context("building the seccomp filter")?;
    filter.try_into().context("compiling the seccomp filter")
}

#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const seccompiler::sock_filter,
}

/// Installs `program` on all threads (TSYNC), asking the kernel to log every action but
/// "allow" (FLAG_LOG): refused calls show up in the audit log / dmesg.
fn install(program: &BpfProgram) -> Result<()> {
    let len = libc::c_ushort::try_from(program.len()).context("seccomp filter too long")?;
    let fprog = SockFprog {
        len,
        filter: program.as_ptr(),
    };
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).context("setting no_new_privs")?;
    let flags = libc::SECCOMP_FILTER_FLAG_TSYNC | libc::SECCOMP_FILTER_FLAG_LOG;
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const SockFprog,
        )
    };
    match rc {
        0 => Ok(()),
        rc if rc > 0 => bail!("thread {rc} cannot take the seccomp filter (TSYNC)"),
        _ => Err(std::io::Error::last_os_error()).context("installing the seccomp filter"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_capabilities_7() {
        assert_eq!(
            names(bit(CAP_NET_ADMIN) | bit(CAP_NET_BIND_SERVICE)),
            vec!["cap_net_bind_service", "cap_net_admin"]
        );
        assert_eq!(names(bit(CAP_BPF)), vec!["cap_bpf"]);
        assert_eq!(names(0), Vec::<String>::new());
    }

    #[test]
    fn the_node_keeps_net_admin_and_only_what_its_needs_add() {
        assert_eq!(wanted(Needs::default()), bit(CAP_NET_ADMIN));
        let dns = Needs {
            bind_low_ports: true,
            ..Needs::default()
        };
        assert_eq!(wanted(dns), bit(CAP_NET_ADMIN) | bit(CAP_NET_BIND_SERVICE));
        let ebpf = Needs {
            ebpf_at_runtime: true,
            ..Needs::default()
        };
        assert_eq!(names(wanted(ebpf)).len(), 4);
        assert!(!allow_list(Needs::default()).contains(&libc::SYS_bpf));
        assert!(allow_list(ebpf).contains(&libc::SYS_bpf));
        let maps = Needs {
            ebpf_maps: true,
            ..Needs::default()
        };
        assert_eq!(
            wanted(maps),
            bit(CAP_NET_ADMIN),
            "reading maps needs no capability"
        );
        assert!(allow_list(maps).contains(&libc::SYS_bpf));
        assert!(!allow_list(maps).contains(&libc::SYS_perf_event_open));
    }

    #[test]
    fn the_allow_list_compiles_for_this_architecture() {
        let program = compile(&allow_list(Needs::default()), SeccompMode::Enforce).unwrap();
        assert!(program.len() > 100);
    }

    /// Under the node's filter a thread may pin itself (a re-executed node pins its threads)
    /// but not another process. Checked in a forked child, which installs the filter on its
    /// one thread and exits with what it saw.
    #[test]
    fn under_the_filter_a_thread_pins_itself_and_nothing_else() {
        let program = compile(&allow_list(Needs::default()), SeccompMode::Enforce).unwrap();
        // SAFETY: an all-zero cpu_set_t is a valid empty set; sched_getaffinity fills it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `set` is a live cpu_set_t of `size` bytes.
        assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut set) }, 0);
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child only makes system calls (no allocation, no lock) and `_exit`s.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork");
        if child == 0 {
            let code = match install(&program) {
                Err(_) => 3,
                // SAFETY: `set` is a live cpu_set_t of `size` bytes (the child's copy).
                Ok(()) => match unsafe {
                    (
                        libc::sched_setaffinity(0, size, &set),
                        libc::sched_setaffinity(parent, size, &set),
                        *libc::__errno_location(),
                    )
                } {
                    (0, -1, libc::EPERM) => 0,
                    (0, _, _) => 1,
                    _ => 2,
                },
            };
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status), "child status {status}");
        let what = [
            "pinned itself, refused for the parent",
            "pinned itself, and the parent too",
            "could not pin itself",
            "could not install the filter",
        ];
        let code = libc::WEXITSTATUS(status) as usize;
        assert_eq!(code, 0, "under the filter the child {}", what[code.min(3)]);
    }
}
