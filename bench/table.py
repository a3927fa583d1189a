"""The one table `make bench` prints: a row per scenario (Flux's figure, its floor's or peer's measured in the
same run, the median of the paired ratios with their spread, the target and whether it is met), and the same
rows as JSON in bench/results/<date>-<short sha>.json."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@dataclass
class Row:
    """One scenario's line. `ratio` is Flux over the floor (per `unit`), the median of the paired ratios, and
    `spread` their lowest and highest; `target` reads like `<= 1.3` or `>= 0.7` (of the ratio unless
    `target_of` says `flux`), `note` says anything a reader needs (a scale, a stand-in for a peer)."""

    scenario: str
    unit: str
    flux: float | None
    floor: float | None
    floor_name: str
    ratio: float | None = None
    spread: tuple[float, float] | None = None
    target: str = ""
    target_of: str = "ratio"
    note: str = ""
    pairs: int = 0
    error: str = ""
    ratios: list[float] = field(default_factory=list)

    @property
    def met(self) -> str:
        if self.error:
            return "error"
        if not self.target:
            return "-"
        value = self.ratio if self.target_of == "ratio" else self.flux
        if value is None:
            return "-"
        op, bound = self.target.split()
        ok = value <= float(bound) if op == "<=" else value >= float(bound)
        return "met" if ok else "NOT met"


def paired(rounds: int, flux: Callable[[], float], floor: Callable[[], float]) -> tuple[
    list[float], list[float], list[float]
]:  # fmt: skip
    """Run `flux` and `floor` (each returns its figure for one round) back to back `rounds` times, which one
    goes first alternating, so a pair shares the machine's drift and a steady drift favours neither. Each
    side's figures and each pair's ratio (Flux over floor)."""
    flux_figures, floor_figures, ratios = [], [], []
    for index in range(rounds):
        if index % 2:
            floor_figure = floor()
            flux_figure = flux()
        else:
            flux_figure = flux()
            floor_figure = floor()
        flux_figures.append(flux_figure)
        floor_figures.append(floor_figure)
        ratios.append(flux_figure / floor_figure)
    return flux_figures, floor_figures, ratios


def interleaved(rounds: int, calls: int, flux: Callable[[], Any], floor: Callable[[], Any]) -> tuple[
    list[float], list[float], list[float]
]:  # fmt: skip
    """Like `paired`, for work measured in single calls: each round alternates one call of each side (which
    goes first alternating), `calls` times, timing each call on its own, so the two sides share the machine's
    drift at the scale of a call. Each side's mean seconds a call per round, and each round's ratio."""
    clock = time.perf_counter
    flux_figures, floor_figures, ratios = [], [], []
    for _ in range(rounds):
        flux_s = floor_s = 0.0
        for index in range(calls):
            for side in (0, 1) if index % 2 == 0 else (1, 0):
                started = clock()
                (flux if side == 0 else floor)()
                elapsed = clock() - started
                if side == 0:
                    flux_s += elapsed
                else:
                    floor_s += elapsed
        flux_figures.append(flux_s / calls)
        floor_figures.append(floor_s / calls)
        ratios.append(flux_s / floor_s)
    return flux_figures, floor_figures, ratios


def scaled(figures: tuple[list[float], list[float], list[float]], factor: float) -> tuple[
    list[float], list[float], list[float]
]:  # fmt: skip
    """The figures in another unit (seconds to microseconds: 1e6); the ratios as they are."""
    flux_figures, floor_figures, ratios = figures
    return [f * factor for f in flux_figures], [f * factor for f in floor_figures], ratios


def row_from_pairs(
    scenario: str,
    unit: str,
    floor_name: str,
    figures: tuple[list[float], list[float], list[float]],
    **extra: Any,
) -> Row:
    flux_figures, floor_figures, ratios = figures
    return Row(
        scenario, unit, statistics.median(flux_figures), statistics.median(floor_figures), floor_name,
        ratio=statistics.median(ratios), spread=(min(ratios), max(ratios)), pairs=len(ratios),
        ratios=[round(r, 4) for r in ratios], **extra,
    )  # fmt: skip


def pick(quick: bool, full: Any, quick_value: Any, tiny_value: Any) -> Any:
    """A scenario's size: `make bench`, `make bench-quick`, or bench-quick with FLUX_BENCH_TINY=1 (the smoke
    test in tests/test_bench.py, which checks that every row prints, not what it says)."""
    if os.environ.get("FLUX_BENCH_TINY") == "1":
        return tiny_value
    return quick_value if quick else full


def timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f} {unit}"
    if value >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def render(rows: list[Row]) -> str:
    header = ("scenario", "Flux", "floor / peer", "ratio [spread]", "target", "")
    lines = []
    for row in rows:
        floor = f"{_figure(row.floor, row.unit)} ({row.floor_name})" if row.floor_name else "-"
        ratio = "-"
        if row.ratio is not None:
            ratio = f"{row.ratio:.2f}x"
            if row.spread is not None:
                ratio += f" [{row.spread[0]:.2f}-{row.spread[1]:.2f}]"
        target = (row.target + ("" if row.target_of == "ratio" else f" {row.unit}")) if row.target else "-"
        flux = f"error: {row.error[:70]}" if row.error else _figure(row.flux, row.unit)
        lines.append((row.scenario, flux, floor, ratio, target, row.met))
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    out = []
    for line in [header, *lines]:
        out.append(
            "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    out.insert(1, "-" * len(out[0]))
    notes = [f"  {row.scenario}: {row.note}" for row in rows if row.note]
    return "\n".join(out + (["notes:", *notes] if notes else []))


def machine() -> dict[str, Any]:
    memory = 0
    try:
        with open("/proc/meminfo") as meminfo:
            memory = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1]) // 1024
    except (OSError, StopIteration):
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_mb": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


def short_sha() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return "nogit"
    return done.stdout.strip() or "nogit"


def write_json(rows: list[Row], meta: dict[str, Any]) -> Path:
    """bench/results/<date>-<short sha>.json (`-quick` for bench-quick), or in FLUX_BENCH_RESULTS."""
    folder = Path(os.environ.get("FLUX_BENCH_RESULTS") or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    today = datetime.datetime.now(datetime.UTC)
    path = folder / f"{today:%Y-%m-%d}-{short_sha()}{'-quick' if meta.get('quick') else ''}.json"
    document = {
        **meta,
        "date": today.isoformat(timespec="seconds"),
        "commit": short_sha(),
        "machine": machine(),
        "rows": [asdict(row) | {"met": row.met} for row in rows],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
