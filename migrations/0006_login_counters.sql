-- Failed logins are counted on the operator's own row, in the same statement that reads
-- it (check-and-count is atomic: concurrent wrong passwords cannot all get past the limit),
-- and made-up usernames no longer write a row each (they are throttled in memory).
ALTER TABLE operators
    ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN failed_logins_since TIMESTAMPTZ;
DROP TABLE login_failures;
