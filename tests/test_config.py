"""Config loading: every field's type and range checked from the dataclass, YAML aliases
refused, messages bounded; a fuzz test of the loader."""

from __future__ import annotations

import random
import resource
from pathlib import Path

import pytest
import yaml

from p2m_geo.config import Config, ConfigError, from_dict, load_yaml


@pytest.mark.parametrize(
    "values, message",
    [
        ({"train": {"epochs": 1.5}}, "train.epochs: expected an integer, got 1.5"),
        ({"train": {"epochs": "2"}}, "train.epochs: expected an integer, got '2'"),
        ({"model": {"hidden": 32.5}}, "model.hidden: expected an integer, got 32.5"),
        ({"model": {"hidden": "64"}}, "model.hidden: expected an integer, got '64'"),
        ({"loss": {"chamfer_gt_to_pred": "one"}}, "loss.chamfer_gt_to_pred: expected a number, got 'one'"),
        ({"loss": {"edge": -1}}, "loss.edge: expected a number >= 0, got -1.0"),
        ({"loss": {"face_normal_margin": 180}}, r"loss.face_normal_margin: expected degrees in \[0, 180\), got 180.0"),
        (
            {"loss": {"face_normal_form": "l1"}},
            "loss.face_normal_form: expected one_minus_cos or normal_difference, got 'l1'",
        ),
        ({"model": {"offset_smoothing": -2}}, "model.offset_smoothing: expected a number >= 0, got -2.0"),
        (
            {"loss": {"face_normal_block_margins": [60, 60]}},
            r"loss.face_normal_block_margins: expected 3 degrees in \[0, 180\), got a tuple of 2",
        ),
        ({"train": {"max_steps": -1}}, "train.max_steps: expected an integer >= 0, got -1"),
        ({"data": {"synth_extra_train": -1}}, "data.synth_extra_train: expected an integer >= 0, got -1"),
        ({"data": {"cache_mb": -1}}, "data.cache_mb: expected an integer >= 0, got -1"),
        (
            {"train": {"lr_schedule": "linear"}},
            "train.lr_schedule: expected step or cosine or linear-decay, got 'linear'",
        ),
        ({"train": {"lr_milestones": "abc"}}, "train.lr_milestones: expected a list of integers, got 'abc'"),
        ({"train": {"lr_milestones": [3, "x"]}}, r"train.lr_milestones\[1\]: expected an integer, got 'x'"),
        ({"train": {"lr": float("inf")}}, r"train.lr: expected a number in \(0, 1\], got inf"),
        ({"train": {"lr": float("nan")}}, r"train.lr: expected a number in \(0, 1\], got nan"),
        ({"train": {"amp": "yes"}}, "train.amp: expected true or false, got 'yes'"),
        ({"train": {"epochs": True}}, "train.epochs: expected an integer, got True"),
        ({"model": [1, 2]}, "model: expected a mapping, got a list of 2"),
        (
            {"model": {"backbone": "x" * 10000}},
            r"model.backbone: expected one of cnn18, vgg16, resnet50, efficientnet-lite0, got 'xxx",
        ),
    ],
)
def test_type_and_range_errors_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message) as error:
        from_dict(Config, values)
    assert len(str(error.value)) < 200 and "\n" not in str(error.value)


def test_numbers_as_users_write_them():
    config = from_dict(Config, yaml.safe_load("train: {lr: 1e-3, epochs: 3.0, lr_milestones: [2]}"))
    assert config.train.lr == 1e-3 and config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.train.lr_milestones == (2,)


def test_yaml_aliases_are_refused_before_expansion(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9)
    )
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    assert len(bomb) < 500
    with pytest.raises(ConfigError, match="expected plain YAML without aliases"):
        load_yaml(path)


