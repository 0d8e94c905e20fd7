-- Check-in rules per entitlement (shared::rules::EntitlementRules as JSON: valid_from,
-- valid_until, daily_window, uses_per_day, min_interval_secs). NULL: none, a plain count of
-- uses. The database never reads inside it: the rules are decided by the shared `decide`,
-- on the central (both redemption paths) and on the gate alike.
ALTER TABLE entitlements ADD COLUMN rules jsonb;

-- The group commit decides rules too. The redemption of one locked scan moves out of
-- stile_redeem_batch into stile_redeem_write, unchanged, so it exists once; the batch
-- calls it for a plain success, and for an entitlement with rules it locks and reads but
-- writes nothing: it answers 'rules' with the state `decide` needs (the entitlement's
-- rules, its uses of the last two days and its newest use, the merchant's time zone). The
-- caller runs the batch in an explicit transaction, decides those scans with the shared
-- `decide` and redeems the ones it allows with stile_redeem_write before it commits, under
-- the same ticket locks. The database still judges no rule.
CREATE FUNCTION stile_redeem_write(
    p_scan_id uuid,
    p_merchant_id bigint,
    p_operator_id bigint,
    p_device_pk bigint,
    p_location_id bigint,
    p_token_sha256 bytea,
    p_function_code text,
    p_jti text,
    p_ticket_code text,
    p_source text,
    p_now timestamptz,
    p_answer jsonb,
    p_ticket bigint,
    p_entitlement bigint,
    p_status text,
    p_order bigint
) RETURNS jsonb
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
#variable_conflict use_variable
DECLARE
    v_new_status text;
    v_event bigint;
    v_view jsonb;
    v_answer jsonb;
BEGIN
    -- What the ticket looks like once this use is taken.
    SELECT jsonb_agg(jsonb_build_object(
               'function_code', e.function_code,
               'name', e.name,
               'total_uses', e.total_uses,
               'remaining_uses', e.remaining_uses
                   - CASE WHEN e.id = p_entitlement THEN 1 ELSE 0 END) ORDER BY e.id),
           CASE WHEN p_status = 'ACTIVATED'
                     AND bool_and(e.remaining_uses
                                  <= CASE WHEN e.id = p_entitlement THEN 1 ELSE 0 END)
                THEN 'USED' ELSE p_status END
      INTO v_view, v_new_status
      FROM entitlements e WHERE e.ticket_id = p_ticket;
    v_event := nextval(pg_get_serial_sequence('redemption_events', 'id'));
    v_answer := jsonb_set(
        p_answer || jsonb_build_object('ticket', jsonb_build_object(
            'ticket_code', p_ticket_code,
            'status', v_new_status,
            'entitlements', v_view)),
        '{redemption,id}', to_jsonb(v_event));

    IF p_scan_id IS NOT NULL THEN
        INSERT INTO scan_requests (scan_id, merchant_id, operator_id, device_id, token_sha256,
                                   function_code, created_at, response, http_status)
        VALUES (p_scan_id, p_merchant_id, p_operator_id, p_device_pk,
                p_token_sha256, p_function_code, p_now, v_answer, 200)
        ON CONFLICT (scan_id) DO NOTHING;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;

    INSERT INTO redemption_events (id, jti, function_code, ticket_id, entitlement_id,
                                   merchant_id, operator_id, device_id, location_id,
                                   redeemed_at, scan_id, source)
    VALUES (v_event, p_jti, p_function_code, p_ticket, p_entitlement,
            p_merchant_id, p_operator_id, p_device_pk, p_location_id,
            p_now, p_scan_id, p_source);
    -- The ticket first: its update stamps the feed, so the entitlement's trigger below
    -- finds the ticket stamped by this transaction and writes nothing more.
    UPDATE tickets t
       SET status = v_new_status,
           updated_at = CASE WHEN v_new_status <> p_status THEN p_now
                             ELSE t.updated_at END
     WHERE t.id = p_ticket;
    UPDATE entitlements SET remaining_uses = remaining_uses - 1
     WHERE id = p_entitlement AND remaining_uses > 0;
    IF NOT FOUND THEN
        -- Cannot happen while every decrement holds the ticket's lock; if it ever does,
        -- the whole batch rolls back and its scans are decided one by one.
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
            MESSAGE = 'an entitlement changed under the ticket lock';
    END IF;
    INSERT INTO merchant_redemptions (merchant_id, operator_id, ticket_id, order_id,
                                      location_id, device_id, redemption_event_id,
                                      function_code, redeemed_at, decided_at, source, result)
    VALUES (p_merchant_id, p_operator_id, p_ticket, p_order, p_location_id,
            p_device_pk, v_event, p_function_code, p_now, p_now,
            p_source, 'SUCCESS');
    RETURN v_answer;
END
$$;

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
    p_answers jsonb[]
) RETURNS TABLE (item integer, outcome text, answer jsonb)
LANGUAGE plpgsql
-- Every statement below is a lookup by key. PL/pgSQL keeps each statement's plan for the
-- life of the connection, and a plan made while a table was small (a new database) scans
-- the whole table: measured, the two EXISTS checks cost 0.5-0.8 ms per scan and grew with
-- the tables until the connection ended. Without sequential scans the plans are index
-- lookups whatever the tables' sizes were when they were made.
SET enable_seqscan = off
AS $$
#variable_conflict use_variable
DECLARE
    r record;
    v_status text;
    v_current text;
    v_order bigint;
    v_webhook boolean;
    v_entitlement bigint;
    v_remaining integer;
    v_rules jsonb;
    v_zone text;
