"""Tests for the namespace runtime: the container sees its mounts, and nothing leaks out.

These need root (mount + PID namespaces); they are skipped otherwise.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from toil_arvados.localcluster.runtime import ContainerSetupError
from toil_arvados.localcluster.runtime.namespace import NamespaceRuntime

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0 or not sys.platform.startswith("linux"),
                       reason="needs root on Linux for mount/PID namespaces"),
]

PDH = "d41d8cd98f00b204e9800998ecf8427e+0"
REPO = Path(__file__).resolve().parent.parent
#: The image every container here runs in (python:3-slim, built from Debian packages).
IMAGE: dict[str, Any] = {}


@pytest.fixture(autouse=True, scope="module")
def _image(built_images: dict[str, Any]) -> None:
    from conftest import PYTHON_IMAGE

    IMAGE["tarball"] = str(built_images[PYTHON_IMAGE].tarball)


def make_spec(tmp: Path, command: list[str], **over: Any) -> dict[str, Any]:
    """A run spec like the dispatcher builds: output dir, one keep dir, /tmp, a file mount."""
    for d in ("out", "keep", "tmp", "logs"):
        (tmp / d).mkdir(exist_ok=True)
    (tmp / "keep" / "sub").mkdir(exist_ok=True)
    (tmp / "keep" / "sub" / "data.txt").write_text("keep data\n")
    (tmp / "input.json").write_text('{"x": 1}\n')
    spec: dict[str, Any] = {
        "container_uuid": "zzzzz-dz642-" + os.urandom(8).hex()[:15],
        "command": command,
        "cwd": "/var/spool/cwl",
        "environment": {"HOME": "/var/spool/cwl", "TMPDIR": "/tmp"},
        "mounts": [
            {"path": "/var/spool/cwl/cwl.input.json", "source": str(tmp / "input.json"),
             "writable": False},
            {"path": "/var/spool/cwl", "source": str(tmp / "out"), "writable": True},
            {"path": f"/keep/{PDH}", "source": str(tmp / "keep"), "writable": False},
            {"path": "/tmp", "source": str(tmp / "tmp"), "writable": True},
        ],
        "stdin": None,
        "stdout": None,
        "stdout_log": str(tmp / "logs" / "stdout.txt"),
        "stderr_log": str(tmp / "logs" / "stderr.txt"),
        "crunch_log": str(tmp / "logs" / "crunch-run.txt"),
        "image": "python:3-slim (pdh 0123+45)",
        "image_tarball": IMAGE["tarball"],
        "rootfs_scratch": str(_scratch(tmp)),
        "vcpus": 1,
        "ram": 256 * 1024 * 1024,
    }
    spec.update(over)
    return spec


def _scratch(tmp: Path) -> Path:
    """A fresh directory for one container's writable layer (as the dispatcher makes one)."""
    d = tmp / f"rootfs-{os.urandom(4).hex()}"
    d.mkdir()
    return d


def run(spec: dict[str, Any], runtime: NamespaceRuntime | None = None) -> tuple[int, Any]:
    """Start and wait for one container; return (exit code, the RunningContainer)."""

    async def go() -> tuple[int, Any]:
        c = await (runtime or NamespaceRuntime()).start(spec)
        return await c.wait(), c

    return asyncio.run(go())


_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ", re.M)


def read(tmp: Path, name: str) -> str:
    """A log file's text without the timestamp crunch-run style logs put before every line."""
    p = tmp / "logs" / name
    return _STAMP.sub("", p.read_text()) if p.exists() else ""


def test_stdout_and_stderr_log_lines_are_timestamped(tmp_path: Path) -> None:
    # crunch-run writes stdout.txt/stderr.txt with an RFC 3339 timestamp on every line, and
    # arvados-cwl-runner parses them (done.logtail); a partial line gets one stamp only.
    code, _ = run(make_spec(tmp_path, ["sh", "-c", "printf 'a\\nb'; sleep 0.1; printf 'c\\n'; echo e >&2"]))
    assert code == 0
    out = (tmp_path / "logs" / "stdout.txt").read_text().splitlines()
    assert [_STAMP.sub("", line) for line in out] == ["a", "bc"]
    assert all(_STAMP.match(line) for line in out)
    err = (tmp_path / "logs" / "stderr.txt").read_text()
    assert _STAMP.match(err) and _STAMP.sub("", err) == "e\n"


