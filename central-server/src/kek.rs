//! The key-encryption key (KEK): QR signing keys' private halves are stored sealed with it,
//! so a database dump alone cannot mint tickets.
//!
//! The KEK is 32 random bytes in a file the server reads at start (`key_encryption_key_file`,
//! or the systemd credential `kek` under `$CREDENTIALS_DIRECTORY`, from `LoadCredential=`),
//! written as 64 hex digits (`central-server keys generate-kek`). Sealing is
//! ChaCha20-Poly1305 with a random nonce and the key's kid as associated data, so a sealed
//! key moved to another row does not open. Each sealed row names the KEK that sealed it
//! (`kek_id`: the first 8 bytes of its SHA-256, in hex).
//!
//! Rotation: give every server the new KEK as current and the old one as previous
//! (`previous_key_encryption_key_file`, or the credential `kek-previous`), restart them (a
//! server reseals every row at start, under a lock), then remove the previous KEK.

use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Why a KEK could not be read or a key not opened.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("key-encryption key {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("signing key {kid:?} is sealed with key-encryption key {kek_id}, which this server does not have")]
    MissingKek { kid: String, kek_id: String },
    #[error(
        "signing key {0:?} does not open with its key-encryption key (tampered, or the wrong key)"
    )]
    Unseal(String),
}

/// One key-encryption key.
pub struct Kek {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

impl Kek {
    /// A KEK from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Kek {
        let digest = Sha256::digest(bytes);
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        // 32 bytes is exactly ChaCha20-Poly1305's key length: this cannot fail.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .unwrap_or_else(|_| unreachable!("a 32-byte ChaCha20-Poly1305 key"));
        Kek {
            key: LessSafeKey::new(unbound),
            id,
        }
    }

    /// Reads a KEK file: 64 hex digits (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Kek, KekError> {
        let refused = |message: String| KekError::File {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|error| refused(error.to_string()))?;
        let hex = text.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refused(
                "must hold 64 hex digits (central-server keys generate-kek writes one)".into(),
            ));
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| refused("not hex".into()))?;
        }
        Ok(Kek::from_bytes(&bytes))
    }

    /// A fresh KEK as its file holds it (64 hex digits).
    pub fn generate_hex() -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `nonce || ciphertext || tag` of a private key, bound to its kid.
    pub fn seal(&self, kid: &str, secret: &[u8; 32]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut sealed = secret.to_vec();
        // Sealing into a Vec cannot fail for a 32-byte input.
        let _ = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(kid.as_bytes()),
            &mut sealed,
        );
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// The private key sealed by [`Kek::seal`] for `kid`.
    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<[u8; 32], KekError> {
        let refused = || KekError::Unseal(kid.to_owned());
        if sealed.len() <= NONCE_LEN {
            return Err(refused());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut body)
            .map_err(|_| refused())?;
        plain.try_into().map_err(|_| refused())
    }
}

/// The KEKs a server holds: the one it seals with, and the one being rotated away from.
#[derive(Debug, Default)]
pub struct KeyEncryption {
    pub current: Option<Kek>,
    pub previous: Option<Kek>,
}

impl KeyEncryption {
    /// No KEK: private keys are stored as they are (a warning at start says so).
    pub fn none() -> KeyEncryption {
        KeyEncryption::default()
    }

    /// Reads the configured files, falling back to the systemd credentials `kek` and
    /// `kek-previous` when a setting is unset.
    pub fn load(
        current: Option<&Path>,
        previous: Option<&Path>,
    ) -> Result<KeyEncryption, KekError> {
        let credential = |name: &str| {
            std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|dir| Path::new(&dir).join(name))
                .filter(|path| path.is_file())
        };
        let current = current.map(Path::to_path_buf).or_else(|| credential("kek"));
        let previous = previous
            .map(Path::to_path_buf)
            .or_else(|| credential("kek-previous"));
        Ok(KeyEncryption {
            current: current.as_deref().map(Kek::from_file).transpose()?,
            previous: previous.as_deref().map(Kek::from_file).transpose()?,
        })
    }

    /// The KEK with this id, if the server has it.
    pub fn by_id(&self, id: &str) -> Option<&Kek> {
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find(|kek| kek.id() == id)
    }

    /// Opens a stored private key: sealed (with its KEK's id) or, from before encryption,
    /// as it is.
    pub fn open(
        &self,
        kid: &str,
        plain: Option<&[u8]>,
        sealed: Option<(&[u8], &str)>,
    ) -> Result<[u8; 32], KekError> {
        match (sealed, plain) {
            (Some((sealed, kek_id)), _) => {
                let kek = self.by_id(kek_id).ok_or_else(|| KekError::MissingKek {
                    kid: kid.to_owned(),
                    kek_id: kek_id.to_owned(),
                })?;
                kek.open(kid, sealed)
            }
            (None, Some(plain)) => plain
                .try_into()
                .map_err(|_| KekError::Unseal(kid.to_owned())),
            (None, None) => Err(KekError::Unseal(kid.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_kek_and_its_kid() {
        let kek = Kek::from_bytes(&[7; 32]);
        let other = Kek::from_bytes(&[8; 32]);
        let secret = [42u8; 32];
        let sealed = kek.seal("k1", &secret);
        assert!(
            !sealed.windows(32).any(|w| w == secret),
            "the key is not in the clear"
        );
        assert_eq!(kek.open("k1", &sealed).ok(), Some(secret));
        assert!(kek.open("k2", &sealed).is_err(), "moved to another kid");
        assert!(other.open("k1", &sealed).is_err(), "another KEK");
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(kek.open("k1", &tampered).is_err());
        assert_ne!(kek.id(), other.id());
        assert_ne!(kek.seal("k1", &secret), sealed, "a fresh nonce each time");
    }

    #[test]
    fn kek_files_hold_64_hex_digits() {
        let dir = tempfile::tempdir().expect("dir");
        let good = dir.path().join("kek");
        std::fs::write(&good, format!("{}\n", Kek::generate_hex())).expect("write");
        assert!(Kek::from_file(&good).is_ok());
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63)] {
            let path = dir.path().join("bad");
            std::fs::write(&path, bad).expect("write");
            assert!(Kek::from_file(&path).is_err(), "{bad:?}");
        }
        assert!(Kek::from_file(&dir.path().join("missing")).is_err());
    }
}
