-- Every index of a table the redemption writes is one more WAL record per scan. Two indexes
-- of redemption_events serve no query: the merchant's log pages on merchant_redemptions,
-- the order view reads events by entitlement (redemption_events_entitlement_idx), the
-- device feed and the decision by jti (the UNIQUE (jti, function_code) index). Tickets are
-- never deleted, so no foreign-key check needs an index on ticket_id either.
DROP INDEX IF EXISTS redemption_events_merchant_time_idx;
DROP INDEX IF EXISTS redemption_events_ticket_idx;

-- A decrement changes no indexed column of an entitlement: with room on its page it is a
-- HOT update (one WAL record, no index entries). New pages keep 10 % free for it; pages
-- written before this migration get that room when they are next rewritten.
ALTER TABLE entitlements SET (fillfactor = 90);
