"""Inference engines behind one interface, chosen by ``engine.type``."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from pipelines.engines.base import BuildCancelled, BuildHooks, BuildReport, Engine, EngineError
from pipelines.engines.batching import resolve_batch
from pipelines.engines.config import EngineConfig, MigraphxOptions, OnnxRuntimeOptions
from pipelines.model_info import ModelInfo

log = logging.getLogger(__name__)


def migraphx_unavailable(options: MigraphxOptions) -> str | None:
    """Why MIGraphX on a GPU cannot be used here, or None if it can."""
    from pipelines.engines.migraphx_engine import import_migraphx, open_gpu

    try:
        import_migraphx()
        open_gpu(options.hip_library, options.device)
    except EngineError as exc:
        return str(exc)
    return None


def choose_engine(config: EngineConfig) -> tuple[str, str]:
    """The engine ``config`` selects on this machine, and why."""
    if config.type != "auto":
        return config.type, "configured"
    reason = migraphx_unavailable(config.migraphx)
    if reason is None:
        return "migraphx", "auto: MIGraphX, which imports and sees a GPU"
    return "onnxruntime", f"auto: ONNX Runtime, because {reason}"


def probe_engine(config: EngineConfig, model_path: Path, info: ModelInfo) -> str:
    """Check, without building it, that the chosen engine can run this model here; describe the choice.
    Raises :class:`EngineError` for what would stop the daemon at start-up."""
    kind, why = choose_engine(config)
    batch = resolve_batch(model_path, info.batch, config.batch_size)
    if kind == "migraphx":
        reason = migraphx_unavailable(config.migraphx) if config.type == "migraphx" else None  # auto checked it
        if reason is not None:
            raise EngineError(reason)
        options = config.migraphx
        return (f"migraphx ({why}), target {options.target}, {'fp16' if options.fp16 else info.precision}, "
                f"batch {batch}, program cache {options.cache_dir}")
    from pipelines.engines.onnxruntime import resolve_providers

    providers = ", ".join(name for name, _ in resolve_providers(config.onnxruntime))
    return f"onnxruntime ({why}), providers {providers}, batch {batch}"


def trial_run(config: EngineConfig, model_path: Path, info: ModelInfo) -> str:
    """One inference on zeros (``--check-config``). Raises :class:`EngineError` as start-up would for a model that
    fails when run, whose output does not fit its labels, or whose nodes a GPU provider of ONNX Runtime takes none
    of; says what ran, and where.

    ONNX Runtime runs on the providers start-up would use: which nodes a provider takes is known only from a
    session of its own (for a compiling provider that is a compile, which ``migraphx_model_cache_dir`` keeps for
    the start). MIGraphX is not compiled for the GPU here: ONNX Runtime on the CPU runs the model where it is
    installed, else MIGraphX's reference target."""
    kind, _ = choose_engine(config)
    trial, how = (config.model_copy(update={"type": "onnxruntime"}), "ONNX Runtime") if kind == "onnxruntime" \
        else cpu_trial(config)
    engine = create_engine(trial, model_path, info)
    try:
        engine.check_output(info.num_classes)
    finally:
        engine.close()
    ran = f"one batch of {engine.batch_size} run ({how}): {info.num_classes} finite scores a frame"
    return ran if engine.placement is None else f"{ran}; {engine.placement.describe()}"


def cpu_trial(config: EngineConfig) -> tuple[EngineConfig, str]:
    """A configuration that runs the model without a GPU compile, and what it is: ONNX Runtime on the CPU where it
    is installed, else MIGraphX's reference target."""
    try:
        import onnxruntime  # noqa: F401 - is the CPU route there?
    except ImportError:
        return config.model_copy(update={"type": "migraphx", "migraphx": config.migraphx.model_copy(
            update={"target": "ref", "cache_dir": Path(tempfile.mkdtemp(prefix="nfnet-check-"))})}), \
            "MIGraphX's reference target"
    return config.model_copy(update={"type": "onnxruntime", "onnxruntime": OnnxRuntimeOptions(
        providers=["CPUExecutionProvider"])}), "ONNX Runtime on the CPU"


def precompile(config: EngineConfig, model_path: Path, info: ModelInfo) -> BuildReport | None:
    """Fill the program cache for this model on this machine's GPU ahead of time (``nfnet-daemon
    --compile-only``), so that a fleet compiles once per GPU model and ships the cache. The compiled program is
    loaded once, as a start would load it. None when the engine chosen here compiles nothing (ONNX Runtime).
    Raises :class:`EngineError` when it cannot be compiled, or not kept (an unwritable ``cache_dir``)."""
    kind, _ = choose_engine(config)
    if kind != "migraphx":
        return None
    engine = create_engine(config, model_path, info)
    try:
        report = engine.build_report
    finally:
        engine.close()
    assert report is not None
    if report.program_path is None:
        raise EngineError(f"compiled, but the program cannot be kept in engine.migraphx.cache_dir = "
                          f"{config.migraphx.cache_dir} (not writable)")
    return report


def create_engine(config: EngineConfig, model_path: Path, info: ModelInfo, hooks: BuildHooks | None = None) -> Engine:
    """Build the configured engine for ``model_path``; ``auto`` logs what it chose and why. ``hooks`` hear of
    long steps (a MIGraphX compile) and can stop them (:class:`BuildCancelled`)."""
    kind, why = choose_engine(config)
    if config.type == "auto":
        log.info("engine %s", why)
    if kind == "migraphx":
        from pipelines.engines.migraphx_engine import MigraphxEngine

        return MigraphxEngine(model_path, info, config, hooks=hooks)
    from pipelines.engines.onnxruntime import OnnxRuntimeEngine

    return OnnxRuntimeEngine(model_path, info, config)


__all__ = ["BuildCancelled", "BuildHooks", "Engine", "EngineConfig", "EngineError", "choose_engine", "create_engine",
           "migraphx_unavailable", "precompile", "probe_engine", "trial_run"]
