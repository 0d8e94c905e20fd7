-- The group commit, set by set instead of scan by scan. A profile of the server under load
-- (perf, 32 clients) found PostgreSQL's time spread over statement starts and ends
-- (ExecutorStart alone 16 % of it): stile_redeem_batch ran about twelve statements per scan
-- (five lookups, the writes through stile_redeem_write, the entitlements' stamp trigger,
-- one more statement per row). Now a batch runs a fixed number of statements whatever its
-- size: its tickets are locked in one statement (in id order, as before), read and
-- classified in one, and its redemptions written by stile_redeem_writes, one statement per
-- table. The outcomes, the rows written and the answers are the ones 0016/0018 gave, with
-- one difference: a second scan of a ticket in one batch is no longer redeemed after the
-- first in the same statement but handed to the transaction path ('decide'), so no table is
-- written twice for one ticket in one statement.

-- A change to entitlements (or a passage) stamps its tickets once per statement rather than
-- once per row: one UPDATE for a batch instead of one per scan. The stamp is the same (the
-- changing transaction's id, on tickets not stamped by it yet) and still lands before the
-- statement ends.
DROP TRIGGER entitlements_stamp ON entitlements;
DROP TRIGGER passages_stamp_ticket ON passages;
DROP FUNCTION stile_stamp_ticket_of_entitlement();

CREATE FUNCTION stile_stamp_tickets_of_changed() RETURNS trigger
LANGUAGE plpgsql
-- By key, never a scan of every ticket (a transition table's size is unknown to the
-- planner: measured, a hash join over all tickets made each batch 4-8 times slower).
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    UPDATE tickets t SET sync_xid = pg_current_xact_id()
     WHERE t.id = ANY (ARRAY(SELECT DISTINCT c.ticket_id FROM changed c))
       AND t.sync_xid <> pg_current_xact_id();
    RETURN NULL;
END
$$;
-- (A trigger with a transition table takes one event.)
CREATE TRIGGER entitlements_stamp_insert AFTER INSERT ON entitlements
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION stile_stamp_tickets_of_changed();
CREATE TRIGGER entitlements_stamp_update AFTER UPDATE ON entitlements
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION stile_stamp_tickets_of_changed();
CREATE TRIGGER passages_stamp_ticket AFTER INSERT ON passages
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION stile_stamp_tickets_of_changed();

-- Writes the redemptions of locked scans: `p_picks` are their positions in the scan arrays,
-- `p_tickets` .. `p_orders` what the caller read of each, in the order of `p_picks`. At most
-- one per ticket and per scan_id (else serialization_failure: the batch rolls back and its
-- scans go to the transaction path). For each, as stile_redeem_write (0016) wrote it: the
-- stored answer (the ticket as it looks once the use is taken, the event's id), the
-- scan_id's record, the event, the ticket's status, the decrement and the merchant's log
-- row. The answer of each by its place in `p_picks`; NULL when its scan_id was taken by
-- another request meanwhile: nothing is written for it.
CREATE FUNCTION stile_redeem_writes(
    p_picks integer[],
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
    p_orders bigint[]
) RETURNS TABLE (item integer, answer jsonb)
LANGUAGE plpgsql
SET enable_seqscan = off
-- One plan per statement for the connection's life: re-planning each call for its arrays
-- was a tenth of the function's time, and every lookup is by key anyway.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_variable
DECLARE
    v_events bigint[];
    v_new_statuses text[];
    v_answers jsonb[];
    v_written integer[];
    v_count integer;
BEGIN
    IF coalesce(cardinality(p_picks), 0) = 0 THEN
        RETURN;
    END IF;
    IF (SELECT count(DISTINCT p_tickets[k]) <> count(*)
               OR count(DISTINCT p_scan_ids[p_picks[k]]) <> count(p_scan_ids[p_picks[k]])
          FROM generate_subscripts(p_picks, 1) AS s(k)) THEN
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
            MESSAGE = 'two redemptions of one ticket or one scan_id in one write';
    END IF;
    -- Each one's event id, the ticket's status and view once its use is taken, its answer.
    SELECT array_agg(w.event_id ORDER BY w.k), array_agg(w.new_status ORDER BY w.k),
           array_agg(jsonb_set(
               p_answers[p_picks[w.k]] || jsonb_build_object('ticket', jsonb_build_object(
                   'ticket_code', p_ticket_codes[p_picks[w.k]],
                   'status', w.new_status,
                   'entitlements', w.ticket_view)),
               '{redemption,id}', to_jsonb(w.event_id)) ORDER BY w.k)
      INTO v_events, v_new_statuses, v_answers
      FROM (SELECT s.k, nextval('redemption_events_id_seq'::regclass) AS event_id,
                   v.ticket_view, v.new_status
              FROM generate_subscripts(p_picks, 1) AS s(k)
             CROSS JOIN LATERAL (
                   SELECT jsonb_agg(jsonb_build_object(
                              'function_code', e.function_code,
                              'name', e.name,
                              'total_uses', e.total_uses,
                              'remaining_uses', e.remaining_uses
                                  - CASE WHEN e.id = p_entitlements[s.k] THEN 1 ELSE 0 END)
                              ORDER BY e.id) AS ticket_view,
                          CASE WHEN p_statuses[s.k] = 'ACTIVATED'
                                    AND bool_and(e.remaining_uses
                                        <= CASE WHEN e.id = p_entitlements[s.k] THEN 1 ELSE 0 END)
                               THEN 'USED' ELSE p_statuses[s.k] END AS new_status
                     FROM entitlements e WHERE e.ticket_id = p_tickets[s.k]) v) w;

    -- The scan_ids no other request has taken meanwhile are claimed with their answers.
    WITH taken AS (
        INSERT INTO scan_requests (scan_id, merchant_id, operator_id, device_id, token_sha256,
                                   function_code, created_at, response, http_status)
        SELECT p_scan_ids[j], p_merchant_ids[j], p_operator_ids[j], p_device_pks[j],
               p_token_sha256s[j], p_function_codes[j], p_nows[j], v_answers[s.k], 200
          FROM generate_subscripts(p_picks, 1) AS s(k), LATERAL (SELECT p_picks[s.k] AS j) x
         WHERE p_scan_ids[j] IS NOT NULL
        ON CONFLICT (scan_id) DO NOTHING
        RETURNING scan_id)
    SELECT coalesce(array_agg(s.k ORDER BY s.k), '{}')
      INTO v_written
      FROM generate_subscripts(p_picks, 1) AS s(k)
     WHERE p_scan_ids[p_picks[s.k]] IS NULL
        OR p_scan_ids[p_picks[s.k]] IN (SELECT t.scan_id FROM taken t);

    IF cardinality(v_written) > 0 THEN
        INSERT INTO redemption_events (id, jti, function_code, ticket_id, entitlement_id,
                                       merchant_id, operator_id, device_id, location_id,
                                       redeemed_at, scan_id, source)
        SELECT v_events[k], p_jtis[j], p_function_codes[j], p_tickets[k], p_entitlements[k],
               p_merchant_ids[j], p_operator_ids[j], p_device_pks[j], p_location_ids[j],
               p_nows[j], p_scan_ids[j], p_sources[j]
          FROM unnest(v_written) AS k, LATERAL (SELECT p_picks[k] AS j) x;
        -- The tickets first: their update stamps the feed, so the entitlements' stamp
        -- below finds them stamped by this transaction and writes nothing more.
        UPDATE tickets t
           SET status = v_new_statuses[k],
               updated_at = CASE WHEN v_new_statuses[k] <> p_statuses[k]
                                 THEN p_nows[p_picks[k]] ELSE t.updated_at END
          FROM unnest(v_written) AS k
         WHERE t.id = p_tickets[k];
        UPDATE entitlements e SET remaining_uses = e.remaining_uses - 1
          FROM unnest(v_written) AS k
         WHERE e.id = p_entitlements[k] AND e.remaining_uses > 0;
        GET DIAGNOSTICS v_count = ROW_COUNT;
        IF v_count <> cardinality(v_written) THEN
            -- Cannot happen while every decrement holds the ticket's lock; if it ever does,
            -- the whole batch rolls back and its scans are decided one by one.
            RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
                MESSAGE = 'an entitlement changed under the ticket lock';
        END IF;
        INSERT INTO merchant_redemptions (merchant_id, operator_id, ticket_id, order_id,
                                          location_id, device_id, redemption_event_id,
                                          function_code, redeemed_at, decided_at, source,
                                          result)
        SELECT p_merchant_ids[j], p_operator_ids[j], p_tickets[k], p_orders[k],
               p_location_ids[j], p_device_pks[j], v_events[k], p_function_codes[j],
               p_nows[j], p_nows[j], p_sources[j], 'SUCCESS'
          FROM unnest(v_written) AS k, LATERAL (SELECT p_picks[k] AS j) x;
    END IF;
    RETURN QUERY
        SELECT s.k, CASE WHEN s.k = ANY (v_written) THEN v_answers[s.k] END
          FROM generate_subscripts(p_picks, 1) AS s(k);
END
$$;

-- The batch: same arguments and outcomes as 0018. Its tickets are locked in one statement
-- (in id order), then read and classified in one more (a new snapshot: what committed
-- while it waited for a lock is seen), then the plain successes are written together.
CREATE OR REPLACE FUNCTION stile_redeem_batch(
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
    p_venue_ids bigint[]
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
    SELECT array_agg((SELECT t.id FROM tickets t
                       WHERE t.ticket_code = p_ticket_codes[s.k]
                         AND t.merchant_id = p_merchant_ids[s.k]) ORDER BY s.k)
      INTO v_tickets
      FROM generate_subscripts(p_ticket_codes, 1) AS s(k);
    PERFORM 1 FROM tickets t WHERE t.id = ANY (v_tickets) ORDER BY t.id FOR NO KEY UPDATE;

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
               -- For an entitlement with rules or an entry at a venue, what `decide` needs
               -- (read here, in this statement, rather than one more statement per scan).
               CASE WHEN e.rules IS NOT NULL OR p_venue_ids[s.k] IS NOT NULL THEN
                   jsonb_build_object(
                       'ticket', t.id, 'entitlement', e.id, 'order', t.order_id,
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
        ELSIF r.rules IS NOT NULL OR r.venue IS NOT NULL THEN
            -- Locked and read, nothing written: the caller decides the rules and the
            -- venue's capacity with the shared `decide` and writes what it redeems with
            -- stile_write_allowed, in this transaction, under this lock.
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
        outcome := CASE WHEN v_first_of[n] = ANY (v_items)
                             AND v_written[array_position(v_items, v_first_of[n])] IS NOT NULL
                        THEN 'replay' ELSE 'decide' END;
        RETURN NEXT;
    END LOOP;
END
$$;

-- The redemptions the caller allowed (as 0018), written together by stile_redeem_writes,
-- then their passages and each venue's change to its count, one statement each. Within one
-- call a venue's entries are of one merchant-local day (the day its count was locked for)
-- and each takes 0 or 1 place.
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
    IF EXISTS (SELECT 1 FROM generate_subscripts(p_items, 1) AS s(k)
                WHERE v_written[k] IS NOT NULL AND p_venue_ids[k] IS NOT NULL
                GROUP BY p_venue_ids[k] HAVING count(DISTINCT p_todays[k]) > 1
                    OR min(p_deltas[k]) < 0) THEN
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
            MESSAGE = 'a venue''s entries of one batch span days or free places';
    END IF;
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

-- Every redemption is written by stile_redeem_writes now.
DROP FUNCTION stile_redeem_write(uuid, bigint, bigint, bigint, bigint, bytea, text, text,
                                 text, text, timestamptz, jsonb, bigint, bigint, text, bigint);
