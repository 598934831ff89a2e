import json
import subprocess
import sys

import pytest

from infra.cli import _one_line, build_parser, main

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


def test_etl_command_fails_in_one_line(spark, tmp_path, capsys):
    """A table with no readable file stops the ETL with one line naming it; no Java frames reach the user."""
    (tmp_path / "logs" / "sellers").mkdir(parents=True)
    (tmp_path / "logs" / "sellers" / "part-0.parquet").write_bytes(b"PAR1 and then nothing")
    config = tmp_path / "feedrank.yaml"
    config.write_text(json.dumps({"features": {"spark": {"master": "local[2]", "driver_memory": "2g",
                                                         "shuffle_partitions": 2, "progress_seconds": 0}}}))
    assert main(["--config", str(config), "etl", str(tmp_path / "logs"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("feedrank etl: failed, nothing published: ValueError: table sellers: no valid rows")
    assert "1 unreadable file" in err[-1]
    with pytest.raises(Exception) as raised:  # an error raised in the JVM: its Java exception's first line
        spark.sparkContext._jvm.java.lang.Long.parseLong("x")  # noqa: SLF001
    line = _one_line(raised.value)
    assert "\n" not in line and line.endswith('NumberFormatException: For input string: "x"'), line
