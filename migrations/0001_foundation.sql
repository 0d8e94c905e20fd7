-- Stile foundation schema: merchants and their places, people and devices, orders and
-- tickets with entitlements, QR issuance, signing keys, redemptions, idempotent scan
-- requests and the audit trail.
--
-- Scale-out rule: every hot table carries merchant_id and every hot query filters by it,
-- so the schema can be distributed by merchant (e.g. Citus) without rewriting queries.

CREATE TABLE merchants (
    id              BIGSERIAL PRIMARY KEY,
    code            TEXT NOT NULL UNIQUE CHECK (length(code) BETWEEN 1 AND 8),
    name            TEXT NOT NULL,
    timezone        TEXT NOT NULL DEFAULT 'Asia/Shanghai',
    webhook_url     TEXT,
    webhook_secret  TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- 核销点: the places where gates stand, addressed by venue_code within a merchant.
CREATE TABLE locations (
    id          BIGSERIAL PRIMARY KEY,
    merchant_id BIGINT NOT NULL REFERENCES merchants (id),
    venue_code  TEXT NOT NULL CHECK (length(venue_code) BETWEEN 1 AND 64),
    name        TEXT NOT NULL,
    UNIQUE (merchant_id, venue_code)
);

-- 核销员: gate staff; password_hash is an argon2id PHC string.
CREATE TABLE operators (
    id            BIGSERIAL PRIMARY KEY,
    merchant_id   BIGINT NOT NULL REFERENCES merchants (id),
    username      TEXT NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 64),
    password_hash TEXT NOT NULL,
    display_name  TEXT NOT NULL DEFAULT '',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX operators_merchant_idx ON operators (merchant_id);

-- Gate devices, bound to one merchant and one location. secret_hash: SHA-256 (hex) of the
-- device secret, a high-entropy machine credential looked up on every device call.
CREATE TABLE devices (
    id          BIGSERIAL PRIMARY KEY,
    device_id   TEXT NOT NULL UNIQUE CHECK (length(device_id) BETWEEN 1 AND 64),
    merchant_id BIGINT NOT NULL REFERENCES merchants (id),
    location_id BIGINT NOT NULL REFERENCES locations (id),
    secret_hash TEXT NOT NULL
);
CREATE INDEX devices_merchant_idx ON devices (merchant_id);

-- Sales channels; api_key_hash: SHA-256 (hex) of the channel's API key.
CREATE TABLE channels (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL CHECK (kind IN ('MINIAPP', 'OTA')),
    api_key_hash TEXT NOT NULL UNIQUE
);

CREATE TABLE orders (
    id          BIGSERIAL PRIMARY KEY,
    order_code  TEXT NOT NULL UNIQUE CHECK (length(order_code) BETWEEN 1 AND 64),
    merchant_id BIGINT NOT NULL REFERENCES merchants (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orders_merchant_idx ON orders (merchant_id);

CREATE TABLE tickets (
    id             BIGSERIAL PRIMARY KEY,
    ticket_code    TEXT NOT NULL UNIQUE CHECK (length(ticket_code) BETWEEN 1 AND 12),
    order_id       BIGINT NOT NULL REFERENCES orders (id),
    merchant_id    BIGINT NOT NULL REFERENCES merchants (id),
    passenger_name TEXT NOT NULL,
    channel        TEXT NOT NULL CHECK (channel IN ('MINIAPP', 'OTA')),
    status         TEXT NOT NULL CHECK (status IN ('PRE_GENERATED', 'ACTIVATED', 'USED', 'VOID')),
    -- jti of the newest QR; every older token of this ticket is superseded (一码失效).
    current_jti    TEXT,
    extra          JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tickets_order_idx ON tickets (order_id);
CREATE INDEX tickets_merchant_idx ON tickets (merchant_id, id);

-- 权益.
CREATE TABLE entitlements (
    id             BIGSERIAL PRIMARY KEY,
    ticket_id      BIGINT NOT NULL REFERENCES tickets (id),
    merchant_id    BIGINT NOT NULL REFERENCES merchants (id),
    function_code  TEXT NOT NULL,
    name           TEXT NOT NULL,
    total_uses     INTEGER NOT NULL CHECK (total_uses >= 0),
    remaining_uses INTEGER NOT NULL,
    CHECK (remaining_uses >= 0 AND remaining_uses <= total_uses),
    UNIQUE (ticket_id, function_code)
);

CREATE TABLE qr_issuances (
    jti         TEXT PRIMARY KEY CHECK (length(jti) = 22),
    ticket_id   BIGINT NOT NULL REFERENCES tickets (id),
    merchant_id BIGINT NOT NULL REFERENCES merchants (id),
    channel_id  BIGINT REFERENCES channels (id),
    kid         TEXT NOT NULL,
    issued_at   TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ
);
CREATE INDEX qr_issuances_ticket_idx ON qr_issuances (ticket_id, issued_at DESC);

-- QR signing keys. state: 'active' signs new tokens (at most one), 'published' still
-- verifies, 'retired' is no longer published.
CREATE TABLE signing_keys (
    id          BIGSERIAL PRIMARY KEY,
    kid         TEXT NOT NULL UNIQUE CHECK (length(kid) BETWEEN 1 AND 4),
    public_key  BYTEA NOT NULL CHECK (length(public_key) = 32),
    private_key BYTEA NOT NULL CHECK (length(private_key) = 32),
    state       TEXT NOT NULL CHECK (state IN ('active', 'published', 'retired')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    retired_at  TIMESTAMPTZ
);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state) WHERE state = 'active';

-- One row per redeemed use. UNIQUE (jti, function_code): one QR redeems each entitlement
-- at most once, whatever races above this table.
CREATE TABLE redemption_events (
    id             BIGSERIAL PRIMARY KEY,
    jti            TEXT NOT NULL,
    function_code  TEXT NOT NULL,
    ticket_id      BIGINT NOT NULL REFERENCES tickets (id),
    entitlement_id BIGINT NOT NULL REFERENCES entitlements (id),
    merchant_id    BIGINT NOT NULL REFERENCES merchants (id),
    operator_id    BIGINT REFERENCES operators (id),
    device_id      BIGINT REFERENCES devices (id),
    location_id    BIGINT REFERENCES locations (id),
    redeemed_at    TIMESTAMPTZ NOT NULL,
    scan_id        UUID UNIQUE,
    source         TEXT NOT NULL DEFAULT 'venue',
    UNIQUE (jti, function_code)
);
CREATE INDEX redemption_events_merchant_time_idx ON redemption_events (merchant_id, redeemed_at DESC, id DESC);
CREATE INDEX redemption_events_ticket_idx ON redemption_events (ticket_id);

-- Idempotency of POST /venue/scan: the first request with a scan_id stores its answer;
-- a retry gets it back, a different scan under the same id is refused.
CREATE TABLE scan_requests (
    scan_id       UUID PRIMARY KEY,
    merchant_id   BIGINT NOT NULL REFERENCES merchants (id),
    operator_id   BIGINT NOT NULL,
    token_sha256  BYTEA NOT NULL,
    function_code TEXT NOT NULL,
    http_status   INTEGER,
    response      JSONB,
    created_at    TIMESTAMPTZ NOT NULL
);

-- Who, where, when and what for every scan decision, rejections included.
CREATE TABLE scan_audit (
    id                  BIGSERIAL PRIMARY KEY,
    merchant_id         BIGINT NOT NULL REFERENCES merchants (id),
    operator_id         BIGINT,
    device_id           BIGINT,
    location_id         BIGINT,
    ticket_id           BIGINT,
    jti                 TEXT,
    function_code       TEXT NOT NULL,
    decision            TEXT NOT NULL,
    scan_id             UUID,
    redemption_event_id BIGINT,
    decided_at          TIMESTAMPTZ NOT NULL,
    source              TEXT NOT NULL DEFAULT 'venue'
);
CREATE INDEX scan_audit_merchant_time_idx ON scan_audit (merchant_id, decided_at DESC);

-- Failed logins, for throttling by username across server processes.
CREATE TABLE login_failures (
    username  TEXT NOT NULL,
    failed_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX login_failures_user_time_idx ON login_failures (username, failed_at);

-- Server-wide secrets generated on first start (e.g. the operator JWT key), so several
-- server processes on one database agree without configuration.
CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
