-- Gate devices: a commit-ordered change feed of ticket state, and offline decisions
-- uploaded later (applied, or recorded as conflicts for the merchant's reconciliation).

-- Every change to a ticket or its entitlements stamps the ticket with the changing
-- transaction's id. The feed pages on (sync_xid, id) and only hands out rows whose
-- transaction ids are below the snapshot's xmin: every such transaction has finished, so
-- no later commit can slip in behind a device's cursor.
ALTER TABLE tickets ADD COLUMN sync_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX tickets_sync_idx ON tickets (merchant_id, sync_xid, id);

CREATE FUNCTION stile_stamp_ticket() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.sync_xid := pg_current_xact_id();
    RETURN NEW;
END
$$;
CREATE TRIGGER tickets_stamp BEFORE UPDATE ON tickets
    FOR EACH ROW EXECUTE FUNCTION stile_stamp_ticket();

CREATE FUNCTION stile_stamp_ticket_of_entitlement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tickets SET sync_xid = pg_current_xact_id() WHERE id = NEW.ticket_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER entitlements_stamp AFTER INSERT OR UPDATE ON entitlements
    FOR EACH ROW EXECUTE FUNCTION stile_stamp_ticket_of_entitlement();

-- A conflict (an offline acceptance the central could not apply) is a log row without a
-- redemption event.
ALTER TABLE merchant_redemptions ALTER COLUMN redemption_event_id DROP NOT NULL;
ALTER TABLE merchant_redemptions ADD COLUMN scan_id UUID;
CREATE UNIQUE INDEX merchant_redemptions_scan_idx ON merchant_redemptions (scan_id) WHERE scan_id IS NOT NULL;