def test_mounts_visible_at_their_paths_and_host_untouched(tmp_path: Path) -> None:
    host_spool_before = sorted(os.listdir("/var/spool"))
    assert not os.path.exists("/keep")
    script = (
        "set -e; pwd; echo written > /var/spool/cwl/x; cat cwl.input.json; "
        f"cat /keep/{PDH}/sub/data.txt; echo t > /tmp/t; ls /var/spool; "
        f"test -x /usr/bin/env && ! test -e {REPO} && echo image-root-ok"
    )
    code, c = run(make_spec(tmp_path, ["sh", "-c", script]))
    out = read(tmp_path, "stdout.txt")
    assert code == 0, read(tmp_path, "stderr.txt")
    assert c.signal is None and not c.killed
    lines = out.splitlines()
    assert lines[0] == "/var/spool/cwl"
    assert '{"x": 1}' in lines and "keep data" in lines and "image-root-ok" in lines
    assert "cwl" in lines  # /var/spool inside shows the mount point
    assert (tmp_path / "out" / "x").read_text() == "written\n"
    assert (tmp_path / "tmp" / "t").read_text() == "t\n"
    # Host side: nothing created under /var/spool or /keep.
    assert not os.path.exists("/keep")
    assert sorted(os.listdir("/var/spool")) == host_spool_before
    assert not os.path.exists("/var/spool/cwl")
    # The file mount's mount point was cleaned out of the output directory.
    assert sorted(os.listdir(tmp_path / "out")) == ["x"]
    crunch = read(tmp_path, "crunch-run.txt")
    assert "image python:3-slim (pdh 0123+45) (2 layer(s)) as the root filesystem" in crunch
    assert "own mount and PID namespaces" in crunch
    assert "exited with code 0" in crunch


def test_read_only_mounts_refuse_writes(tmp_path: Path) -> None:
    script = (
        f"if touch /keep/{PDH}/new 2>/dev/null; then echo keep-writable; fi; "
        f"if echo x >> /keep/{PDH}/sub/data.txt 2>/dev/null; then echo keep-file-writable; fi; "
        "if echo x >> /var/spool/cwl/cwl.input.json 2>/dev/null; then echo file-writable; fi; "
        "touch /var/spool/cwl/ok && echo done"
    )
    code, _ = run(make_spec(tmp_path, ["sh", "-c", script]))
    assert code == 0
    assert read(tmp_path, "stdout.txt").split() == ["done"]
    assert not (tmp_path / "keep" / "new").exists()
    assert (tmp_path / "keep" / "sub" / "data.txt").read_text() == "keep data\n"
    assert (tmp_path / "input.json").read_text() == '{"x": 1}\n'


def test_pid_namespace_shows_only_container_processes(tmp_path: Path) -> None:
    script = "echo $$; ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '"
    code, _ = run(make_spec(tmp_path, ["sh", "-c", script]))
    assert code == 0
    first, second = read(tmp_path, "stdout.txt").splitlines()
    assert first == "2"  # PID 1 is nsinit's init; the command is its child
    pids = [int(p) for p in second.split()]
    assert pids[:2] == [1, 2] and len(pids) <= 6, pids


def test_exit_codes_and_signals(tmp_path: Path) -> None:
    code, c = run(make_spec(tmp_path, ["sh", "-c", "exit 7"]))
    assert code == 7 and c.signal is None
    code, c = run(make_spec(tmp_path, ["sh", "-c", "kill -TERM $$"]))
    assert code == 128 + 15 and c.signal == 15 and c.signal_name == "SIGTERM"
    assert not c.killed
    assert "killed by signal 15 (SIGTERM)" in read(tmp_path, "crunch-run.txt")
    code, _ = run(make_spec(tmp_path, ["false"]))
    assert code == 1


def test_environment_is_the_image_env_under_the_given_one(tmp_path: Path) -> None:
    # As Docker: the image's ENV (python:3-slim sets PATH and LANG), overridden by the container's.
    env = {"A": "1", "B": "two words", "PATH": "/usr/bin:/bin", "HOME": "/var/spool/cwl"}
    code, _ = run(make_spec(tmp_path, ["env"], environment=env))
    assert code == 0
    got = dict(line.split("=", 1) for line in read(tmp_path, "stdout.txt").splitlines())
    assert got == {**env, "LANG": "C.UTF-8"}
    (tmp_path / "logs" / "stdout.txt").unlink()
    code, _ = run(make_spec(tmp_path, ["env"], environment={"K": "V"}))
    got = dict(line.split("=", 1) for line in read(tmp_path, "stdout.txt").splitlines())
    assert got["K"] == "V" and got["HOME"] == "/root" and "/usr/bin" in got["PATH"]
    assert set(got) == {"K", "HOME", "PATH", "LANG"}
    assert os.environ.get("PATH") != got["PATH"] or "/.venv/" not in got["PATH"]


