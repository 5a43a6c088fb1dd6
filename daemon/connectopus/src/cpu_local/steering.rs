//! The TUN steering program: which queue of the node's TUN device a packet the kernel sends
//! into the mesh goes to (`TUNSETSTEERINGEBPF`).
//!
//! Without it the kernel picks the queue by the flow's hash (or the queue that last wrote the
//! flow): the worker that reads the packet runs on whichever CPU, and waking it there costs a
//! cross-CPU wake-up (on the 2-vCPU guests here 20 µs, against 3 µs on the same CPU). The
//! program sends a flow to the queue of the worker pinned to the CPU the packet was produced
//! on, and keeps it there while the flow is busy: a flow moves only after it was quiet for
//! [`STICK_NS`], so its packets never wait in two queues at once (the old worker read the
//! last one long ago) and stay in order.
//!
//! The program is a few dozen eBPF instructions assembled here (no object file, no loader
//! process); its state is one LRU hash map from the flow (addresses, ports, protocol) to its
//! queue and the time it last sent. It needs `CAP_BPF` (or root) once, at start.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A flow quiet for this long moves to the queue of the CPU that produces its next packet.
pub const STICK_NS: i32 = 1_000_000;

/// Flows the map remembers (least recently used first out).
const FLOWS: u32 = 4096;

// Instruction classes and fields (linux/bpf.h, linux/bpf_common.h).
const LDX_B: u8 = 0x71;
const LDX_W: u8 = 0x61;
const LDX_DW: u8 = 0x79;
const STX_W: u8 = 0x63;
const STX_DW: u8 = 0x7b;
const ST_W: u8 = 0x62;
const ST_DW: u8 = 0x7a;
const MOV64_IMM: u8 = 0xb7;
const MOV64_REG: u8 = 0xbf;
const ADD64_IMM: u8 = 0x07;
const SUB64_REG: u8 = 0x1f;
const AND64_IMM: u8 = 0x57;
const LSH64_IMM: u8 = 0x67;
const RSH64_IMM: u8 = 0x77;
const JA: u8 = 0x05;
const JEQ_IMM: u8 = 0x15;
const JNE_IMM: u8 = 0x55;
/// Signed: a flow whose last packet another CPU stamped after this one read the clock is
/// busy, not old.
const JSGT_IMM: u8 = 0x65;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;

// Helpers.
const MAP_LOOKUP_ELEM: i32 = 1;
const MAP_UPDATE_ELEM: i32 = 2;
const KTIME_GET_NS: i32 = 5;
const GET_SMP_PROCESSOR_ID: i32 = 8;
const SKB_LOAD_BYTES: i32 = 26;

// bpf(2) commands, map and program types.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const MAP_TYPE_LRU_HASH: u32 = 9;
const PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// `_IOR('T', 224, int)`.
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

/// The map's key: addresses, ports, protocol (IPv4 addresses in the first 8 bytes).
const KEY_LEN: i16 = 40;
/// Where on the stack the key lies (frame pointer relative).
const KEY: i16 = -KEY_LEN;
const KEY_PORTS: i16 = KEY + 32;
const KEY_PROTO: i16 = KEY + 36;
/// One scratch byte (the IP version).
const SCRATCH: i16 = -48;
/// The map's value: the time the flow last sent (u64), its queue (u32), padding.
const VALUE: i16 = -64;
const VALUE_LEN: u32 = 16;

/// One eBPF instruction, or a jump to a label resolved when the program is assembled.
#[derive(Clone, Copy)]
enum Insn {
    Op {
        code: u8,
        dst: u8,
        src: u8,
        off: i16,
        imm: i32,
    },
    Jump {
        code: u8,
        dst: u8,
        imm: i32,
        to: Label,
    },
    Label(Label),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    V6,
    V4,
    Ports,
    LoadPorts,
    Lookup,
    Move,
    Miss,
    NoKey,
}

