"""`ffdi --help` and every subcommand's `--help` load neither torch nor MLflow: help answers at once."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

COMMANDS = ["", "score", "explain", "serve", "compare", "generalisation"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_loads_no_heavy_library(command):
    code = (
        "import json, sys\n"
        "from ffdi.cli.main import main\n"
        "try:\n"
        f"    main({[command, '--help'] if command else ['--help']!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m in ('torch', 'mlflow', 'pandas', 'timm') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage: ffdi" in out.stdout
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_version():
    out = subprocess.run(
        [sys.executable, "-m", "ffdi.cli.main", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.startswith("ffdi ") and out.stdout.split()[1][0].isdigit()


def test_help_mentions_only_options_the_command_has(capsys):
    from ffdi.cli.main import main

    for command, has_faces in (("score", True), ("explain", False)):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert ("--faces" in out) == has_faces, command
        assert "exit status:" in out and "videos (.mp4" in out
