-- Purpose: each mutation names the span that caused it, so `flux trace` shows a row change under the database
-- call that made it. The request sets flux.span_seq before a call that may write; the trigger copies it.

ALTER TABLE flux.mutations ADD COLUMN span_seq integer;

COMMENT ON COLUMN flux.mutations.span_seq IS
    'The seq of the span (in flux.spans, with request_id) whose database call made this change; NULL for writes '
    'made outside a request, or by a statement Flux did not expect to write (a function called by a select).';
