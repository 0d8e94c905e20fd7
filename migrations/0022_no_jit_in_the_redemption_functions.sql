-- No JIT compilation in the redemption functions.
--
-- PostgreSQL compiles a plan's expressions to machine code when its estimated cost is above
-- jit_above_cost (100,000 by default), anew at every execution. The batch's classifying
-- statement (stile_redeem_batch) is planned generic, over arrays of unknown length that the
-- planner takes for 1,000 rows each, so its estimate sits near that threshold and crosses it
-- as the tables' statistics change: measured on a scratch cluster (auto_explain), the
-- compilation took 20 ms of a batch of 8 scans whose statements otherwise take under 1 ms,
-- and batches ran at 80-100 a second instead of 1,100 until an autoanalyze moved the
-- estimate back. Every statement here is a lookup by key over a handful of rows: nothing
-- to gain from JIT, a tenfold stall to lose. (The server also turns JIT off for its own
-- connections; this holds for any caller of the functions.)
ALTER FUNCTION stile_redeem_batch(uuid[], bigint[], bigint[], bigint[], bigint[], bytea[],
                                  text[], text[], text[], text[], timestamptz[], jsonb[],
                                  bigint[], boolean)
    SET jit = off;
ALTER FUNCTION stile_redeem_writes(integer[], uuid[], bigint[], bigint[], bigint[], bigint[],
                                   bytea[], text[], text[], text[], text[], timestamptz[],
                                   jsonb[], bigint[], bigint[], text[], bigint[])
    SET jit = off;
ALTER FUNCTION stile_write_decided(uuid[], bigint[], bigint[], bigint[], bigint[], bytea[],
                                   text[], text[], text[], text[], timestamptz[], jsonb[],
                                   bigint[], bigint[], text[], bigint[], bigint[], text[])
    SET jit = off;
ALTER FUNCTION stile_write_allowed(uuid[], bigint[], bigint[], bigint[], bigint[], bytea[],
                                   text[], text[], text[], text[], timestamptz[], jsonb[],
                                   bigint[], bigint[], text[], bigint[], bigint[], bigint[],
                                   integer[], date[])
    SET jit = off;
ALTER FUNCTION stile_stamp_tickets_of_changed() SET jit = off;
