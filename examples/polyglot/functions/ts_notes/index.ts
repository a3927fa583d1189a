// A Flux function in TypeScript: records a note, pushes a job, fetches the URL given in the request (if any),
// and answers with what it did.
// Date, Math.random and crypto are served by the host, so a replay sees the same values.
type Request = { method: string; path: string; body: { text: string; url?: string } };

export default async function (req: Request, ctx: any) {
  const note = await ctx.db.query({
    insert: "notes",
    values: { body: req.body.text },
    returning: ["id", "body"],
  });
  console.log("wrote note", note.rows[0].id);
  const job = await ctx.queue.push("ts_notes", { note: note.rows[0].id });
  const fetched = req.body.url ? await ctx.fetch(req.body.url) : null;
  return {
    status: 201,
    headers: { "x-note": String(note.rows[0].id) },
    body: {
      note: note.rows[0],
      job: job.id,
      fetched,
      at: new Date().toISOString(),
      token: crypto.randomUUID(),
    },
  };
}
