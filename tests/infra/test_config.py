import pytest

from infra.config import ConfigError, FeedrankConfig, load_config


def test_defaults_load_into_every_section():
    cfg = load_config(env={})
    assert isinstance(cfg, FeedrankConfig)
    assert cfg.experiments.simulator.users == 2000
    assert cfg.features.validation.ts_min.startswith("2000")


def test_file_then_env_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("experiments:\n  simulator:\n    users: 10\n    days: 2\n")
    env = {"FEEDRANK_EXPERIMENTS__SIMULATOR__DAYS": "5", "FEEDRANK_UNRELATED": "x"}
    cfg = load_config(path, env=env, overrides={"experiments": {"simulator": {"seed": 9}}})
    sim = cfg.experiments.simulator
    assert (sim.users, sim.days, sim.seed) == (10, 5, 9)


@pytest.mark.parametrize(("env", "match"), [
    ({"FEEDRANK_EXPERIMENTS__SIMULATOR__USERS": "many"}, "experiments.simulator.users: expected an integer"),
    ({"FEEDRANK_EXPERIMENTS__SIMULATOR__USERS": "-1"}, "experiments.simulator.users must be >= 1"),
    ({"FEEDRANK_EXPERIMENTS__SIMULATOR__USRS": "5"}, "experiments.simulator.usrs: unknown key"),
    ({"FEEDRANK_NOPE__X": "1"}, "nope: unknown key"),
    ({"FEEDRANK_EXPERIMENTS__SIMULATOR__RANDOMIZED_SHARE": "2"}, "randomized_share must be in"),
    ({"FEEDRANK_FEATURES__VALIDATION__TS_MAX": "1999-01-01"}, "features.validation.ts_max must be after"),
    ({"FEEDRANK_INFRA__LOG_LEVEL": "LOUD"}, "infra.log_level must be one of"),
    ({"FEEDRANK_EXPERIMENTS__SIMULATOR": "3"}, "experiments.simulator: expected a mapping"),
])
def test_invalid_values_name_the_key(env, match):
    with pytest.raises(ConfigError, match=match):
        load_config(env=env)


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad, env={})
