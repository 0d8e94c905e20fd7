//! Property tests of the token verifier: random and mutated input never panics and never
//! verifies unless a trusted key signed exactly that token.

use proptest::prelude::*;
use stile_shared::token::{verify, Jti, QrClaims, QrSigner};
use stile_shared::{Channel, KeySet};

fn trusted() -> (QrSigner, KeySet) {
    let signer = QrSigner::new("k1", [42; 32]);
    let mut keys = KeySet::new();
    keys.insert("k1", signer.verifying_key());
    (signer, keys)
}

fn token(signer: &QrSigner, jti: [u8; 16], iat: i64) -> String {
    let claims = QrClaims {
        jti: Jti::from_bytes(jti),
        tid: "TK-1".into(),
        mid: "M001".into(),
        ch: Channel::MiniApp,
        iat,
        exp: Some(iat + 1800),
    };
    signer.issue(&claims).expect("issue")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_strings_never_verify(input in ".{0,600}") {
        let (_, keys) = trusted();
        prop_assert!(verify(&input, &keys).is_err());
    }

    #[test]
    fn random_three_part_tokens_never_verify(
        a in "[A-Za-z0-9_-]{0,60}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,100}"
    ) {
        let (_, keys) = trusted();
        let joined = [a, b, c].join(".");
        prop_assert!(verify(&joined, &keys).is_err());
    }

    /// Changing any one character of a signed token makes it fail, unless the change maps
    /// back to the same bytes (impossible with canonical base64) — so: always.
    #[test]
    fn any_single_character_change_is_refused(
        jti in any::<[u8; 16]>(), iat in 1_600_000_000i64..2_000_000_000, position in any::<prop::sample::Index>(),
        replacement in prop::sample::select(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=".to_vec()),
    ) {
        let (signer, keys) = trusted();
        let good = token(&signer, jti, iat);
        prop_assert!(verify(&good, &keys).is_ok());
        let mut bytes = good.clone().into_bytes();
        let at = position.index(bytes.len());
        prop_assume!(bytes[at] != replacement);
        bytes[at] = replacement;
        let mutated = String::from_utf8(bytes).expect("ascii");
        prop_assert!(verify(&mutated, &keys).is_err(), "{mutated}");
    }

    #[test]
    fn other_keys_never_verify(seed in any::<[u8; 32]>(), jti in any::<[u8; 16]>()) {
        let (_, keys) = trusted();
        prop_assume!(seed != [42; 32]);
        let forger = QrSigner::new("k1", seed);
        prop_assert!(verify(&token(&forger, jti, 1_764_000_000), &keys).is_err());
    }

    #[test]
    fn truncation_never_verifies(cut in 1usize..200) {
        let (signer, keys) = trusted();
        let good = token(&signer, [3; 16], 1_764_000_000);
        let cut = cut.min(good.len());
        prop_assert!(verify(&good[..good.len() - cut], &keys).is_err());
    }
}
