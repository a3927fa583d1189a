// POST /notes {"text": "..."}: stores a note and answers it. Every call is recorded: `flux trace <request id>`.
type Request = { body: { text?: string } | null };

export default async function (req: Request, ctx: any) {
  const text = req.body?.text;
  if (!text) return { status: 400, body: { error: "send {\"text\": \"...\"}" } };
  const note = await ctx.db.query({ insert: "notes", values: { body: text }, returning: ["id", "body"] });
  return { status: 201, body: note.rows[0] };
}
