//! The gates' peer directory: each gate registers the public half of its peer key and the
//! LAN address it serves its peers on (`PUT /device/peer`, under its device credential),
//! and learns the other gates of its merchant from `GET /device/peers`. The central only
//! hands out keys; the gates judge each other's messages themselves
//! (`stile_shared::peer::judge`), so peers keep working while the central is away.
//!
//! Trust rule: a key is as good as the device credential that registered it. Revoking a
//! device takes it out of every other gate's list at their next sync.

use crate::auth::AuthenticatedDevice;
use crate::error::AppError;
use crate::AppState;
use std::net::IpAddr;
use stile_shared::api::{DevicePeer, DevicePeers, PeerRegistration};
use stile_shared::peer::{PeerAddress, PeerKey};

/// Parses a registration: the key must be a valid Ed25519 point; the address is the one
/// given, or the request's source address with the given port.
fn parse_registration(
    registration: &PeerRegistration,
    source: IpAddr,
) -> Result<(PeerKey, PeerAddress), AppError> {
    let key = PeerKey::parse(&registration.public_key)
        .map_err(|error| AppError::BadRequest(format!("public_key: {error}")))?;
    let address = match (&registration.address, registration.port) {
        (Some(address), _) => PeerAddress::parse(address),
        (None, Some(port)) if port > 0 && !source.is_unspecified() => {
            PeerAddress::parse(&std::net::SocketAddr::new(source, port).to_string())
        }
        (None, _) => {
            return Err(AppError::BadRequest(
                "address: give address (host:port) or port".into(),
            ))
        }
    }
    .map_err(|error| AppError::BadRequest(format!("address: {error}")))?;
    Ok((key, address))
}

/// Registers (or replaces) the device's peer key and address.
pub async fn register(
    state: &AppState,
    device: &AuthenticatedDevice,
    registration: &PeerRegistration,
    source: IpAddr,
) -> Result<DevicePeer, AppError> {
    let (key, address) = parse_registration(registration, source)?;
    sqlx::query(
        "UPDATE devices SET peer_public_key = $2, peer_address = $3, peer_registered_at = now() \
         WHERE id = $1",
    )
    .bind(device.device_pk)
    .bind(key.encode())
    .bind(address.as_str())
    .execute(&state.pool)
    .await?;
    tracing::info!(device = %device.device_id, key = %key.fingerprint(), address = address.as_str(), "peer key registered");
    Ok(DevicePeer {
        device_id: device.device_id.clone(),
        venue_code: device.venue_code.clone(),
        address: address.as_str().to_owned(),
        public_key: key.encode(),
    })
}

/// The device's own registration and the other registered, unrevoked gates of its merchant.
pub async fn directory(
    state: &AppState,
    device: &AuthenticatedDevice,
) -> Result<DevicePeers, AppError> {
    let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "SELECT d.id, d.device_id, l.venue_code, d.peer_address, d.peer_public_key \
         FROM devices d JOIN locations l ON l.id = d.location_id \
         WHERE d.merchant_id = $1 AND d.revoked_at IS NULL \
           AND d.peer_public_key IS NOT NULL AND d.peer_address IS NOT NULL \
         ORDER BY d.device_id",
    )
    .bind(device.merchant_id)
    .fetch_all(&state.pool)
    .await?;
    let mut registered = None;
    let mut peers = Vec::new();
    for (id, device_id, venue_code, address, public_key) in rows {
        let peer = DevicePeer {
            device_id,
            venue_code,
            address,
            public_key,
        };
        if id == device.device_pk {
            registered = Some(peer);
        } else {
            peers.push(peer);
        }
    }
    Ok(DevicePeers {
        merchant_code: device.merchant_code.clone(),
        registered,
        peers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_names_a_key_and_an_address() {
        let key = PeerKey::of(&ed25519_dalek::SigningKey::from_bytes(&[5; 32])).encode();
        let lan: IpAddr = "10.0.0.7".parse().expect("ip");
        let with = |address: Option<&str>, port| PeerRegistration {
            public_key: key.clone(),
            address: address.map(str::to_owned),
            port,
        };
        let (_, address) = parse_registration(&with(None, Some(9092)), lan).expect("port only");
        assert_eq!(address.as_str(), "10.0.0.7:9092");
        let (_, address) =
            parse_registration(&with(Some("gate-1.local:9092"), None), lan).expect("named");
        assert_eq!(address.as_str(), "gate-1.local:9092");
        assert!(parse_registration(&with(None, None), lan).is_err());
        assert!(parse_registration(&with(None, Some(9092)), IpAddr::from([0, 0, 0, 0])).is_err());
        assert!(parse_registration(&with(Some("gate"), None), lan).is_err());
        let bad_key = PeerRegistration {
            public_key: "short".into(),
            ..with(None, Some(1))
        };
        assert!(parse_registration(&bad_key, lan).is_err());
    }
}
