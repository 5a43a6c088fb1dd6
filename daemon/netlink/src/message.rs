//! Netlink framing, without I/O: a [`Request`] builder for one message (header, fixed part,
//! attributes, nested attributes) and total parsers for what the kernel sends back
//! ([`messages`], [`attributes`], [`Reply`]). Every parser takes untrusted bytes and returns an
//! error for anything malformed; none of them panics or reads out of bounds.

use std::fmt;

/// `struct nlmsghdr`: length, type, flags, sequence number, port id.
pub const HEADER_LEN: usize = 16;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// On an `NLMSG_ERROR`: the original request is not echoed, only its header.
pub const NLM_F_CAPPED: u16 = 0x100;
/// On an `NLMSG_ERROR`: extended-ack attributes follow the (capped) request.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

/// Extended ack attribute: a message from the kernel, NUL-terminated.
const NLMSGERR_ATTR_MSG: u16 = 1;

pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000);

/// Why received bytes could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A message or attribute is shorter than its header or than the length it claims.
    Truncated(&'static str),
    /// A field has a length that does not fit its meaning (an IPv6 address of 5 bytes).
    BadLength(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated(what) => write!(f, "truncated netlink {what}"),
            ParseError::BadLength(what) => write!(f, "netlink {what} has a bad length"),
        }
    }
}

impl std::error::Error for ParseError {}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// One netlink request being built: the header (its length and sequence number filled in by
/// [`finish`](Self::finish)), the family's fixed part, then attributes.
#[derive(Debug, Clone)]
pub struct Request {
    buf: Vec<u8>,
}

impl Request {
    /// A message of type `kind` with `flags` (`NLM_F_REQUEST` is added).
    pub fn new(kind: u16, flags: u16) -> Request {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, in finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, in finish
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: 0 is the kernel
        Request { buf }
    }

    /// Appends the fixed part (`ifinfomsg`, `ifaddrmsg`, `rtmsg`), padded to 4 bytes.
    pub fn fixed(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    fn pad(&mut self) {
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// Appends attribute `kind` with payload `data`.
    pub fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf
            .extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    pub fn attr_u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attr(kind, &value.to_ne_bytes())
    }

    /// A string attribute, NUL-terminated as the kernel expects.
    pub fn attr_str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut data = Vec::with_capacity(value.len() + 1);
        data.extend_from_slice(value.as_bytes());
        data.push(0);
        self.attr(kind, &data)
    }

    /// Opens a nested attribute; everything appended until [`end_nest`](Self::end_nest) with
    /// the returned mark is its payload.
    pub fn begin_nest(&mut self, kind: u16) -> NestMark {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        NestMark(at)
    }

    /// Opens an attribute whose payload is a fixed part and attributes, not flagged nested
    /// (`VETH_INFO_PEER` carries an `ifinfomsg` first).
    pub fn begin_plain(&mut self, kind: u16) -> NestMark {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        NestMark(at)
    }

    /// Closes the attribute opened at `mark`, writing its length.
    pub fn end_nest(&mut self, mark: NestMark) -> &mut Self {
        let len = u16::try_from(self.buf.len() - mark.0).unwrap_or(u16::MAX);
        if let Some(slot) = self.buf.get_mut(mark.0..mark.0 + 2) {
            slot.copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// The message's bytes, with its length and sequence number `seq`.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// Where a nested attribute starts, from [`Request::begin_nest`].
#[derive(Debug, Clone, Copy)]
#[must_use = "a nested attribute must be closed with end_nest"]
pub struct NestMark(usize);

/// The header of a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub port: u32,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// The messages of one datagram from the kernel: each header and its payload.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { rest: buf }
}

/// Iterator from [`messages`]; after an error it ends.
#[derive(Debug)]
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(Header, &'a [u8]), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let parsed = (|| {
            let len = u32_at(self.rest, 0).ok_or(ParseError::Truncated("message header"))? as usize;
            let header = Header {
                kind: u16_at(self.rest, 4).ok_or(ParseError::Truncated("message header"))?,
                flags: u16_at(self.rest, 6).ok_or(ParseError::Truncated("message header"))?,
                seq: u32_at(self.rest, 8).ok_or(ParseError::Truncated("message header"))?,
                port: u32_at(self.rest, 12).ok_or(ParseError::Truncated("message header"))?,
            };
            if len < HEADER_LEN {
                return Err(ParseError::BadLength("message"));
            }
            let payload = self
                .rest
                .get(HEADER_LEN..len)
                .ok_or(ParseError::Truncated("message"))?;
            let next = align4(len).min(self.rest.len());
            Ok((header, payload, next))
        })();
        match parsed {
            Ok((header, payload, next)) => {
                self.rest = self.rest.get(next..).unwrap_or_default();
                Some(Ok((header, payload)))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// The attributes in `buf` (after a fixed part): each type (flags masked off) and payload.
pub fn attributes(buf: &[u8]) -> Attributes<'_> {
    Attributes { rest: buf }
}

/// Iterator from [`attributes`]; after an error it ends.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<(u16, &'a [u8]), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < 4 {
            // Fewer than 4 bytes left is padding at most; anything else is malformed.
            let trailing = std::mem::take(&mut self.rest);
            return (!trailing.iter().all(|b| *b == 0))
                .then_some(Err(ParseError::Truncated("attribute")));
        }
        let len = u16_at(self.rest, 0).unwrap_or(0) as usize;
        let kind = u16_at(self.rest, 2).unwrap_or(0) & NLA_TYPE_MASK;
        let Some(payload) = (len >= 4).then(|| self.rest.get(4..len)).flatten() else {
            self.rest = &[];
            return Some(Err(ParseError::Truncated("attribute")));
        };
        self.rest = self.rest.get(align4(len)..).unwrap_or_default();
        Some(Ok((kind, payload)))
    }
}

