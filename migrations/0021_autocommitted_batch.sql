-- A batch of the group commit in one round trip, and sure to be a transaction of its own.
--
-- 0019 ran every batch as BEGIN, stile_redeem_batch, COMMIT: three round trips, a quarter of
-- a scan's time under load (measured). Here a batch without entries at a venue is one CALL,
-- autocommitted: stile_redeem_batch_autocommit. Its first act is a COMMIT, which PostgreSQL
-- refuses (invalid_transaction_termination) inside a transaction block: so the batch can
-- never run inside a transaction some earlier, cancelled request left open on the
-- connection (it would answer SUCCESS for writes that commit only with a later COMMIT, or
-- never). It fails before it takes a lock or writes a row, and the caller decides its scans
-- on the transaction path. That COMMIT ends an empty transaction: no WAL, no flush.
--
-- Scans of entitlements with rules are read without their tickets' locks (decided by the
-- caller with the shared `decide` between two statements) and written by
-- stile_write_decided_autocommit only if the ticket's feed stamp has not moved since the read;
-- a scan whose ticket changed goes to the transaction path. Entries at a venue keep the
-- explicit transaction (the venue's count is locked across the decision).
--
-- Also, from the review of 0019: stile_write_allowed checks a venue's entries (one day, no
-- place freed) before it writes anything; the resend loop's redundant test is gone.

-- The batch: the arguments and outcomes of 0018, and `p_unlocked_rules`. Its tickets are
-- locked in one statement (in id order), then read and classified in one more (a new
-- snapshot: what committed while it waited for a lock is seen), then the plain successes
-- are written together. With `p_unlocked_rules` (an autocommitted batch, whose caller
-- writes what `decide` allows with stile_write_decided, which checks each ticket's stamp
-- under its lock) a ticket whose asked entitlement has rules is not locked: it is read as
-- it is and answered 'rules' whatever it reads then, never written here. So such a batch
-- takes no row lock and writes no WAL for its scans with rules before the second statement.
DROP FUNCTION stile_redeem_batch(uuid[], bigint[], bigint[], bigint[], bigint[], bytea[],
                                 text[], text[], text[], text[], timestamptz[], jsonb[],
                                 bigint[]);
CREATE FUNCTION stile_redeem_batch(
    p_scan_ids uuid[],
    p_merchant_ids bigint[],
    p_operator_ids bigint[],
    p_device_pks bigint[],
    p_location_ids bigint[],
    p_token_sha256s bytea[],
    p_function_codes text[],
    p_jtis text[],
    p_ticket_codes text[],
    p_sources text[],
    p_nows timestamptz[],
    p_answers jsonb[],
    p_venue_ids bigint[],
    p_unlocked_rules boolean
) RETURNS TABLE (item integer, outcome text, answer jsonb)
LANGUAGE plpgsql
-- As in 0014: every statement is a lookup by key, whatever the tables' sizes were when the
-- connection planned it; and one plan per statement (see stile_redeem_writes).
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_variable
DECLARE
    r record;
    v_tickets bigint[];
    v_locked bigint[];
    -- The scans to write, in the order stile_redeem_writes takes them.
    v_items integer[] := '{}';
    v_ticket_ids bigint[] := '{}';
    v_entitlement_ids bigint[] := '{}';
    v_statuses text[] := '{}';
    v_orders bigint[] := '{}';
    -- A resent scan_id in the batch, after its first scan: replayed if that one is written.
    v_resent integer[] := '{}';
    v_first_of integer[] := '{}';
    v_written jsonb[];
