-- Take one token from a bucket refilled at `p_rate` per second, holding at most `p_burst`.
-- A take sent again after its reply was lost answers as the first did (no second token).
-- Answers the seconds to wait, as text ('0': granted). Buckets lock their own row only.
CREATE FUNCTION op_token(p_now bigint, p_op text, p_bucket text, p_rate double precision, p_burst integer)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision := coalesce(p_now / 1000.0, extract(epoch FROM clock_timestamp()));
    b buckets;
    v_tokens double precision;
    v_wait text := '0';
BEGIN
    INSERT INTO buckets (name, tokens, at, full_at) VALUES (p_bucket, p_burst, v_now, 0)
        ON CONFLICT (name) DO NOTHING;
    SELECT * INTO b FROM buckets WHERE name = p_bucket FOR UPDATE;
    IF p_op IS NOT NULL AND b.op = p_op THEN
        RETURN b.answer;
    END IF;
    v_tokens := least(p_burst, b.tokens + greatest(0, v_now - b.at) * p_rate);
    IF v_tokens < 1 THEN
        v_wait := to_char((1 - v_tokens) / p_rate, 'FM999999990.000000');
    ELSE
        v_tokens := v_tokens - 1;
    END IF;
    -- A full bucket is the same as none: it may go once it would have refilled.
    UPDATE buckets SET tokens = v_tokens, at = v_now, op = p_op, answer = v_wait,
        full_at = ceil((v_now + (p_burst - v_tokens) / p_rate) * 1000)::bigint + 1000
        WHERE name = p_bucket;
    RETURN v_wait;
END $$;
