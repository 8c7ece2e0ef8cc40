from pathlib import Path

import pytest

from pipelines import config as config_module
from pipelines.config import ConfigError, deep_merge, load_config


def test_deep_merge_merges_nested_and_replaces_leaves():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert deep_merge(base, {"a": {"c": [3]}, "e": 2}) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


def test_env_file_overrides_base_and_paths_are_absolute():
    cfg = load_config("test")
    assert cfg.spark.shuffle_partitions == 2  # from test.yaml
    assert cfg.spark.master == "local[2]"  # from base.yaml
    assert cfg.lakehouse.root.is_absolute() and cfg.spark.ivy_dir.is_absolute()


def test_lakehouse_argument_moves_tables_landing_and_checkpoints(tmp_path):
    cfg = load_config("test", lakehouse=str(tmp_path))
    assert cfg.table_path("gold", "profiles") == str(tmp_path / "gold" / "profiles")
    assert cfg.lakehouse.landing == tmp_path / "landing"
    assert cfg.lakehouse.checkpoints == tmp_path / "_checkpoints"


def _conf_dir(tmp_path: Path, extra: str) -> Path:
    for name in ("base.yaml", *(f"{section}.yaml" for section in config_module.SECTION_FILES)):
        (tmp_path / name).write_text((config_module.PROJECT_ROOT / "conf" / name).read_text())
    (tmp_path / "broken.yaml").write_text(extra)
    return tmp_path


def test_invalid_value_names_the_files_and_the_key(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "CONF_DIR", _conf_dir(tmp_path, "spark:\n  shuffle_partitions: 0\n"))
    with pytest.raises(ConfigError) as err:
        load_config("broken")
    assert "broken.yaml" in str(err.value) and "spark.shuffle_partitions" in str(err.value)


def test_unknown_key_and_bad_regex_are_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(
        config_module, "CONF_DIR", _conf_dir(tmp_path, "identity:\n  blocklist: {email: ['^(']}\n  typo: 1\n")
    )
    with pytest.raises(ConfigError) as err:
        load_config("broken")
    assert "identity.typo" in str(err.value) and "bad regular expression" in str(err.value)


def test_source_system_must_map_source_id(tmp_path, monkeypatch):
    monkeypatch.setattr(
        config_module,
        "CONF_DIR",
        _conf_dir(tmp_path, "sources:\n  systems:\n    erp: {columns: {email: mail}}\n"),
    )
    with pytest.raises(ConfigError, match="sources.systems.erp.columns"):
        load_config("broken")


def test_deletion_vector_tables_must_be_known_tables(tmp_path, monkeypatch):
    monkeypatch.setattr(
        config_module,
        "CONF_DIR",
        _conf_dir(tmp_path, "lakehouse:\n  deletion_vectors: [gold.profiles, gold.profile]\n"),
    )
    with pytest.raises(ConfigError, match=r"lakehouse.deletion_vectors.*unknown tables \['gold.profile'\]"):
        load_config("broken")


def test_edit_distance_and_month_thresholds_must_be_whole(tmp_path, monkeypatch):
    comparisons = "[{kind: levenshtein, columns: [street], thresholds: [1.5]}]"
    monkeypatch.setattr(
        config_module,
        "CONF_DIR",
        _conf_dir(tmp_path, f"identity:\n  probabilistic:\n    comparisons: {comparisons}\n"),
    )
    with pytest.raises(ConfigError, match=r"levenshtein thresholds are whole numbers >= 1"):
        load_config("broken")


def test_unknown_environment_is_an_error():
    with pytest.raises(ConfigError, match="no configuration for CONVERGE_ENV='nope'"):
        load_config("nope")


def test_identity_section_comes_from_its_own_file_and_env_overrides_it(tmp_path, monkeypatch):
    cfg = load_config("test")
    assert cfg.identity.identifier_types["user_id"].max_per_profile == 1
    assert cfg.identity.identifier_types["phone"].normalizer == "phone"
    monkeypatch.setattr(
        config_module,
        "CONF_DIR",
        _conf_dir(tmp_path, "identity:\n  identifier_types:\n    email: {max_per_profile: 2}\n"),
    )
    cfg = load_config("broken")
    assert cfg.identity.identifier_types["email"].max_per_profile == 2
    assert cfg.identity.identifier_types["email"].priority == 3, "deep-merged: the other keys stay"


def test_blocklist_for_an_unconfigured_type_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(
        config_module, "CONF_DIR", _conf_dir(tmp_path, "identity:\n  blocklist: {fax: ['0']}\n")
    )
    with pytest.raises(ConfigError, match="not configured: \\['fax'\\]"):
        load_config("broken")


def test_every_crm_system_needs_its_identifier_type(tmp_path, monkeypatch):
    extra = "sources:\n  systems:\n    erp: {columns: {source_id: id}}\n"
    monkeypatch.setattr(config_module, "CONF_DIR", _conf_dir(tmp_path, extra))
    with pytest.raises(ConfigError, match=r"CRM record id types \['erp_id'\]"):
        load_config("broken")
