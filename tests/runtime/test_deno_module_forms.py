"""The forms a TypeScript function's module may take, on the worker's quick path (linked, instantiated and
evaluated at once) and its slow one (top-level await): each runs, or fails with what it did wrong, and the
next run on the same worker is unaffected."""

from __future__ import annotations

from typing import Any

from flux.runtime import Runtime
from tests.fixtures.runtime import ts

FINE = ts("fine", "export default async () => ({fine: true})")


def test_a_module_with_top_level_await_runs(call: Any, one_deno: Runtime) -> None:
    fn = ts(
        "tla",
        "const base = await Promise.resolve(40); await null;"
        " export default async function () { return {answer: base + 2}; }",
    )
    assert call(fn).response.body == {"answer": 42}
    assert call(fn).response.body == {"answer": 42}  # a second run gets a module of its own, evaluated again


def test_an_import_is_refused_with_what_to_do(call: Any, one_deno: Runtime) -> None:
    fn = ts("imports", "import x from 'npm:left-pad'; export default async () => ({x})")
    outcome = call(fn)
    assert outcome.error is not None and outcome.error.code == "FX300", outcome.error
    assert "import of npm:left-pad" in outcome.error.message and "bundle its imports" in outcome.error.message
    assert call(FINE).response.body == {"fine": True}


def test_a_module_that_throws_or_rejects_while_loading_fails_its_run(call: Any, one_deno: Runtime) -> None:
    thrown = ts("throws", "throw new RangeError('bad start'); export default async () => ({})")
    rejected = ts(
        "rejects", "await Promise.reject(new TypeError('late start')); export default async () => ({})"
    )
    for fn, text in ((thrown, "RangeError: bad start"), (rejected, "TypeError: late start")):
        outcome = call(fn)
        assert outcome.error is not None and outcome.error.code == "FX300", outcome.error
        assert text in outcome.error.message
        assert call(FINE).response.body == {"fine": True}


def test_module_state_is_each_runs_own_with_and_without_top_level_await(call: Any, one_deno: Runtime) -> None:
    for name, prefix in (("state_sync", ""), ("state_tla", "await null; ")):
        fn = ts(
            name,
            f"{prefix}let count = 0; export default async function () {{"
            " count++; (globalThis as any).n = ((globalThis as any).n ?? 0) + 1;"
            " return {count, n: (globalThis as any).n}; }",
        )
        assert [call(fn).response.body for _ in range(3)] == [{"count": 1, "n": 1}] * 3


def test_a_request_larger_than_the_workers_read_buffer_arrives_whole(call: Any, one_deno: Runtime) -> None:
    # 300 KB of two- and four-byte characters: the worker's 64 KB reads split lines and characters alike.
    text = "é😀" * 50_000 + "!"
    fn = ts("echo", "export default async (req) => ({length: req.body.text.length, text: req.body.text})")
    body = call(fn, {"method": "POST", "path": "/", "body": {"text": text}}).response.body
    assert body == {"length": len(text.encode("utf-16-le")) // 2, "text": text}
    assert call(FINE).response.body == {"fine": True}
