-- Entries at a venue join the group commit. On the transaction path a venue's entries
-- took turns at its count (measured: 660 scans/s at 32 clients against 1,808 plain): a
-- batch now takes the venue's count once for all of its entries.
--
-- For a scan at a venue's location (`p_venue_ids`, the caller names the venue only for an
-- entry: a scan of the venue's entry function), stile_redeem_batch locks and reads as for
-- an entitlement with rules, adds the ticket's latest passage there (its presence), writes
-- nothing and answers 'rules'. The caller then locks the batch's venues (after every
-- ticket of the batch, in id order: the order of the transaction path too), decides each
-- scan with the shared `decide` against the running count, and writes the entries it
-- allows with stile_write_allowed before the commit: each redemption as stile_redeem_write
-- writes it, its passage, and its change to the venue's count. The database still judges
-- no rule and no capacity.
DROP FUNCTION stile_redeem_batch(uuid[], bigint[], bigint[], bigint[], bigint[], bytea[],
                                 text[], text[], text[], text[], timestamptz[], jsonb[]);

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
    p_venue_ids bigint[]
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

        IF v_rules IS NOT NULL OR p_venue_ids[r.n] IS NOT NULL THEN
            -- Locked and read, nothing written: the caller decides the rules and the
            -- venue's capacity with the shared `decide` and writes what it redeems with
            -- stile_write_allowed, in this transaction, under this lock.
            outcome := 'rules';
            answer := jsonb_build_object(
                'ticket', r.ticket, 'entitlement', v_entitlement, 'order', v_order,
                'status', v_status, 'remaining_uses', v_remaining,
                'rules', coalesce(v_rules, '{}'::jsonb),
                'time_zone', v_zone,
                'venue', p_venue_ids[r.n],
                -- The ticket's latest passage at the venue up to now: its presence.
                'passage', (SELECT jsonb_build_object('direction', p.direction,
                                                      'at', floor(extract(epoch FROM p.at))::bigint)
                              FROM passages p
                             WHERE p.venue_id = p_venue_ids[r.n] AND p.ticket_id = r.ticket
                               AND p.at <= p_nows[r.n]
                             ORDER BY p.at DESC, p.id DESC LIMIT 1),
                -- Every use of the last two days (today's, in any zone) and the newest one.
                'recent_uses', CASE WHEN v_rules IS NULL THEN '[]'::jsonb ELSE (SELECT coalesce(jsonb_agg(floor(extract(epoch FROM u.redeemed_at))::bigint), '[]')
                                  FROM (SELECT x.redeemed_at FROM redemption_events x
                                         WHERE x.entitlement_id = v_entitlement
                                           AND x.redeemed_at > p_nows[r.n] - interval '48 hours'
                                        UNION ALL
                                        (SELECT x.redeemed_at FROM redemption_events x
                                          WHERE x.entitlement_id = v_entitlement
                                            AND x.redeemed_at <= p_nows[r.n] - interval '48 hours'
                                          ORDER BY x.redeemed_at DESC LIMIT 1)) u) END);
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


-- The redemptions the caller allowed, by position (`p_items`), each with its venue's
-- passage when it is an entry there (`p_venue_ids`, its change to the count `p_deltas` on
-- the merchant-local day `p_todays`). A NULL answer: the scan_id was taken meanwhile
-- (nothing written; the caller replays it).
CREATE FUNCTION stile_write_allowed(
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
AS $$
#variable_conflict use_variable
BEGIN
    FOR n IN 1 .. coalesce(array_length(p_items, 1), 0) LOOP
        item := p_items[n];
        answer := stile_redeem_write(p_scan_ids[n], p_merchant_ids[n], p_operator_ids[n],
            p_device_pks[n], p_location_ids[n], p_token_sha256s[n], p_function_codes[n],
            p_jtis[n], p_ticket_codes[n], p_sources[n], p_nows[n], p_answers[n],
            p_tickets[n], p_entitlements[n], p_statuses[n], p_orders[n]);
        IF answer IS NOT NULL AND p_venue_ids[n] IS NOT NULL THEN
            INSERT INTO passages (merchant_id, venue_id, ticket_id, direction, reentry, delta,
                                  at, recorded_at, location_id, device_id, operator_id,
                                  redemption_event_id, scan_id, source)
            VALUES (p_merchant_ids[n], p_venue_ids[n], p_tickets[n], 'entry', false,
                    p_deltas[n], p_nows[n], p_nows[n], p_location_ids[n], p_device_pks[n],
                    p_operator_ids[n], (answer #>> '{redemption,id}')::bigint,
                    p_scan_ids[n], p_sources[n]);
            IF p_deltas[n] <> 0 THEN
                UPDATE venues
                   SET inside = GREATEST(CASE WHEN inside_on = p_todays[n] THEN inside ELSE 0 END
                                         + p_deltas[n], 0),
                       inside_on = p_todays[n]
                 WHERE id = p_venue_ids[n];
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
