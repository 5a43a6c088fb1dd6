//! Loading the eBPF object in a short-lived helper process, so that its cost in memory never
//! touches the node.
//!
//! aya 0.14 parses the kernel's BTF (`/sys/kernel/btf/vmlinux`, ~6 MB, into Rust structures)
//! whenever it loads an object, even one that needs no CO-RE relocation like ours. In the
//! node's own process that cost about 30 MiB of peak resident memory, never given back.
//!
//! So the node ([`TunCounters::attach_via_helper`]) starts a helper (its own binary with a
//! hidden subcommand, which calls [`serve_helper`]) with one end of a
//! `socketpair(AF_UNIX, SOCK_SEQPACKET)` as the helper's stdin, and sends it one request: the
//! interface and the object's path. The helper loads the object, attaches both programs with
//! TCX links, answers with one message carrying the counter map's fd and the two link fds
//! (`SCM_RIGHTS`), and exits. The node keeps the link fds open (closing them, or the node
//! dying, detaches the programs) and reads the counters through the map fd. An error in the
//! helper comes back as the answer's text.
//!
//! Without TCX (kernels before 6.6) the programs hang on netlink filters, which no fd holds,
//! so the node loads them in its own process as before ([`TunCounters::attach`]).
//!
//! The fast path ([`Fastpath::load_via_helper`]) uses the same helper for loading only: it
//! passes back the fds of the two programs and six maps, and the node attaches the programs
//! itself, whenever it needs to, with TCX link syscalls on the program fds.
//!
//! Messages (each one `SOCK_SEQPACKET` record):
//! - counters request: [`REQUEST_MAGIC`], the interface name, a NUL, the object's path (bytes);
//!   answer: [`ANSWER_ATTACHED`] with the fds of the map, the ingress link and the egress
//!   link, in that order;
//! - fast-path request: [`FASTPATH_REQUEST_MAGIC`], the object's path; answer:
//!   [`ANSWER_FASTPATH`] with the fds of the TUN egress program, the underlay ingress program
//!   and the maps in [`FastpathMapFds::NAMES`] order;
//! - either answer can instead be `error: ` and the error with its causes.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aya::maps::Map;
use aya::programs::links::FdLink;
use connectopus_ebpf_common::{Direction, MAP_TUN_COUNTERS};

use crate::imp::{Loaded, attach_mode_for_running_kernel, classifier};
use crate::{
    AttachMode, Fastpath, FastpathError, FastpathMapFds, FastpathProgramFds, HelperOutcome,
    HelperStart, TunCounters,
};

/// Starts every request; a helper from another version of the node refuses it.
const REQUEST_MAGIC: &[u8] = b"connectopus-ebpf-attach 1\0";
/// The text of a successful answer, which carries three fds in this order.
const ANSWER_ATTACHED: &[u8] = b"ok tcx: map ingress egress";
/// The prefix of an answer that reports an error.
const ANSWER_ERROR: &[u8] = b"error: ";
/// The fds a successful answer carries.
const ANSWER_FDS: usize = 3;
/// Starts a request for the fast path's programs and maps; the object's path follows.
const FASTPATH_REQUEST_MAGIC: &[u8] = b"connectopus-ebpf-fastpath 1\0";
/// The text of a successful fast-path answer, which carries the fds in this order.
const ANSWER_FASTPATH: &[u8] =
    b"ok fastpath: tun-egress underlay-ingress routes peers ports config reasons links";
/// The fds a successful fast-path answer carries.
const FASTPATH_FDS: usize = 8;
/// Largest message either side sends (an interface name and a path, or an error text).
const MAX_MESSAGE: usize = 16 * 1024;
/// How long the node waits for the helper's answer: loading and verifying takes milliseconds.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the node waits for the helper to exit after its answer.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

