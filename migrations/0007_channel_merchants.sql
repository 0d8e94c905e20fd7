-- Which merchants a sales channel sells for: a channel issues (and so supersedes) QR codes
-- only for tickets of these merchants. Channels and merchants that exist when this migration
-- runs keep today's reach (every merchant) until the next seed load names them; a seed file
-- lists each channel's merchants.
CREATE TABLE channel_merchants (
    channel_id  BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    merchant_id BIGINT NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    PRIMARY KEY (channel_id, merchant_id)
);
INSERT INTO channel_merchants (channel_id, merchant_id)
    SELECT c.id, m.id FROM channels c CROSS JOIN merchants m;
