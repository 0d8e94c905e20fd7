-- Merchant redemption console: the reconciliation log every redemption writes (whichever
-- path made it), the webhook outbox, and the lookups the console needs.

-- 核销日志: one row per redemption, written in the redemption's own transaction.
-- source: 'venue' (POST /venue/scan), 'merchant' (POST /merchant/tickets/scan) or
-- 'offline' (decided by a gate while offline, uploaded later: decided_at is the gate's
-- decision time, uploaded_at and redeemed_at the central's).
CREATE TABLE merchant_redemptions (
    id                  BIGSERIAL PRIMARY KEY,
    merchant_id         BIGINT NOT NULL REFERENCES merchants (id),
    operator_id         BIGINT REFERENCES operators (id),
    ticket_id           BIGINT NOT NULL REFERENCES tickets (id),
    order_id            BIGINT NOT NULL REFERENCES orders (id),
    location_id         BIGINT REFERENCES locations (id),
    device_id           BIGINT REFERENCES devices (id),
    redemption_event_id BIGINT NOT NULL REFERENCES redemption_events (id),
    function_code       TEXT NOT NULL,
    redeemed_at         TIMESTAMPTZ NOT NULL,
    decided_at          TIMESTAMPTZ NOT NULL,
    uploaded_at         TIMESTAMPTZ,
    source              TEXT NOT NULL CHECK (source IN ('venue', 'merchant', 'offline')),
    result              TEXT NOT NULL DEFAULT 'SUCCESS',
    meta                JSONB NOT NULL DEFAULT '{}'::jsonb,
    UNIQUE (ticket_id, redemption_event_id)
);
-- Keyset paging of one merchant's log, newest first.
CREATE INDEX merchant_redemptions_merchant_time_idx
    ON merchant_redemptions (merchant_id, redeemed_at DESC, id DESC);

-- Transactional outbox of merchant webhooks: enqueued in the redemption's transaction,
-- delivered by a worker (FOR UPDATE SKIP LOCKED) with retries, parked as 'dead' at the end.
CREATE TABLE notifications (
    id                     BIGSERIAL PRIMARY KEY,
    merchant_id            BIGINT NOT NULL REFERENCES merchants (id),
    merchant_redemption_id BIGINT REFERENCES merchant_redemptions (id) ON DELETE SET NULL,
    payload                JSONB NOT NULL,
    status                 TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts               INTEGER NOT NULL DEFAULT 0,
    next_attempt_at        TIMESTAMPTZ NOT NULL,
    last_error             TEXT,
    created_at             TIMESTAMPTZ NOT NULL,
    delivered_at           TIMESTAMPTZ
);
CREATE INDEX notifications_due_idx ON notifications (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notifications_merchant_idx ON notifications (merchant_id, created_at);

-- The order view's "last redemption of each entitlement".
CREATE INDEX redemption_events_entitlement_idx ON redemption_events (entitlement_id, redeemed_at DESC);
-- Retention deletes by age.
CREATE INDEX scan_audit_decided_idx ON scan_audit (decided_at);
CREATE INDEX merchant_redemptions_redeemed_idx ON merchant_redemptions (redeemed_at);
CREATE INDEX scan_requests_created_idx ON scan_requests (created_at);
