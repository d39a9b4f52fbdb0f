import copy

import pytest
import torch

import sagan
from sagan.console import UserError
from sagan.models import Generator
from sagan.export import baked_state_dict
from sagan.loading import load_generator


@pytest.mark.parametrize("embed_sn,shared_dim", [(False, 0), (True, 0), (False, 16), (True, 16)])
def test_baked_plain_twin_computes_the_same_function(embed_sn, shared_dim):
    kw = dict(resolution=32, ch=8, z_dim=8, num_classes=3, attn=[16], embed_sn=embed_sn, shared_dim=shared_dim)
    G = Generator(**kw)
    with torch.no_grad():  # move away from init, and let the power iterations run
        for p in G.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for _ in range(3):
            G(torch.randn(4, 8), torch.randint(0, 3, (4,)))
    G.eval()
    G_copy = copy.deepcopy(G)
    twin = Generator(**kw, sn=False)
    twin.load_state_dict(baked_state_dict(G_copy))  # strict: every key of the plain twin
    twin.eval()
    z, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        assert torch.allclose(G(z, y), twin(z, y), atol=1e-5)
        assert torch.equal(G(z, y), G_copy(z, y))  # baking left the module (and its copies) intact


def test_sample_accepts_zero_dim_labels():
    import numpy as np

    G = Generator(32, ch=8, z_dim=8, num_classes=3).eval()
    ref = G.sample(2, y=2, seed=0)
    assert torch.equal(G.sample(2, y=torch.tensor(2), seed=0), ref)
    assert torch.equal(G.sample(2, y=np.int64(2), seed=0), ref)


def test_load_generator_rejects_foreign_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a sagan checkpoint"):
        load_generator(tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not exist"):
        load_generator(tmp_path / "missing.pt")
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="no checkpoint"):
        load_generator(tmp_path / "run")


# ---------------------------------------------------------------------------- fine-tuning


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_fine_tuning_loads_g_d_and_ema_reinitialises_classes_and_freezes_d_blocks(trained_run, tmp_path, capsys):
    from sagan.training import Trainer

    from helpers import tiny_config, write_class_folder

    source = torch.load(sorted((trained_run / "checkpoints").glob("ckpt_*.pt"))[-1], weights_only=True)
    new_data = write_class_folder(tmp_path / "three", classes=("a", "b", "c"), per_class=8, seed=5)
    # the non-saturating loss: D separates these shapes perfectly, and the hinge would give no gradient
    cfg = tiny_config(new_data, steps=3, ckpt_every=100, freeze_d=2, loss="nonsaturating")
    cfg.init_from = str(trained_run)
    tr = Trainer(cfg, tmp_path / "ft", progress=False)
    said = capsys.readouterr().err
    assert "initialised from" in said and "G, D and the EMA" in said
    assert "2 classes there, 3 here: the class embeddings start fresh" in said
    G0, D0 = _params(tr.gan.G), _params(tr.gan.D)
    for key, value in D0.items():  # loaded from the source, but for the 3-class projection
        if key.startswith("embed."):  # fresh: its weight, and the SN vectors that go with it
            assert value.shape != source["D"][key].shape or not torch.equal(value, source["D"][key]), key
        else:
            assert torch.equal(value, source["D"][key]), key
    assert D0["embed.parametrizations.weight.original"].shape == (3, 16)
    assert torch.equal(G0["linear.parametrizations.weight.original"],
                       source["G"]["linear.parametrizations.weight.original"])
    assert tr.step == 0 and not tr.gan.opt_g.state  # a new run: step 0, fresh optimisers
    tr.fit()
    G1, D1 = _params(tr.gan.G), _params(tr.gan.D)
    frozen = [k for k in D1 if k.startswith(("blocks.0.", "blocks.1.")) and "original" in k]
    trained = [k for k in D1 if k.startswith(("blocks.2.", "linear.")) and "original" in k]
    assert frozen and trained
    assert all(torch.equal(D1[k], D0[k]) for k in frozen)  # FreezeD: the first two blocks keep their weights
    assert [k for k in trained if torch.equal(D1[k], D0[k])] == []
    assert not torch.equal(G1["linear.parametrizations.weight.original"], G0["linear.parametrizations.weight.original"])
    cfg.steps = 3
    resumed = Trainer(cfg, tmp_path / "ft", progress=False)
    assert "initialised from" not in capsys.readouterr().err and resumed.step == 3  # a resume is not re-initialised


def test_fine_tuning_from_an_exported_generator_starts_d_fresh(trained_run, tmp_path, capsys):
    from sagan.export import export_generator
    from sagan.training import Trainer

    from helpers import tiny_config

    exported = export_generator(trained_run, tmp_path / "g.safetensors")
    cfg = tiny_config(load_generator(trained_run) and trained_run.parent / "shapes", steps=1, ema_start=1000)
    cfg.init_from = str(exported)
    tr = Trainer(cfg, tmp_path / "ft", progress=False)
    assert "G only: D starts fresh" in capsys.readouterr().err
    z, y = torch.randn(4, 8), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        ours = tr.gan.ema.module.eval()(z, y)
        theirs = load_generator(exported)(z, y)
    assert torch.allclose(ours, theirs, atol=1e-4)  # the exported function, SN vectors re-estimated


def test_fine_tuning_another_architecture_is_one_line_naming_the_keys(trained_run, tmp_path):
    from sagan.training import Trainer

    from helpers import tiny_config

    cfg = tiny_config(trained_run.parent / "shapes", steps=1)
    cfg.model.g_ch, cfg.init_from = 8, str(trained_run)
    with pytest.raises(UserError, match=r"another architecture \(model.g_ch: 4 there, 8 here\)") as e:
        Trainer(cfg, tmp_path / "ft", progress=False)
    assert "\n" not in str(e.value)


def test_standing_statistics_on_demand_in_sample_and_export(trained_run, tmp_path, capsys):
    """--standing_stats M gives what models.standing_stats(G, M) gives, computed here directly."""
    import numpy as np
    from PIL import Image

    from sagan.images import to_uint8
    from sagan.models import standing_stats

    from helpers import sagan_inproc

    r = sagan_inproc(capsys, "sample", trained_run, "--grid", "--n", "2", "--class", "1", "--standing_stats", "3",
                     "--out", tmp_path / "s.png", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    G = standing_stats(sagan.load_generator(trained_run), 3)
    want = to_uint8(G.sample(2, y=1, seed=0))
    got = np.asarray(Image.open(tmp_path / "s.png"))
    plain = to_uint8(sagan.load_generator(trained_run).sample(2, y=1, seed=0))
    assert not torch.equal(want, plain)  # the statistics did change
    first = got[2:34, 2:34] if got.ndim == 2 else got[2:34, 2:34, 0]
    assert np.abs(first.astype(int) - want[0, 0].numpy().astype(int)).max() <= 1
    r = sagan_inproc(capsys, "export", trained_run, "--out", tmp_path / "g.safetensors", "--standing_stats", "3")
    assert r.returncode == 0, r.stderr
    E = sagan.load_generator(tmp_path / "g.safetensors")
    z, y = torch.randn(4, E.z_dim), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        assert torch.allclose(E(z, y), G(z, y), atol=1e-5)
    r = sagan_inproc(capsys, "sample", trained_run, "--standing_stats", "-1", "--out", tmp_path / "x")
    assert r.returncode == 2 and "--standing_stats must be >= 0" in r.stderr
