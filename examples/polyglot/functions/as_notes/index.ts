// A Flux function in AssemblyScript (built by `flux build as_notes`): records a note, pushes a job, fetches
// the URL given in the request, and reads the host's clock and random bytes.
@external("flux", "call")
declare function flux_call(json: usize, len: u32): u64;

export function flux_alloc(len: u32): usize {
  return heap.alloc(<usize>(len > 0 ? len : 1));
}

// One host call: the reply, {"ok": ..., "value" | "error": ...}, as text.
function host(json: string): string {
  const bytes = String.UTF8.encode(json);
  const packed = flux_call(changetype<usize>(bytes), bytes.byteLength);
  return String.UTF8.decodeUnsafe(<usize>(packed >> 32), <usize>(packed & 0xffffffff));
}

// The string value of `key` in a flat JSON object (enough for this example's request), or "".
function stringField(json: string, key: string): string {
  const pattern = '"' + key + '":"';
  const start = json.indexOf(pattern);
  if (start < 0) return "";
  const from = start + pattern.length;
  const end = json.indexOf('"', from);
  return end < 0 ? "" : json.substring(from, end);
}

export function flux_handle(pointer: usize, length: u32): u64 {
  const request = String.UTF8.decodeUnsafe(pointer, length);
  const now = host('{"op":"now"}');
  const noise = host('{"op":"random","args":{"bytes":4}}');
  const url = stringField(request, "url");
  const fetched = url.length > 0 ? host('{"op":"fetch","args":{"url":"' + url + '"}}') : "null";
  const job = host('{"op":"queue.push","args":{"function":"as_notes","payload":{"from":"assemblyscript"}}}');
  const note = host(
    '{"op":"db.query","args":{"insert":"notes","values":{"body":"written by assemblyscript"},"returning":["id","body"]}}',
  );
  const out = String.UTF8.encode(
    '{"note":' + note + ',"job":' + job + ',"fetched":' + fetched + ',"now":' + now + ',"noise":' + noise + "}",
  );
  return (<u64>changetype<usize>(out) << 32) | <u64>out.byteLength;
}