fn op(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn::Op {
        code,
        dst,
        src,
        off,
        imm,
    }
}

fn jump(code: u8, dst: u8, imm: i32, to: Label) -> Insn {
    Insn::Jump { code, dst, imm, to }
}

/// `r1 = ctx; r2 = offset (register `off_reg`, or `off` when None); r3 = fp + at; r4 = len;
/// call skb_load_bytes`.
fn load_bytes(offset: Result<i32, u8>, at: i16, len: i32) -> Vec<Insn> {
    let mut v = vec![op(MOV64_REG, 1, 6, 0, 0)];
    v.push(match offset {
        Ok(imm) => op(MOV64_IMM, 2, 0, 0, imm),
        Err(reg) => op(MOV64_REG, 2, reg, 0, 0),
    });
    v.extend([
        op(MOV64_REG, 3, 10, 0, 0),
        op(ADD64_IMM, 3, 0, 0, i32::from(at)),
        op(MOV64_IMM, 4, 0, 0, len),
        op(CALL, 0, 0, 0, SKB_LOAD_BYTES),
    ]);
    v
}

fn ld_map(dst: u8, map: RawFd) -> [Insn; 2] {
    [op(LD_IMM64, dst, PSEUDO_MAP_FD, 0, map), op(0, 0, 0, 0, 0)]
}

/// The program, for `map` and `(cpu, queue)` pairs (a CPU not listed sends new flows to queue 0).
fn program(map: RawFd, cpu_queues: &[(u32, u32)]) -> Vec<Insn> {
    use Label::*;
    let mut p = vec![op(MOV64_REG, 6, 1, 0, 0)];
    for i in 0..5 {
        p.push(op(ST_DW, 10, 0, KEY + 8 * i, 0));
    }
    // r9: the queue of this CPU.
    p.push(op(CALL, 0, 0, 0, GET_SMP_PROCESSOR_ID));
    p.push(op(MOV64_IMM, 9, 0, 0, 0));
    for &(cpu, queue) in cpu_queues {
        p.push(Insn::Op {
            code: JNE_IMM,
            dst: 0,
            src: 0,
            off: 1,
            imm: cpu as i32,
        });
        p.push(op(MOV64_IMM, 9, 0, 0, queue as i32));
    }
    // The IP version; r8 = IPv4 header length.
    p.extend(load_bytes(Ok(0), SCRATCH, 1));
    p.push(jump(JNE_IMM, 0, 0, NoKey));
    p.push(op(LDX_B, 7, 10, SCRATCH, 0));
    p.push(op(MOV64_REG, 8, 7, 0, 0));
    p.push(op(AND64_IMM, 8, 0, 0, 0xf));
    p.push(op(LSH64_IMM, 8, 0, 0, 2));
    p.push(op(RSH64_IMM, 7, 0, 0, 4));
    p.push(jump(JEQ_IMM, 7, 6, V6));
    p.push(jump(JEQ_IMM, 7, 4, V4));
    p.push(jump(JA, 0, 0, NoKey));
    p.push(Insn::Label(V6));
    p.extend(load_bytes(Ok(8), KEY, 32));
    p.extend(load_bytes(Ok(6), KEY_PROTO, 1));
    p.push(op(MOV64_IMM, 8, 0, 0, 40));
    p.push(jump(JA, 0, 0, Ports));
    p.push(Insn::Label(V4));
    p.extend(load_bytes(Ok(12), KEY, 8));
    p.extend(load_bytes(Ok(9), KEY_PROTO, 1));
    p.push(Insn::Label(Ports));
    p.push(op(LDX_B, 7, 10, KEY_PROTO, 0));
    p.push(jump(JEQ_IMM, 7, 6, LoadPorts));
    p.push(jump(JEQ_IMM, 7, 17, LoadPorts));
    p.push(jump(JA, 0, 0, Lookup));
    p.push(Insn::Label(LoadPorts));
    // A failed load leaves the ports zero (the helper clears its destination on error).
    p.extend(load_bytes(Err(8), KEY_PORTS, 4));
    p.push(Insn::Label(Lookup));
    p.push(op(CALL, 0, 0, 0, KTIME_GET_NS));
    p.push(op(MOV64_REG, 8, 0, 0, 0));
    p.extend(ld_map(1, map));
    p.push(op(MOV64_REG, 2, 10, 0, 0));
    p.push(op(ADD64_IMM, 2, 0, 0, i32::from(KEY)));
    p.push(op(CALL, 0, 0, 0, MAP_LOOKUP_ELEM));
    p.push(jump(JEQ_IMM, 0, 0, Miss));
    // A known flow: age = now - last; last = now.
    p.push(op(LDX_DW, 1, 0, 0, 0));
    p.push(op(MOV64_REG, 2, 8, 0, 0));
    p.push(op(SUB64_REG, 2, 1, 0, 0));
    p.push(op(STX_DW, 0, 8, 0, 0));
    p.push(jump(JSGT_IMM, 2, STICK_NS, Move));
    p.push(op(LDX_W, 0, 0, 8, 0));
    p.push(op(EXIT, 0, 0, 0, 0));
    p.push(Insn::Label(Move));
    p.push(op(STX_W, 0, 9, 8, 0));
    p.push(op(MOV64_REG, 0, 9, 0, 0));
    p.push(op(EXIT, 0, 0, 0, 0));
    p.push(Insn::Label(Miss));
    p.push(op(STX_DW, 10, 8, VALUE, 0));
    p.push(op(STX_W, 10, 9, VALUE + 8, 0));
    p.push(op(ST_W, 10, 0, VALUE + 12, 0));
    p.extend(ld_map(1, map));
    p.push(op(MOV64_REG, 2, 10, 0, 0));
    p.push(op(ADD64_IMM, 2, 0, 0, i32::from(KEY)));
    p.push(op(MOV64_REG, 3, 10, 0, 0));
    p.push(op(ADD64_IMM, 3, 0, 0, i32::from(VALUE)));
    p.push(op(MOV64_IMM, 4, 0, 0, 0));
    p.push(op(CALL, 0, 0, 0, MAP_UPDATE_ELEM));
    p.push(Insn::Label(NoKey));
    p.push(op(MOV64_REG, 0, 9, 0, 0));
    p.push(op(EXIT, 0, 0, 0, 0));
    p
}

