"""Run a command; write its wall time and ``os.wait4`` rusage as JSON to a file; exit with its code.

    python -I -S bench/_wait4.py RESULT.json CMD [ARG...]

Why a separate, small process: on Linux a forked child's peak RSS (``ru_maxrss``) starts at its
parent's RSS, so a runner forked straight from the benchmark (hundreds of MiB after storing the
worker image) would report the benchmark's size. Forked from this lean wrapper, it reports its own.
CPU and peak RSS cover the command and every descendant it waited for.
"""
import json
import os
import sys
import time


def main() -> int:
    result, cmd = sys.argv[1], sys.argv[2:]
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        except OSError as e:
            print(f"_wait4: cannot run {cmd[0]}: {e}", file=sys.stderr)
        os._exit(127)
    _, status, ru = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    with open(result, "w") as f:
        json.dump({"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kib": ru.ru_maxrss}, f)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code  # killed by a signal: 128 + its number, as a shell says


if __name__ == "__main__":
    sys.exit(main())
