//! The gate's credential at start: the configured `device_secret`, or the secret it got for
//! its one-time `enrollment_code` — exchanged at `POST /device/enroll` on the first start and
//! kept in the state directory (`device-secret`, mode 0600) from then on, so a restart
//! never needs the spent code again.

use crate::config::{AgentConfig, DeviceCredential};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where an enrolled gate keeps its secret.
pub const SECRET_FILE: &str = "device-secret";

/// How long a gate waits between enrollment attempts while the central is unreachable.
const RETRY: Duration = Duration::from_secs(5);

/// Why the gate has no credential.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("the central refused enrollment_code for {device_id}: it is wrong, spent or expired (ask for a new one)")]
    Refused { device_id: String },
    #[error("cannot keep the enrolled secret in {path}: {source}")]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn secret_path(config: &AgentConfig) -> PathBuf {
    config.state_dir.join(SECRET_FILE)
}

/// The secret the gate authenticates with.
pub async fn device_secret(config: &AgentConfig) -> Result<String, EnrollError> {
    let code = match &config.credential {
        DeviceCredential::Secret(secret) => return Ok(secret.clone()),
        DeviceCredential::Enrollment(code) => code,
    };
    let path = secret_path(config);
    if let Ok(stored) = std::fs::read_to_string(&path) {
        let stored = stored.trim().to_owned();
        if !stored.is_empty() {
            return Ok(stored);
        }
    }
    loop {
        match super::central::enroll(&config.central_url, &config.device_id, code).await {
            Ok(secret) => {
                keep(&path, &secret).map_err(|source| EnrollError::Store {
                    path: path.clone(),
                    source,
                })?;
                tracing::info!(device = %config.device_id, "enrolled: the device secret is kept in the state directory");
                return Ok(secret);
            }
            Err(super::central::CallError::Unauthorized) => {
                return Err(EnrollError::Refused {
                    device_id: config.device_id.to_string(),
                })
            }
            Err(error) => {
                tracing::warn!(error = %error, "enrollment failed; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Writes the secret durably and privately: a temporary file (0600), fsync, rename.
fn keep(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