/// Resolves labels and encodes the instructions (`struct bpf_insn`, little-endian).
fn assemble(program: &[Insn]) -> Vec<u64> {
    let mut at = Vec::new();
    let mut n = 0i32;
    for insn in program {
        match insn {
            Insn::Label(label) => at.push((*label, n)),
            _ => n += 1,
        }
    }
    let target = |label: Label| at.iter().find(|(l, _)| *l == label).map(|(_, i)| *i);
    let encode = |code: u8, dst: u8, src: u8, off: i16, imm: i32| {
        u64::from(code)
            | (u64::from(dst & 0xf) << 8)
            | (u64::from(src & 0xf) << 12)
            | (u64::from(off as u16) << 16)
            | (u64::from(imm as u32) << 32)
    };
    let mut out = Vec::new();
    for insn in program {
        let here = out.len() as i32;
        match *insn {
            Insn::Op {
                code,
                dst,
                src,
                off,
                imm,
            } => out.push(encode(code, dst, src, off, imm)),
            Insn::Jump { code, dst, imm, to } => {
                // Every label is defined in `program`; a missing one would jump nowhere.
                let off = target(to).map_or(0, |t| t - here - 1);
                out.push(encode(code, dst, 0, off as i16, imm));
            }
            Insn::Label(_) => {}
        }
    }
    out
}

/// `bpf(cmd, attr)`.
///
/// # Safety
/// Every pointer `attr` holds (instructions, license, log buffer) must point at memory that
/// stays alive and large enough for the call.
unsafe fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zeroed `union bpf_attr` prefix of 128 bytes, live for the call, whose
    // size is passed; the caller keeps the buffers its pointers name alive.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Loads the steering program for `(cpu, queue)` pairs.