/// A NUL-terminated (or not) string attribute, lossily decoded.
pub fn attr_string(data: &[u8]) -> String {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

pub fn attr_u32(data: &[u8], what: &'static str) -> Result<u32, ParseError> {
    match data {
        [a, b, c, d] => Ok(u32::from_ne_bytes([*a, *b, *c, *d])),
        _ => Err(ParseError::BadLength(what)),
    }
}

/// What the kernel answered to a request with `NLM_F_ACK`, or ended a dump with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `NLMSG_ERROR` with error 0.
    Ack,
    /// `NLMSG_ERROR` with an errno (positive here) and the extended-ack message, if any.
    Error { errno: i32, message: Option<String> },
}

impl Reply {
    /// Parses the payload of an `NLMSG_ERROR` whose header had `flags`.
    pub fn parse(flags: u16, payload: &[u8]) -> Result<Reply, ParseError> {
        let error = u32_at(payload, 0).ok_or(ParseError::Truncated("error message"))? as i32;
        if error == 0 {
            return Ok(Reply::Ack);
        }
        let mut message = None;
        if flags & NLM_F_ACK_TLVS != 0 {
            // After the error: the request's header (and, uncapped, its payload), then TLVs.
            let request_len = if flags & NLM_F_CAPPED != 0 {
                HEADER_LEN
            } else {
                u32_at(payload, 4).map_or(HEADER_LEN, |l| l as usize)
            };
            if let Some(tlvs) = payload.get(4usize.saturating_add(align4(request_len))..) {
                for attr in attributes(tlvs) {
                    match attr {
                        Ok((NLMSGERR_ATTR_MSG, data)) => message = Some(attr_string(data)),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
        }
        Ok(Reply::Error {
            errno: error.checked_neg().unwrap_or(i32::MAX),
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lengths_and_padding() {
        let mut r = Request::new(24, NLM_F_ACK);
        r.fixed(&[1, 2, 3]).attr_str(3, "eth0");
        let nest = r.begin_nest(18);
        r.attr_u32(1, 7);
        r.end_nest(nest);
        let bytes = r.finish(9);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(u32_at(&bytes, 0), Some(bytes.len() as u32));
        assert_eq!(u32_at(&bytes, 8), Some(9));
        assert_eq!(u16_at(&bytes, 6), Some(NLM_F_ACK | NLM_F_REQUEST));
        let (header, payload) = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(header.kind, 24);
        let attrs: Vec<_> = attributes(&payload[4..]).map(Result::unwrap).collect();
        assert_eq!(attrs[0], (3, &b"eth0\0"[..]));
        assert_eq!(attrs[1].0, 18);
        let inner: Vec<_> = attributes(attrs[1].1).map(Result::unwrap).collect();
        assert_eq!(inner, vec![(1, &7u32.to_ne_bytes()[..])]);
    }

    #[test]
    fn truncated_messages_and_attributes_are_errors() {
        let mut r = Request::new(16, 0);
        r.attr_str(3, "x");
        let bytes = r.finish(1);
        for cut in 1..bytes.len() {
            let parsed: Vec<_> = messages(&bytes[..cut]).collect();
            assert!(parsed.iter().any(Result::is_err), "cut at {cut}");
        }
        assert_eq!(
            attributes(&[8, 0, 1, 0, 1]).next(),
            Some(Err(ParseError::Truncated("attribute")))
        );
        assert_eq!(attributes(&[0, 0, 0]).next(), None);
        assert_eq!(
            attributes(&[2, 0, 1, 0]).next(),
            Some(Err(ParseError::Truncated("attribute")))
        );
    }

    #[test]
    fn error_reply_with_extended_ack() {
        let mut payload = (-17i32).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0u8; HEADER_LEN]);
        let mut tlv = Request::new(0, 0);
        tlv.attr_str(NLMSGERR_ATTR_MSG, "Device does not exist");
        payload.extend_from_slice(&tlv.finish(0)[HEADER_LEN..]);
        assert_eq!(
            Reply::parse(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload),
            Ok(Reply::Error {
                errno: 17,
                message: Some("Device does not exist".into())
            })
        );
        assert_eq!(Reply::parse(0, &0i32.to_ne_bytes()), Ok(Reply::Ack));
        assert!(Reply::parse(0, &[1, 2]).is_err());
        // An absurd echoed length does not overflow.
        let mut odd = (-1i32).to_ne_bytes().to_vec();
        odd.extend_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(
            Reply::parse(NLM_F_ACK_TLVS, &odd),
            Ok(Reply::Error { errno: 1, .. })
        ));
        assert!(matches!(
            Reply::parse(0, &i32::MIN.to_ne_bytes()),
            Ok(Reply::Error { .. })
        ));
    }
}