BEGIN
    FOR r IN
        -- One index probe per scan (a join here may be planned as a scan of every ticket).
        SELECT i.n, (SELECT t.id FROM tickets t
                      WHERE t.ticket_code = p_ticket_codes[i.n]
                        AND t.merchant_id = p_merchant_ids[i.n]) AS ticket
          FROM generate_subscripts(p_ticket_codes, 1) AS i(n)
         ORDER BY 2 NULLS LAST, 1
    LOOP
        item := r.n;
        answer := NULL;
        IF p_scan_ids[r.n] IS NOT NULL
           AND EXISTS (SELECT 1 FROM scan_requests s WHERE s.scan_id = p_scan_ids[r.n]) THEN
            outcome := 'replay';
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF r.ticket IS NULL THEN
            outcome := 'decide';
            RETURN NEXT;
            CONTINUE;
        END IF;
        SELECT t.status, t.current_jti, t.order_id, m.webhook_url IS NOT NULL, m.timezone
          INTO v_status, v_current, v_order, v_webhook, v_zone
          FROM tickets t JOIN merchants m ON m.id = t.merchant_id
         WHERE t.id = r.ticket
           FOR NO KEY UPDATE OF t;
        IF v_status NOT IN ('ACTIVATED', 'USED') OR v_current IS DISTINCT FROM p_jtis[r.n]
           OR v_webhook THEN
            outcome := 'decide';
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- No lock of its own: every decrement happens under the ticket's lock, held here.
        SELECT e.id, e.remaining_uses, e.rules INTO v_entitlement, v_remaining, v_rules
          FROM entitlements e
         WHERE e.ticket_id = r.ticket AND e.function_code = p_function_codes[r.n];
        IF NOT FOUND
           OR EXISTS (SELECT 1 FROM redemption_events x
                       WHERE x.jti = p_jtis[r.n] AND x.function_code = p_function_codes[r.n])
           OR v_remaining <= 0 THEN
            outcome := 'decide';
            RETURN NEXT;
            CONTINUE;
        END IF;

        IF v_rules IS NOT NULL THEN
            -- Locked and read, nothing written: the caller decides the rules with the
            -- shared `decide` and writes what it redeems with stile_redeem_write, in this
            -- transaction, under this lock.
            outcome := 'rules';
            answer := jsonb_build_object(
                'ticket', r.ticket, 'entitlement', v_entitlement, 'order', v_order,
                'status', v_status, 'remaining_uses', v_remaining, 'rules', v_rules,
                'time_zone', v_zone,
                -- Every use of the last two days (today's, in any zone) and the newest one.
                'recent_uses', (SELECT coalesce(jsonb_agg(floor(extract(epoch FROM u.redeemed_at))::bigint), '[]')
                                  FROM (SELECT x.redeemed_at FROM redemption_events x
                                         WHERE x.entitlement_id = v_entitlement
                                           AND x.redeemed_at > p_nows[r.n] - interval '48 hours'
                                        UNION ALL
                                        (SELECT x.redeemed_at FROM redemption_events x
                                          WHERE x.entitlement_id = v_entitlement
                                            AND x.redeemed_at <= p_nows[r.n] - interval '48 hours'
                                          ORDER BY x.redeemed_at DESC LIMIT 1)) u));
            RETURN NEXT;
            CONTINUE;
        END IF;
        answer := stile_redeem_write(p_scan_ids[r.n], p_merchant_ids[r.n], p_operator_ids[r.n],
            p_device_pks[r.n], p_location_ids[r.n], p_token_sha256s[r.n], p_function_codes[r.n],
            p_jtis[r.n], p_ticket_codes[r.n], p_sources[r.n], p_nows[r.n], p_answers[r.n],
            r.ticket, v_entitlement, v_status, v_order);
        IF answer IS NULL THEN
            outcome := 'replay';
            RETURN NEXT;
            CONTINUE;
        END IF;
        outcome := 'redeemed';
        RETURN NEXT;
    END LOOP;
END
$$;
