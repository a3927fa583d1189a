// The replay corpus in TypeScript: every host call a function can make, and the values of time and randomness
// in its answer; `do` makes it throw or run past its time limit after its calls.
type Request = { body: { text: string; url: string; do?: string } };

export default async function (req: Request, ctx: any) {
  const started = Date.now();
  const token = Math.random().toString(36).slice(2);
  const uuid = crypto.randomUUID();
  const secret: string = await ctx.secrets.get("token");
  const before = await ctx.db.query({ select: "events", order: [{ col: "id" }] });
  const pong = await ctx.fetch(req.body.url + "/ts", { headers: { authorization: "Bearer " + secret } });
  const { rows: [event] } = await ctx.db.query({
    insert: "events",
    values: { body: req.body.text + " " + token },
    returning: ["id", "body", "amount", "at", "uid"],
  });
  const sql = await ctx.db.sql("SELECT count(*) AS n, sum(amount) AS total, max(at) AS latest FROM events");
  const job = await ctx.queue.push("after", { id: event.id, at: event.at });
  await ctx.log("wrote " + event.id, { uid: event.uid });
  console.log("at", new Date().toISOString());
  if (req.body.do === "throw!") throw new Error("refused " + event.id);
  if (req.body.do === "timeout~") while (true) { /* past the time limit */ }
  return {
    status: 201,
    headers: { "x-event": String(event.id) },
    body: {
      event, before: before.rows, sql: sql.rows, pong, job, started, token, uuid, signed: "sig:" + secret,
      took: Date.now() - started, perf: performance.now(),
    },
  };
}
