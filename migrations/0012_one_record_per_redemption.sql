-- One fact, one row: a redemption's audit record is its reconciliation log row
-- (merchant_redemptions: who, where, when, what), so neither path writes a scan_audit row
-- for a SUCCESS any more; scan_audit keeps every rejection. stile_redeem as in 0011,
-- without that insert.
CREATE OR REPLACE FUNCTION stile_redeem(
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
    p_answer jsonb
) RETURNS TABLE (redemption_id bigint, ticket_id bigint, answer jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_ticket bigint;
    v_status text;
    v_current text;
    v_order bigint;
    v_webhook boolean;
    v_entitlement bigint;
    v_remaining integer;
    v_event bigint;
    v_view jsonb;
    v_answer jsonb;
BEGIN
    SELECT t.id, t.status, t.current_jti, t.order_id, m.webhook_url IS NOT NULL
      INTO v_ticket, v_status, v_current, v_order, v_webhook
      FROM tickets t JOIN merchants m ON m.id = t.merchant_id
     WHERE t.ticket_code = p_ticket_code AND t.merchant_id = p_merchant_id
       FOR NO KEY UPDATE OF t;
    IF NOT FOUND OR v_status NOT IN ('ACTIVATED', 'USED') OR v_current IS DISTINCT FROM p_jti
       OR v_webhook THEN
        RAISE EXCEPTION USING ERRCODE = 'STSLW', MESSAGE = 'not a plain success';
    END IF;
    SELECT e.id, e.remaining_uses INTO v_entitlement, v_remaining
      FROM entitlements e
     WHERE e.ticket_id = v_ticket AND e.function_code = p_function_code
       FOR UPDATE;
    IF NOT FOUND
       OR EXISTS (SELECT 1 FROM redemption_events r
                   WHERE r.jti = p_jti AND r.function_code = p_function_code)
       OR v_remaining <= 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'STSLW', MESSAGE = 'not a plain success';
    END IF;

    INSERT INTO redemption_events (jti, function_code, ticket_id, entitlement_id, merchant_id,
                                   operator_id, device_id, location_id, redeemed_at, scan_id, source)
    VALUES (p_jti, p_function_code, v_ticket, v_entitlement, p_merchant_id, p_operator_id,
            p_device_pk, p_location_id, p_now, p_scan_id, p_source)
    RETURNING id INTO v_event;
    UPDATE tickets t
       SET status = CASE
               WHEN t.status = 'ACTIVATED' AND NOT EXISTS (
                   SELECT 1 FROM entitlements e
                    WHERE e.ticket_id = v_ticket
                      AND e.remaining_uses > CASE WHEN e.id = v_entitlement THEN 1 ELSE 0 END)
               THEN 'USED' ELSE t.status END,
           updated_at = CASE
               WHEN t.status = 'ACTIVATED' AND NOT EXISTS (
                   SELECT 1 FROM entitlements e
                    WHERE e.ticket_id = v_ticket
                      AND e.remaining_uses > CASE WHEN e.id = v_entitlement THEN 1 ELSE 0 END)
               THEN p_now ELSE t.updated_at END
     WHERE t.id = v_ticket
    RETURNING t.status INTO v_status;
    UPDATE entitlements SET remaining_uses = remaining_uses - 1 WHERE id = v_entitlement;
    INSERT INTO merchant_redemptions (merchant_id, operator_id, ticket_id, order_id, location_id,
                                      device_id, redemption_event_id, function_code, redeemed_at,
                                      decided_at, source, result)
    VALUES (p_merchant_id, p_operator_id, v_ticket, v_order, p_location_id, p_device_pk, v_event,
            p_function_code, p_now, p_now, p_source, 'SUCCESS');

    SELECT jsonb_build_object(
               'ticket_code', p_ticket_code,
               'status', v_status,
               'entitlements', jsonb_agg(jsonb_build_object(
                   'function_code', e.function_code,
                   'name', e.name,
                   'total_uses', e.total_uses,
                   'remaining_uses', e.remaining_uses) ORDER BY e.id))
      INTO v_view
      FROM entitlements e WHERE e.ticket_id = v_ticket;
    v_answer := jsonb_set(p_answer || jsonb_build_object('ticket', v_view),
                          '{redemption,id}', to_jsonb(v_event));
    IF p_scan_id IS NOT NULL THEN
        INSERT INTO scan_requests (scan_id, merchant_id, operator_id, device_id, token_sha256,
                                   function_code, created_at, response, http_status)
        VALUES (p_scan_id, p_merchant_id, p_operator_id, p_device_pk, p_token_sha256,
                p_function_code, p_now, v_answer, 200)
        ON CONFLICT (scan_id) DO NOTHING;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'STRPL', MESSAGE = 'scan_id taken';
        END IF;
    END IF;
    RETURN QUERY SELECT v_event, v_ticket, v_answer;
END
$$;
