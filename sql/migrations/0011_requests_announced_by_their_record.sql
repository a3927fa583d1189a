-- Purpose: recording requests costs less while nobody follows them. The statement trigger of 0008 and 0010 kept
-- every request row a statement inserted in a transition table, watched or not: 7 to 12 µs of Postgres a
-- request (docs/performance.md). Flux now announces the requests a record statement wrote by calling
-- flux.announce_requests with their ids, in the same transaction; it does nothing while no follower is live.

DROP TRIGGER requests_notify ON flux.requests;
DROP FUNCTION flux.tg_requests__notify();

-- Announces `ids` on channel flux_requests (at most 200 per notification: a payload holds under 8000 bytes) and
-- puts them in the inbox of each live follower that keeps one, when someone follows new requests. SECURITY
-- DEFINER: the role that records requests needs no right on flux.request_followers nor on the inbox.
CREATE FUNCTION flux.announce_requests(ids uuid[]) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = ''
AS $$
BEGIN
    IF EXISTS (SELECT FROM flux.request_followers WHERE expires_at > pg_catalog.now()) THEN
        PERFORM pg_catalog.pg_notify('flux_requests', pg_catalog.string_agg(i.id::text, ',' ORDER BY i.ord))
           FROM pg_catalog.unnest(ids) WITH ORDINALITY AS i (id, ord)
          GROUP BY (i.ord - 1) / 200;
        INSERT INTO flux.request_follower_inbox (follower_id, request_id)
        SELECT f.id, i.id
          FROM flux.request_followers f CROSS JOIN pg_catalog.unnest(ids) AS i (id)
         WHERE f.keeps_inbox AND f.expires_at > pg_catalog.now();
    END IF;
END
$$;

REVOKE EXECUTE ON FUNCTION flux.announce_requests(uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flux.announce_requests(uuid[]) TO flux_authenticator;

COMMENT ON FUNCTION flux.announce_requests(uuid[]) IS
    'Announces newly recorded requests on channel flux_requests (and in follower inboxes) while a row of '
    'flux.request_followers is live; Flux calls it with each statement that records requests.';
