"""The ``cvlth`` command line. Thin: each command parses, then calls the Python API.

Every command lives in its own module under ``cvlth.cli`` and registers itself on ``app``
(:mod:`cvlth.cli.app`);
user errors (:class:`cvlth.errors.CvlthError`) print one clear message and exit with status 2.
"""

from __future__ import annotations

import sys

# The command modules are imported for their side effect of adding commands to ``app``.
from cvlth.cli import (  # noqa: F401
    costs_cmd,
    datasets_cmd,
    demo_cmd,
    deploy_cmd,
    inspect_cmd,
    masks_cmd,
    report_cmd,
    store_cmd,
    study_cmd,
    zoo_cmd,
)
from cvlth.cli.app import app
from cvlth.errors import CvlthError


def run_cli(args: list[str] | None = None) -> int:
    """Run the CLI in-process and return its exit code (used by ``main`` and by tests)."""
    try:
        app(args=args, prog_name="cvlth")
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except CvlthError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main() -> None:
    sys.exit(run_cli())
