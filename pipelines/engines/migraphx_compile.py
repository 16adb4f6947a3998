"""Compiling a model for MIGraphX in a child process, so that the daemon stays responsive meanwhile.

MIGraphX's Python bindings never release the GIL (no ``gil_scoped_release`` in ``src/py/migraphx_py.cpp``):
``parse_onnx`` and ``compile``, minutes for an NFNet on a GPU, would freeze every thread of the daemon
(``/healthz``, signal handlers, systemd status lines). So a child process (``python -m
pipelines.engines.migraphx_compile REQUEST``) parses, quantises, compiles and saves the program to a file,
then exits; the daemon only loads that file. The child dies with its parent (``PR_SET_PDEATHSIG``), is
stopped when a stop is requested, and when it fails, what it printed becomes the start-up error.

A compile cut short (a stop, a crash, a power cut) does not have to tune again from zero: the child's
``MIGRAPHX_PROBLEM_CACHE`` names a file in the program cache's folder (``tuning/``), which MIGraphX reads
when a compile starts and writes with its tuning results when compilation finishes (AMDMIGraphX's
documentation of its environment variables); what a compile stopped before then had tuned is lost. A
setting of the user's own is kept. MIGraphX writes the file in place: one that a power cut left unreadable
would fail every later compile, so such a file is removed first.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.engines.base import BuildCancelled, BuildHooks, EngineError

log = logging.getLogger(__name__)

POLL_S = 0.1
STOP_GRACE_S = 2.0  # SIGTERM, then SIGKILL after this long
ERROR_LINES = 6  # of what the child printed, in a failure's message
_PR_SET_PDEATHSIG = 1
PROBLEM_CACHE_VARIABLE = "MIGRAPHX_PROBLEM_CACHE"


@dataclass(frozen=True)
class CompileRequest:
    """Everything the child needs: what to compile, how, and which modules to do it with."""

    migraphx_module: str  # "migraphx", or a stand-in's import name (the test double)
    hip_library: str  # for hipSetDevice before compiling on a GPU (pipelines.engines.hip.load_library)
    model: str
    input_name: str
    input_dims: list[int]  # the batch included: map_input_dims fixes it
    fp16: bool
    target: str
    device: int
    offload_copy: bool
    fast_math: bool
    exhaustive_tune: bool


def compile_in_child(request: CompileRequest, out: Path, hooks: BuildHooks, problem_cache: Path) -> None:
    """Compile ``request`` into the program file ``out`` in a child process and wait for it; MIGraphX keeps
    its tuning results in ``problem_cache`` unless the environment names a file of its own.

    Raises :class:`EngineError` naming what MIGraphX printed if the child fails or is killed, and
    :class:`BuildCancelled` (after stopping the child) if ``hooks.stop_requested()``.
    """
    command = [sys.executable, "-m", __name__, json.dumps({**asdict(request), "out": str(out),
                                                           "parent": os.getpid()})]
    env = child_environment(os.environ, problem_cache)
    with tempfile.TemporaryFile() as output:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                 env=env)
        hooks.step(f"compiling {Path(request.model).name} for MIGraphX {request.target} (process {child.pid})")
        log.info("compiling %s for MIGraphX %s (batch %d, %s) in process %d; this can take minutes",
                 request.model, request.target, request.input_dims[0], "fp16" if request.fp16 else "fp32",
                 child.pid)
        _wait(child, hooks)
        output.seek(0)
        printed = output.read().decode(errors="replace").strip()
    for line in printed.splitlines():
        log.debug("compile process %d: %s", child.pid, line)
    if child.returncode != 0:
        raise EngineError(_failure(request, child, printed))


def child_environment(environ: Mapping[str, str], problem_cache: Path) -> dict[str, str]:
    """The compile process's environment: this one's, the same ``sys.path`` (the child imports what this
    process imports, a test double too), and ``MIGRAPHX_PROBLEM_CACHE`` if unset and its folder writable
    (an unwritable cache folder means compiling without caching, as for the programs)."""
    env = {**environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p)}
    if not env.get(PROBLEM_CACHE_VARIABLE) and _writable_folder(problem_cache.parent) \
            and _usable_problem_cache(problem_cache):
        env[PROBLEM_CACHE_VARIABLE] = str(problem_cache)
    return env


def _writable_folder(folder: Path) -> bool:
    """``folder`` exists (made if need be) and this process may write in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _usable_problem_cache(problem_cache: Path) -> bool:
    """True if ``problem_cache`` is absent or JSON; one that is not (written in part when the power went), on
    which MIGraphX would throw at the start of every compile, is removed (False if it cannot be)."""
    try:
        json.loads(problem_cache.read_bytes())
    except FileNotFoundError:
        return True
    except (OSError, ValueError) as exc:
        log.warning("removing the MIGraphX problem cache %s, which cannot be read (%s): tuning starts afresh",
                    problem_cache, exc)
        try:
            problem_cache.unlink()
        except OSError as error:
            log.warning("cannot remove %s (%s): compiling without a problem cache", problem_cache, error)
            return False
    return True


def _wait(child: subprocess.Popen, hooks: BuildHooks) -> None:
    while True:
        try:
            child.wait(timeout=POLL_S)
            return
        except subprocess.TimeoutExpired:
            pass
        if hooks.stop_requested():
            _stop(child)
            raise BuildCancelled(f"stopped while compiling (process {child.pid} stopped)")


def _stop(child: subprocess.Popen) -> None:
    child.terminate()
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _failure(request: CompileRequest, child: subprocess.Popen, printed: str) -> str:
    tail = " | ".join(printed.splitlines()[-ERROR_LINES:]) or "nothing"
    if child.returncode > 0:
        return f"MIGraphX cannot compile {request.model}: {tail}"
    name = signal.Signals(-child.returncode).name
    hint = " (out of memory? see the kernel log)" if name == "SIGKILL" else ""
    return (f"MIGraphX's compile process {child.pid} for {request.model} was killed by {name}{hint}; "
            f"it printed: {tail}")


# ------------------------------------------------------------------------------------------------ the child


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when the daemon dies (a compile nobody waits for is waste)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)


def compile_program(request: CompileRequest, out: Path) -> None:
    """What the child does: parse with the batch fixed, quantise, compile, save."""
    from pipelines.engines.hip import Hip, load_library

    mgx = importlib.import_module(request.migraphx_module)
    if request.target == "gpu":  # MIGraphX compiles for the calling thread's current device
        Hip(load_library(request.hip_library)).set_device(request.device)
    started = time.perf_counter()
    program = mgx.parse_onnx(request.model, map_input_dims={request.input_name: request.input_dims})
    if request.fp16:
        mgx.quantize_fp16(program)
    program.compile(mgx.get_target(request.target), offload_copy=request.offload_copy,
                    fast_math=request.fast_math, exhaustive_tune=request.exhaustive_tune)
    mgx.save(program, str(out), format="msgpack")
    print(f"compiled in {time.perf_counter() - started:.1f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    fields = json.loads((argv if argv is not None else sys.argv[1:])[0])
    _die_with_parent(fields.pop("parent"))
    out = Path(fields.pop("out"))
    try:
        compile_program(CompileRequest(**fields), out)
    except Exception as exc:  # the bindings raise RuntimeError with MIGraphX's message; say it, exit 1
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
