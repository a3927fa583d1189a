# POST /notes {"text": "..."}: stores a note and answers it. Every call is recorded: `flux trace <request id>`.
def handle(req, ctx)
  body = req["body"].is_a?(Hash) ? req["body"] : {}
  text = body["text"]
  return { "status" => 400, "body" => { "error" => 'send {"text": "..."}' } } if text.to_s.empty?

  note = ctx.db.query({ "insert" => "notes", "values" => { "body" => text }, "returning" => %w[id body] })
  { "status" => 201, "body" => note["rows"][0] }
end
