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


def test_defaults_yaml_spells_out_every_dataclass_default():
    """infra/defaults.yaml lists every key, with the value the dataclasses default to: they cannot drift."""
    import dataclasses

    import yaml

    from infra.config import DEFAULTS_PATH

    assert load_config(env={}) == FeedrankConfig()

    def keys(obj, prefix=""):
        out = set()
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            out |= keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else {prefix + f.name}
        return out

    def yaml_keys(node, prefix=""):
        out = set()
        for k, v in node.items():
            out |= yaml_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
        return out

    assert yaml_keys(yaml.safe_load(DEFAULTS_PATH.read_text())) == keys(FeedrankConfig())
