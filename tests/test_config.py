"""Config resolution: the order options apply in, validation, completion from the data, files."""

import pytest

from sagan.config import (ConfigError, RunConfig, base_config, check_same_run, complete, config_to_dict,
                          load_config, load_preset, validate)
from sagan.data import open_dataset

from helpers import sagan_inproc, tiny_config


def test_options_apply_in_order_defaults_preset_file_overrides(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("model:\n  g_ch: 16\ntrain:\n  lr_d: 3.0e-4\n")
    r = sagan_inproc(capsys, "train", "--config", tmp_path / "c.yaml", "--model.g_ch", "24", "--print_config",
                     cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "g_ch: 24" in out          # the override beats the file
    assert "lr_d: 0.0003" in out      # the file beats the preset (demo: 4e-4)
    assert "ema_decay: 0.99\n" in out  # the preset beats the defaults (0.9999)
    assert "adam_eps: 1.0e-08" in out  # a default nobody set
    r = sagan_inproc(capsys, "train", "--model.g_ch", "24", "--config", tmp_path / "c.yaml", "--print_config",
                     cwd=tmp_path)
    assert "g_ch: 16" in r.stdout     # a file given later beats an earlier override


def test_the_base_is_the_preset_else_the_saved_run_else_the_demo():
    saved = tiny_config("x")
    assert base_config(None, saved) == (saved, None)
    cfg, name = base_config("cifar10", saved)
    assert name == "cifar10" and cfg == load_preset("cifar10")
    cfg, name = base_config(None, None)
    assert name == "demo" and cfg == load_preset("demo")


def test_completion_fills_in_classes_channels_path_and_workers(tiny_folder):
    cfg = tiny_config(tiny_folder)
    cfg.data = str(tiny_folder.parent / ".." / tiny_folder.parent.name / "shapes")
    cfg.model.num_classes = cfg.model.img_channels = None
    data = open_dataset(cfg.data, 32, None, workers=0, progress=False)
    done = complete(cfg, data, workers=3)
    assert (done.model.num_classes, done.model.img_channels, done.dataset.workers) == (2, 3, 3)
    assert done.data == str(tiny_folder.resolve())
    assert cfg.model.num_classes is None  # the caller's config is left alone
    cfg.model.num_classes = 5
    with pytest.raises(ConfigError, match="model.num_classes is 5 but the data has 2 classes"):
        complete(cfg, data, workers=0)
    cfg.model.num_classes = 0  # unconditional on labelled data is allowed
    assert complete(cfg, data, workers=0).model.num_classes == 0


@pytest.mark.parametrize("section,key,value,message", [
    ("train", "betas_g", (1.0, 0.999), "Adam betas"),
    ("train", "betas_d", (0.0, -0.1), "Adam betas"),
    ("train", "adam_eps", -1e-8, "adam_eps"),
    ("model", "bn_eps", -1e-5, "bn_eps"),
    ("model", "sn_eps", 0.0, "sn_eps"),
    ("model", "bn_momentum", 0.0, "bn_momentum"),
    ("train", "grid_columns", 0, "grid_columns"),
    ("train", "grid_max_rows", 0, "grid_max_rows"),
    ("train", "seed", 2**64, "train.seed"),
    ("train", "ema_decay", 1.0, "ema_decay"),
    ("model", "g_attn", [12], "no 12x12 feature map"),
    ("model", "resolution", 48, "unsupported resolution 48"),
])
def test_values_that_pass_the_type_check_but_are_invalid_are_refused(section, key, value, message):
    cfg = RunConfig()
    setattr(getattr(cfg, section), key, value)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_config_files_with_mistakes_are_one_line_errors(tmp_path):
    cases = {
        "list.yaml": ("- 1\n- 2\n", "must be a mapping"),
        "section.yaml": ("model: [1, 2]\n", "'model' must be a mapping"),
        "type.yaml": ("model:\n  g_ch: wide\n", "model.g_ch must be int, not 'wide'"),
        "literal.yaml": ("train:\n  loss: l2\n", "train.loss must be one of hinge"),
        "yaml.yaml": ("model: {g_ch: 8\n", "not valid YAML"),
        "typo.yaml": ("model:\n  g_chh: 8\n", "did you mean 'model.g_ch'"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=message) as e:
            load_config(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value)
    (tmp_path / "ok.yaml").write_text("model:\n  sn_eps: 1\n  g_attn: [16, 32]\n")  # ints pass for floats
    cfg = load_config(tmp_path / "ok.yaml")
    assert cfg.model.sn_eps == 1 and cfg.model.g_attn == [16, 32]


def test_a_saved_run_compares_all_but_the_resumable_keys():
    a = tiny_config("x")
    b = tiny_config("x", log_every=7, precision="bf16")
    b.steps = 99
    check_same_run(a, b, "runs/x")  # logging, precision and steps may change
    b.model.z_dim = 16
    with pytest.raises(ConfigError, match=r"runs/x holds a different run \(model.z_dim: 8 -> 16\)"):
        check_same_run(a, b, "runs/x")


def test_every_preset_round_trips_through_its_dict():
    from sagan.config import PRESETS, config_from_dict

    for name in PRESETS:
        cfg = load_preset(name)
        assert config_from_dict(config_to_dict(cfg)) == cfg
        validate(cfg)