impl TunCounters {
    /// Like [`TunCounters::attach`], but loads and attaches the programs in the helper process
    /// that `helper` starts (a command whose process calls [`serve_helper`]; its stdin is
    /// replaced, its stdout discarded, its stderr inherited), so the node's own memory never
    /// holds what aya parses. `object` is the path of the eBPF object ([`crate::find_object`]);
    /// the helper reads it.
    ///
    /// On kernels without TCX (before 6.6) it loads in this process instead, with
    /// [`TunCounters::attach`]; [`TunCounters::loaded_by_helper`] tells which happened.
    ///
    /// # Errors
    ///
    /// The helper's own error ([`FastpathError::HelperFailed`], with the message
    /// [`TunCounters::attach`] would give), or [`FastpathError::Helper`] if it could not be
    /// started or did not answer. Nothing stays attached after an error.
    pub fn attach_via_helper(
        helper: impl Into<HelperStart>,
        ifname: &str,
        object: Option<&Path>,
    ) -> Result<Self, FastpathError> {
        if attach_mode_for_running_kernel() == AttachMode::Netlink {
            let (_, bytes) = crate::node_object(object)?;
            return TunCounters::attach(ifname, &bytes);
        }
        let mut message = REQUEST_MAGIC.to_vec();
        message.extend_from_slice(ifname.as_bytes());
        message.push(0);
        push_object(&mut message, object);
        let (program, fds) = exchange(helper, &message, ANSWER_ATTACHED)?;
        let fds: Result<[OwnedFd; ANSWER_FDS], Vec<OwnedFd>> = fds.try_into();
        match fds {
            Ok([map, ingress, egress]) => {
                TunCounters::from_helper(ifname, map, vec![ingress, egress])
            }
            // Any fds received are closed here, which detaches what they held.
            Err(fds) => Err(unexpected(program, ANSWER_ATTACHED, fds.len())),
        }
    }
}

impl Fastpath {
    /// Like [`Fastpath::load`], but loads the programs in the helper process that `helper`
    /// starts (as for [`TunCounters::attach_via_helper`]), which passes back the fds of the two
    /// programs and the six maps and exits. Attaching is then the node's own
    /// ([`Fastpath::attach_tun`], [`Fastpath::attach_underlay`]): a syscall with a program fd,
    /// at any time, without the helper.
    ///
    /// # Errors
    ///
    /// The helper's own error ([`FastpathError::HelperFailed`]: no object, no BPF rights, the
    /// verifier's log), or [`FastpathError::Helper`] if it could not be started or did not
    /// answer; [`FastpathError::Unsupported`]-like [`FastpathError::Helper`] without TCX.
    pub fn load_via_helper(
        helper: impl Into<HelperStart>,
        object: Option<&Path>,
    ) -> Result<Self, FastpathError> {
        let helper = helper.into();
        if attach_mode_for_running_kernel() == AttachMode::Netlink {
            return Err(FastpathError::Helper {
                program: helper.program(),
                what: "not started: the fast path attaches with TCX links, which need Linux 6.6 \
                       or later"
                    .to_owned(),
                source: None,
            });
        }
        let mut message = FASTPATH_REQUEST_MAGIC.to_vec();
        push_object(&mut message, object);
        let (program, fds) = exchange(helper, &message, ANSWER_FASTPATH)?;
        let fds: Result<[OwnedFd; FASTPATH_FDS], Vec<OwnedFd>> = fds.try_into();
        match fds {
            Ok([tun_egress, underlay_ingress, a, b, c, d, e, f]) => Fastpath::from_fds(
                FastpathProgramFds {
                    tun_egress,
                    underlay_ingress,
                },
                FastpathMapFds::from_array([a, b, c, d, e, f]),
            ),
            Err(fds) => Err(unexpected(program, ANSWER_FASTPATH, fds.len())),
        }
    }
}

/// No path: the object embedded in the binary, which the helper (the same binary) has too.
fn push_object(message: &mut Vec<u8>, object: Option<&Path>) {
    if let Some(object) = object {
        message.extend_from_slice(object.as_os_str().as_bytes());
    }
}

fn unexpected(program: String, wanted: &[u8], fds: usize) -> FastpathError {
    FastpathError::Helper {
        program,
        what: format!(
            "unexpected answer with {fds} fds to a request for {:?}: is it the same version as \
             the node?",
            String::from_utf8_lossy(wanted)
        ),
        source: None,
    }
}

