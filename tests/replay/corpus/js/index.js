// The replay corpus in JavaScript (Deno): time, randomness, a fetch, a read and a write, a push and a log.
export default async function (req, ctx) {
  const { rows: [event] } = await ctx.db.query({
    insert: "events", values: { body: req.body.text }, returning: ["id", "amount", "at", "uid"],
  });
  const read = await ctx.db.query({ select: "events", where: { id: { eq: event.id } } });
  const fetched = await ctx.fetch(req.body.url + "/js", { timeout_ms: 5000 });
  const job = await ctx.queue.push("after", { id: event.id }, { priority: 1, delay_ms: 1000 });
  console.info("pushed", job.id);
  if (req.body.do === "throw!") throw new TypeError("no such thing");
  if (req.body.do === "timeout~") for (;;) { /* past the time limit */ }
  return { event, read: read.rows, fetched, job, at: new Date(), now: Date.now(), token: Math.random() };
}
