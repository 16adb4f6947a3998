"""``nfnet-config-schema``: the JSON Schema of the daemon's configuration, generated from the same pydantic
model that validates it (``daemon.config.DaemonConfig``).

The repository keeps it at ``configs/daemon.schema.json`` for editors and CI of deployments (for example
with taplo or a JSON Schema validator over the TOML); a test fails when it is out of date. Regenerate
with ``nfnet-config-schema --write``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from daemon.config import DaemonConfig

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "configs" / "daemon.schema.json"


def config_schema() -> str:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://nfnet-stream.invalid/daemon.schema.json",
        **DaemonConfig.model_json_schema(),
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfnet-config-schema", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write it to {SCHEMA_PATH} instead of stdout")
    args = parser.parse_args(argv)
    if args.write:
        SCHEMA_PATH.write_text(config_schema())
        print(f"wrote {SCHEMA_PATH}")
    else:
        print(config_schema(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
