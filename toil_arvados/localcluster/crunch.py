"""What crunch-run derives from a container record, before and while running it (pure).

Rules Arvados enforces in crunch-run rather than in the API server: the scratch space asked
for, mounts it refuses (the container is then cancelled with the reason in its log), the
maximum run time, and the container record as written into its log (without secrets).
"""
from __future__ import annotations


def tmp_capacity(c: dict) -> int:
    """The scratch space a container asks for: the sum of its ``tmp`` mounts' capacities."""
    return sum(int(m.get("capacity") or 0) for m in (c.get("mounts") or {}).values()
               if isinstance(m, dict) and m.get("kind") == "tmp")


def crunch_run_mount_error(c: dict) -> str | None:
    """The first mount crunch-run's SetupMounts refuses, in its words (None: all acceptable).

    Arvados enforces these in crunch-run, not in the API server: the request is accepted and
    its container ends Cancelled with the reason in its log, so we do the same.
    """
    out = c.get("output_path") or ""
    mounts = {**(c.get("mounts") or {}), **(c.get("secret_mounts") or {})}
    for bind in sorted(mounts):
        m = mounts[bind] or {}
        kind = m.get("kind")
        under_output = bind.startswith(out + "/") and bind != out + "/"
        if under_output and kind not in ("collection", "text", "json"):
            return ("only mount points of kind 'collection', 'text' or 'json' are supported underneath "
                    f"the output_path for {bind!r}, was {kind!r}")
        if kind == "collection" and bind != "stdin" and m.get("portable_data_hash") and m.get("writable") \
                and not bind.startswith(out + "/"):
            return "can never write to a collection specified by portable data hash"
    return None


def max_run_time(c: dict) -> float:
    """``scheduling_parameters.max_run_time`` in seconds; 0 (or anything unusable) is no limit."""
    value = (c.get("scheduling_parameters") or {}).get("max_run_time") or 0
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        return 0.0


def public_container(c: dict) -> dict:
    return {k: v for k, v in c.items() if k not in ("secret_mounts", "runtime_token")}


#: crunch-run's memory thresholds: it logs a line as the container's rss passes each share of
#: its ``ram`` (crunchrun.go: NewThresholdsFromPercentages(RAM, 90, 95, 99)).
MEMORY_THRESHOLDS = (90, 95, 99)


def memory_threshold_lines(peak: int, total: int) -> list[str]:
    """What crunch-run's log says of a container that used ``peak`` bytes of its ``total`` ram,
    in its words ("Container using over 95% of memory (rss N/M bytes)"). A container killed by
    the kernel for memory has passed them all; clients (Arvados' CWL runner) look for them."""
    return [f"Container using over {p}% of memory (rss {peak}/{total} bytes)"
            for p in MEMORY_THRESHOLDS if total and peak >= total * p // 100]
