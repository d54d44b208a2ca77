"""``python -m cvlth`` is the same command line as the ``cvlth`` console script."""

import subprocess
import sys


def test_python_dash_m_cvlth_runs_the_cli_and_keeps_its_exit_codes(tmp_path) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "cvlth", "--help"], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    assert "study" in shown.stdout and "prune" in shown.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "cvlth", "study", str(tmp_path / "nope.yaml"), "--plan"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
