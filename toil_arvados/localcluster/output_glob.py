"""``output_glob``: which files of a container's output directory go into its output collection.

Arvados' rules: a pattern is matched against paths relative to the output directory; ``*`` and
``?`` stay within one path component, ``**`` spans any number of directories; a file is kept if
any pattern matches it or one of the directories that contain it (a matched directory is kept
whole). No patterns means everything is kept.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence


def _translate(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                body = pattern[i + 1:end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matcher(patterns: Sequence[str] | None) -> Callable[[str], bool]:
    """A predicate over relative file paths implementing the rules above."""
    if not patterns:
        return lambda _path: True
    compiled = [_translate(p) for p in patterns]

    def keep(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        return any(rx.match(prefix) for rx in compiled for prefix in prefixes)

    return keep
