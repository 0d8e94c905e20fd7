-- The group-commit batch is a transaction again: the autocommitted procedures of 0021 go.
--
-- 0021 made a batch one autocommitted CALL (stile_redeem_batch_autocommit), its scans with
-- check-in rules read unlocked and written by a second call (stile_write_decided_autocommit,
-- through stile_write_decided) only if their tickets' feed stamps had not moved. It was
-- measured against BEGIN, stile_redeem_batch, COMMIT while JIT compilation stalled the
-- batches at random (fixed by 0022). Measured again without JIT, same runs alternating
-- (scripts/bench, 32 clients): plain scans 3,773-4,294 scans/s in a transaction against
-- 3,754-3,851 autocommitted; with rules 0.87-0.88 of plain in a transaction against
-- 0.73-0.74 autocommitted (the decided writes riding on the next batch's call, a variant
-- tried the same day) and 0.80 in one run of 0021's second call. So the server runs every
-- batch in a transaction (which no connection left inside an unknown transaction can turn
-- into an unfinished write: its COMMIT is the batch's own) and these go. stile_redeem_batch
-- keeps its `p_unlocked_rules` argument, now always false (restating the whole function to
-- drop it would change nothing it does).
DROP PROCEDURE stile_redeem_batch_autocommit(uuid[], bigint[], bigint[], bigint[], bigint[],
                                             bytea[], text[], text[], text[], text[],
                                             timestamptz[], jsonb[], bigint[], integer[],
                                             text[], jsonb[]);
DROP PROCEDURE stile_write_decided_autocommit(uuid[], bigint[], bigint[], bigint[], bigint[],
                                              bytea[], text[], text[], text[], text[],
                                              timestamptz[], jsonb[], bigint[], bigint[],
                                              text[], bigint[], bigint[], text[], bigint[],
                                              text[], jsonb[]);
DROP FUNCTION stile_write_decided(uuid[], bigint[], bigint[], bigint[], bigint[], bytea[],
                                  text[], text[], text[], text[], timestamptz[], jsonb[],
                                  bigint[], bigint[], text[], bigint[], bigint[], text[]);
