-- Check-in rules per entitlement (shared::rules::EntitlementRules as JSON: valid_from,
-- valid_until, daily_window, uses_per_day, min_interval_secs). NULL: none, a plain count of
-- uses. The database never reads inside it: the rules are decided by the shared `decide`,
-- on the central's transaction path and on the gate alike.
ALTER TABLE entitlements ADD COLUMN rules jsonb;

-- The group-commit statement of 0014, unchanged but for one condition: it redeems only
-- entitlements without rules (it answers 'decide' for the others).
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
    v_new_status text;
    v_event bigint;
    v_view jsonb;
    v_answer jsonb;
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
        SELECT t.status, t.current_jti, t.order_id, m.webhook_url IS NOT NULL
          INTO v_status, v_current, v_order, v_webhook
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
        SELECT e.id, e.remaining_uses INTO v_entitlement, v_remaining
          FROM entitlements e
         WHERE e.ticket_id = r.ticket AND e.function_code = p_function_codes[r.n]
           -- An entitlement with check-in rules is decided by `decide`, on the transaction
           -- path: this statement judges no rule.
           AND e.rules IS NULL;
        IF NOT FOUND
           OR EXISTS (SELECT 1 FROM redemption_events x
                       WHERE x.jti = p_jtis[r.n] AND x.function_code = p_function_codes[r.n])
           OR v_remaining <= 0 THEN
            outcome := 'decide';
            RETURN NEXT;
            CONTINUE;
        END IF;

        -- What the ticket looks like once this use is taken.
        SELECT jsonb_agg(jsonb_build_object(
                   'function_code', e.function_code,
                   'name', e.name,
                   'total_uses', e.total_uses,
                   'remaining_uses', e.remaining_uses
                       - CASE WHEN e.id = v_entitlement THEN 1 ELSE 0 END) ORDER BY e.id),
               CASE WHEN v_status = 'ACTIVATED'
                         AND bool_and(e.remaining_uses
                                      <= CASE WHEN e.id = v_entitlement THEN 1 ELSE 0 END)
                    THEN 'USED' ELSE v_status END
          INTO v_view, v_new_status
          FROM entitlements e WHERE e.ticket_id = r.ticket;
        v_event := nextval(pg_get_serial_sequence('redemption_events', 'id'));
        v_answer := jsonb_set(
            p_answers[r.n] || jsonb_build_object('ticket', jsonb_build_object(
                'ticket_code', p_ticket_codes[r.n],
                'status', v_new_status,
                'entitlements', v_view)),
            '{redemption,id}', to_jsonb(v_event));

        IF p_scan_ids[r.n] IS NOT NULL THEN
            INSERT INTO scan_requests (scan_id, merchant_id, operator_id, device_id, token_sha256,
                                       function_code, created_at, response, http_status)
            VALUES (p_scan_ids[r.n], p_merchant_ids[r.n], p_operator_ids[r.n], p_device_pks[r.n],
                    p_token_sha256s[r.n], p_function_codes[r.n], p_nows[r.n], v_answer, 200)
            ON CONFLICT (scan_id) DO NOTHING;
            IF NOT FOUND THEN
                outcome := 'replay';
                RETURN NEXT;
                CONTINUE;
            END IF;
        END IF;

        INSERT INTO redemption_events (id, jti, function_code, ticket_id, entitlement_id,
                                       merchant_id, operator_id, device_id, location_id,
                                       redeemed_at, scan_id, source)
        VALUES (v_event, p_jtis[r.n], p_function_codes[r.n], r.ticket, v_entitlement,
                p_merchant_ids[r.n], p_operator_ids[r.n], p_device_pks[r.n], p_location_ids[r.n],
                p_nows[r.n], p_scan_ids[r.n], p_sources[r.n]);
        -- The ticket first: its update stamps the feed, so the entitlement's trigger below
        -- finds the ticket stamped by this transaction and writes nothing more.
        UPDATE tickets t
           SET status = v_new_status,
               updated_at = CASE WHEN v_new_status <> v_status THEN p_nows[r.n]
                                 ELSE t.updated_at END
         WHERE t.id = r.ticket;
        UPDATE entitlements SET remaining_uses = remaining_uses - 1
         WHERE id = v_entitlement AND remaining_uses > 0;
        IF NOT FOUND THEN
            -- Cannot happen while every decrement holds the ticket's lock; if it ever does,
            -- the whole batch rolls back and its scans are decided one by one.
            RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
                MESSAGE = 'an entitlement changed under the ticket lock';
        END IF;
        INSERT INTO merchant_redemptions (merchant_id, operator_id, ticket_id, order_id,
                                          location_id, device_id, redemption_event_id,
                                          function_code, redeemed_at, decided_at, source, result)
        VALUES (p_merchant_ids[r.n], p_operator_ids[r.n], r.ticket, v_order, p_location_ids[r.n],
                p_device_pks[r.n], v_event, p_function_codes[r.n], p_nows[r.n], p_nows[r.n],
                p_sources[r.n], 'SUCCESS');
        outcome := 'redeemed';
        answer := v_answer;
        RETURN NEXT;
    END LOOP;
END
$$;
