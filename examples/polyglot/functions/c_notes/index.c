// A Flux function in C (wasm32-wasi, built by `flux build c_notes`): records a note, pushes a job, fetches the
// URL given in the request, and reads the clock and random bytes through WASI (which Flux serves and records).
#define _GNU_SOURCE  // memmem
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

__attribute__((import_module("flux"), import_name("call"))) uint64_t flux_call(const char *json, uint32_t len);

__attribute__((export_name("flux_alloc"))) void *flux_alloc(uint32_t len) { return malloc(len ? len : 1); }

// One host call; the reply ({"ok": ..., "value" | "error": ...}) is JSON in memory the host allocated.
static const char *call(const char *json, uint32_t *reply_len) {
    uint64_t packed = flux_call(json, (uint32_t)strlen(json));
    *reply_len = (uint32_t)packed;
    return (const char *)(uintptr_t)(packed >> 32);
}

// The string value of "key" in a flat JSON object (enough for this example's request), or "".
static void string_field(const char *json, uint32_t len, const char *key, char *out, size_t size) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    const char *start = memmem(json, len, pattern, strlen(pattern));
    out[0] = 0;
    if (!start) return;
    start += strlen(pattern);
    const char *end = memchr(start, '"', (size_t)(json + len - start));
    if (!end || (size_t)(end - start) >= size) return;
    memcpy(out, start, (size_t)(end - start));
    out[end - start] = 0;
}

__attribute__((export_name("flux_handle"))) uint64_t flux_handle(const char *request, uint32_t len) {
    time_t now = time(NULL);
    unsigned char noise[4];
    getentropy(noise, sizeof noise);
    printf("c_notes at %lld\n", (long long)now);
    fflush(stdout);

    char url[256], json[768];
    string_field(request, len, "url", url, sizeof url);
    uint32_t fetched_len = 0;
    const char *fetched = "null";
    if (url[0]) {
        snprintf(json, sizeof json, "{\"op\":\"fetch\",\"args\":{\"url\":\"%s\"}}", url);
        fetched = call(json, &fetched_len);
    } else {
        fetched_len = 4;
    }
    uint32_t job_len;
    const char *job = call("{\"op\":\"queue.push\",\"args\":{\"function\":\"c_notes\",\"payload\":{\"from\":\"c\"}}}",
                           &job_len);
    snprintf(json, sizeof json,
             "{\"op\":\"db.query\",\"args\":{\"insert\":\"notes\",\"values\":{\"body\":\"written by c\"},"
             "\"returning\":[\"id\",\"body\"]}}");
    uint32_t note_len;
    const char *note = call(json, &note_len);

    size_t size = note_len + job_len + fetched_len + 128;
    char *out = malloc(size);
    int written = snprintf(out, size, "{\"note\":%.*s,\"job\":%.*s,\"fetched\":%.*s,\"noise\":%u}", (int)note_len,
                           note, (int)job_len, job, (int)fetched_len, fetched, (unsigned)noise[0]);
    return ((uint64_t)(uintptr_t)out << 32) | (uint32_t)written;
}
