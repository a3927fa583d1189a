// A Flux function in JavaScript: records a note, pushes a job, fetches the URL given in the request (if any),
// and answers with the time and a random token, both served by the host and recorded.
export default async function (req, ctx) {
  const { rows } = await ctx.db.query({
    insert: "notes",
    values: { body: req.body.text },
    returning: ["id", "body"],
  });
  const job = await ctx.queue.push("js_notes", { note: rows[0].id }, { priority: 1 });
  const fetched = req.body.url ? await ctx.fetch(req.body.url, { timeout_ms: 5000 }) : null;
  return { note: rows[0], job: job.id, fetched, at: Date.now(), token: Math.random().toString(36).slice(2) };
}