/// Starts the helper, sends it `message`, and returns its program name and the fds of an
/// answer whose text is `wanted`; an error answer, no answer or another text is an error.
fn exchange(
    helper: impl Into<HelperStart>,
    message: &[u8],
    wanted: &[u8],
) -> Result<(String, Vec<OwnedFd>), FastpathError> {
    let helper = helper.into();
    let program = helper.program();
    let failed = |what: &str, source: io::Error| FastpathError::Helper {
        program: program.clone(),
        what: what.to_owned(),
        source: Some(source),
    };
    let (ours, theirs) = seqpacket_pair().map_err(|e| failed("creating its socket pair", e))?;
    // Our copy of the helper's end is closed once it started, so that the helper exiting
    // without an answer reads as end of file.
    let mut child = match helper {
        HelperStart::Spawn(mut command) => {
            command.stdin(Stdio::from(theirs)).stdout(Stdio::null());
            let child = command.spawn().map_err(|e| failed("starting it", e))?;
            drop(command);
            Some(child)
        }
        HelperStart::Delegate { start, .. } => {
            start(theirs).map_err(|e| failed("having it started", e))?;
            None
        }
    };
    let socket = UnixDatagram::from(ours);
    let answer = request(&socket, message);
    drop(socket);
    // The one who started a delegated helper reaps it; with its socket closed it exits.
    let status = child.as_mut().map(|child| {
        if answer.is_err() {
            // It has not answered in time, or the socket failed: it is of no more use.
            let _ = child.kill();
        }
        reap(child, EXIT_TIMEOUT)
    });
    let (text, fds) = answer.map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            failed(
                &format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()),
                e,
            )
        } else {
            failed("waiting for its answer", e)
        }
    })?;
    if let Some(message) = text.strip_prefix(ANSWER_ERROR) {
        return Err(FastpathError::HelperFailed {
            message: String::from_utf8_lossy(message).into_owned(),
        });
    }
    if text.is_empty() && fds.is_empty() {
        return Err(FastpathError::Helper {
            program,
            what: match &status {
                Some(status) => format!("it exited without answering ({})", describe(status)),
                // Whoever started it knows why: it may never have run.
                None => "it exited without answering, or could not be started (see the log of \
                         the process that starts it)"
                    .to_owned(),
            },
            source: None,
        });
    }
    if text != wanted {
        return Err(FastpathError::Helper {
            program,
            what: format!(
                "unexpected answer {:?} with {} fds: is it the same version as the node?",
                String::from_utf8_lossy(&text),
                fds.len()
            ),
            source: None,
        });
    }
    Ok((program, fds))
}

/// Sends `message` and returns the answer's text and fds.
fn request(socket: &UnixDatagram, message: &[u8]) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let answer = socket
        .send(message)
        .and_then(|_| socket.set_read_timeout(Some(ANSWER_TIMEOUT)))
        .and_then(|()| {
            let mut buf = vec![0u8; MAX_MESSAGE];
            let (len, fds) = recv_with_fds(socket.as_fd().as_raw_fd(), &mut buf)?;
            buf.truncate(len);
            Ok((buf, fds))
        });
    match answer {
        // The helper is gone (before reading the request, or without reading all of it): the
        // same as no answer.
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok((Vec::new(), Vec::new()))
        }
        answer => answer,
    }
}

