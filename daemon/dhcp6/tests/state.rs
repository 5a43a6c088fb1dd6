//! The saved state: round trips, refusals of damaged bytes, and a restart that Rebinds.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use connectopus_dhcp6::{
    Client, ClientConfig, Delegation, Duid, PdState, Prefix, SavedDelegation, State, StateError,
    Time,
};
use proptest::prelude::*;

fn state() -> PdState {
    PdState {
        duid: Duid::llt(1_700_000_000, [2, 0, 0, 0, 0, 1]),
        iaid: 0xdead_beef,
        server_id: vec![0, 1, 0, 1, 9, 9, 9, 9, 1, 2, 3, 4, 5, 6],
        delegations: vec![SavedDelegation {
            prefix: Prefix::new("2001:db8:100::".parse().unwrap(), 56),
            preferred_until_unix_ms: 1_800_000_030_000,
            valid_until_unix_ms: 1_800_000_040_000,
        }],
    }
}

#[test]
fn round_trip_and_refusals() {
    let s = state();
    let bytes = s.encode();
    assert_eq!(PdState::decode(&bytes), Ok(s));
    assert_eq!(PdState::decode(b"XXXX"), Err(StateError::Magic));
    let mut v = bytes.clone();
    v[4] = 9;
    assert_eq!(PdState::decode(&v), Err(StateError::Version(9)));
    assert_eq!(
        PdState::decode(&bytes[..bytes.len() - 1]),
        Err(StateError::Length)
    );
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(PdState::decode(&long), Err(StateError::Length));
    let mut bad_len = bytes.clone();
    let len_at = bytes.len() - 17;
    bad_len[len_at] = 129;
    assert_eq!(
        PdState::decode(&bad_len),
        Err(StateError::PrefixLength(129))
    );
    let mut bad_duid = bytes;
    bad_duid[5] = 1;
    assert!(PdState::decode(&bad_duid).is_err());
}

#[test]
fn deadlines_move_between_clocks() {
    let now = Time::ZERO + Duration::from_secs(100);
    let s = state();
    // 10 s before the preferred deadline on the wall clock.
    let d = s.delegations_at(now, 1_800_000_020_000);
    assert_eq!(
        d,
        vec![Delegation {
            prefix: s.delegations[0].prefix,
            preferred: Duration::from_secs(10),
            valid: Duration::from_secs(20),
            preferred_until: now + Duration::from_secs(10),
            valid_until: now + Duration::from_secs(20),
        }]
    );
    // And back.
    let config = ClientConfig {
        duid: s.duid.clone(),
        iaid: s.iaid,
        length_hint: Some(56),
        prefix_hint: None,
    };
    let c = Client::resume(config.clone(), d, s.server_id.clone(), now, 1);
    assert_eq!(c.state(), State::Rebinding);
    let again = PdState::new(s.duid.clone(), s.iaid, c.lease(), now, 1_800_000_020_000);
    assert_eq!(again, s);
    // After the valid deadline: Solicit.
    let late = s.delegations_at(now, 1_800_000_050_000);
    assert_eq!(
        Client::resume(config, late, Vec::new(), now, 1).state(),
        State::Soliciting
    );
}

proptest! {
    #[test]
    fn decode_never_panics(
        header in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        // With the header most inputs reach the DUID and the delegations.
        let mut bytes = if header { b"CPD6\x01".to_vec() } else { Vec::new() };
        bytes.extend(tail);
        if let Ok(s) = PdState::decode(&bytes) {
            prop_assert_eq!(PdState::decode(&s.encode()), Ok(s));
        }
    }
}
