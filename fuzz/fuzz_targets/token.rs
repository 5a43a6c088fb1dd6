//! Control-plane tokens as a node reads them from an `Authorization: Bearer` header:
//! `cxt1.<base64url claims>.<base64url SSHSIG>`, any text. Parsing never panics; whatever
//! parses re-encodes to a text that parses to the same claims and signer; nothing verifies
//! against a key whose private half nobody holds.

#![no_main]

use connectopus_config::SshPublicKey;
use connectopus_config::token::{Token, TokenScope};
use libfuzzer_sys::fuzz_target;

/// A key made with ssh-keygen for the sshsig target; its private half was deleted at once.
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDodzYj57OZmELq22KpYeJKA9uGTjFaBuWl+X9dGUYcr";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(token) = Token::parse(&text) else {
        return;
    };
    let again = Token::parse(&token.to_text()).expect("a parsed token re-parses");
    assert_eq!(again.claims(), token.claims());
    assert_eq!(again.fingerprint(), token.fingerprint());
    let scope = TokenScope {
        domain: token.claims().domain.clone(),
        subnet: token.claims().subnet.clone(),
    };
    let authorized = [SshPublicKey(KEY.to_owned())];
    assert!(
        token
            .verify(&scope, token.claims().iat, &authorized, &[])
            .is_err()
    );
});
