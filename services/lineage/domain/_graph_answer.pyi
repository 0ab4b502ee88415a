from array import array
from collections.abc import Iterable

_Row = tuple[str, bytes, bytes, bytes, bytes, tuple[bytes, ...], tuple[bytes, ...]]

def answer(
    seeds: Iterable[int],
    depth: int,
    downstream: bool,
    upstream: bool,
    rows: list[_Row | None],
    version_heads: array[int],
    run_rows: list[_Row],
    run_heads: array[int],
    run_sides: bytearray,
) -> bytes: ...
