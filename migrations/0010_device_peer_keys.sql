-- Venue peers: each gate registers the public half of the Ed25519 key it signs its peer
-- messages with (the private half never leaves the gate) and the LAN address its peer
-- listener serves on. Other gates of the merchant receive both in GET /device/peers.
ALTER TABLE devices ADD COLUMN peer_public_key TEXT
    CHECK (peer_public_key IS NULL OR length(peer_public_key) = 43);
ALTER TABLE devices ADD COLUMN peer_address TEXT
    CHECK (peer_address IS NULL OR length(peer_address) BETWEEN 3 AND 255);
ALTER TABLE devices ADD COLUMN peer_registered_at TIMESTAMPTZ;