///
/// # Errors
/// The kernel refuses the map or the program (no `CAP_BPF`, or the verifier's message).
pub fn load(cpu_queues: &[(u32, u32)]) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(MAP_TYPE_LRU_HASH) | (u64::from(KEY_LEN as u32) << 32);
    attr[1] = u64::from(VALUE_LEN) | (u64::from(FLOWS) << 32);
    // SAFETY: a map's attributes hold no pointer.
    let map = unsafe { bpf(BPF_MAP_CREATE, &mut attr) }?;
    let insns = assemble(&program(map.as_raw_fd(), cpu_queues));
    let license = b"Dual MIT/GPL\0";
    let mut attr = [0u64; 16];
    attr[0] = u64::from(PROG_TYPE_SOCKET_FILTER) | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // SAFETY: `insns` and `license` live until the end of this function.
    if let Ok(program) = unsafe { bpf(BPF_PROG_LOAD, &mut attr) } {
        return Ok(program);
    }
    // Refused: again with the verifier's log (not the first time: a log that overflows makes
    // the kernel refuse a valid program).
    let mut log = vec![0u8; 256 * 1024];
    // log_level 1, log_size, log_buf.
    attr[3] = 1 | ((log.len() as u64) << 32);
    attr[4] = log.as_mut_ptr() as u64;
    // SAFETY: `insns`, `license` and `log` live until the end of this function.
    unsafe { bpf(BPF_PROG_LOAD, &mut attr) }.map_err(|error| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let last = text.lines().rev().take(3).collect::<Vec<_>>();
        io::Error::new(
            error.kind(),
            format!(
                "{error} ({})",
                last.into_iter().rev().collect::<Vec<_>>().join("; ")
            ),
        )
    })
    // The program holds the map; its fd closes here.
}

/// The environment variable in which a node hands its steering program to its re-executed
/// self (a restart of the mesh instance): `<descriptor>:<cpu>=<queue>,<cpu>=<queue>…`, the
/// pairs the program was assembled for.
pub const HANDOVER_ENV: &str = "CONNECTOPUS_CPU_LOCAL_STEERING";

/// Set once the program named by [`HANDOVER_ENV`] was taken (or refused): only one owner.
static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A loaded steering program and the `(cpu, queue)` pairs it was assembled for.
#[derive(Debug)]
pub struct Steering {
    program: OwnedFd,
    cpu_queues: Vec<(u32, u32)>,
}

/// A steering program the node's previous image handed over across its re-exec
/// ([`Steering::hand_over`]), taken at start whether the new image wants one or not: one it
/// does not use closes with this.
#[derive(Debug)]
pub struct Handed {
    program: OwnedFd,
    /// The pairs it was assembled for, as [`HANDOVER_ENV`] names them.
    pairs: String,
}

impl Handed {
    /// The program named by [`HANDOVER_ENV`]: `None` without one (or once taken), an error
    /// when the value is malformed or the descriptor is not a BPF program (left alone then).
    pub fn take() -> Option<Result<Handed, String>> {
        let value = std::env::var(HANDOVER_ENV).ok()?;
        if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        Some(adopt(&value))
    }

    /// The program, if it was assembled for `cpu_queues`; else closed, and why.
    fn for_pairs(self, cpu_queues: &[(u32, u32)]) -> Result<OwnedFd, String> {
        let wanted = describe_pairs(cpu_queues);
        if self.pairs == wanted {
            Ok(self.program)
        } else {
            Err(format!(
                "it was assembled for CPU=queue {}, the workers now want {wanted}: restart the \
                 service",
                self.pairs
            ))
        }
    }
}

