-- Purpose: Flux's functions look names up in pg_catalog before pg_temp. With an empty search path Postgres
-- searches the session's temporary schema first for types and relations (never for functions or operators),
-- so a request that made a type named like a built-in one (`CREATE DOMAIN pg_temp.text ... CHECK (...)`) had
-- its check run by a definer's function that declared a `text` variable or cast to text, with the rights of
-- that function's owner, on the request's pooled connection: flux.announce_requests (the migrating role's)
-- while anyone followed new requests, the mutation and queue functions (flux_recorder's), and the rewind of a
-- live or as-of replay (the replaying owner's). The functions of sql/functions/ now say so themselves; these
-- are the ones only a migration defines.
ALTER FUNCTION flux.announce_requests(uuid[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION flux.tg_catalog__notify() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION flux.tg_column_policies__notify() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION flux.tg_gateway__notify() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION flux.tg_jobs__notify() SET search_path = pg_catalog, pg_temp;
