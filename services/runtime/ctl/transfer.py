"""Streamed bodies with a byte progress bar on stderr: files go up in blocks as they are
read (never whole in memory), answers come down into a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import httpx
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from services.runtime.ctl.output import err

__all__ = ["BLOCK", "atomic_file", "byte_progress", "read_blocks", "receive"]

BLOCK = 1 << 20
"""Bytes per block sent or written."""


def byte_progress(enabled: bool) -> Progress:
    """A transient bar per transfer (bytes, speed, time left); nothing when disabled."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err(),
        transient=True,
        disable=not enabled,
    )


def read_blocks(
    source: BinaryIO, advance: Callable[[int], None], block: int = BLOCK
) -> Iterator[bytes]:
    """The source in blocks, reporting each block's size as it is handed to the network."""
    while data := source.read(block):
        advance(len(data))
        yield data


def receive(response: httpx.Response, sink: BinaryIO, progress: Progress, task: TaskID) -> int:
    """Write the (decoded) body to ``sink``; the bar follows the bytes on the wire."""
    written = 0
    for data in response.iter_bytes(BLOCK):
        sink.write(data)
        written += len(data)
        progress.update(task, completed=response.num_bytes_downloaded)
    sink.flush()
    return written


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A temporary file next to ``path``, moved onto it only when the block succeeds."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
