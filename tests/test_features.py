"""Features of image sets: reference batches and the reference cache, offline."""

import pytest
import torch

from sagan import evaluation, features, inception


def test_a_limited_reference_draws_from_every_class(tiny_folder):
    from sagan.data import open_dataset

    data = open_dataset(tiny_folder, 32, workers=0, verbose=False)  # stored class by class
    labels = torch.cat([y for _, y in features.data_batches(data, batch_size=5, limit=10)])
    assert len(labels) == 10 and set(labels.tolist()) == {0, 1}
    assert len(torch.cat([y for _, y in features.data_batches(data, batch_size=5)])) == len(data)


def _random_inception_file(path, seed):
    torch.manual_seed(seed)
    net = inception.inception_network(None)  # random init, the real file's keys and shapes
    torch.save(net.state_dict(), path)
    return path


def test_reference_statistics_are_keyed_to_the_inception_weights(tmp_path, monkeypatch):
    """Scoring with another weights file must not reuse statistics cached with the first: two
    weights files, one cache, two different FIDs (and each equals a fresh computation)."""
    from sagan.data import open_dataset
    from sagan.models import Generator

    from helpers import write_class_folder

    monkeypatch.setenv("SAGAN_CACHE", str(tmp_path / "cache"))  # a cache of its own, to count its entries
    data = open_dataset(write_class_folder(tmp_path / "d", per_class=6), 32, 3, progress=False)
    G = Generator(32, ch=8, z_dim=8, num_classes=2, attn=[16]).eval()
    a, b = (inception.InceptionExtractor(_random_inception_file(tmp_path / f"w{s}.pth", s)) for s in (1, 2))
    assert a.name != b.name and a.name.startswith("tf-inception-v3-compat:")
    fid_a = evaluation.evaluate_generator(G, data, n=12, extractor=a, batch_size=12, progress=False)
    fid_b = evaluation.evaluate_generator(G, data, n=12, extractor=b, batch_size=12, progress=False)
    assert not fid_b["reference_cached"]  # b's reference features were computed with b
    assert fid_a["fid"] != pytest.approx(fid_b["fid"], rel=1e-3)
    again = evaluation.evaluate_generator(G, data, n=12, extractor=b, batch_size=12, progress=False)
    assert again["reference_cached"] and again["fid"] == pytest.approx(fid_b["fid"], rel=1e-9)
    assert len(list((features.cache_dir() / "reference").glob("*.pt"))) == 2
