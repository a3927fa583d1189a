// The replay corpus in C (wasm32-wasi): the clock and random bytes through WASI, a log line through stdout,
// a secret, a fetch, a read, a write and a push through Flux's host call; `do` makes it trap or spin.
#define _GNU_SOURCE  // memmem
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

__attribute__((import_module("flux"), import_name("call"))) uint64_t flux_call(const char *json, uint32_t len);

__attribute__((export_name("flux_alloc"))) void *flux_alloc(uint32_t len) { return malloc(len ? len : 1); }

static const char *call(const char *json, uint32_t *reply_len) {
    uint64_t packed = flux_call(json, (uint32_t)strlen(json));
    *reply_len = (uint32_t)packed;
    return (const char *)(uintptr_t)(packed >> 32);
}

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
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    unsigned char noise[8];
    getentropy(noise, sizeof noise);
    printf("c at %lld.%09ld\n", (long long)now.tv_sec, now.tv_nsec);
    fflush(stdout);

    char url[256], text[128], todo[32], json[1024];
    string_field(request, len, "url", url, sizeof url);
    string_field(request, len, "text", text, sizeof text);
    string_field(request, len, "do", todo, sizeof todo);
    uint32_t secret_len, fetched_len, before_len, event_len, job_len;
    const char *secret = call("{\"op\":\"secrets.get\",\"args\":{\"name\":\"token\"}}", &secret_len);
    snprintf(json, sizeof json, "{\"op\":\"fetch\",\"args\":{\"url\":\"%s/c\"}}", url);
    const char *fetched = call(json, &fetched_len);
    const char *before = call("{\"op\":\"db.query\",\"args\":{\"select\":\"events\",\"order\":[{\"col\":\"id\"}]}}",
                              &before_len);
    snprintf(json, sizeof json,
             "{\"op\":\"db.query\",\"args\":{\"insert\":\"events\",\"values\":{\"body\":\"%s %02x%02x%02x\"},"
             "\"returning\":[\"id\",\"amount\",\"at\",\"uid\"]}}",
             text, noise[0], noise[1], noise[2]);
    const char *event = call(json, &event_len);
    const char *job = call("{\"op\":\"queue.push\",\"args\":{\"function\":\"after\",\"payload\":{\"from\":\"c\"}}}",
                           &job_len);
    if (strcmp(todo, "throw!") == 0) __builtin_trap();
    if (strcmp(todo, "timeout~") == 0) {
        volatile uint64_t spin = 0;
        for (;;) spin++;
    }
    size_t size = secret_len + fetched_len + before_len + event_len + job_len + 256;
    char *out = malloc(size);
    int written = snprintf(out, size,
                           "{\"secret\":%.*s,\"fetched\":%.*s,\"before\":%.*s,\"event\":%.*s,\"job\":%.*s,"
                           "\"now\":%lld.%09ld,\"noise\":%u}",
                           (int)secret_len, secret, (int)fetched_len, fetched, (int)before_len, before,
                           (int)event_len, event, (int)job_len, job, (long long)now.tv_sec, now.tv_nsec,
                           (unsigned)noise[7]);
    return ((uint64_t)(uintptr_t)out << 32) | (uint32_t)written;
}