def test_stdin_and_stdout_redirection(tmp_path: Path) -> None:
    (tmp_path / "stdin.txt").write_text("line one\nline two\n")
    stdout_file = tmp_path / "out" / "captured.txt"
    spec = make_spec(tmp_path, ["sh", "-c", "tr a-z A-Z; echo err >&2"],
                     stdin=str(tmp_path / "stdin.txt"), stdout=str(stdout_file))
    code, _ = run(spec)
    assert code == 0
    assert stdout_file.read_text() == "LINE ONE\nLINE TWO\n"
    assert read(tmp_path, "stdout.txt") == ""
    assert read(tmp_path, "stderr.txt") == "err\n"
    # No stdin given: the command reads /dev/null, it does not hang.
    code, _ = run(make_spec(tmp_path, ["cat"]))
    assert code == 0


def test_missing_executable_is_127(tmp_path: Path) -> None:
    code, _ = run(make_spec(tmp_path, ["no-such-program-xyz", "arg"]))
    assert code == 127
    assert "no-such-program-xyz" in read(tmp_path, "stderr.txt")
    assert "No such file or directory" in read(tmp_path, "stderr.txt")


def test_bad_mount_source_is_a_setup_error(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, ["true"])
    spec["mounts"].append({"path": "/keep/missing", "source": str(tmp_path / "nope"),
                           "writable": False})
    with pytest.raises(ContainerSetupError, match="nope"):
        run(spec)
    assert "container setup failed" in read(tmp_path, "crunch-run.txt")


def _host_processes_with(marker: str) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(p))
            except OSError:
                pass
    return found


def test_kill_stops_everything_promptly(tmp_path: Path) -> None:
    marker = "1000.%d" % (os.getpid() % 997)  # a sleep duration unique to this test

    async def go() -> tuple[int, Any, float]:
        c = await NamespaceRuntime().start(
            make_spec(tmp_path, ["sh", "-c", f"sleep {marker} & sleep {marker}; wait"]))
        for _ in range(200):  # wait until both sleeps run
            if len(_host_processes_with(marker)) >= 3:
                break
            await asyncio.sleep(0.01)
        assert len(_host_processes_with(marker)) >= 3
        t0 = time.monotonic()
        c.kill()
        code = await asyncio.wait_for(c.wait(), 5)
        return code, c, time.monotonic() - t0

    code, c, elapsed = asyncio.run(go())
    assert code == 137 and c.killed and c.signal == 9
    assert elapsed < 1.0, elapsed
    assert _host_processes_with(marker) == []
    assert not os.path.exists(f"/proc/{c.pid}")
    assert "killed (cancelled)" in read(tmp_path, "crunch-run.txt")


def test_host_files_are_invisible(tmp_path: Path) -> None:
    """Only the image and the mounts: not the leader's venv or checkout, not a host file next to
    the mounts, not the layer cache, not the host's Python."""
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only\n")
    paths = [sys.prefix, str(REPO), str(secret), str(tmp_path), os.path.expanduser("~/.cache")]
    script = ("python3 -c 'import sys; print(sys.prefix)'; "
              + "; ".join(f"test -e {p} && echo VISIBLE {p}" for p in paths) + "; true")
    code, _ = run(make_spec(tmp_path, ["sh", "-c", script]))
    assert code == 0, read(tmp_path, "stderr.txt")
    assert read(tmp_path, "stdout.txt").split() == ["/usr"]


_PROBE = """
import socket, sys
own = socket.create_server(("127.0.0.1", 0))  # the container's own loopback works either way
socket.create_connection(own.getsockname(), 2).close()
print(sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]))
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2).close()
    print("reached the host")
except OSError as e:
    print("unreachable:", type(e).__name__)
"""


