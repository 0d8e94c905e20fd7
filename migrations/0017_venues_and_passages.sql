-- Venues, exits and occupancy (issue 13). A venue groups some of a merchant's locations;
-- a scan of its entry function at one of them is an entry, a gate in exit mode records
-- exits. Every passage is a row here: a ticket's presence is its latest passage of the
-- merchant-local day, and a venue's occupancy is the sum of that day's occupancy changes,
-- kept as a running count on the venue row so an entry at a capacity venue reads it under
-- the venue's lock in O(1).
CREATE TABLE venues (
    id bigserial PRIMARY KEY,
    merchant_id bigint NOT NULL REFERENCES merchants (id),
    code text NOT NULL,
    name text NOT NULL,
    entry_function text NOT NULL DEFAULT 'ENTRY',
    capacity bigint CHECK (capacity IS NULL OR capacity >= 0),
    -- Tickets inside on the merchant-local day `inside_on`; another day's count is 0.
    inside bigint NOT NULL DEFAULT 0,
    inside_on date,
    UNIQUE (merchant_id, code)
);
CREATE TRIGGER venues_keep BEFORE DELETE ON venues
    FOR EACH ROW EXECUTE FUNCTION stile_refuse_delete();

-- A location belongs to at most one venue.
ALTER TABLE locations ADD COLUMN venue_id bigint REFERENCES venues (id);

-- The write path's references are guarded against deletion (0015), not checked per row.
CREATE TABLE passages (
    id bigserial PRIMARY KEY,
    merchant_id bigint NOT NULL,
    venue_id bigint NOT NULL,
    ticket_id bigint NOT NULL,
    direction text NOT NULL CHECK (direction IN ('entry', 'exit')),
    -- An entry after an exit that used no count.
    reentry boolean NOT NULL DEFAULT false,
    -- The change to the venue's occupancy: +1 a place taken, 0 an entry of a ticket already
    -- inside, -1 an exit.
    delta smallint NOT NULL CHECK (delta BETWEEN -1 AND 1),
    -- When it was decided (the deciding process's clock) and recorded (the central's).
    at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL,
    location_id bigint,
    device_id bigint,
    operator_id bigint,
    redemption_event_id bigint,
    scan_id uuid,
    source text NOT NULL
);
-- A ticket's latest passage at a venue (presence), and a venue's passages of a day.
CREATE INDEX passages_ticket_idx ON passages (venue_id, ticket_id, at DESC, id DESC);
CREATE INDEX passages_day_idx ON passages (venue_id, at) INCLUDE (direction, delta);

-- A passage changes what a gate needs to know of the ticket (its presence): the device feed
-- hands it out again. The entitlements' stamp does it (it reads NEW.ticket_id and stamps a
-- ticket once per transaction), so an entry, which has stamped it already, costs nothing.
CREATE TRIGGER passages_stamp_ticket AFTER INSERT ON passages
    FOR EACH ROW EXECUTE FUNCTION stile_stamp_ticket_of_entitlement();
