"""Loading generators from anywhere, verified: the shipped demo, URLs (a local HTTP server),
the Hugging Face Hub's cache layout offline, and folders written for the Hub."""

import hashlib
import http.server
import os
import subprocess
import sys
import threading

import pytest
import torch
import yaml

import sagan
from sagan.console import UserError
from sagan.registry import entries

from helpers import sagan_inproc


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGAN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    from sagan.export import export_generator

    return export_generator(trained_run, tmp_path_factory.mktemp("exp") / "g.safetensors")


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/www, in a thread."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(entries()))
def test_each_shipped_generator_loads_and_draws_its_recorded_samples(name, capsys):
    """The check row of each registry entry was drawn when the model was shipped: the packaged file
    must draw it again (to one grey level: CPU kernels may round differently)."""
    import numpy as np
    from PIL import Image

    from sagan.images import to_uint8

    entry = entries()[name]
    G = sagan.load_generator(name)
    check = entry["check"]
    assert G.resolution == check["resolution"] and G.num_classes == check["num_classes"]
    y = torch.tensor(check["classes"]) if check.get("classes") else None
    images = to_uint8(G.sample(check["n"], y=y, seed=check["seed"]))
    from importlib import resources

    ref = np.asarray(Image.open(resources.files("sagan") / "pretrained" / check["file"]))
    got = torch.cat(list(images), dim=2).permute(1, 2, 0).squeeze(-1).numpy()  # one row, side by side
    assert got.shape == ref.shape
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    for key in ("licence", "data", "command", "commit", "scores"):
        assert entry[key], key
    if "non-commercial" in entry["licence"]:  # the terms are said on every use, and the weights carry them
        assert "non-commercial" in entry["notice"] and entry["notice"] in capsys.readouterr().err
        from safetensors import safe_open

        file = resources.files("sagan") / "pretrained" / entry["file"]
        assert "non-commercial" in safe_open(str(file), "pt").metadata()["license"]


def test_a_url_is_downloaded_once_checked_and_cached(exported, server, tmp_path, monkeypatch, capsys):
    root, base = server
    (root / "g.safetensors").write_bytes(exported.read_bytes())
    url = f"{base}/g.safetensors#sha256={_sha(exported)}"
    G = sagan.load_generator(url)
    z, y = torch.randn(2, 8), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.allclose(G(z, y), sagan.load_generator(exported)(z, y))
    (root / "g.safetensors").unlink()  # gone from the server: the cache serves it, also offline
    monkeypatch.setenv("SAGAN_OFFLINE", "1")
    sagan.load_generator(url)
    monkeypatch.delenv("SAGAN_OFFLINE")
    assert "downloading" in capsys.readouterr().err


def test_a_corrupted_download_is_refused_and_nothing_stays_in_the_cache(exported, server, tmp_path):
    from sagan.registry import _cache

    root, base = server
    blob = bytearray(exported.read_bytes())
    blob[-5] ^= 0xFF
    (root / "g.safetensors").write_bytes(bytes(blob))
    with pytest.raises(UserError, match="does not have the expected sha256") as e:
        sagan.load_generator(f"{base}/g.safetensors#sha256={_sha(exported)}")
    assert "\n" not in str(e.value)
    assert not _cache().exists() or not any(p.is_file() for p in _cache().rglob("*"))


def test_offline_without_a_cached_copy_says_what_to_fetch_and_where(monkeypatch):
    monkeypatch.setenv("SAGAN_OFFLINE", "1")
    with pytest.raises(UserError, match=r"downloads are off .*download https://example.org/g.safetensors and put it at"):
        sagan.load_generator("https://example.org/g.safetensors#sha256=" + "0" * 64)


def test_hub_models_load_offline_from_a_hub_layout_cache(exported, tmp_path):
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-sagan"
    commit = "a" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / "model.safetensors").write_bytes(exported.read_bytes())
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "sagan", *a], cwd=tmp_path, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    r = run("sample", "hf://someone/tiny-sagan", "--grid", "--n", "4")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tiny-sagan" / "samples").is_dir()  # outputs beside the user, not in the cache
    r = run("sample", "hf://someone/other-model", "--grid")
    assert r.returncode == 2 and "is not in the Hugging Face cache" in r.stderr and "Traceback" not in r.stderr


def test_hub_loading_without_huggingface_hub_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(UserError, match=r"pip install 'torch-sagan\[hub\]'"):
        sagan.load_generator("hf://someone/tiny-sagan")


def test_export_for_the_hub_writes_a_folder_that_loads_back(trained_run, tmp_path, capsys):
    out = tmp_path / "hub"
    r = sagan_inproc(capsys, "export", trained_run, "--hub-dir", out, "--license", "mit", "--repo_id", "me/tiny")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "config.yaml", "model.safetensors",
                                                     "samples.png"]
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "torch-sagan" and meta["license"] == "mit" and "gan" in meta["tags"]
    assert 'sagan.load_generator("hf://me/tiny")' in card and "sagan train --config config.yaml" in card
    z, y = torch.randn(2, 8), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.allclose(sagan.load_generator(out)(z, y), sagan.load_generator(trained_run)(z, y), atol=1e-5)
    r = sagan_inproc(capsys, "export", trained_run, "--hub-dir", out)
    assert r.returncode == 2 and "already holds files" in r.stderr


def test_wandb_in_offline_mode_writes_its_local_run_files(tiny_folder, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from helpers import tiny_config
    from sagan.training import Trainer

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(tiny_folder, steps=2, loggers=["tensorboard", "wandb"])
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (tmp_path / "run" / "wandb_id").read_text().strip() in runs[0].name


def test_the_demo_outputs_folder_does_not_shadow_the_demo(tmp_path, capsys, monkeypatch):
    """README order: sample demo writes into ./demo/, then interpolate demo must still find the model."""
    monkeypatch.chdir(tmp_path)
    r = sagan_inproc(capsys, "sample", "demo", "--grid", "--n", "10", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "demo" / "samples").is_dir()
    r = sagan_inproc(capsys, "interpolate", "demo", "--classes", "3", "8", "--seeds", "5", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "demo" / "interpolation").glob("*.png"))


def test_sagan_offline_keeps_hub_loading_to_the_cache(monkeypatch):
    """SAGAN_OFFLINE=1 must mean no download for hf:// too, not only for names and URLs."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.errors import LocalEntryNotFoundError

    seen = {}

    def fake_download(repo, file, revision=None, local_files_only=False):
        seen.update(repo=repo, local_files_only=local_files_only)
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("SAGAN_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        sagan.load_generator("hf://someone/nothing")
    assert seen == {"repo": "someone/nothing", "local_files_only": True}
