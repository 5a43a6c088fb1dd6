//! TLS 1.2 PRF with HMAC-SHA256 (RFC 5246 §5).

use aws_lc_rs::hmac;

/// Fills `out` with P_SHA256(secret, label ‖ seed).
pub(crate) fn prf_sha256(secret: &[u8], label: &[u8], seed: &[u8], out: &mut [u8]) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut a = {
        let mut c = hmac::Context::with_key(&key);
        c.update(label);
        c.update(seed);
        c.sign()
    };
    for chunk in out.chunks_mut(32) {
        let mut c = hmac::Context::with_key(&key);
        c.update(a.as_ref());
        c.update(label);
        c.update(seed);
        let block = c.sign();
        chunk.copy_from_slice(&block.as_ref()[..chunk.len()]);
        a = hmac::sign(&key, a.as_ref());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Known-answer vector for the TLS 1.2 SHA-256 PRF (from the IETF TLS mailing list
    /// test vectors, also used by many TLS implementations).
    #[test]
    fn prf_known_answer() {
        let secret = hex("9bbe436ba940f017b17652849a71db35");
        let seed = hex("a0ba9f936cda311827a6f796ffd5198c");
        let mut out = [0u8; 100];
        prf_sha256(&secret, b"test label", &seed, &mut out);
        let want = hex(concat!(
            "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a",
            "6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab",
            "4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701",
            "87347b66"
        ));
        assert_eq!(&out[..], &want[..]);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
