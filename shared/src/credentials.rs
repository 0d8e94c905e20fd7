//! Operator passwords: the one check the central (at `POST /operators/login`) and a gate
//! (logging an operator in offline, against the verifier the central provisioned) both run.
//! A verifier is the argon2id PHC string the central stores; the plain password is never
//! stored anywhere.

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;

/// Whether `password` matches `verifier` (an argon2 PHC string). A malformed verifier never
/// matches. Costs one argon2 evaluation (memory and time set by the verifier's parameters).
pub fn verify_password(verifier: &str, password: &str) -> bool {
    PasswordHash::new(verifier)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::verify_password;
    use argon2::password_hash::{PasswordHasher, SaltString};
    use argon2::Argon2;

    #[test]
    fn a_verifier_checks_exactly_its_password() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let verifier = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .expect("hash")
            .to_string();
        assert!(verify_password(&verifier, "correct horse"));
        assert!(!verify_password(&verifier, "correct horsE"));
        assert!(!verify_password(&verifier, ""));
        assert!(!verify_password("not a phc string", "correct horse"));
    }
}
