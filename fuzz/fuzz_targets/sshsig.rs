//! The SSHSIG signature as a node reads it from a `.sig` file or a config offer: either the
//! `-----BEGIN SSH SIGNATURE-----` armour (any text), or the raw blob as base64url, or a blob
//! wrapped in a correct armour. Parsing never panics; whatever parses re-encodes to both text
//! forms, which parse back to the same signer; verification against an unrelated key is refused.

#![no_main]

use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use connectopus_config::SshPublicKey;
use connectopus_config::signature::{ConfigSignature, verify};
use libfuzzer_sys::fuzz_target;

/// A key made with ssh-keygen for this target; its private half was deleted at once.
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDodzYj57OZmELq22KpYeJKA9uGTjFaBuWl+X9dGUYcr";

fn armour(blob: &[u8], width: usize) -> String {
    let body = Base64::encode_string(blob);
    let mut text = String::from("-----BEGIN SSH SIGNATURE-----\n");
    for line in body.as_bytes().chunks(width.max(1)) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str("-----END SSH SIGNATURE-----\n");
    text
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = match mode % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => Base64UrlUnpadded::encode_string(rest),
        _ => armour(rest, usize::from(mode / 3) + 1),
    };
    if let Ok(sig) = ConfigSignature::parse(&text) {
        let signer = sig.signer();
        for form in [sig.to_armored(), sig.to_base64url()] {
            let again = ConfigSignature::parse(&form).expect("a parsed signature re-parses");
            assert!(again.signer().same_key(&signer));
            assert_eq!(again.algorithm(), sig.algorithm());
        }
        let _ = sig.fingerprint();
    }
    let authorized = [SshPublicKey(KEY.to_owned())];
    // Nobody holds the key's private half: nothing verifies against it.
    assert!(verify(b"global: {}\n", &text, &authorized, &[]).is_err());
});