/// The helper's side: reads the node's request from the socket on stdin, loads the object,
/// attaches both programs with TCX links to the interface, and answers with the fds (or the
/// error). Returns once the answer is sent; the process should then exit, which leaves the
/// programs attached as long as the node holds the link fds.
///
/// # Errors
///
/// [`FastpathError::Helper`] if there is no request to answer (stdin is not the node's socket:
/// this is not meant to be run by hand) or the answer cannot be sent.
pub fn serve_helper() -> Result<HelperOutcome, FastpathError> {
    let failed = |what: &str, source: io::Error| FastpathError::Helper {
        program: "ebpf-attach".to_owned(),
        what: what.to_owned(),
        source: Some(source),
    };
    let stdin = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| failed("taking stdin", e))?;
    let socket = UnixDatagram::from(stdin);
    let mut buf = vec![0u8; MAX_MESSAGE];
    let len = socket.recv(&mut buf).map_err(|e| {
        failed(
            "reading the node's request on stdin (this command is run by `connectopus node` \
             with a socket as stdin, not by hand)",
            e,
        )
    })?;
    let message = &buf[..len];
    let answer = if let Some(object) = message.strip_prefix(FASTPATH_REQUEST_MAGIC) {
        let object = Path::new(OsStr::from_bytes(object));
        let object = (!object.as_os_str().is_empty()).then_some(object);
        crate::node_object(object)
            .and_then(|(_, bytes)| crate::programs::load_fds(&bytes))
            .map(|(programs, maps)| {
                let mut fds = vec![programs.tun_egress, programs.underlay_ingress];
                fds.extend(maps.into_array());
                (ANSWER_FASTPATH, Handoff::Fds(fds))
            })
    } else {
        parse_request(message).and_then(|(ifname, object)| {
            let object = (!object.as_os_str().is_empty()).then_some(object);
            let (_, bytes) = crate::node_object(object)?;
            Ok((
                ANSWER_ATTACHED,
                Handoff::Counters(Counters::attach(ifname, &bytes)?),
            ))
        })
    };
    match answer {
        Ok((text, handoff)) => {
            send_with_fds(socket.as_raw_fd(), text, &handoff.raw_fds())
                .map_err(|e| failed("sending the fds to the node", e))?;
            // Dropping `handoff` closes this process's fds; the node's copies keep the
            // programs attached.
            drop(handoff);
            Ok(HelperOutcome::Attached)
        }
        Err(error) => {
            let mut message = ANSWER_ERROR.to_vec();
            message.extend_from_slice(error_chain(&error).as_bytes());
            message.truncate(MAX_MESSAGE);
            socket
                .send(&message)
                .map_err(|e| failed("sending the error to the node", e))?;
            Ok(HelperOutcome::Reported)
        }
    }
}

/// Splits a request into the interface name and the object's path.
fn parse_request(message: &[u8]) -> Result<(&str, &Path), FastpathError> {
    let malformed = |what: &str| FastpathError::Helper {
        program: "ebpf-attach".to_owned(),
        what: format!("malformed request from the node: {what}"),
        source: None,
    };
    let rest = message
        .strip_prefix(REQUEST_MAGIC)
        .ok_or_else(|| malformed("not a request of this version"))?;
    let nul = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| malformed("no NUL after the interface name"))?;
    let ifname = std::str::from_utf8(&rest[..nul])
        .map_err(|_| malformed("the interface name is not UTF-8"))?;
    let object = Path::new(OsStr::from_bytes(&rest[nul + 1..]));
    Ok((ifname, object))
}

/// What the helper hands to the node.
enum Handoff {
    /// The TUN counters, attached.
    Counters(Counters),
    /// The fast path's program and map fds, in answer order.
    Fds(Vec<OwnedFd>),
}

impl Handoff {
    fn raw_fds(&self) -> Vec<RawFd> {
        match self {
            Handoff::Counters(counters) => counters.fds.to_vec(),
            Handoff::Fds(fds) => fds.iter().map(AsRawFd::as_raw_fd).collect(),
        }
    }
}

/// The TUN counters loaded and attached in the helper, and the fds to hand to the node.
struct Counters {
    /// The map, then the ingress and egress links; owned by `_loaded` and `_links`.
    fds: [RawFd; ANSWER_FDS],
    _links: Vec<FdLink>,
    _loaded: Loaded,
}

impl Counters {
    fn attach(ifname: &str, object: &[u8]) -> Result<Self, FastpathError> {
        let mut loaded = Loaded::attach(ifname, object, AttachMode::Tcx)?;
        let mut fds = [0; ANSWER_FDS];
        match loaded.ebpf.map(MAP_TUN_COUNTERS) {
            Some(Map::PerCpuArray(map)) => fds[0] = map.fd().as_fd().as_raw_fd(),
            _ => {
                return Err(FastpathError::MissingInObject {
                    kind: "map",
                    name: MAP_TUN_COUNTERS,
                });
            }
        }
        let mut links = Vec::with_capacity(Direction::ALL.len());
        for (slot, (name, id)) in fds[1..].iter_mut().zip(std::mem::take(&mut loaded.links)) {
            let no_fd = |source: io::Error| FastpathError::Helper {
                program: "ebpf-attach".to_owned(),
                what: format!("finding the fd of the TCX link of `{name}` on `{ifname}`"),
                source: Some(source),
            };
            let link = classifier(&mut loaded.ebpf, name)?
                .take_link(id)
                .map_err(|e| no_fd(io::Error::other(e)))?;
            let link = FdLink::try_from(link).map_err(|e| no_fd(io::Error::other(e)))?;
            let link_id = link.info().map_err(|e| no_fd(io::Error::other(e)))?.id();
            *slot = own_fd_of_link(link_id).map_err(no_fd)?;
            links.push(link);
        }
        Ok(Counters {
            fds,
            _links: links,
            _loaded: loaded,
        })
    }
}

