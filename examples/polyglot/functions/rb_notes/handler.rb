# A Flux function in Ruby (CRuby's WASI build, `flux build rb_notes`): records a note, pushes a job, fetches the
# URL given in the request, and reads the clock and random numbers (which Flux serves and records).
def handle(req, ctx)
  body = req["body"] || {}
  puts "rb_notes at #{Time.now.to_i}"
  noise = rand(256)
  fetched = body["url"] ? ctx.fetch(body["url"]) : nil
  job = ctx.queue.push("rb_notes", { "from" => "ruby" })
  note = ctx.db.query({ "insert" => "notes", "values" => { "body" => "written by ruby" }, "returning" => %w[id body] })
  { "note" => note, "job" => job, "fetched" => fetched, "noise" => noise }
end
