import copy

import pytest
import torch

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
