-- Two indexes serve only retention's purge (`retention.rs`: rows older than a cutoff):
-- scan_requests (created_at) and merchant_redemptions (redeemed_at). As B-trees each takes
-- an entry, a WAL record, per redemption. Both columns grow with the insert order (an
-- offline upload's redeemed_at lags by hours at most), so a BRIN index, a summary per range
-- of pages, finds the old rows as well: an insert into a page range not summarised yet
-- writes nothing to it, and vacuum summarises the ranges. The purge rechecks each row, so a
-- lagging value only widens a range.
DROP INDEX scan_requests_created_idx;
CREATE INDEX scan_requests_created_idx ON scan_requests USING brin (created_at);
DROP INDEX merchant_redemptions_redeemed_idx;
CREATE INDEX merchant_redemptions_redeemed_idx ON merchant_redemptions USING brin (redeemed_at);
