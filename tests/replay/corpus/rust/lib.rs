//! The replay corpus in Rust (wasm32-unknown-unknown): the host's clock and random bytes, a secret, a fetch, a
//! read, a write, a push and a log line; `do` makes it panic or spin.
use std::alloc::{alloc, Layout};

#[link(wasm_import_module = "flux")]
extern "C" {
    fn call(json: *const u8, len: u32) -> u64;
}

#[no_mangle]
pub extern "C" fn flux_alloc(len: u32) -> *mut u8 {
    unsafe { alloc(Layout::from_size_align(len.max(1) as usize, 8).unwrap()) }
}

fn host(json: &str) -> String {
    let packed = unsafe { call(json.as_ptr(), json.len() as u32) };
    let (ptr, len) = ((packed >> 32) as usize as *const u8, (packed & 0xffff_ffff) as usize);
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    String::from_utf8_lossy(bytes).into_owned()
}

fn string_field<'a>(json: &'a str, key: &str) -> &'a str {
    let pattern = format!("\"{}\":\"", key);
    let start = match json.find(&pattern) {
        Some(at) => at + pattern.len(),
        None => return "",
    };
    let end = json[start..].find('"').map_or(start, |end| end + start);
    &json[start..end]
}

#[no_mangle]
pub extern "C" fn flux_handle(ptr: *const u8, len: u32) -> u64 {
    let request = unsafe { std::str::from_utf8(std::slice::from_raw_parts(ptr, len as usize)).unwrap_or("{}") };
    let now = host(r#"{"op":"now"}"#);
    let noise = host(r#"{"op":"random","args":{"bytes":6}}"#);
    host(r#"{"op":"log","args":{"message":"rust says hello","level":"warn"}}"#);
    let secret = host(r#"{"op":"secrets.get","args":{"name":"token"}}"#);
    let fetched = host(&format!(r#"{{"op":"fetch","args":{{"url":"{}/rust"}}}}"#, string_field(request, "url")));
    let text = string_field(request, "text");
    let event = host(&format!(
        r#"{{"op":"db.query","args":{{"insert":"events","values":{{"body":"{} {}"}},"returning":["id","at","uid"]}}}}"#,
        text,
        now.len()
    ));
    let read = host(r#"{"op":"db.query","args":{"select":"events","columns":["id","body","amount"],"where":{"body":{"like":"from rust%"}}}}"#);
    let job = host(r#"{"op":"queue.push","args":{"function":"after","payload":{"from":"rust"},"priority":2}}"#);
    match string_field(request, "do") {
        "throw!" => panic!("refused"),
        "timeout~" => {
            let mut spin: u64 = 0;
            loop {
                spin = unsafe { std::ptr::read_volatile(&spin) } + 1;
            }
        }
        _ => {}
    }
    let out = format!(
        r#"{{"now":{},"noise":{},"secret":{},"fetched":{},"event":{},"read":{},"job":{}}}"#,
        now, noise, secret, fetched, event, read, job
    );
    let packed = ((out.as_ptr() as u64) << 32) | out.len() as u64;
    std::mem::forget(out);
    packed
}
