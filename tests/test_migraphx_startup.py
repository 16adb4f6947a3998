"""A real daemon process while MIGraphX compiles (the test double, holding the GIL as the real bindings do):
the health endpoints answer, SIGTERM stops the compile and the daemon at once, and a compile process that
crashes or is killed is a clear start-up error naming what it printed. ``--compile-only`` fills the program
cache ahead of time, and MIGraphX's tuning problem cache is kept with the programs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SHAPES_MODEL, DaemonProcess, daemon_config, free_port
from tests.double_fixtures import DOUBLES_ENV, migraphx_double_engine
from tests.source_tables import file_source
from tests.subscriber import get, poll

COMPILE_S = "60"  # longer than any test waits: the compile never finishes by itself here


def start(tmp_path: Path, daemon_process, **env: str) -> tuple[DaemonProcess, int]:
    """A daemon with a model that is not compiled yet; returns it and its HTTP port."""
    port = free_port()
    config = daemon_config(SHAPES_MODEL, file_source("cam", tmp_path / "cam.mp4", 4), free_port(), port,
                           exit_when_done=True, engine=migraphx_double_engine(tmp_path / "cache"))
    daemon = daemon_process(config, env={**DOUBLES_ENV, "MIGRAPHX_DOUBLE_COMPILE_S": COMPILE_S, **env}).start()
    return daemon, port


def compile_process(port: int) -> int:
    """The pid of the compile process, once /readyz says the daemon is compiling."""
    _, body = poll(port, "/readyz", lambda status, body: "compiling" in body.get("startup", {}).get("step", ""),
                   timeout_s=60)[-1]
    return int(re.search(r"process (\d+)", body["startup"]["step"]).group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_health_answers_and_sigterm_acts_within_a_second_during_a_compile(tmp_path: Path, daemon_process) -> None:
    daemon, port = start(tmp_path, daemon_process)
    child = compile_process(port)
    latencies, seconds = [], []
    for _ in range(10):
        started = time.monotonic()
        assert get(port, "/healthz") == (200, {"status": "ok"})
        status, body = get(port, "/readyz")
        latencies.append(time.monotonic() - started)
        assert status == 503 and body["model"] == "loading" and body["pipeline"] == "starting"
        seconds.append(body["startup"]["seconds"])
        time.sleep(0.2)
    assert max(latencies) < 1.0, f"health answers took up to {max(latencies):.2f}s while compiling"
    assert seconds == sorted(seconds) and seconds[-1] >= seconds[0] + 1.5, "the compile's elapsed time"
    assert alive(child)

    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    while alive(child) and time.monotonic() - sent < 5:
        time.sleep(0.01)
    assert time.monotonic() - sent < 1.0, "SIGTERM stops the compile process within a second"
    assert daemon.wait(10) == 0, daemon.stderr
    assert time.monotonic() - sent < 2.0, "and the daemon exits (measured: 0.4-0.5 s)"
    assert "stopped during start-up (stopped while compiling" in daemon.stderr
    assert "ready" not in daemon.stderr.split("stopped during start-up")[1]


@pytest.mark.parametrize("how, expected", [
    ("crash", r"compile process \d+ for .*shapes_nfnet\.onnx was killed by SIGABRT; it printed: "
              r"compile_ops\.cpp:42: Assertion `ins' failed\."),
    ("kill", r"compile process \d+ for .*shapes_nfnet\.onnx was killed by SIGKILL \(out of memory\? see the "
             r"kernel log\)"),
])
def test_a_compile_process_that_dies_is_a_start_up_error(tmp_path: Path, daemon_process, how: str,
                                                         expected: str) -> None:
    if how == "crash":
        daemon, _ = start(tmp_path, daemon_process, MIGRAPHX_DOUBLE_COMPILE_S="0.5",
                          MIGRAPHX_DOUBLE_COMPILE_CRASH="compile_ops.cpp:42: Assertion `ins' failed.")
    else:
        daemon, port = start(tmp_path, daemon_process)
        os.kill(compile_process(port), signal.SIGKILL)  # as the kernel's OOM killer would
    assert daemon.wait(30) == 3, daemon.stderr
    (error,) = [line for line in daemon.stderr.splitlines() if line.startswith("nfnet-daemon: error:")]
    assert re.search(expected, error), error
    assert "Traceback" not in daemon.stderr


# -- nfnet-daemon --compile-only, and the tuning problem cache --------------------------------------------

def compile_only(tmp_path: Path, engine: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """``nfnet-daemon --compile-only`` on the MIGraphX double (cache in tmp_path/cache), or on ``engine``."""
    config = tmp_path / "daemon.toml"
    config.write_text(daemon_config(SHAPES_MODEL, {"cam": tmp_path / "cam.mp4"}, free_port(), free_port(),
                                    exit_when_done=True, engine=engine or migraphx_double_engine(tmp_path / "cache")))
    return subprocess.run([sys.executable, "-m", "daemon", "--config", str(config), "--compile-only"], cwd=REPO,
                          env={**os.environ, **DOUBLES_ENV, **env}, capture_output=True, text=True, timeout=120)


def test_compile_only_fills_the_program_cache_that_the_next_run_loads(tmp_path: Path) -> None:
    first = compile_only(tmp_path)
    assert first.returncode == 0, first.stderr
    kept = re.fullmatch(r".*shapes_nfnet\.onnx: compiled in [\d.]+s; the program is kept in (\S+\.mxr)\n",
                        first.stdout)
    assert kept and Path(kept.group(1)).parent == tmp_path / "cache", first.stdout
    assert Path(kept.group(1)).is_file()
    again = compile_only(tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.endswith(f": already compiled; the program is kept in {kept.group(1)}\n"), again.stdout
    assert "compiling" not in again.stderr and "compiled program cache hit" in again.stderr


def test_compile_only_that_fails_exits_3(tmp_path: Path) -> None:
    result = compile_only(tmp_path, MIGRAPHX_DOUBLE_COMPILE_CRASH="compile_ops.cpp:42: Assertion `ins' failed.")
    assert result.returncode == 3 and result.stdout == "", result
    assert re.search(r"^nfnet-daemon: error: MIGraphX's compile process \d+ .* killed by SIGABRT; it printed: "
                     r"compile_ops\.cpp:42", result.stderr, re.M), result.stderr
    assert not list((tmp_path / "cache").glob("*.mxr"))


def test_compile_only_says_onnx_runtime_has_nothing_to_compile(tmp_path: Path) -> None:
    result = compile_only(tmp_path, engine='type = "onnxruntime"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("nothing to compile: the engine here is ONNX Runtime"), result.stdout
    assert not (tmp_path / "cache").exists()


def test_the_tuning_problem_cache_is_kept_with_the_programs(tmp_path: Path) -> None:
    """MIGraphX writes its tuning results to MIGRAPHX_PROBLEM_CACHE when a compile finishes and reads them at
    the next one: a compile cut short, then started again, does not tune from zero. One file per GPU model."""
    result = compile_only(tmp_path)
    assert result.returncode == 0, result.stderr
    (problems,) = (tmp_path / "cache" / "tuning").iterdir()
    assert problems.name == "gfx90a_sramecc+_xnack--104cu.json"
    assert json.loads(problems.read_text()), "the double's compile wrote its tuning"


def test_a_problem_cache_of_the_users_own_is_kept(tmp_path: Path) -> None:
    mine = tmp_path / "mine.json"
    result = compile_only(tmp_path, MIGRAPHX_PROBLEM_CACHE=str(mine))
    assert result.returncode == 0, result.stderr
    assert json.loads(mine.read_text()) and not (tmp_path / "cache" / "tuning").exists()


def test_a_problem_cache_cut_short_by_a_power_cut_is_dropped(tmp_path: Path) -> None:
    """MIGraphX writes the file in place: half a file would fail every later compile (the double throws as
    MIGraphX's JSON parser does), so it is removed first and tuning starts afresh."""
    assert compile_only(tmp_path).returncode == 0
    (problems,) = (tmp_path / "cache" / "tuning").iterdir()
    problems.write_text(problems.read_text()[:5])
    for program in (tmp_path / "cache").glob("*.mxr"):
        program.unlink()  # so that it compiles again
    result = compile_only(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "removing the MIGraphX problem cache" in result.stderr and json.loads(problems.read_text())



# -- a program that does not fit in the GPU's memory ------------------------------------------------------

# Room for the engine's buffers (about 0.2 MiB each), not for the compiled shapes model (4 MiB on the double).
SMALL_GPU = {"HIP_DOUBLE_DEVICE_MEMORY_BYTES": str(2 << 20)}


def host_memory_daemon(tmp_path: Path, daemon_process, allow: bool) -> tuple[DaemonProcess, int]:
    """A daemon on a GPU too small for its program; returns it and its HTTP port."""
    engine = migraphx_double_engine(tmp_path / "cache") + f"allow_host_memory = {str(allow).lower()}\n"
    port = free_port()
    config = daemon_config(SHAPES_MODEL, file_source("cam", tmp_path / "cam.mp4", 4), free_port(), port,
                           exit_when_done=True, engine=engine)
    return daemon_process(config, env={**DOUBLES_ENV, **SMALL_GPU}).start(), port


def test_a_program_that_does_not_fit_in_gpu_memory_is_exit_3_in_one_line(tmp_path: Path, daemon_process) -> None:
    """MIGraphX 2.15 would load it into host memory without a word and run many times slower."""
    daemon, _ = host_memory_daemon(tmp_path, daemon_process, allow=False)
    assert daemon.wait() == 3, daemon.stderr
    errors = [line for line in daemon.stderr.splitlines() if line.startswith("nfnet-daemon: error:")]
    assert len(errors) == 1 and re.fullmatch(
        r"nfnet-daemon: error: the compiled program does not fit in GPU 0's memory: it needs at least [\d.]+ MiB .* "
        r"and 2\.0 MiB of 2\.0 MiB were free, so MIGraphX put it in host memory .*; lower engine\.batch_size, set "
        r"engine\.migraphx\.fp16 = true, or stop the other processes using the GPU .*allow_host_memory = true runs "
        r"it anyway", errors[0]), daemon.stderr
    assert "Traceback" not in daemon.stderr


def test_allow_host_memory_starts_with_a_warning(tmp_path: Path, daemon_process) -> None:
    """It starts, says so, and the GPU's memory is exported: ours is the engine's buffers, not the program."""
    daemon, port = host_memory_daemon(tmp_path, daemon_process, allow=True)
    daemon.wait_for_log("waiting up to")
    assert re.search(r"WARNING.*MIGraphX put it in host memory.*\(engine\.migraphx\.allow_host_memory = true\)",
                     daemon.stderr), daemon.stderr
    status, metrics = get(port, "/metrics")
    memory = {kind: float(value) for kind, value in
              re.findall(r'^nfnet_stream_device_memory_bytes\{kind="(\w+)"\} (\S+)$', metrics, re.M)}
    assert status == 200 and memory["total"] == 2 << 20, metrics
    assert 0 < memory["ours"] == memory["used"] < 1 << 20, memory
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.stderr
