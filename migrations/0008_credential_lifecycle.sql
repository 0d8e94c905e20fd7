-- Credentials that can be withdrawn within seconds, rotated without downtime, and issued
-- without typing a secret into a file.
--
-- Operators: every JWT carries the generation it was issued under; bumping it ("log out
-- everywhere") or disabling the operator makes every token issued before fail on its next
-- request (servers cache the generation for at most a few seconds).
ALTER TABLE operators
    ADD COLUMN token_generation BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN disabled_at TIMESTAMPTZ;

-- Devices: a revoked device's credential stops working on every endpoint at once; a rotated
-- secret leaves the previous one valid until previous_secret_valid_until; a device enrolled
-- with a one-time code has no secret until it exchanges the code.
ALTER TABLE devices
    ALTER COLUMN secret_hash DROP NOT NULL,
    ADD COLUMN revoked_at TIMESTAMPTZ,
    ADD COLUMN previous_secret_hash TEXT,
    ADD COLUMN previous_secret_valid_until TIMESTAMPTZ;

-- One-time enrollment codes (SHA-256 of the code): exchanged once, before expires_at, for
-- the device's credential.
CREATE TABLE device_enrollments (
    code_hash  TEXT PRIMARY KEY,
    device_id  BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX device_enrollments_device_idx ON device_enrollments (device_id);