@pytest.mark.parametrize("api", [False, True])
def test_network_only_with_api_access(tmp_path: Path, api: bool) -> None:
    """As crunch-run: no API access, no network (a namespace with only ``lo``, up); with it, the
    host's network, where the cluster's API listens."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as host_server:
        port = host_server.getsockname()[1]
        code, _ = run(make_spec(tmp_path, ["python3", "-c", _PROBE, str(port)], api=api))
    out = read(tmp_path, "stdout.txt")
    assert code == 0, read(tmp_path, "stderr.txt")
    if api:
        assert "reached the host" in out and "network: host" in read(tmp_path, "crunch-run.txt")
    else:
        assert out.splitlines() == ["['lo']", "unreachable: ConnectionRefusedError"], out
        assert "network: none" in read(tmp_path, "crunch-run.txt")


def test_limits_are_logged_and_cgroups_cleaned(tmp_path: Path) -> None:
    code, c = run(make_spec(tmp_path, ["true"]))
    assert code == 0
    crunch = read(tmp_path, "crunch-run.txt")
    assert "ram" in crunch and "vcpus" in crunch
    for line in crunch.splitlines():
        if "cgroup /" in line:
            d = line.rsplit("cgroup ", 1)[1].rstrip(")")
            assert not os.path.exists(d), d


def test_concurrent_containers_are_isolated(tmp_path: Path) -> None:
    async def go() -> list[int]:
        rt = NamespaceRuntime()
        cs = []
        for i in range(4):
            d = tmp_path / f"c{i}"
            d.mkdir()
            cs.append(await rt.start(make_spec(
                d, ["sh", "-c", f"echo {i} > /var/spool/cwl/id; ls /var/spool/cwl"])))
        return list(await asyncio.gather(*(c.wait() for c in cs)))

    assert asyncio.run(go()) == [0, 0, 0, 0]
    for i in range(4):
        assert (tmp_path / f"c{i}" / "out" / "id").read_text() == f"{i}\n"
        assert read(tmp_path / f"c{i}", "stdout.txt").split() == ["cwl.input.json", "id"]


def test_overhead_of_true(tmp_path: Path) -> None:
    async def go() -> list[float]:
        rt = NamespaceRuntime()
        times = []
        for i in range(10):
            spec = make_spec(tmp_path, ["true"])
            t0 = time.perf_counter()
            c = await rt.start(spec)
            assert await c.wait() == 0
            times.append(time.perf_counter() - t0)
        return times

    times = asyncio.run(go())
    med = statistics.median(times)
    print(f"\nnamespace runtime overhead for `true`: median {med * 1000:.1f} ms, "
          f"min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")
    assert med < 0.25, times


def test_leftover_background_processes_die_with_the_command(tmp_path: Path) -> None:
    marker = "1000.%d" % (os.getpid() % 991 + 1)
    code, _ = run(make_spec(tmp_path, ["sh", "-c", f"sleep {marker} >/dev/null 2>&1 & exit 0"]))
    assert code == 0
    assert _host_processes_with(marker) == []


def test_signal_dispositions_are_reset(tmp_path: Path) -> None:
    """Python ignores SIGPIPE; the command must not inherit that (``yes | head`` must work)."""
    code, _ = run(make_spec(tmp_path, ["sh", "-c",
                                       "grep -E '^Sig(Ign|Blk)' /proc/self/status; yes | head -n1"]))
    assert code == 0
    assert read(tmp_path, "stdout.txt").split() == [
        "SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000", "y"]


def test_init_killed_from_outside_is_lost(tmp_path: Path) -> None:
    async def go() -> Any:
        c = await NamespaceRuntime().start(make_spec(tmp_path, ["sleep", "1000"]))
        children: list[str] = []
        for _ in range(200):  # the monitor's child is the container's PID 1
            with open(f"/proc/{c.pid}/task/{c.pid}/children") as f:
                children = f.read().split()
            if children and _host_processes_with("1000"):
                break
            await asyncio.sleep(0.01)
        os.kill(int(children[0]), 9)
        await asyncio.wait_for(c.wait(), 5)
        return c

    c = asyncio.run(go())
    assert c.lost and not c.killed
    assert "died unexpectedly" in read(tmp_path, "crunch-run.txt")


def test_memory_limit_kills_the_command_not_init(tmp_path: Path) -> None:
    if not os.path.isdir("/sys/fs/cgroup/memory"):
        pytest.skip("no cgroup v1 memory controller")
    code, c = run(make_spec(tmp_path, ["python3", "-c", "x = bytearray(300 << 20)"],
                            ram=64 << 20))
    if "enforcing ram" not in read(tmp_path, "crunch-run.txt"):
        pytest.skip("memory limit not enforceable here")
    assert code == 137 and c.signal == 9 and not c.lost and not c.killed
    assert "Container using over 99% of memory" in read(tmp_path, "crunch-run.txt")