/// Finds the fd of this process that holds the bpf link `link_id`: aya does not hand out the
/// fd of a link, but the kernel lists it in `/proc/self/fdinfo` (`link_id:` line).
fn own_fd_of_link(link_id: u32) -> io::Result<RawFd> {
    let wanted = format!("link_id:\t{link_id}");
    for entry in std::fs::read_dir("/proc/self/fdinfo")? {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // The directory's own fd, and fds closed meanwhile, do not read: skip them.
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if info.lines().any(|line| line == wanted) {
            return Ok(fd);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no fd of bpf link {link_id} in /proc/self/fdinfo"),
    ))
}

/// `socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC)`.
fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [libc::c_int; 2] = [-1; 2];
    // SAFETY: `fds` is a writable array of two ints, which is what socketpair fills.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded, so both are new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `bytes` as one message on the connected socket `socket`, with `fds` (open fds of this
/// process) attached as `SCM_RIGHTS`.
fn send_with_fds(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let payload = std::mem::size_of_val(fds);
    let payload_u32 = u32::try_from(payload).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
    let (space, len) = unsafe { (libc::CMSG_SPACE(payload_u32), libc::CMSG_LEN(payload_u32)) };
    // u64 elements: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; (space as usize).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: `msghdr` is a plain C struct; all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as usize;
    // SAFETY: `msg` points at `control`, which is CMSG_SPACE(payload) bytes and aligned, so
    // CMSG_FIRSTHDR returns its start, with room for the header and `payload` bytes of data;
    // the fds are copied unaligned into that room. sendmsg only reads `msg`, `iov` (pointing at
    // `bytes`) and `control`, which all outlive the call; the kernel checks the fds.
    let sent = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = len as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), payload);
        libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL)
    };
    match usize::try_from(sent) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "message cut short",
        )),
        Err(_) => Err(io::Error::last_os_error()),
    }
}

/// Receives one message into `buf` from `socket`, with the fds it carries (close-on-exec).
/// Returns the message's length; 0 and no fds at end of file.
fn recv_with_fds(socket: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    /// Room for more fds than a valid answer has, so that extra ones are seen and closed.
    const MAX_FDS: u32 = 16;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(MAX_FDS * std::mem::size_of::<RawFd>() as u32) };
    let mut control = vec![0u64; (space as usize).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `msghdr` is a plain C struct; all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as usize;
    // SAFETY: `msg` points at `iov` (at `buf`) and `control`, writable and alive for the call;
    // the kernel writes at most their lengths.
    let received = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    let len = usize::try_from(received).map_err(|_| io::Error::last_os_error())?;
    let mut fds = Vec::new();
    // SAFETY: after a successful recvmsg, the CMSG_* macros walk the control messages the
    // kernel wrote into `control` (msg_controllen was updated to their length). SCM_RIGHTS
    // data is an array of fds newly installed in this process, which nothing else owns; each
    // is read unaligned and owned at once, so all of them are closed if anything fails below.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let header = data.offset_from(cmsg.cast::<u8>()) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = data.cast::<RawFd>().add(i).read_unaligned();
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the answer was cut short (too long, or too many fds)",
        ));
    }
    Ok((len, fds))
}

/// Waits up to `timeout` for the helper to exit, then kills it.
fn reap(child: &mut Child, timeout: Duration) -> io::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return child.wait();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn describe(status: &io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => format!("exit status unknown: {error}"),
    }
}

