-- The device that made a scan (NULL for the merchant console, and for rows from before this
-- migration). A stored answer is only replayed to the merchant that made the scan, and then
-- only to the same operator or the same device: a scan_id seen by anyone else is refused.
ALTER TABLE scan_requests ADD COLUMN device_id BIGINT;
