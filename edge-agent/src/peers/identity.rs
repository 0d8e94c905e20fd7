//! This gate's peer identity: an Ed25519 key made here on first use and kept in
//! `state_dir/peer-key` (0600; the private half never leaves the device, only the public
//! half is registered with the central), and the id of its peer log, kept in the store so a
//! new store starts a new log.

use crate::store::{Store, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::SigningKey;
use rand::RngCore;
use std::io::Write;
use std::path::{Path, PathBuf};
use stile_shared::peer::LogId;

/// The key file in the state directory.
pub const KEY_FILE: &str = "peer-key";
const LOG_STATE: &str = "peer_log_id";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("peer key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("peer key {0} is not 32 bytes of base64url: move it aside to make a new one (the central then needs the new public key, which the agent registers at its next sync)")]
    Malformed(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The key in `state_dir`, made (and written with mode 0600) when there is none.
pub fn load_or_create(state_dir: &Path) -> Result<SigningKey, IdentityError> {
    let path = state_dir.join(KEY_FILE);
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes: [u8; 32] = URL_SAFE_NO_PAD
                .decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| IdentityError::Malformed(path.clone()))?;
            Ok(SigningKey::from_bytes(&bytes))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(state_dir).map_err(io)?;
            let mut seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            let key = SigningKey::from_bytes(&seed);
            // Written under a temporary name and renamed: a crash leaves no half key.
            let partial = state_dir.join(format!("{KEY_FILE}.partial"));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&partial).map_err(io)?;
            file.write_all(URL_SAFE_NO_PAD.encode(seed).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io)?;
            std::fs::rename(&partial, &path).map_err(io)?;
            tracing::info!(path = %path.display(), "made a new peer key");
            Ok(key)
        }
        Err(error) => Err(io(error)),
    }
}

/// This store's peer log id, made on first use.
pub fn log_id(store: &mut Store) -> Result<LogId, StoreError> {
    if let Some(id) = store
        .get_state(LOG_STATE)?
        .and_then(|text| LogId::parse(&text).ok())
    {
        return Ok(id);
    }
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let id = LogId::from_bytes(bytes);
    store.set_state(LOG_STATE, id.as_str())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create(dir.path()).expect("made");
        let again = load_or_create(dir.path()).expect("read");
        assert_eq!(first.to_bytes(), again.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(KEY_FILE), "garbage").expect("write");
        assert!(matches!(
            load_or_create(dir.path()),
            Err(IdentityError::Malformed(_))
        ));
    }
}
