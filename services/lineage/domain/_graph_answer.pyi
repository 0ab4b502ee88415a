from array import array
from collections.abc import Iterable

def answer(
    seeds: Iterable[int],
    depth: int,
    downstream: bool,
    upstream: bool,
    rows: list[list[object] | None],
    version_heads: array[int],
    run_key: list[str],
    run_quoted: list[bytes],
    run_fragment: list[bytes],
    inputs: list[array[int]],
    outputs: list[array[int]],
    run_sides: bytearray,
    run_heads: array[int],
) -> bytes: ...
