"""Keep manifest text: parsing, normalization, signatures, portable data hash.

Pure functions, no I/O.  Two "canonical" forms matter and they are different:

* :func:`normalize` is the form the Python SDK produces when it saves a
  collection (``Collection.manifest_text(normalize=True)``): a depth-first walk
  of the directory tree, files sorted before sub-directories, one line per
  directory, adjacent segments merged, empty directories kept as a
  ``0:0:\\056`` placeholder.  The SDK hashes *this* form locally, so a server
  that wants ``portable_data_hash`` to agree with the client should store it.
* :func:`portable_manifest_text` is what the Arvados API server hashes: the
  manifest *as given*, re-tokenised, with every locator reduced to
  ``md5+size``.  It does not reorder anything, which is why the PDH of an
  unnormalized manifest differs from the PDH of its normalized form.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from bisect import bisect_right
from typing import Callable, Iterable, Iterator

EMPTY_BLOCK_LOCATOR = "d41d8cd98f00b204e9800998ecf8427e+0"
EMPTY_DIR_PLACEHOLDER = "."

# Same shape as Keep::Locator::LOCATOR_REGEXP: hash, optional size, hints.
LOCATOR_RE = re.compile(r"^([0-9a-f]{32})(\+[0-9]+)?((?:\+[A-Z][-A-Za-z0-9@_]*)*)$")
_SEGMENT_RE = re.compile(r"^([0-9]+):([0-9]+):(\S+)$")
_PERM_HINT_RE = re.compile(r"\+A[^+]*")
_ESCAPE_RE = re.compile(r"[\\:\000-\040]")
_UNESCAPE_RE = re.compile(r"\\([0-3][0-7][0-7])")
# ASCII whitespace only: str.split() would also split on U+00A0 etc., which
# may legitimately appear (unescaped) in names.
_WS_RE = re.compile(r"[ \t\n\v\f\r]+")


class ManifestError(ValueError):
    """The manifest text is not a valid Keep manifest."""


@dataclass(frozen=True)
class Segment:
    """A byte range ``[offset, offset+length)`` inside one Keep block."""

    locator: str
    offset: int
    length: int


@dataclass
class ManifestTree:
    """A collection's files and directories, independent of stream layout.

    ``files`` maps a relative path (``"dir/name"``, no leading ``./``) to the
    file's segments, in manifest order.  ``dirs`` holds every directory that
    exists, explicitly or implicitly (the root is ``""``).
    """

    files: dict[str, list[Segment]] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: {""})

    def file_size(self, path: str) -> int:
        return sum(s.length for s in self.files[path])


def escape(name: str) -> str:
    """Escape a stream or file name the way the SDK and Go code do."""
    return _ESCAPE_RE.sub(lambda m: "\\%03o" % ord(m.group(0)), name)


def unescape(name: str) -> str:
    return _UNESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), name)


def locator_size(locator: str) -> int:
    m = LOCATOR_RE.match(locator)
    if not m or not m.group(2):
        raise ManifestError(f"locator without size hint: {locator!r}")
    return int(m.group(2)[1:])


def strip_locator(locator: str) -> str:
    """Reduce a locator to ``md5+size`` (or bare md5 if it has no size)."""
    m = LOCATOR_RE.match(locator)
    if not m:
        raise ManifestError(f"invalid locator: {locator!r}")
    return m.group(1) + (m.group(2) or "")


def _lines(text: str) -> list[str]:
    if not text:
        return []
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return lines


def _words(line: str) -> list[str]:
    return [w for w in _WS_RE.split(line) if w]


def _munge_locators(text: str, fn: Callable[[str], str]) -> str:
    """Rewrite every locator token, re-tokenising lines like the API server.

    The server rebuilds each line as ``' '.join(line.split())``; doing the
    same here keeps PDHs byte-identical for sloppy (extra-space) input.
    """
    if text == "":
        return ""
    out = []
    for line in _lines(text):
        words = _words(line)
        out.append(" ".join(words[:1] + [fn(w) if LOCATOR_RE.match(w) else w for w in words[1:]]))
    return "\n".join(out) + "\n"


def strip_signatures(text: str) -> str:
    """Remove permission hints (``+A...``) only, keeping other hints.

    This is what the API server stores as ``unsigned_manifest_text``.
    """
    return _munge_locators(text, lambda loc: _PERM_HINT_RE.sub("", loc))


def portable_manifest_text(text: str) -> str:
    """Every locator reduced to ``md5+size``: the text the PDH is taken of."""
    return _munge_locators(text, strip_locator)


def portable_data_hash(text: str) -> str:
    """``md5(portable text)+len`` exactly as the API server computes it."""
    data = portable_manifest_text(text).encode("utf-8")
    return f"{hashlib.md5(data).hexdigest()}+{len(data)}"


def sign_manifest(text: str, sign_fn: Callable[[str], str]) -> str:
    """Re-sign every locator: old ``+A`` hints are dropped before ``sign_fn``."""
    return _munge_locators(text, lambda loc: sign_fn(_PERM_HINT_RE.sub("", loc)))


def locators(text: str) -> list[str]:
    """Distinct locator tokens in order of first appearance (hints kept)."""
    seen: dict[str, None] = {}
    for line in _lines(text):
        for w in _words(line)[1:]:
            if LOCATOR_RE.match(w):
                seen.setdefault(w, None)
    return list(seen)


def block_digests(text: str) -> list[str]:
    """Distinct md5 digests referenced by the manifest."""
    return list(dict.fromkeys(loc[:32] for loc in locators(text)))


def _check_name(name: str, what: str) -> None:
    parts = name.split("/")
    if any(p in ("", "..") for p in parts) or (what == "file" and "." in parts[:-1]):
        raise ManifestError(f"invalid {what} name: {name!r}")


def _stream_segments(blocks: list[tuple[str, int]], starts: list[int],
                     pos: int, size: int) -> Iterator[Segment]:
    """Map a stream range onto the blocks covering it."""
    end = pos + size
    total = starts[-1] + blocks[-1][1] if blocks else 0
    if end > total:
        raise ManifestError(f"file segment {pos}:{size} beyond stream end {total}")
    i = bisect_right(starts, pos) - 1
    while pos < end:
        loc, bsize = blocks[i]
        if bsize:
            start = starts[i]
            take = min(end, start + bsize) - pos
            if take > 0:
                yield Segment(loc, pos - start, take)
                pos += take
        i += 1


def parse(text: str) -> ManifestTree:
    """Parse manifest text into a :class:`ManifestTree`.

    Repeated file tokens for the same path concatenate (manifest spec);
    zero-length segments vanish, as they do in the SDK.
    """
    tree = ManifestTree()
    if text and not text.endswith("\n"):
        raise ManifestError("manifest must end with a newline")
    for lineno, line in enumerate(_lines(text), 1):
        tokens = line.split(" ")
        if len(tokens) < 3 or "" in tokens:
            raise ManifestError(f"line {lineno}: malformed stream")
        stream = unescape(tokens[0])
        if stream != "." and not stream.startswith("./"):
            raise ManifestError(f"line {lineno}: bad stream name {tokens[0]!r}")
        stream_dir = stream[2:]
        if stream_dir:
            _check_name(stream_dir, "stream")
        _add_dir(tree, stream_dir)
        blocks: list[tuple[str, int]] = []
        starts: list[int] = []
        offset = 0
        i = 1
        while i < len(tokens) and LOCATOR_RE.match(tokens[i]):
            size = locator_size(tokens[i])
            blocks.append((tokens[i], size))
            starts.append(offset)
            offset += size
            i += 1
        if not blocks or i == len(tokens):
            raise ManifestError(f"line {lineno}: stream needs locators and files")
        for tok in tokens[i:]:
            m = _SEGMENT_RE.match(tok)
            if not m:
                raise ManifestError(f"line {lineno}: bad file token {tok!r}")
            pos, size, name = int(m.group(1)), int(m.group(2)), unescape(m.group(3))
            path = f"{stream_dir}/{name}" if stream_dir else name
            if name.split("/")[-1] == EMPTY_DIR_PLACEHOLDER:
                dirpath = path[:-2] if len(path) > 1 else ""
                if dirpath:
                    _check_name(dirpath, "directory")
                _add_dir(tree, dirpath)
                continue
            _check_name(path, "file")
            if path in tree.dirs:
                raise ManifestError(f"{path!r} is both a file and a directory")
            _add_dir(tree, path.rpartition("/")[0])
            segs = tree.files.setdefault(path, [])
            segs.extend(_stream_segments(blocks, starts, pos, size))
    return tree


def _add_dir(tree: ManifestTree, path: str) -> None:
    while path not in tree.dirs:
        if path in tree.files:
            raise ManifestError(f"{path!r} is both a file and a directory")
        tree.dirs.add(path)
        path = path.rpartition("/")[0]


def _children(tree: ManifestTree) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    files: dict[str, list[str]] = {d: [] for d in tree.dirs}
    subdirs: dict[str, list[str]] = {d: [] for d in tree.dirs}
    for p in tree.files:
        parent, _, name = p.rpartition("/")
        files[parent].append(name)
    for d in tree.dirs:
        if d:
            parent, _, name = d.rpartition("/")
            subdirs[parent].append(name)
    return files, subdirs


def _stream_line(stream: str, entries: list[tuple[str, list[Segment]]]) -> str:
    """One normalized stream: each block once, contiguous segments merged."""
    tokens = [escape(stream)]
    block_pos: dict[str, int] = {}
    offset = 0
    for _, segs in entries:
        for s in segs:
            if s.locator not in block_pos:
                tokens.append(s.locator)
                block_pos[s.locator] = offset
                offset += locator_size(s.locator)
    if len(tokens) == 1:
        tokens.append(EMPTY_BLOCK_LOCATOR)
    for name, segs in entries:
        fname = escape(name)
        span: list[int] | None = None
        for s in segs:
            start = block_pos[s.locator] + s.offset
            if span and start == span[1]:
                span[1] += s.length
                continue
            if span:
                tokens.append(f"{span[0]}:{span[1] - span[0]}:{fname}")
            span = [start, start + s.length]
        tokens.append(f"{span[0]}:{span[1] - span[0]}:{fname}" if span else f"0:0:{fname}")
    return " ".join(tokens) + "\n"


def render(tree: ManifestTree) -> str:
    """Normalized manifest text for a tree (see module docstring)."""
    files, subdirs = _children(tree)
    out: list[str] = []

    def walk(d: str) -> None:
        stream = f"./{d}" if d else "."
        names = sorted(files[d])
        if names:
            prefix = f"{d}/" if d else ""
            out.append(_stream_line(stream, [(n, tree.files[prefix + n]) for n in names]))
        elif d and not subdirs[d]:
            out.append(f"{escape(stream)} {EMPTY_BLOCK_LOCATOR} 0:0:\\056\n")
        for sub in sorted(subdirs[d]):
            walk(f"{d}/{sub}" if d else sub)

    walk("")
    return "".join(out)


def normalize(text: str) -> str:
    """Normalized form, identical to the SDK's ``manifest_text(normalize=True)``."""
    return render(parse(text))


def file_stats(text: str) -> tuple[int, int]:
    """``(file_count, file_size_total)`` for the collection record."""
    tree = parse(text)
    return len(tree.files), sum(tree.file_size(p) for p in tree.files)


def total_size(text: str) -> int:
    """Total bytes of file content (what ``file_size_total`` reports)."""
    return file_stats(text)[1]


def iter_files(text: str) -> Iterable[tuple[str, list[Segment]]]:
    """``(path, segments)`` pairs sorted by path."""
    tree = parse(text)
    return sorted(tree.files.items())
