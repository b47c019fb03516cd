"""Single-stream manifests of the job store's own collections, edited as text: pure functions.

A job's record holds the job description (``job``) and the job's body files (``body-<key>``),
each written by the SDK as a one-file, one-stream manifest (``. <locators> <pos>:<size>:<name>``).
Putting several of them in one collection, or dropping one, is arithmetic on those lines: no
block moves, no SDK collection objects (a few microseconds instead of milliseconds per job).
Only manifests of that shape are accepted; anything else raises ValueError.
"""
from __future__ import annotations

import re

_LOCATOR = re.compile(r"^[0-9a-f]{32}\+(\d+)(\+\S*)?$")
_SEGMENT = re.compile(r"^(\d+):(\d+):(\S+)$")
EMPTY_BLOCK = "d41d8cd98f00b204e9800998ecf8427e+0"


def _parse(manifest: str) -> tuple[list[str], list[tuple[int, int, str]]]:
    """(locators, [(pos, size, name)]) of a one-stream ``.`` manifest ("" is empty)."""
    lines = [line for line in manifest.split("\n") if line]
    if not lines:
        return [], []
    tokens = lines[0].split(" ")
    if len(lines) != 1 or tokens[0] != ".":
        raise ValueError("not a one-stream manifest of the job store")
    locators: list[str] = []
    segments: list[tuple[int, int, str]] = []
    for token in tokens[1:]:
        seg = _SEGMENT.match(token)
        if seg is not None and (locators or segments):
            segments.append((int(seg.group(1)), int(seg.group(2)), seg.group(3)))
        elif _LOCATOR.match(token) and not segments:
            locators.append(token)
        else:
            raise ValueError(f"unexpected manifest token {token[:40]!r}")
    return locators, segments


def _format(locators: list[str], segments: list[tuple[int, int, str]]) -> str:
    if not segments:
        return ""
    return " ".join([".", *locators, *(f"{p}:{s}:{n}" for p, s, n in segments)]) + "\n"


def _stream_size(locators: list[str]) -> int:
    return sum(int(_LOCATOR.match(loc).group(1)) for loc in locators)  # type: ignore[union-attr]


def merge(*manifests: str) -> str:
    """One manifest with the files of all of ``manifests`` (names must differ)."""
    locators: list[str] = []
    segments: list[tuple[int, int, str]] = []
    for manifest in manifests:
        locs, segs = _parse(manifest)
        offset = _stream_size(locators)
        if {n for _, _, n in segs} & {n for _, _, n in segments}:
            raise ValueError("two files of the same name")
        locators.extend(locs)
        segments.extend((p + offset, s, n) for p, s, n in segs)
    return _format(locators, segments)


def without(manifest: str, name: str) -> str:
    """``manifest`` without the file ``name`` (blocks only it used are left out)."""
    locators, segments = _parse(manifest)
    kept = [seg for seg in segments if seg[2] != name]
    return _rebase(locators, kept)


def _rebase(locators: list[str], segments: list[tuple[int, int, str]]) -> str:
    """Keep only the blocks the segments cover, each segment moved back by the size of the
    dropped blocks before it (a file is a contiguous range, so none falls inside one)."""
    spans, start = [], 0
    for loc in locators:
        size = int(_LOCATOR.match(loc).group(1))  # type: ignore[union-attr]
        spans.append((start, start + size, loc))
        start += size
    used = [span for span in spans if any(s and p < span[1] and p + s > span[0] for p, s, _ in segments)]
    if not used:  # only empty files (or none): the empty block keeps the stream valid
        return _format([EMPTY_BLOCK], [(0, 0, n) for _, _, n in segments])
    dropped = [span for span in spans if span not in used]

    def moved(pos: int, size: int) -> int:
        return 0 if not size else pos - sum(b - a for a, b, _ in dropped if b <= pos)

    return _format([loc for _, _, loc in used], [(moved(p, s), s, n) for p, s, n in segments])


def is_one_segment(manifest: str) -> bool:
    """Whether ``manifest`` holds one file in one contiguous segment of one ``.`` stream: the
    shape the job store's records take (anything else is stored anew)."""
    try:
        return len(_parse(manifest)[1]) == 1
    except ValueError:
        return False


def members(manifest: str) -> list[str]:
    """The file names of a manifest (one stream)."""
    return [n for _, _, n in _parse(manifest)[1]]


def size_of(manifest: str, name: str) -> int | None:
    """The size of the file ``name``, or None if the manifest has no such file."""
    sizes = [s for _, s, n in _parse(manifest)[1] if n == name]
    return sizes[0] if sizes else None
