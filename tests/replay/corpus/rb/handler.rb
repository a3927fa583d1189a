# The replay corpus in Ruby (CRuby's WASI build): the clock and randomness through WASI, a log line, a secret, a
# fetch, a read, a write and a push through Flux's module; `do` makes it raise or spin.
require "securerandom"

def handle(req, ctx)
  body = req["body"]
  started = Time.now
  noise = rand
  token = SecureRandom.uuid
  puts format("ruby at %.3f", started.to_f)
  secret = ctx.secrets.get("token")
  fetched = ctx.fetch("#{body["url"]}/rb", headers: { "x-token" => secret })
  values = { "body" => format("%s %.6f", body["text"], noise) }
  event = ctx.db.query({ "insert" => "events", "values" => values, "returning" => %w[id at uid] })
  read = ctx.db.query({ "select" => "events", "where" => { "id" => { "lte" => event["rows"][0]["id"] } } })
  job = ctx.queue.push("after", { "event" => event["rows"][0] }, priority: 2)
  raise ArgumentError, "refused #{event["rows"][0]["id"]}" if body["do"] == "throw!"
  loop {} if body["do"] == "timeout~"
  took = Time.now - started
  { "started" => started.to_f, "noise" => noise, "token" => token, "fetched" => fetched, "event" => event,
    "read" => read, "job" => job, "took" => took, "secret" => secret.length }
end
