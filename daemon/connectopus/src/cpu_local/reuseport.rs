//! Which socket of a DTLS port receives a datagram: a classic BPF program on the port's
//! `SO_REUSEPORT` group (`SO_ATTACH_REUSEPORT_CBPF`).
//!
//! The group holds the main loop's socket (bound first: index 0) and one socket per worker
//! thread (indices 1.. in the order they were bound). An application-data record (content
//! type 23, the first byte of the UDP payload) goes to the socket of the worker pinned to the
//! CPU the kernel received it on, so that the worker wakes on the CPU that already holds the
//! datagram; everything else (handshakes, alerts, a CPU without a worker) to the main loop's.
//! Every socket of the group can handle every datagram (a worker hands what is not its own to
//! the main loop, the main loop hands records of an established link to a worker), so the
//! program only decides where the work happens, never whether it does.

use std::io;
use std::os::fd::RawFd;

/// The DTLS content type of application data.
const APPLICATION_DATA: u32 = 23;

// Classic BPF (linux/filter.h).
const LD_B_ABS: u16 = 0x30;
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
/// `SKF_AD_OFF + SKF_AD_CPU`: the CPU the program runs on.
const AD_CPU: u32 = (-0x1000i32 + 36) as u32;

/// The program for workers pinned to `cpus` (worker `i`'s socket has index `i + 1`).
pub fn program(cpus: &[usize]) -> Vec<libc::sock_filter> {
    let insn = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let n = cpus.len();
    let mut p = vec![
        insn(LD_B_ABS, 0, 0, 0),
        // Not application data: to the main loop (the last instruction).
        insn(JEQ_K, 0, (2 * n + 1).min(255) as u8, APPLICATION_DATA),
        insn(LD_W_ABS, 0, 0, AD_CPU),
    ];
    for (i, &cpu) in cpus.iter().enumerate() {
        p.push(insn(JEQ_K, 0, 1, cpu as u32));
        p.push(insn(RET_K, 0, 0, i as u32 + 1));
    }
    p.push(insn(RET_K, 0, 0, 0));
    p
}

/// Attaches `program` to the reuseport group of `socket` (one of its members).
///
/// # Errors
/// The kernel refuses the program or the socket has no group.
pub fn attach(socket: RawFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `socket` is an open socket for the call; `fprog` points at `program`, which
    // outlives the call (the kernel copies it), with its length.
    let rc = unsafe {
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    super::errno_unless_zero(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program as the kernel would, for a payload's first byte and a CPU.
    fn run(p: &[libc::sock_filter], first: Option<u8>, cpu: u32) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = p[pc];
            match i.code {
                LD_B_ABS => match first {
                    Some(b) => a = u32::from(b),
                    // An empty payload: the kernel ends the program with 0.
                    None => return 0,
                },
                LD_W_ABS => a = cpu,
                JEQ_K => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf });
                }
                RET_K => return i.k,
                other => panic!("unexpected {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn application_data_goes_to_the_worker_of_its_cpu_and_the_rest_to_the_main_loop() {
        let p = program(&[2, 5]);
        assert_eq!(run(&p, Some(23), 2), 1);
        assert_eq!(run(&p, Some(23), 5), 2);
        assert_eq!(run(&p, Some(23), 3), 0, "a CPU without a worker");
        assert_eq!(run(&p, Some(22), 2), 0, "a handshake record");
        assert_eq!(run(&p, Some(21), 5), 0, "an alert");
        assert_eq!(run(&p, None, 2), 0, "an empty datagram");
    }
}