BEGIN
    -- One index probe per scan (a join here may be planned as a scan of every ticket).
    SELECT array_agg(x.ticket ORDER BY x.k),
           coalesce(array_agg(x.ticket) FILTER (WHERE NOT x.unlocked), '{}')
      INTO v_tickets, v_locked
      FROM (SELECT s.k, y.ticket,
                   p_unlocked_rules AND p_venue_ids[s.k] IS NULL
                   AND coalesce((SELECT e.rules IS NOT NULL FROM entitlements e
                                  WHERE e.ticket_id = y.ticket
                                    AND e.function_code = p_function_codes[s.k]), false)
                       AS unlocked
              FROM generate_subscripts(p_ticket_codes, 1) AS s(k)
             CROSS JOIN LATERAL (SELECT (SELECT t.id FROM tickets t
                                          WHERE t.ticket_code = p_ticket_codes[s.k]
                                            AND t.merchant_id = p_merchant_ids[s.k]) AS ticket) y) x;
    PERFORM 1 FROM tickets t WHERE t.id = ANY (v_locked) ORDER BY t.id FOR NO KEY UPDATE;

    FOR r IN
        SELECT s.k, t.id AS ticket, t.status, t.current_jti, t.order_id,
               m.webhook_url IS NOT NULL AS webhook, m.timezone, e.id AS entitlement,
               e.remaining_uses, e.rules,
               -- (Lookups as scalar subqueries with LIMIT: an EXISTS over the batch's
               -- rows may be planned as a hash of the whole table.)
               coalesce((SELECT true FROM scan_requests q
                          WHERE q.scan_id = p_scan_ids[s.k] LIMIT 1), false) AS taken,
               (SELECT min(f.k) FROM generate_subscripts(p_scan_ids, 1) AS f(k)
                 WHERE f.k < s.k AND p_scan_ids[f.k] = p_scan_ids[s.k]) AS resends,
               EXISTS (SELECT 1 FROM generate_subscripts(p_ticket_codes, 1) AS f(k)
                        WHERE f.k < s.k AND v_tickets[f.k] = t.id) AS second,
               coalesce((SELECT true FROM redemption_events x
                          WHERE x.jti = p_jtis[s.k]
                            AND x.function_code = p_function_codes[s.k] LIMIT 1), false)
                   AS jti_used,
               p_venue_ids[s.k] AS venue,
               t.id = ANY (v_locked) AS locked,
               -- For an entitlement with rules or an entry at a venue, what `decide` needs
               -- (read here, in this statement, rather than one more statement per scan).
               CASE WHEN e.rules IS NOT NULL OR p_venue_ids[s.k] IS NOT NULL
                         OR NOT t.id = ANY (v_locked) THEN
                   jsonb_build_object(
                       'ticket', t.id, 'entitlement', e.id, 'order', t.order_id,
                       -- The ticket's feed stamp: it moves with every change to the ticket,
                       -- its entitlements (so its uses) and its passages.
                       'stamp', t.sync_xid::text,
                       'status', t.status, 'remaining_uses', e.remaining_uses,
                       'rules', coalesce(e.rules, '{}'::jsonb),
                       'time_zone', m.timezone,
                       'venue', p_venue_ids[s.k],
                       -- The ticket's latest passage at the venue up to now: its presence.
                       'passage', CASE WHEN p_venue_ids[s.k] IS NOT NULL THEN (
                           SELECT jsonb_build_object('direction', p.direction,
                                                     'at', floor(extract(epoch FROM p.at))::bigint)
                             FROM passages p
                            WHERE p.venue_id = p_venue_ids[s.k] AND p.ticket_id = t.id
                              AND p.at <= p_nows[s.k]
                            ORDER BY p.at DESC, p.id DESC LIMIT 1) END,
                       -- Every use of the last two days (today's, in any zone) and the
                       -- newest one.
                       'recent_uses', CASE WHEN e.rules IS NULL THEN '[]'::jsonb ELSE (
                           SELECT coalesce(jsonb_agg(floor(extract(epoch FROM u.redeemed_at))::bigint), '[]')
                             FROM (SELECT x.redeemed_at FROM redemption_events x
                                    WHERE x.entitlement_id = e.id
                                      AND x.redeemed_at > p_nows[s.k] - interval '48 hours'
                                   UNION ALL
                                   (SELECT x.redeemed_at FROM redemption_events x
                                     WHERE x.entitlement_id = e.id
                                       AND x.redeemed_at <= p_nows[s.k] - interval '48 hours'
                                     ORDER BY x.redeemed_at DESC LIMIT 1)) u) END)
               END AS state
          FROM generate_subscripts(p_ticket_codes, 1) AS s(k)
          LEFT JOIN tickets t ON t.id = v_tickets[s.k]
          LEFT JOIN merchants m ON m.id = t.merchant_id
          LEFT JOIN entitlements e
            ON e.ticket_id = t.id AND e.function_code = p_function_codes[s.k]
         ORDER BY t.id NULLS LAST, s.k
    LOOP
        item := r.k;
        answer := NULL;
        IF r.taken THEN
            outcome := 'replay';
        ELSIF r.resends IS NOT NULL THEN
            v_resent := v_resent || r.k;
            v_first_of := v_first_of || r.resends;
            CONTINUE;
        ELSIF r.ticket IS NULL OR r.second
              OR r.status NOT IN ('ACTIVATED', 'USED')
              OR r.current_jti IS DISTINCT FROM p_jtis[r.k] OR r.webhook
              OR r.entitlement IS NULL OR r.jti_used OR r.remaining_uses <= 0 THEN
            outcome := 'decide';
        ELSIF r.rules IS NOT NULL OR r.venue IS NOT NULL OR NOT r.locked THEN
            -- Read, nothing written: the caller decides the rules and the venue's
            -- capacity with the shared `decide` and writes what it redeems with
            -- stile_write_allowed, in this transaction, under this lock; or, unlocked,
            -- with stile_write_decided if the ticket's stamp has not moved.
            outcome := 'rules';
            answer := r.state;
        ELSE
            v_items := v_items || r.k;
            v_ticket_ids := v_ticket_ids || r.ticket;
            v_entitlement_ids := v_entitlement_ids || r.entitlement;
            v_statuses := v_statuses || r.status;
            v_orders := v_orders || r.order_id;
            CONTINUE;
        END IF;
        RETURN NEXT;
    END LOOP;

    IF cardinality(v_items) > 0 THEN
        SELECT array_agg(w.answer ORDER BY w.item) INTO v_written
          FROM stile_redeem_writes(v_items, p_scan_ids, p_merchant_ids, p_operator_ids,
                                   p_device_pks, p_location_ids, p_token_sha256s,
                                   p_function_codes, p_jtis, p_ticket_codes, p_sources, p_nows,
                                   p_answers, v_ticket_ids, v_entitlement_ids, v_statuses,
                                   v_orders) AS w;
        FOR n IN 1 .. cardinality(v_items) LOOP
            item := v_items[n];
            answer := v_written[n];
            outcome := CASE WHEN answer IS NULL THEN 'replay' ELSE 'redeemed' END;
            RETURN NEXT;
        END LOOP;
    END IF;

    -- A resent scan_id is replayed when its first scan was written, else decided afresh.
    FOR n IN 1 .. cardinality(v_resent) LOOP
        item := v_resent[n];
        answer := NULL;
        -- (array_position is NULL when the first scan was not written: so is the answer.)
        outcome := CASE WHEN v_written[array_position(v_items, v_first_of[n])] IS NOT NULL
                        THEN 'replay' ELSE 'decide' END;
        RETURN NEXT;
    END LOOP;
END
$$;


-- The redemptions the caller decided over what an autocommitted stile_redeem_batch read
-- (entitlements with rules, no venue): by position (`p_items`), each with the feed stamp of
-- its ticket as read (`p_stamps`). The tickets are locked again, in id order; a scan whose
-- ticket's stamp has moved since (something changed what `decide` read) is not written and
-- answered 'decide', for the transaction path; the others are written as the batch writes
-- its plain successes ('redeemed', or 'replay' when the scan_id was taken meanwhile). So
-- such a batch is two autocommitted statements, and no lock is held between them.
CREATE FUNCTION stile_write_decided(
    p_scan_ids uuid[],
    p_merchant_ids bigint[],
    p_operator_ids bigint[],
    p_device_pks bigint[],
    p_location_ids bigint[],
    p_token_sha256s bytea[],
    p_function_codes text[],
    p_jtis text[],
    p_ticket_codes text[],
    p_sources text[],
    p_nows timestamptz[],
    p_answers jsonb[],
    p_tickets bigint[],
    p_entitlements bigint[],
    p_statuses text[],
    p_orders bigint[],
    p_items bigint[],
    p_stamps text[]
) RETURNS TABLE (item bigint, outcome text, answer jsonb)
LANGUAGE plpgsql
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_variable
DECLARE
    v_picks integer[];
    v_written jsonb[];
BEGIN
    IF coalesce(cardinality(p_items), 0) = 0 THEN
        RETURN;
    END IF;
    PERFORM 1 FROM tickets t WHERE t.id = ANY (p_tickets) ORDER BY t.id FOR NO KEY UPDATE;
    -- (A new statement: it sees what committed while the lock was awaited.)
    SELECT coalesce(array_agg(s.k ORDER BY s.k), '{}') INTO v_picks
      FROM generate_subscripts(p_items, 1) AS s(k)
     WHERE (SELECT t.sync_xid FROM tickets t WHERE t.id = p_tickets[s.k])
           = p_stamps[s.k]::xid8;
    IF cardinality(v_picks) > 0 THEN
        SELECT array_agg(w.answer ORDER BY w.item) INTO v_written
          FROM stile_redeem_writes(
                   v_picks, p_scan_ids, p_merchant_ids, p_operator_ids, p_device_pks,
                   p_location_ids, p_token_sha256s, p_function_codes, p_jtis, p_ticket_codes,
                   p_sources, p_nows, p_answers,
                   (SELECT array_agg(p_tickets[k] ORDER BY o) FROM unnest(v_picks) WITH ORDINALITY AS x(k, o)),
                   (SELECT array_agg(p_entitlements[k] ORDER BY o) FROM unnest(v_picks) WITH ORDINALITY AS x(k, o)),
                   (SELECT array_agg(p_statuses[k] ORDER BY o) FROM unnest(v_picks) WITH ORDINALITY AS x(k, o)),
                   (SELECT array_agg(p_orders[k] ORDER BY o) FROM unnest(v_picks) WITH ORDINALITY AS x(k, o))) AS w;
    END IF;
    RETURN QUERY
        SELECT p_items[s.k],
               CASE WHEN array_position(v_picks, s.k) IS NULL THEN 'decide'
                    WHEN v_written[array_position(v_picks, s.k)] IS NULL THEN 'replay'
                    ELSE 'redeemed' END,
               v_written[array_position(v_picks, s.k)]
          FROM generate_subscripts(p_items, 1) AS s(k);
END
$$;

-- As 0019, with the check of a venue's entries before the first write.
CREATE OR REPLACE FUNCTION stile_write_allowed(
    p_scan_ids uuid[],
    p_merchant_ids bigint[],
    p_operator_ids bigint[],
    p_device_pks bigint[],
    p_location_ids bigint[],
    p_token_sha256s bytea[],
    p_function_codes text[],
    p_jtis text[],
    p_ticket_codes text[],
    p_sources text[],
    p_nows timestamptz[],
    p_answers jsonb[],
    p_tickets bigint[],
    p_entitlements bigint[],
    p_statuses text[],
    p_orders bigint[],
    p_items bigint[],
    p_venue_ids bigint[],
    p_deltas integer[],
    p_todays date[]
) RETURNS TABLE (item bigint, answer jsonb)
LANGUAGE plpgsql
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_variable
DECLARE
    v_written jsonb[];
BEGIN
    IF coalesce(cardinality(p_items), 0) = 0 THEN
        RETURN;
    END IF;
    -- Checked before anything is written (it rolls the batch back).
    IF EXISTS (SELECT 1 FROM generate_subscripts(p_items, 1) AS s(k)
                WHERE p_venue_ids[k] IS NOT NULL
                GROUP BY p_venue_ids[k] HAVING count(DISTINCT p_todays[k]) > 1
                    OR min(p_deltas[k]) < 0) THEN
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
            MESSAGE = 'a venue''s entries of one batch span days or free places';
    END IF;
    SELECT array_agg(w.answer ORDER BY w.item) INTO v_written
      FROM stile_redeem_writes(
               (SELECT array_agg(k ORDER BY k) FROM generate_subscripts(p_items, 1) AS k),
               p_scan_ids, p_merchant_ids, p_operator_ids, p_device_pks, p_location_ids,
               p_token_sha256s, p_function_codes, p_jtis, p_ticket_codes, p_sources, p_nows,
               p_answers, p_tickets, p_entitlements, p_statuses, p_orders) AS w;
    INSERT INTO passages (merchant_id, venue_id, ticket_id, direction, reentry, delta,
                          at, recorded_at, location_id, device_id, operator_id,
                          redemption_event_id, scan_id, source)
    SELECT p_merchant_ids[k], p_venue_ids[k], p_tickets[k], 'entry', false, p_deltas[k],
           p_nows[k], p_nows[k], p_location_ids[k], p_device_pks[k], p_operator_ids[k],
           (v_written[k] #>> '{redemption,id}')::bigint, p_scan_ids[k], p_sources[k]
      FROM generate_subscripts(p_items, 1) AS s(k)
     WHERE v_written[k] IS NOT NULL AND p_venue_ids[k] IS NOT NULL;
    UPDATE venues v
       SET inside = CASE WHEN v.inside_on = d.today THEN v.inside ELSE 0 END + d.delta,
           inside_on = d.today
      FROM (SELECT p_venue_ids[k] AS venue, min(p_todays[k]) AS today,
                   sum(p_deltas[k]) AS delta
              FROM generate_subscripts(p_items, 1) AS s(k)
             WHERE v_written[k] IS NOT NULL AND p_venue_ids[k] IS NOT NULL
               AND p_deltas[k] <> 0
             GROUP BY p_venue_ids[k]) d
     WHERE v.id = d.venue;
    RETURN QUERY
        SELECT p_items[k], v_written[k] FROM generate_subscripts(p_items, 1) AS s(k);
END
$$;


-- stile_redeem_batch with `p_unlocked_rules`, autocommitted: its rows as three arrays, in the
-- function's order (item, outcome, answer). Refused inside a transaction block, before any
-- lock or write (see the top of this file). A procedure that ends transactions can have no
-- SET clause: the settings stay on the function it calls.
CREATE PROCEDURE stile_redeem_batch_autocommit(
    p_scan_ids uuid[],
    p_merchant_ids bigint[],
    p_operator_ids bigint[],
    p_device_pks bigint[],
    p_location_ids bigint[],
    p_token_sha256s bytea[],
    p_function_codes text[],
    p_jtis text[],
    p_ticket_codes text[],
    p_sources text[],
    p_nows timestamptz[],
    p_answers jsonb[],
    p_venue_ids bigint[],
    INOUT o_items integer[] DEFAULT NULL,
    INOUT o_outcomes text[] DEFAULT NULL,
    INOUT o_answers jsonb[] DEFAULT NULL
)
LANGUAGE plpgsql
AS $$
BEGIN
    COMMIT;
    SELECT coalesce(array_agg(b.item ORDER BY b.n), '{}'),
           coalesce(array_agg(b.outcome ORDER BY b.n), '{}'),
           coalesce(array_agg(b.answer ORDER BY b.n), '{}')
      INTO o_items, o_outcomes, o_answers
      FROM stile_redeem_batch(p_scan_ids, p_merchant_ids, p_operator_ids, p_device_pks,
                              p_location_ids, p_token_sha256s, p_function_codes, p_jtis,
                              p_ticket_codes, p_sources, p_nows, p_answers, p_venue_ids, true)
           WITH ORDINALITY AS b(item, outcome, answer, n);
END
$$;

-- stile_write_decided, autocommitted and refused inside a transaction block, as above.
CREATE PROCEDURE stile_write_decided_autocommit(
    p_scan_ids uuid[],
    p_merchant_ids bigint[],
    p_operator_ids bigint[],
    p_device_pks bigint[],
    p_location_ids bigint[],
    p_token_sha256s bytea[],
    p_function_codes text[],
    p_jtis text[],
    p_ticket_codes text[],
    p_sources text[],
    p_nows timestamptz[],
    p_answers jsonb[],
    p_tickets bigint[],
    p_entitlements bigint[],
    p_statuses text[],
    p_orders bigint[],
    p_items bigint[],
    p_stamps text[],
    INOUT o_items bigint[] DEFAULT NULL,
    INOUT o_outcomes text[] DEFAULT NULL,
    INOUT o_answers jsonb[] DEFAULT NULL
)
LANGUAGE plpgsql
AS $$
BEGIN
    COMMIT;
    SELECT coalesce(array_agg(w.item ORDER BY w.n), '{}'),
           coalesce(array_agg(w.outcome ORDER BY w.n), '{}'),
           coalesce(array_agg(w.answer ORDER BY w.n), '{}')
      INTO o_items, o_outcomes, o_answers
      FROM stile_write_decided(p_scan_ids, p_merchant_ids, p_operator_ids, p_device_pks,
                               p_location_ids, p_token_sha256s, p_function_codes, p_jtis,
                               p_ticket_codes, p_sources, p_nows, p_answers, p_tickets,
                               p_entitlements, p_statuses, p_orders, p_items, p_stamps)
           WITH ORDINALITY AS w(item, outcome, answer, n);
END
$$;
