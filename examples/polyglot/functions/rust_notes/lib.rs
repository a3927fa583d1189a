//! A Flux function in Rust (wasm32-unknown-unknown, built by `flux build rust_notes`): records a note, pushes a
//! job, fetches the URL given in the request, and reads the host's clock and random bytes.
use std::alloc::{alloc, Layout};

#[link(wasm_import_module = "flux")]
extern "C" {
    fn call(json: *const u8, len: u32) -> u64;
}

#[no_mangle]
pub extern "C" fn flux_alloc(len: u32) -> *mut u8 {
    unsafe { alloc(Layout::from_size_align(len.max(1) as usize, 8).unwrap()) }
}

/// One host call: the reply, `{"ok": ..., "value" | "error": ...}`, as text.
fn host(json: &str) -> String {
    let packed = unsafe { call(json.as_ptr(), json.len() as u32) };
    let (ptr, len) = ((packed >> 32) as usize as *const u8, (packed & 0xffff_ffff) as usize);
    // The reply stays where the host put it (each request is a fresh instance, so nothing piles up).
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    String::from_utf8_lossy(bytes).into_owned()
}

/// The string value of `key` in a flat JSON object (enough for this example's request).
fn string_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{}\":\"", key);
    let start = json.find(&pattern)? + pattern.len();
    let end = json[start..].find('"')? + start;
    Some(&json[start..end])
}

#[no_mangle]
pub extern "C" fn flux_handle(ptr: *const u8, len: u32) -> u64 {
    let request = unsafe { std::str::from_utf8(std::slice::from_raw_parts(ptr, len as usize)).unwrap_or("{}") };
    let now = host(r#"{"op":"now"}"#);
    let noise = host(r#"{"op":"random","args":{"bytes":4}}"#);
    let fetched = match string_field(request, "url") {
        Some(url) => host(&format!(r#"{{"op":"fetch","args":{{"url":"{}"}}}}"#, url)),
        None => "null".to_string(),
    };
    let job = host(r#"{"op":"queue.push","args":{"function":"rust_notes","payload":{"from":"rust"}}}"#);
    let note = host(
        r#"{"op":"db.query","args":{"insert":"notes","values":{"body":"written by rust"},"returning":["id","body"]}}"#,
    );
    let out = format!(
        r#"{{"note":{},"job":{},"fetched":{},"now":{},"noise":{}}}"#,
        note, job, fetched, now, noise
    );
    let packed = ((out.as_ptr() as u64) << 32) | out.len() as u64;
    std::mem::forget(out);
    packed
}
