-- QR signing keys' private halves sealed with the key-encryption key (see kek.rs):
-- private_key_sealed is nonce || ciphertext || tag, kek_id names the KEK that sealed it.
-- A server with a KEK seals every plaintext row at start and clears private_key.
ALTER TABLE signing_keys
    ALTER COLUMN private_key DROP NOT NULL,
    ADD COLUMN private_key_sealed BYTEA,
    ADD COLUMN kek_id TEXT;
