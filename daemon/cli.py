"""``nfnet-daemon``: the command line. The only place that prints errors and picks exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from daemon.check import check_config
from daemon.config import ConfigError, DaemonConfig, load_config
from daemon.http import HttpEndpointError
from daemon.logs import configure_logging
from daemon.service import Daemon, DaemonFailure
from pipelines.engines import EngineError, precompile
from pipelines.model_info import ModelMetadataError, read_model_info
from pipelines.publishers import PublisherError
from pipelines.redact import mask_credentials
from pipelines.sources import SourceError

log = logging.getLogger(__name__)

EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nfnet-daemon",
        description="Classify every frame of video sources with an NFNet and publish labels over ZeroMQ.",
        epilog="Exit codes: 0 done, 1 failed while running, 2 bad configuration, 3 could not start, 4 done but "
               "not every source read in full (undecodable frames, a file cut short, a source that failed).",
    )
    parser.add_argument("--config", required=True, help="TOML configuration file")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, open the model and the files, probe the engine choice, "
                             "print a summary and exit (0: all good)")
    parser.add_argument("--compile-only", action="store_true",
                        help="compile the model for MIGraphX into engine.migraphx.cache_dir (the program cache) and "
                             "exit, printing where the program is kept (0: compiled or already there, 3: failed): "
                             "compile once per GPU model and ship the cache")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="override logging.level from the configuration (also at a SIGHUP reload)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    def read_config() -> DaemonConfig:
        """The file with the environment's overrides, then the command line's (also at each SIGHUP)."""
        config = load_config(args.config)
        if args.log_level:
            config = config.model_copy(update={"logging": config.logging.model_copy(update={"level": args.log_level})})
        return config

    try:
        config = read_config()
    except ConfigError as exc:
        return _fail(exc, EXIT_CONFIG)
    configure_logging(config.logging.level, config.logging.format)
    try:
        if args.check_config:
            print("\n".join(check_config(config, Path(args.config))))
            return 0
        if args.compile_only:
            print(compile_only(config))
            return 0
        return Daemon(config, reload=read_config).run()
    except (ModelMetadataError, EngineError, SourceError, PublisherError, HttpEndpointError) as exc:
        return _fail(exc, EXIT_STARTUP)
    except DaemonFailure as exc:
        return _fail(exc, EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line still, the traceback at debug level
        log.debug("internal error", exc_info=True)
        return _fail(f"internal error: {type(exc).__name__}: {exc} (the traceback is logged at --log-level debug)",
                     EXIT_FAILURE)


def compile_only(config: DaemonConfig) -> str:
    """``--compile-only``: fill the program cache; what to tell the person who asked."""
    report = precompile(config.engine, config.model.path, read_model_info(config.model.path))
    if report is None:
        return (f"nothing to compile: the engine here is ONNX Runtime (engine.type = {config.engine.type!r}); "
                "only MIGraphX keeps compiled programs")
    done = "already compiled" if report.cache == "hit" else f"compiled in {report.compile_seconds:.1f}s"
    return f"{config.model.path}: {done}; the program is kept in {report.program_path}"


def _fail(error: object, code: int) -> int:
    """Print the one error line (URL passwords masked, whichever error quotes one); return ``code``."""
    print(f"nfnet-daemon: error: {mask_credentials(str(error))}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
