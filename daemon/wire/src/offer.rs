//! The config offer: a signed mesh configuration sent on the routing stream to a neighbour
//! whose updates advertise an older configuration version.
//!
//! Layout (big-endian): `version u64 | config_len u32 | config | signature_len u32 | signature`,
//! ending exactly there. The node core carries the bytes opaquely; the driver checks the
//! signature against the configuration it is running before using them.

use crate::WireError;
use crate::cursor::Reader;

/// A configuration and its signature, as offered to a lagging neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigOffer<'a> {
    /// The configuration's version (`global.version`).
    pub version: u64,
    /// The exact configuration file bytes that were signed.
    pub config: &'a [u8],
    /// The signature file's bytes.
    pub signature: &'a [u8],
}

impl<'a> ConfigOffer<'a> {
    /// Parses an offer; fails on truncation or trailing bytes.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        let version = r.u64()?;
        let config_len = r.u32()? as usize;
        let config = r.take(config_len)?;
        let signature_len = r.u32()? as usize;
        let signature = r.take(signature_len)?;
        if r.remaining() != 0 {
            return Err(WireError::TrailingBytes);
        }
        Ok(Self {
            version,
            config,
            signature,
        })
    }

    /// Encodes the offer; config and signature must each be shorter than 4 GiB.
    ///
    /// # Errors
    /// [`WireError::BadLength`] if a part does not fit its 32-bit length field.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let config_len = u32::try_from(self.config.len()).map_err(|_| WireError::BadLength)?;
        let signature_len =
            u32::try_from(self.signature.len()).map_err(|_| WireError::BadLength)?;
        let mut out = Vec::with_capacity(16 + self.config.len() + self.signature.len());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&config_len.to_be_bytes());
        out.extend_from_slice(self.config);
        out.extend_from_slice(&signature_len.to_be_bytes());
        out.extend_from_slice(self.signature);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_bytes() {
        let offer = ConfigOffer {
            version: 7,
            config: b"ab",
            signature: b"s",
        };
        let bytes = offer.encode().unwrap();
        assert_eq!(
            bytes,
            [
                0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, b's'
            ]
        );
        assert_eq!(ConfigOffer::parse(&bytes), Ok(offer));
        assert_eq!(
            ConfigOffer::parse(&bytes[..bytes.len() - 1]),
            Err(WireError::Truncated)
        );
        let mut longer = bytes;
        longer.push(0);
        assert_eq!(ConfigOffer::parse(&longer), Err(WireError::TrailingBytes));
    }

    proptest! {
        #[test]
        fn round_trip(version: u64, config: Vec<u8>, signature: Vec<u8>) {
            let offer = ConfigOffer { version, config: &config, signature: &signature };
            let bytes = offer.encode().unwrap();
            prop_assert_eq!(ConfigOffer::parse(&bytes), Ok(offer));
        }

        #[test]
        fn never_panics(bytes: Vec<u8>) {
            let _ = ConfigOffer::parse(&bytes);
        }
    }
}