def _random_value(rng: random.Random, depth: int):
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([0, 1, -1, 7, 10**12, -(10**30)])
    if kind == 1:
        return rng.choice([0.5, 1e-3, -2.5, float("inf"), float("nan"), 1e300])
    if kind == 2:
        return rng.choice(["", "cnn18", "1e-3", "abc", "x" * 5000, "cpu", "*a"])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind in (4, 5):
        return rng.choice(["epochs", "lr", "hidden", "model", "train", "loss", "data", "unknown"])
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_random_key(rng): _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _random_key(rng: random.Random):
    return rng.choice(
        [
            "model",
            "train",
            "loss",
            "data",
            "epochs",
            "lr",
            "hidden",
            "lr_milestones",
            "backbone",
            "batch_size",
            "edge",
            "root",
            "amp",
            "x",
            "1",
            "k" * 300,
        ]
    )


@pytest.mark.slow
def test_fuzzed_yaml_configs_never_traceback_hang_or_blow_up(tmp_path):
    """400 random configs (mappings, scalars of every type, nesting, anchors and aliases):
    each loads or fails with ConfigError, within 2 s, and the process stays under +200 MB."""
    import signal

    rng = random.Random(0)
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    path = tmp_path / "fuzz.yaml"

    def timeout(*_):
        raise TimeoutError("a config took longer than 2 s")

    signal.signal(signal.SIGALRM, timeout)
    for _ in range(400):
        values = {_random_key(rng): _random_value(rng, 0) for _ in range(rng.randrange(1, 5))}
        text = yaml.safe_dump(values, default_flow_style=rng.random() < 0.5)
        if rng.random() < 0.2:  # anchors and aliases
            text = "base: &a {lr: 1}\n" + text + "again: *a\n"
        if rng.random() < 0.05:
            text = text[: rng.randrange(len(text) + 1)] + "]: {"  # broken syntax
        path.write_text(text)
        signal.alarm(2)
        try:
            load_yaml(path)
        except ConfigError as error:
            assert len(str(error)) < 400, str(error)[:400]
        finally:
            signal.alarm(0)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_rss) / 1024
    assert grown_mb < 200


def test_renamed_keys_of_old_configs_and_checkpoints_still_load():
    from p2m_geo.config import Config, LossWeights, from_dict

    old = from_dict(Config, {"loss": {"chamfer": 2.0}})
    assert old.loss.chamfer_gt_to_pred == 2.0
    assert from_dict(LossWeights, {"chamfer": 3.0, "edge": 0.2}).chamfer_gt_to_pred == 3.0
    with pytest.raises(ConfigError, match=r"loss.chamfer_gt_to_pred: expected a number, got 'x'"):
        from_dict(Config, {"loss": {"chamfer": "x"}})


VARIANT_CONFIG_ROOT = Path(__file__).resolve().parents[1] / "benchmarks" / "variant_configs"
VARIANT_CONFIGS = sorted(VARIANT_CONFIG_ROOT.glob("*/*.yaml"))


def test_procedural_cache_folder_names_its_extra_training_shapes(monkeypatch, tmp_path):
    from p2m_geo.data.factory import default_data_root

    monkeypatch.setenv("P2M_GEO_DATA", str(tmp_path))
    assert default_data_root(from_dict(Config, {})) == tmp_path / "synth-v1-pc24-views4-seed0"
    extra = from_dict(Config, {"data": {"synth_extra_train": 24, "synth_version": 2}})
    assert default_data_root(extra) == tmp_path / "synth-v2-pc24-views4-seed0-extra24"


def variant_configs_of_rounds(first: int, last: int):
    """The variant files of ``round<first>`` .. ``round<last>`` (``bundled/`` and other folders left out)."""
    return [p for p in VARIANT_CONFIGS if p.parent.name.startswith("round") and first <= int(p.parent.name[5:]) <= last]


def variant_over_cpu_quick(path: Path):
    """``(changes, config)``: a variant file's values and ``--preset cpu-quick --config <file>``."""
    from p2m_geo.config import merge_dicts, preset_dict

    changes = yaml.safe_load(path.read_text())
    return changes, from_dict(Config, merge_dicts(preset_dict("cpu-quick"), changes))