impl Steering {
    /// The program for `cpu_queues`: `handed` ([`Handed::take`]) when it was assembled for the
    /// same pairs (a re-executed node runs without `CAP_BPF` and under its seccomp filter,
    /// where loading one is refused), else a new one.
    ///
    /// # Errors
    /// The kernel refuses a new program ([`load`]); after a re-exec whose pairs changed (the
    /// workers' CPUs), that it takes a restart of the service.
    pub fn obtain(
        cpu_queues: &[(u32, u32)],
        handed: Option<Result<Handed, String>>,
    ) -> io::Result<Steering> {
        let handed = match handed.map(|h| h.and_then(|h| h.for_pairs(cpu_queues))) {
            Some(Ok(program)) => {
                return Ok(Steering {
                    program,
                    cpu_queues: cpu_queues.to_vec(),
                });
            }
            Some(Err(why)) => Some(why),
            None => None,
        };
        match load(cpu_queues) {
            Ok(program) => Ok(Steering {
                program,
                cpu_queues: cpu_queues.to_vec(),
            }),
            Err(error) => Err(match handed {
                Some(why) => io::Error::new(
                    error.kind(),
                    format!("{error}; the previous image's program was no use: {why}"),
                ),
                None => error,
            }),
        }
    }

    /// Attaches the program to the TUN device `queue` belongs to ([`attach`]).
    ///
    /// # Errors
    /// As [`attach`].
    pub fn attach(&self, queue: RawFd) -> io::Result<()> {
        attach(queue, &self.program)
    }

    /// Prepares the program for the node's re-exec: its descriptor stays open across
    /// `execve`. Returns the value of [`HANDOVER_ENV`] for the new image.
    ///
    /// # Errors
    /// `fcntl` fails.
    pub fn hand_over(&self) -> io::Result<String> {
        crate::attach::sys::set_cloexec(self.program.as_raw_fd(), false)?;
        Ok(format!(
            "{}:{}",
            self.program.as_raw_fd(),
            describe_pairs(&self.cpu_queues)
        ))
    }
}

