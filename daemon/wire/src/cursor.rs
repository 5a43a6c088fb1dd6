//! Bounds-checked reading of big-endian fields, shared by every parser in the crate.

use std::net::Ipv6Addr;

use crate::WireError;

/// A cursor over an input buffer; every read checks the remaining length first.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    /// The bytes not read yet.
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Creates a reader over `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Returns how many bytes are left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next `n` bytes, or fails with [`WireError::Truncated`].
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes a fixed-size array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u16`.
    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u32`.
    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u64`.
    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a 16-byte IPv6 address.
    pub(crate) fn ipv6(&mut self) -> Result<Ipv6Addr, WireError> {
        Ok(Ipv6Addr::from(self.array::<16>()?))
    }

    /// Reads a name: a length byte, then that many bytes that must pass [`crate::check_name`].
    pub(crate) fn name(&mut self) -> Result<String, WireError> {
        let len = self.u8()?;
        let bytes = self.take(usize::from(len))?;
        let name = core::str::from_utf8(bytes).map_err(|_| WireError::BadName)?;
        crate::check_name(name)?;
        Ok(name.to_owned())
    }

    /// Takes everything that is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    /// Succeeds only if the whole buffer was consumed.
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes)
        }
    }
}

/// Returns the prefix of `bytes` that fits a length field whose largest value is `max`.
///
/// Encoders cannot fail; a caller that passes an over-long value gets it cut to fit, so the
/// framing stays consistent and the parser sees a well-formed (if shortened) field.
pub(crate) fn fit(bytes: &[u8], max: usize) -> &[u8] {
    bytes.get(..max).unwrap_or(bytes)
}

/// Appends a name as a length byte and the name bytes (cut to 255 bytes).
pub(crate) fn put_name(out: &mut Vec<u8>, name: &str) {
    let bytes = fit(name.as_bytes(), usize::from(u8::MAX));
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_in_order_and_checks_bounds() {
        let buf = [1, 0, 2, 0, 0, 0, 3, 9];
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(2));
        assert_eq!(r.u32(), Ok(3));
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.finish(), Err(WireError::TrailingBytes));
        assert_eq!(r.u16(), Err(WireError::Truncated));
        assert_eq!(r.rest(), &[9]);
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn fit_cuts_long_values() {
        assert_eq!(fit(&[1, 2, 3], 2), &[1, 2]);
        assert_eq!(fit(&[1, 2, 3], 5), &[1, 2, 3]);
    }
}
