-- Purpose: flux.deployments.gate, the deploy gate's verdict on a version (`flux deploy --gate`): which recent
-- requests of its changed functions were replayed on it before it was activated, how many behaved as recorded,
-- and the first divergences. NULL for a version deployed without the gate. A version the gate refused is kept
-- (never activated, its migrations never applied) so that its verdict and its replays can be looked at.
ALTER TABLE flux.deployments ADD COLUMN gate jsonb;

COMMENT ON COLUMN flux.deployments.gate IS 'The deploy gate''s verdict on this version (flux deploy --gate): {verdict: passed|accepted|refused, db, last, since_s, functions, summary {same, diverged, drift, error}, divergences (the first ones), took_ms}; NULL when deployed without the gate.';
