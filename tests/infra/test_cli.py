import subprocess
import sys

import pytest

from infra.cli import build_parser, main

SUBCOMMANDS = [a for a in build_parser()._subparsers._group_actions[0].choices]  # noqa: SLF001


@pytest.mark.parametrize("command", [[], *[[c] for c in SUBCOMMANDS]])
def test_every_subcommand_has_help(command):
    out = subprocess.run([sys.executable, "-m", "infra.cli", *command, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: feedrank" in out.stdout


def test_simulate_then_validate(tmp_path, capsys):
    out = tmp_path / "logs"
    rc = main(["simulate", "--users", "150", "--items", "300", "--sellers", "15", "--days", "2", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "CTR and purchase rate by position" in text and "new-seller share" in text
    assert (out / "impressions").is_dir()
    assert main(["validate", str(out), "--strict"]) == 0
    assert "quarantined" in capsys.readouterr().out


def test_invalid_flag_value_names_the_key(capsys):
    assert main(["simulate", "--users", "0"]) == 2
    assert "experiments.simulator.users must be >= 1" in capsys.readouterr().err