/// `error: cause: cause...`, as `{:#}` prints with anyhow.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn fds_and_text_cross_a_seqpacket_pair() {
        use std::io::{Read, Write};
        let (a, b) = seqpacket_pair().unwrap();
        let (read, write) = std::io::pipe().unwrap();
        send_with_fds(
            a.as_raw_fd(),
            b"hello",
            &[write.as_raw_fd(), read.as_raw_fd()],
        )
        .unwrap();
        drop((read, write));
        let mut buf = [0u8; 64];
        let (len, fds) = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..len], b"hello");
        let [write, read]: [OwnedFd; 2] = fds.try_into().unwrap();
        // The received fds are the same pipe: what goes in one comes out of the other.
        std::fs::File::from(write).write_all(b"x").unwrap();
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        assert_eq!(out, "x");
        drop(a);
        let (len, fds) = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(
            (len, fds.len()),
            (0, 0),
            "end of file once the peer is gone"
        );
    }

    #[test]
    fn requests_parse_and_bad_ones_are_named() {
        let mut message = REQUEST_MAGIC.to_vec();
        message.extend_from_slice(b"cx-tun\0/x/y.o");
        let (ifname, object) = parse_request(&message).unwrap();
        assert_eq!((ifname, object), ("cx-tun", Path::new("/x/y.o")));
        let error = parse_request(b"connectopus-ebpf-attach 0\0cx\0/y").unwrap_err();
        assert!(
            error.to_string().contains("not a request of this version"),
            "{error}"
        );
        let mut no_nul = REQUEST_MAGIC.to_vec();
        no_nul.extend_from_slice(b"cx-tun");
        assert!(parse_request(&no_nul).is_err());
    }

    #[test]
    fn a_fastpath_helper_that_exits_without_answering_is_an_error_not_a_hang() {
        let error = Fastpath::load_via_helper(Command::new("true"), Some(Path::new("/x.o")))
            .unwrap_err()
            .to_string();
        if attach_mode_for_running_kernel() == AttachMode::Tcx {
            assert!(error.contains("exited without answering"), "{error}");
        } else {
            assert!(error.contains("Linux 6.6"), "{error}");
        }
    }

    /// A helper another process starts (the attach helper, for a confined node): the node
    /// hands over the socket's other end, cannot reap what it did not start, and still sees
    /// a helper that exits without answering, or one that could not be started.
    #[test]
    fn a_delegated_helper_is_answered_for_or_reported() {
        if attach_mode_for_running_kernel() != AttachMode::Tcx {
            return;
        }
        let delegate = || HelperStart::Delegate {
            program: "ebpf-attach (elsewhere)".to_owned(),
            start: Box::new(|socket: OwnedFd| {
                // Started and reaped here, as the attach helper would: `true` exits at once.
                let mut child = Command::new("true").stdin(Stdio::from(socket)).spawn()?;
                std::thread::spawn(move || child.wait());
                Ok(())
            }),
        };
        let error = Fastpath::load_via_helper(delegate(), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("exited without answering"), "{error}");
        assert!(error.contains("ebpf-attach (elsewhere)"), "{error}");
        let refused = HelperStart::Delegate {
            program: "ebpf-attach (elsewhere)".to_owned(),
            start: Box::new(|_socket: OwnedFd| Err(io::Error::other("the helper is gone"))),
        };
        let error = TunCounters::attach_via_helper(refused, "cx-none", None).unwrap_err();
        let message = anyhow_like(&error);
        assert!(message.contains("having it started"), "{message}");
        assert!(message.contains("the helper is gone"), "{message}");
    }

    /// The error and its sources, as the node logs them.
    fn anyhow_like(error: &FastpathError) -> String {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    #[test]
    fn a_helper_that_exits_without_answering_is_an_error_not_a_hang() {
        let error = TunCounters::attach_via_helper(
            Command::new("true"),
            "cx-none",
            Some(Path::new("/x.o")),
        )
        .unwrap_err();
        let message = error.to_string();
        if attach_mode_for_running_kernel() == AttachMode::Tcx {
            assert!(message.contains("exited without answering"), "{message}");
        }
    }
}
