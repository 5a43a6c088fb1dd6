//! A minimal synchronous ssh-agent client: list identities and sign.
//!
//! The agent protocol (draft-miller-ssh-agent) needs four messages for this: request identities
//! (11) and its answer (12), sign request (13) and its answer (14), plus failure (5). A blocking
//! client over [`UnixStream`] is about a hundred lines and keeps tokio out of the signing path;
//! `ssh-agent-lib` would pull in tokio for the same two round trips.
//!
//! Nothing here ever sees private key material: the agent keeps it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ssh_key::{PublicKey, Signature};

const SSH_AGENT_FAILURE: u8 = 5;
const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
const SSH_AGENT_IDENTITIES_ANSWER: u8 = 12;
const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
const SSH_AGENT_SIGN_RESPONSE: u8 = 14;

/// Sign-request flag asking for an `rsa-sha2-512` signature from an RSA key.
pub const SSH_AGENT_RSA_SHA2_512: u32 = 4;

/// Largest agent reply accepted (OpenSSH's own limit is 256 KiB).
const MAX_REPLY: usize = 256 * 1024;

/// How long to wait for the agent; generous because a key added with `ssh-add -c` waits for
/// the user to confirm.
const TIMEOUT: Duration = Duration::from_secs(120);

/// An error talking to ssh-agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `SSH_AUTH_SOCK` is not set.
    #[error(
        "SSH_AUTH_SOCK is not set: start ssh-agent and `ssh-add` your key, or sign with --key FILE"
    )]
    NoSocket,
    /// The socket could not be reached or the connection failed.
    #[error("ssh-agent at {socket}: {source}")]
    Io {
        /// The agent socket.
        socket: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The agent answered something this client does not understand.
    #[error("ssh-agent at {socket}: {reason}")]
    Protocol {
        /// The agent socket.
        socket: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The agent refused the request (for example, a confirmation was declined).
    #[error("ssh-agent at {socket} refused to sign")]
    Refused {
        /// The agent socket.
        socket: PathBuf,
    },
}

/// One key held by the agent.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The public key, with the agent's comment for it.
    pub key: PublicKey,
    blob: Vec<u8>,
}

impl Identity {
    /// Returns the key as an authorized_keys line: `type base64 comment`.
    pub fn authorized_keys_line(&self) -> String {
        self.key.to_openssh().unwrap_or_default()
    }
}

/// A connection to ssh-agent.
#[derive(Debug)]
pub struct AgentClient {
    stream: UnixStream,
    socket: PathBuf,
}

impl AgentClient {
    /// Connects to the agent named by `$SSH_AUTH_SOCK`.
    pub fn from_env() -> Result<AgentClient, AgentError> {
        match std::env::var_os("SSH_AUTH_SOCK") {
            Some(path) if !path.is_empty() => AgentClient::connect(Path::new(&path)),
            _ => Err(AgentError::NoSocket),
        }
    }

    /// Connects to the agent listening on `socket`.
    pub fn connect(socket: &Path) -> Result<AgentClient, AgentError> {
        let io = |source| AgentError::Io {
            socket: socket.to_owned(),
            source,
        };
        let stream = UnixStream::connect(socket).map_err(io)?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        Ok(AgentClient {
            stream,
            socket: socket.to_owned(),
        })
    }

    /// Returns the agent socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Lists the agent's keys. Certificates and key types this build cannot parse are skipped.
    pub fn identities(&mut self) -> Result<Vec<Identity>, AgentError> {
        let reply = self.request(SSH_AGENTC_REQUEST_IDENTITIES, &[])?;
        let mut r = WireReader::new(&reply);
        let kind = r.byte();
        if kind != Some(SSH_AGENT_IDENTITIES_ANSWER) {
            return Err(self.unexpected(kind, "identities answer"));
        }
        let count = r
            .u32()
            .ok_or_else(|| self.protocol("identities answer without a count"))?;
        let mut out = Vec::new();
        for _ in 0..count {
            let (Some(blob), Some(comment)) = (r.string(), r.string()) else {
                return Err(self.protocol("truncated identities answer"));
            };
            if let Ok(mut key) = PublicKey::from_bytes(blob) {
                key.set_comment(String::from_utf8_lossy(comment));
                out.push(Identity {
                    key,
                    blob: blob.to_vec(),
                });
            }
        }
        Ok(out)
    }

