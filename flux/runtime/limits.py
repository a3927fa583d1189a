"""What one run of a function may use: wall-clock time, memory and (for Wasm) CPU fuel; set per function."""

from __future__ import annotations

from dataclasses import dataclass

from flux.errors import InvalidConfig

MIB = 1024 * 1024


@dataclass(frozen=True)
class FunctionLimits:
    timeout_ms: int = 30_000
    memory_mb: int = 128
    fuel: int = 10_000_000_000  # about as many Wasm instructions; Deno has no fuel, only the wall clock

    def __post_init__(self) -> None:
        for name in ("timeout_ms", "memory_mb", "fuel"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidConfig(f"function limit {name} must be a positive whole number, not {value!r}")

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * MIB
