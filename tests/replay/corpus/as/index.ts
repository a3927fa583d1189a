// The replay corpus in AssemblyScript: the host's clock and random bytes, a fetch, a read, a write, a push,
// a log line and a secret; `do` makes it trap or spin.
@external("flux", "call")
declare function flux_call(json: usize, len: u32): u64;

export function flux_alloc(len: u32): usize {
  return heap.alloc(<usize>(len > 0 ? len : 1));
}

function host(json: string): string {
  const bytes = String.UTF8.encode(json);
  const packed = flux_call(changetype<usize>(bytes), bytes.byteLength);
  return String.UTF8.decodeUnsafe(<usize>(packed >> 32), <usize>(packed & 0xffffffff));
}

function stringField(json: string, key: string): string {
  const pattern = '"' + key + '":"';
  const start = json.indexOf(pattern);
  if (start < 0) return "";
  const from = start + pattern.length;
  const end = json.indexOf('"', from);
  return end < 0 ? "" : json.substring(from, end);
}

let spin: u64 = 0;

export function flux_handle(pointer: usize, length: u32): u64 {
  const request = String.UTF8.decodeUnsafe(pointer, length);
  const now = host('{"op":"now"}');
  const noise = host('{"op":"random","args":{"bytes":4}}');
  const secret = host('{"op":"secrets.get","args":{"name":"token"}}');
  const fetched = host('{"op":"fetch","args":{"url":"' + stringField(request, "url") + '/as","method":"GET"}}');
  const event = host(
    '{"op":"db.query","args":{"insert":"events","values":{"body":"' + stringField(request, "text") +
      '"},"returning":["id","body","amount","at","uid"]}}',
  );
  const read = host('{"op":"db.query","args":{"select":"events","aggregate":{"count":"*","sum":"amount"}}}');
  const job = host('{"op":"queue.push","args":{"function":"after","payload":{"from":"assemblyscript"}}}');
  host('{"op":"log","args":{"message":"assemblyscript done","fields":{"noise":' + noise + "}}}");
  const todo = stringField(request, "do");
  if (todo == "throw!") unreachable();
  if (todo == "timeout~") while (true) spin++;
  const out = String.UTF8.encode(
    '{"now":' + now + ',"noise":' + noise + ',"secret":' + secret + ',"fetched":' + fetched + ',"event":' +
      event + ',"read":' + read + ',"job":' + job + "}",
  );
  return (<u64>changetype<usize>(out) << 32) | <u64>out.byteLength;
}