@pytest.mark.parametrize("path", VARIANT_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_variant_configs_of_the_readme_tables_load_with_every_value_applied(path):
    """The README's variant rows are ``p2m-geo train --preset cpu-quick --config <file>``: each
    file loads over the preset and every value in it reaches the config."""
    changes, config = variant_over_cpu_quick(path)
    for section, values in changes.items():
        for key, value in values.items():
            got = getattr(getattr(config, section), key)
            assert (list(got) if isinstance(got, tuple) else got) == value, f"{section}.{key}"


def test_variant_configs_are_there():
    assert len(VARIANT_CONFIGS) >= 11


@pytest.mark.parametrize(
    "path",
    variant_configs_of_rounds(0, 9),
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_variant_configs_before_round_10_run_without_the_depth_head(path):
    """cpu-quick has the global depth head since round 10; the files of earlier rounds switch it off."""
    _, config = variant_over_cpu_quick(path)
    assert config.model.depth_head is False


def test_cpu_quick_has_the_depth_head_since_round_10():
    from p2m_geo.config import preset_dict

    assert from_dict(Config, preset_dict("cpu-quick")).model.depth_head is True


@pytest.mark.parametrize(
    "path",
    variant_configs_of_rounds(0, 11) + [p for p in variant_configs_of_rounds(12, 12) if "readout" not in p.stem],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_variant_configs_before_round_12_run_without_the_depth_readout(path):
    """cpu-quick has the per-block depth readout since round 12; the files of earlier rounds (and
    round 12's variant without it) switch it off."""
    _, config = variant_over_cpu_quick(path)
    assert config.model.depth_readout is False


def test_cpu_quick_has_the_depth_readout_since_round_12():
    from p2m_geo.config import preset_dict

    assert from_dict(Config, preset_dict("cpu-quick")).model.depth_readout is True


@pytest.mark.parametrize(
    "path",
    variant_configs_of_rounds(10, 12) + [VARIANT_CONFIG_ROOT / "round13" / "synth-v2.yaml"],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_variant_configs_before_round_13_read_the_mean_of_the_coarsest_map(path):
    """cpu-quick's depth head reads the coarsest map cell by cell since round 13; the files of the
    rounds before (which ran the head on the map's mean, or without a head) say so."""
    _, config = variant_over_cpu_quick(path)
    assert config.model.depth_head_features in ("coarsest", "all") or not config.model.depth_head
    assert config.model.depth_head_features == "all" or "all-maps" not in path.stem


def test_cpu_quick_reads_the_coarsest_map_cell_by_cell_since_round_13():
    from p2m_geo.config import preset_dict

    assert from_dict(Config, preset_dict("cpu-quick")).model.depth_head_features == "spatial"


#: cpu-quick as rounds 3-6 (and round 7's 8-epoch rows) ran on, before round 7 changed it
CPU_QUICK_BEFORE_ROUND_7 = {"num_residual": 2, "epochs": 8, "lr_milestones": (6,), "gt_points": 4000}


@pytest.mark.parametrize(
    "path",
    variant_configs_of_rounds(3, 6),
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_variant_configs_of_earlier_rounds_still_run_on_the_network_they_were_measured_with(path):
    """Rounds 3-6 ran on cpu-quick with two residual pairs, 4000 GT points and 8 epochs (lr drop
    after 6): their files pin those, so the current preset plus the file is still that run."""
    _, config = variant_over_cpu_quick(path)
    got = {
        "num_residual": config.model.num_residual,
        "epochs": config.train.epochs,
        "lr_milestones": tuple(config.train.lr_milestones),
        "gt_points": config.train.gt_points,
    }
    # the two rows that changed the schedule on purpose
    on_purpose = {
        "budget-12-epochs": {"epochs": 12, "lr_milestones": (9,)},
        "lr-milestones-5-7": {"lr_milestones": (5, 7)},
    }
    assert got == CPU_QUICK_BEFORE_ROUND_7 | on_purpose.get(path.stem, {})


def test_the_depth_term_needs_the_depth_head():
    with pytest.raises(ConfigError, match=r"^loss.depth: expected 0 without model.depth_head .*got 0.5$"):
        from_dict(Config, {"loss": {"depth": 0.5}})
    assert from_dict(Config, {"model": {"depth_head": True}, "loss": {"depth": 0.5}}).loss.depth == 0.5


#: cpu-quick's schedule for rounds 7-15 (and the README's default runs until round 16)
CPU_QUICK_SCHEDULE_BEFORE_ROUND_16 = {"epochs": 10, "lr_milestones": (8,), "lr": 5e-4}


@pytest.mark.parametrize(
    "path",
    [p for p in variant_configs_of_rounds(7, 15) if p.stem != "fnc-0-cpu-long"],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_variant_configs_of_rounds_7_to_15_pin_the_schedule_they_ran_with(path):
    """Round 16 made cpu-quick 11 epochs at lr 7e-4 (x0.3 after 9). The files of rounds 7-15 (the
    cpu-long one aside) state epochs, milestones and lr themselves, so that the preset plus the file
    is still the run of their README rows; what a file does not change on purpose is the old schedule."""
    changes, config = variant_over_cpu_quick(path)
    assert {"epochs", "lr_milestones", "lr"} <= set(changes["train"]), "the file must pin the schedule"
    for key, old in CPU_QUICK_SCHEDULE_BEFORE_ROUND_16.items():
        value = getattr(config.train, key)
        value = tuple(value) if isinstance(value, (list, tuple)) else value
        before_round_7 = CPU_QUICK_BEFORE_ROUND_7.get(key)  # round 7's rows on the older network
        if value not in (old, before_round_7):  # a row that changed this on purpose says so in its name
            assert any(word in path.stem for word in ("epochs", "lr", "cosine", "extra", "batch")), (path.stem, key)


def test_cpu_quick_trains_11_epochs_at_lr_7e_4_since_round_16():
    from p2m_geo.config import preset_dict

    train = from_dict(Config, preset_dict("cpu-quick")).train
    assert (train.epochs, tuple(train.lr_milestones), train.lr) == (11, (9,), 7e-4)


@pytest.mark.parametrize("path", variant_configs_of_rounds(0, 18), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_variant_configs_before_round_19_run_cnn18_without_batch_norm(path):
    """cpu-quick's cnn18 has batch norms in its four stages since round 19; the files of earlier
    rounds switch them off, so the preset plus the file is still the run of their README rows."""
    _, config = variant_over_cpu_quick(path)
    assert config.model.encoder_norm == "none"


def test_cpu_quick_has_batch_norm_in_cnn18_since_round_19():
    from p2m_geo.config import preset_dict

    assert from_dict(Config, preset_dict("cpu-quick")).model.encoder_norm == "batch"
    assert from_dict(Config, preset_dict("cpu-long")).model.encoder_norm == "none"


@pytest.mark.parametrize("path", variant_configs_of_rounds(0, 19), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_variant_configs_before_round_20_multiply_the_learning_rate_at_milestones(path):
    """cpu-quick decays the learning rate linearly since round 20; the files of earlier rounds
    pin the step schedule (or their own cosine one), so the preset plus the file is still the run
    of their README rows."""
    _, config = variant_over_cpu_quick(path)
    assert config.train.lr_schedule == ("cosine" if "cosine" in path.stem else "step")


def test_cpu_quick_decays_the_learning_rate_linearly_since_round_20():
    from p2m_geo.config import preset_dict

    train = from_dict(Config, preset_dict("cpu-quick")).train
    assert (train.lr_schedule, tuple(train.lr_milestones), train.epochs) == ("linear-decay", (9,), 11)
    assert from_dict(Config, preset_dict("cpu-long")).train.lr_schedule == "step"