fn describe_pairs(cpu_queues: &[(u32, u32)]) -> String {
    cpu_queues
        .iter()
        .map(|(cpu, queue)| format!("{cpu}={queue}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn adopt(value: &str) -> Result<Handed, String> {
    let (fd, pairs) = value
        .split_once(':')
        .and_then(|(fd, pairs)| Some((fd.parse::<RawFd>().ok()?, pairs)))
        .filter(|(fd, _)| *fd > 2)
        .ok_or_else(|| format!("{HANDOVER_ENV}={value:?} is not <fd>:<cpu>=<queue>,…"))?;
    // Only a BPF program is ours to take: anything else open at this number stays as it is.
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|e| format!("descriptor {fd}: {e}"))?;
    if target.as_os_str() != "anon_inode:bpf-prog" {
        return Err(format!(
            "descriptor {fd} is {}, not a BPF program",
            target.display()
        ));
    }
    // SAFETY: the previous image of this process left `fd` open for us (checked above to be a
    // BPF program) and named it in the environment; `TAKEN` makes this the only place that
    // takes it, once.
    let program = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::attach::sys::set_cloexec(program.as_raw_fd(), true)
        .map_err(|e| format!("FD_CLOEXEC: {e}"))?;
    Ok(Handed {
        program,
        pairs: pairs.to_owned(),
    })
}

/// Makes `program` choose the queue of every packet the kernel sends into the TUN device that
/// `queue` (any of its queues) belongs to; the device keeps the program.
///
/// # Errors
/// The kernel refuses (not a TUN device, or no permission).
pub fn attach(queue: RawFd, program: &OwnedFd) -> io::Result<()> {
    let fd: libc::c_int = program.as_raw_fd();
    // SAFETY: `queue` is an open TUN descriptor for the call and the argument points at a
    // live c_int, as TUNSETSTEERINGEBPF reads it.
    let rc = unsafe { libc::ioctl(queue, TUNSETSTEERINGEBPF, &raw const fd) };
    super::errno_unless_zero(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_on_an_instruction_after_it() {
        let program = program(3, &[(0, 0), (1, 1)]);
        let insns = assemble(&program);
        let n = insns.len() as i64;
        for (i, insn) in insns.iter().enumerate() {
            let code = (*insn & 0xff) as u8;
            if matches!(code, JA | JEQ_IMM | JNE_IMM | JSGT_IMM) {
                let off = i64::from((*insn >> 16) as u16 as i16);
                let to = i as i64 + 1 + off;
                assert!(off >= 0 && to < n, "jump at {i} to {to} of {n}");
            }
        }
        assert_eq!((insns[n as usize - 1] & 0xff) as u8, EXIT);
    }

    #[test]
    fn the_map_fd_is_a_two_slot_load() {
        let insns = assemble(&program(7, &[]));
        let loads: Vec<_> = insns
            .iter()
            .filter(|i| (**i & 0xff) as u8 == LD_IMM64)
            .collect();
        assert_eq!(loads.len(), 2);
        for l in loads {
            assert_eq!(*l >> 32, 7);
            assert_eq!((*l >> 12) & 0xf, u64::from(PSEUDO_MAP_FD));
        }
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;

    #[test]
    fn the_verifier_accepts_the_program() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading an eBPF program needs root");
            return;
        }
        let program = load(&[(0, 0), (1, 1), (2, 0)]);
        assert!(program.is_ok(), "{:?}", program.err());
        // As many workers as a node may have.
        let many: Vec<(u32, u32)> = (0..64).map(|c| (c, c)).collect();
        let program = load(&many);
        assert!(program.is_ok(), "64 CPUs: {:?}", program.err());
    }

    /// The id of the BPF program open at `fd`, if one is.
    fn prog_id(fd: RawFd) -> Option<String> {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .map(|id| id.trim().to_owned())
    }

    /// What a re-executed node does with the descriptor its previous image named: takes a BPF
    /// program assembled for its pairs, closes one assembled for others, and leaves anything
    /// else (or a malformed value) alone.
    #[test]
    fn a_handed_over_program_is_taken_only_for_the_same_pairs() {
        use std::os::fd::IntoRawFd;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading an eBPF program needs root");
            return;
        }
        let pairs = [(0, 0), (1, 1)];
        let steering = Steering {
            program: load(&pairs).expect("load"),
            cpu_queues: pairs.to_vec(),
        };
        let value = steering.hand_over().expect("hand over");
        let raw = steering.program.into_raw_fd();
        assert_eq!(value, format!("{raw}:0=0,1=1"));
        let id = prog_id(raw).expect("a BPF program's fdinfo names its id");
        let taken = adopt(&value)
            .and_then(|handed| handed.for_pairs(&pairs))
            .expect("the same pairs");
        assert_eq!(taken.as_raw_fd(), raw);
        // FD_CLOEXEC is back on: nothing else the node runs inherits it.
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);

        let raw = taken.into_raw_fd();
        let refused = adopt(&format!("{raw}:0=0,1=1"))
            .and_then(|handed| handed.for_pairs(&[(0, 0), (2, 1)]))
            .unwrap_err();
        assert!(refused.contains("restart the service"), "{refused}");
        // Closed with the refusal (another test may have opened something at that number
        // since: then it is not this program).
        assert_ne!(prog_id(raw), Some(id), "the refused program is still open");

        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        let not_bpf = adopt(&format!("{}:0=0,1=1", file.as_raw_fd())).unwrap_err();
        assert!(not_bpf.contains("not a BPF program"), "{not_bpf}");
        // Still open, still the file's.
        // SAFETY: F_GETFD only reads the flags of a descriptor number.
        assert!(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFD) } >= 0);
        for malformed in ["", "7", "x:0=0", "2:0=0"] {
            let error = adopt(malformed).unwrap_err();
            assert!(error.contains(HANDOVER_ENV), "{malformed:?}: {error}");
        }
    }
}
