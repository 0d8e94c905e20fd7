-- What the central knows of a device's past, so a gate that starts with an empty store can
-- tell it has lost local state: when it first synced, and when it last uploaded offline
-- decisions (each set by the device endpoints, at most once per call).
ALTER TABLE devices ADD COLUMN first_synced_at TIMESTAMPTZ;
ALTER TABLE devices ADD COLUMN last_upload_at TIMESTAMPTZ;
