"""Config composition and validation: every bad value fails with one clear line, early."""

import dataclasses

import pytest
from hydra.errors import ConfigCompositionException

from conftest import compose as composed, flbackdoor
from flbackdoor.config import ConfigError, ExperimentConfig, from_json, to_json, validate
from launcher.cli import CONF_DIR, resolve


def test_default_config_is_the_readme_default():
    cfg = resolve(composed())
    assert (cfg.dataset.name, cfg.num_clients, cfg.federation.mode) == ("mnist", 10, "local")
    assert cfg.clients_per_round == 10


def test_json_round_trip_is_lossless():
    cfg = resolve(composed("experiment=femnist_simulation"))
    assert from_json(to_json(cfg)) == cfg
    assert cfg.num_clients == 3580 and cfg.clients_per_round == 30


@pytest.mark.parametrize("override, message", [
    ("dataset.name=svhn", "dataset='svhn' is not registered; registered: cifar10,"),
    ("client.lr=-0.1", "client.lr=-0.1 must be positive"),
    ("clients_per_round=11", "clients_per_round=11 must be between 1 and num_clients=10"),
    ("num_rounds=0", "num_rounds=0 must be at least 1"),
    ("server.lr=0", "server.lr=0.0 must be positive"),
    ("client.momentum=1.5", "client.momentum=1.5 must be in [0, 1)"),
    ("partition=natural", "partition=natural needs a dataset with writers"),
    ("num_clients=500", "federation=local starts one process per client"),
    ("federation=remote", "federation=remote needs federation.address"),
    ("federation=simulation federation.client_num_cpus=2 federation.num_cpus=1",
     "federation.num_cpus=1 must be 0 (every core) or at least federation.client_num_cpus=2"),
    ("tracking=tensorboard tracking.name=wandb", "tracking='wandb' is not registered"),
    ("attack=boosted attack.schedule=none", "needs attack.schedule"),
    ("attack=boosted attack.num_malicious=0", "needs attack.num_malicious between 1"),
    ("attack=boosted attack.source_label=1 attack.target_label=1", "must be different labels"),
    ("attack=malformed attack.malformed_kind=garbage",
     "attack.malformed_kind='garbage' is not one of"),
    ("attack=boosted attack.task=edge_case", "attack.task='edge_case' is not registered"),
    ("attack=dba attack.task=pixel_pattern", "attack.task='pixel_pattern' must be dba"),
    ("attack=boosted attack.boost_factor=big", "attack=boosted: Value 'big' of type"),
    ("+attack.surprise=1", "attack=none: Key 'surprise' not in"),
    ("attack=none attack.num_malicious=2", "attack=none has no malicious nodes"),
    ("defense=bulyan defense.num_malicious=2", "defense=bulyan needs clients_per_round >= 4"),
    ("defense=krum defense.num_malicious=4", "defense=krum needs clients_per_round >"),
    ("defense=fedtrimmedavg defense.trim_fraction=0.5",
     "defense.trim_fraction=0.5 must be in [0, 0.5)"),
    ("server.max_examples=0", "server.max_examples=0 must be at least 1"),
    ("checkpoint=/nonexistent.pt", "checkpoint=/nonexistent.pt is not a file"),
    ("resume=/nonexistent", "resume=/nonexistent is not a run folder"),
    ("dataset.mean=[0.1,0.2]", "need one value per channel"),
    ("partition=k_label partition.labels_per_client=0", "labels_per_client=0 must be between"),
])
def test_invalid_values_fail_with_a_clear_message(override, message):
    with pytest.raises(ConfigError) as err:
        resolve(composed(*override.split()))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_k_label_bounded_by_number_of_classes():
    with pytest.raises(ConfigError, match="labels_per_client=11"):
        resolve(composed("partition=k_label", "partition.labels_per_client=11"))


def test_wrong_type_and_unknown_group_rejected_by_hydra_schema():
    with pytest.raises(Exception, match="num_rounds"):
        composed("num_rounds=many")
    with pytest.raises(ConfigCompositionException, match="dataset"):
        composed("dataset=svhn")
    with pytest.raises(Exception, match="not_a_key"):
        composed("client.not_a_key=1")
    with pytest.raises(ConfigCompositionException, match="attack.norm_bound"):
        composed("attack=boosted", "attack.norm_bound=3")  # a field of norm_bounded only


def test_from_dict_rejects_unknown_keys():
    bad = dataclasses.asdict(ExperimentConfig()) | {"surprise": 1}
    with pytest.raises(ConfigError, match="surprise"):
        from flbackdoor.config import from_dict
        from_dict(ExperimentConfig, bad)


def test_cli_reports_bad_config_in_one_line_before_starting_anything(tmp_path):
    res = flbackdoor(["client.lr=-1", f"hydra.run.dir={tmp_path}"], timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == "flbackdoor: error: client.lr=-1.0 must be positive"
    assert not (tmp_path / "logs").exists(), "no federation process may start"


def test_cli_reports_missing_data_in_one_line(tmp_path):
    res = flbackdoor([f"data.root={tmp_path}/nothing", "data.download=false",
                      f"data.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run"],
                     timeout=120)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("flbackdoor: error: mnist not found: expected train-images-idx3-ubyte")
    assert f"{tmp_path}/nothing/MNIST/raw" in last
    assert not (tmp_path / "run" / "logs").exists()


def test_validate_accepts_every_preset():
    for preset in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        validate(resolve(composed(f"experiment={preset.stem}")))


def test_cli_names_an_unregistered_option_in_one_line(tmp_path):
    res = flbackdoor(["defense=flame_typo", f"hydra.run.dir={tmp_path}"], timeout=120)
    assert res.returncode == 2
    from flbackdoor.registries import DEFENSES

    assert res.stderr.strip().splitlines() == [
        "flbackdoor: error: defense='flame_typo' is not registered; registered: "
        + ", ".join(DEFENSES.names())]
    assert "bulyan, deepsight, fedmedian" in res.stderr
    res = flbackdoor(["-m", "attack=boosted,nope", f"hydra.sweep.dir={tmp_path}"], timeout=120)
    assert res.returncode == 2 and "attack='nope' is not registered" in res.stderr


def test_a_simulation_caps_its_ray_at_federation_num_cpus():
    from launcher.federation.simulation import federation_config
    from server.messaging import wave_window

    cfg = resolve(composed("federation=simulation", "federation.num_cpus=1"))
    assert "init-args-num-cpus=1" in federation_config(cfg).split()
    assert wave_window(cfg) == 2  # twice the one Ray worker it fits
    cfg = resolve(composed("federation=simulation"))
    assert "init-args-num-cpus" not in federation_config(cfg)