    /// Asks the agent to sign `data` with `identity`, passing `flags` (such as
    /// [`SSH_AGENT_RSA_SHA2_512`]).
    pub fn sign(
        &mut self,
        identity: &Identity,
        data: &[u8],
        flags: u32,
    ) -> Result<Signature, AgentError> {
        let mut payload = Vec::with_capacity(identity.blob.len() + data.len() + 12);
        put_string(&mut payload, &identity.blob)?;
        put_string(&mut payload, data)?;
        payload.extend_from_slice(&flags.to_be_bytes());
        let reply = self.request(SSH_AGENTC_SIGN_REQUEST, &payload)?;
        let mut r = WireReader::new(&reply);
        match r.byte() {
            Some(SSH_AGENT_SIGN_RESPONSE) => {}
            Some(SSH_AGENT_FAILURE) => {
                return Err(AgentError::Refused {
                    socket: self.socket.clone(),
                });
            }
            other => return Err(self.unexpected(other, "sign response")),
        }
        let blob = r
            .string()
            .ok_or_else(|| self.protocol("truncated sign response"))?;
        Signature::try_from(blob)
            .map_err(|e| self.protocol(&format!("unreadable signature in sign response: {e}")))
    }

    fn request(&mut self, kind: u8, payload: &[u8]) -> Result<Vec<u8>, AgentError> {
        let len = u32::try_from(payload.len() + 1)
            .map_err(|_| self.protocol("request too large for the agent protocol"))?;
        let mut frame = Vec::with_capacity(payload.len() + 5);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.push(kind);
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).map_err(|e| self.io(e))?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).map_err(|e| self.io(e))?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_REPLY {
            return Err(self.protocol(&format!("reply of {len} bytes")));
        }
        let mut reply = vec![0u8; len];
        self.stream.read_exact(&mut reply).map_err(|e| self.io(e))?;
        Ok(reply)
    }

    fn io(&self, source: std::io::Error) -> AgentError {
        AgentError::Io {
            socket: self.socket.clone(),
            source,
        }
    }

    fn protocol(&self, reason: &str) -> AgentError {
        AgentError::Protocol {
            socket: self.socket.clone(),
            reason: reason.to_owned(),
        }
    }

    fn unexpected(&self, kind: Option<u8>, wanted: &str) -> AgentError {
        match kind {
            Some(SSH_AGENT_FAILURE) => self.protocol(&format!("agent failure instead of {wanted}")),
            Some(k) => self.protocol(&format!("message type {k} instead of {wanted}")),
            None => self.protocol(&format!("empty reply instead of {wanted}")),
        }
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) -> Result<(), AgentError> {
    let len = u32::try_from(s.len()).map_err(|_| AgentError::Protocol {
        socket: PathBuf::new(),
        reason: "string too long for the agent protocol".to_owned(),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
    Ok(())
}

/// Reads SSH wire encoding (RFC 4251 §5): bytes, uint32 and length-prefixed strings.
/// Every read returns `None` when the input ends early.
#[derive(Debug)]
pub(crate) struct WireReader<'a> {
    rest: &'a [u8],
    consumed: usize,
}

impl<'a> WireReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        WireReader {
            rest: bytes,
            consumed: 0,
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        self.consumed += n;
        Some(head)
    }

    pub(crate) fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
    }

    pub(crate) fn string(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(crate) fn consumed(&self) -> usize {
        self.consumed
    }
}
