// POST /notes {"text": "..."}: adds a note. Flux records the request, this function's run, its insert and the
// row it wrote: `flux trace <x-request-id>` shows them.
export default async (req: any, ctx: any) => {
  if (typeof req.body?.text !== "string") {
    return { status: 400, body: { error: 'send {"text": "..."}' } };
  }
  const note = await ctx.db.query({
    insert: "notes",
    values: { body: req.body.text },
    returning: ["id", "body"],
  });
  return { status: 201, body: note.rows[0] };
};
