# The Flux module of a Ruby function (CRuby's WASI build): the host API over Flux's WASI-command ABI. The
# request is the first line on stdin; each host call is a line of JSON on stdout, its answer the next line on
# stdin; the response is the last line on stdout (docs/functions.md). `puts` and `print` become log spans;
# Time.now and Random read the host's recorded clock and random bytes through WASI.
require "json"

module Flux
  # A host call that failed: its FX code and message (a refused query also lists its problems).
  class Error < StandardError
    attr_reader :code, :problems

    def initialize(error)
      @code = error["code"]
      @problems = error["problems"]
      super("#{@code}: #{error["message"]}")
    end
  end

  PROTOCOL_IN = STDIN
  PROTOCOL_OUT = STDOUT

  # One host call (`op` with `args`, see docs/functions.md); its value, or Flux::Error.
  def self.call(op, args = nil)
    PROTOCOL_OUT.write(JSON.generate({ "op" => op, "args" => args }) + "\n")
    PROTOCOL_OUT.flush
    line = PROTOCOL_IN.gets
    raise Error.new({ "code" => "FX900", "message" => "the host gave no answer to #{op}" }) if line.nil?
    answer = JSON.parse(line)
    raise Error.new(answer["error"]) unless answer["ok"]
    answer["value"]
  end

  def self.log(message, level: "info", **fields)
    args = { "message" => message.to_s, "level" => level }
    args["fields"] = fields unless fields.empty?
    call("log", args)
    nil
  end

  class DB
    # A query of the JSON query language: {"rows", "after", "more"} for a select, {"count", "rows"} for a write.
    def query(query) = Flux.call("db.query", query)

    # One raw statement with $1, $2, … bound to params (the service role only).
    def sql(sql, *params) = Flux.call("db.sql", { "sql" => sql, "params" => params })
  end

  class Queue
    # Enqueue a job for `function` in the request's transaction; options: delay_ms, run_at, priority, queue,
    # idempotency_key, max_attempts.
    def push(function, payload = nil, **options)
      Flux.call("queue.push", { "function" => function, "payload" => payload }.merge(options.transform_keys(&:to_s)))
    end
  end

  class Secrets
    def get(name) = Flux.call("secrets.get", { "name" => name })
  end

  # What a handler gets besides the request.
  class Context
    attr_reader :db, :queue, :secrets

    def initialize
      @db = DB.new
      @queue = Queue.new
      @secrets = Secrets.new
    end

    # Outbound HTTP: {"status", "headers", "body"}; options: method, headers, body, timeout_ms.
    def fetch(url, **options) = Flux.call("fetch", { "url" => url }.merge(options.transform_keys(&:to_s)))

    def log(message, level: "info", **fields) = Flux.log(message, level: level, **fields)

    # The host's clock, in milliseconds since the epoch (Time.now reads the same clock).
    def now = Flux.call("now")
  end

  # $stdout for the function's own output: each line a log span (stdout itself carries the protocol).
  class LogOutput
    def initialize
      @buffer = +""
    end

    def write(*parts)
      parts.sum do |part|
        text = part.to_s
        @buffer << text
        while (at = @buffer.index("\n"))
          Flux.log(@buffer.slice!(0, at + 1).chomp)
        end
        text.bytesize
      end
    end

    def puts(*values)
      write("\n") if values.empty?
      values.flatten.each do |value|
        text = value.to_s
        write(text.end_with?("\n") ? text : "#{text}\n")
      end
      nil
    end

    def print(*values)
      write(*values)
      nil
    end

    def <<(value)
      write(value)
      self
    end

    def flush
      Flux.log(@buffer.slice!(0..)) unless @buffer.empty?
      self
    end
    def sync = true
    def sync=(_value); end
    def tty? = false
    def isatty = false
    def fileno = nil
  end

  # Run `source` (handler.rb, which defines `handle(req, ctx)`) for the request on stdin; its result is the
  # last line on stdout. An error it does not rescue ends on stderr as its backtrace, then `Class: message`.
  def self.run(source, file)
    request = JSON.parse(PROTOCOL_IN.gets || "null")
    output = LogOutput.new
    $stdout = output
    TOPLEVEL_BINDING.eval(source, file, 1)
    result = Object.send(:handle, request, Context.new)
    output.flush
    PROTOCOL_OUT.write(JSON.generate(result) + "\n")
    PROTOCOL_OUT.flush
  rescue Exception => e # rubocop:disable Lint/RescueException: every error ends the run, reported
    $stdout = STDOUT
    # the last line says what failed (a syntax error's first line; its other lines come before)
    first, *rest = e.message.lines.map(&:chomp)
    rest.each { |line| STDERR.write("#{line}\n") }
    own = (e.backtrace || []).reject { |frame| frame.start_with?("eval:", "-e:") } # not Flux's own frames
    own.each { |frame| STDERR.write("  from #{frame}\n") }
    STDERR.write("#{e.class}: #{first}\n")
    STDERR.flush
    raise
  end
end
