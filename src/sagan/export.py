"""Exporting a trained generator: plain weights (spectral norm baked in) in a safetensors file
whose metadata describes the model, so that it loads without the run that made it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .files import atomic_write, expand, refuse_existing
from .loading import generator_from_checkpoint
from .models import eval_mode
from .rundir import CONFIG_FILE, HUB_CARD, HUB_CONFIG, HUB_MODEL, HUB_SAMPLES, run_of
from .sources import ModelSource, resolve_source

__all__ = ["export_generator", "baked_state_dict"]

FORMAT = "torch-sagan/1"


def baked_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``module`` with every spectral-norm parametrization replaced by its
    current value ``W / sigma`` (computed in eval mode, so no power iteration runs), for a
    plain-weight twin built with ``sn=False``. ``module`` itself is left untouched.

    (``torch.nn.utils.parametrize.remove_parametrizations`` is avoided on purpose: it deletes
    the property from a class that deep copies share, which breaks every other copy.)
    """
    out: dict[str, torch.Tensor] = {}
    with eval_mode(module), torch.no_grad():
        for name, m in module.named_modules():
            if parametrize.is_parametrized(m):
                for pname in m.parametrizations.keys():
                    out[f"{name}.{pname}" if name else pname] = getattr(m, pname).detach().clone()
        for k, v in module.state_dict().items():
            if "parametrizations." not in k:
                out[k] = v.detach().clone()
    return out


def export_generator(src: str | os.PathLike | ModelSource, out: str | os.PathLike, overwrite: bool = False,
                     transform=None, license: str | None = None) -> Path:
    """Write the EMA generator of a run or checkpoint to ``out`` as safetensors, with spectral
    norm baked into plain weights and the run config in the metadata; ``transform(G)``, when
    given, runs on the generator first (``sagan export --standing_stats``); ``license``, when
    given, goes into the metadata too (weights trained on non-commercial data should say so)."""
    out = expand(out)
    refuse_existing(out, overwrite)
    return _write_generator(resolve_source(src).checkpoint()[1], out, transform, license)


def _write_generator(state: dict, out: Path, transform=None, license: str | None = None) -> Path:
    """The EMA generator of a loaded checkpoint, SN baked in, as safetensors at ``out``."""
    from safetensors.torch import save

    G = generator_from_checkpoint(state)
    if transform is not None:
        G = transform(G)
    tensors = {k: v.contiguous() for k, v in baked_state_dict(G).items()}
    meta = {"config": json.dumps(state["config"]), "step": str(int(state["step"])), "format": FORMAT}
    if license:
        meta["license"] = license
    return atomic_write(out, save(tensors, metadata=meta))


# ------------------------------------------------------------------------------ Hugging Face folders


def _scores(run: Path) -> list[dict]:
    """Evaluations that ``sagan eval`` wrote into the run (newest last)."""
    import json

    rows = []
    from .rundir import RunDir

    for p in sorted(RunDir(run).eval.glob("step*.json")):
        try:
            r = json.loads(p.read_text())
        except ValueError:
            continue
        if isinstance(r, dict) and "fid" in r:
            rows.append(r)
    return rows


def _model_card(config: dict, step: int | None, scores: list[dict], license: str, repo_id: str) -> str:
    import yaml

    data = config.get("data") or "the MNIST test set bundled with torch-sagan"
    m = config["model"]
    meta = {"library_name": "torch-sagan", "license": license, "pipeline_tag": "unconditional-image-generation",
            "tags": ["gan", "sagan", "self-attention-gan", "image-generation", "pytorch"]}
    if scores:
        meta["metrics"] = ["fid"] + (["inception_score"] if any("is" in r for r in scores) else [])
    scores_md = (_scores_table(scores) if scores else
                 "No evaluation was recorded for this run (`sagan eval RUN` writes one).")
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {repo_id.split('/')[-1]}: a Self-Attention GAN generator

A {'class-conditional' if m.get('num_classes') else 'unconditional'} SAGAN generator (Zhang et al., ICML 2019) at
{m['resolution']}x{m['resolution']} px{f", {m['num_classes']} classes" if m.get('num_classes') else ''}, trained
with torch-sagan (`pip install torch-sagan`) on {data}{f' for {step:,} steps' if step else ''}. This is the EMA generator
with spectral norm baked into plain weights.

![samples]({HUB_SAMPLES})

## Use it

```bash
pip install 'torch-sagan[hub]'
sagan sample hf://{repo_id} --grid
```

```python
import sagan

G = sagan.load_generator("hf://{repo_id}")
images = G.sample(16, seed=0)  # in [-1, 1]
```

## Training

`config.yaml` is the run's resolved config: `sagan train --config config.yaml --out runs/{repo_id.split('/')[-1]}`
trains the same model again.

## Scores

{scores_md}

Scores are torch-sagan's TF-Inception pipeline (torch-fidelity); each row's protocol says what it was
computed against. Compare only numbers with the same protocol: the reference set, the sample count
and the Inception weights all move FID.
"""


def _scores_table(scores: list[dict]) -> str:
    from .evaluation import protocol_line

    def num(r, k):
        return f"{r[k]:.2f}" if k in r else "-"

    def how(r):
        return protocol_line(r) if "protocol" in r else f"{r.get('n_fake', '?')} samples vs {r.get('reference', '?')}"

    rows = "\n".join(f"| {r.get('step', '?')} | {num(r, 'fid')} | {num(r, 'is')} | {num(r, 'intra_fid')} | {how(r)} |"
                     for r in scores)
    return "| step | FID | IS | intra-FID | protocol |\n| --- | --- | --- | --- | --- |\n" + rows


def export_hub_dir(src: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False, license: str = "other",
                   repo_id: str | None = None) -> Path:
    """A folder the Hugging Face Hub understands: ``model.safetensors`` (as :func:`export_generator`
    writes), ``config.json`` and ``config.yaml`` (the run's config), ``samples.png`` and a
    ``README.md`` model card."""
    import json

    import yaml

    from .files import output_folder
    from .images import save_grid
    from .loading import _read_safetensors, load_generator

    source = resolve_source(src)
    out = output_folder(expand(out), overwrite)
    if source.exported:
        _, config = _read_safetensors(source.path)  # checked before it is copied
        atomic_write(out / HUB_MODEL, source.path.read_bytes())
        step, scores = None, []
    else:
        ckpt, state = source.checkpoint()  # read once
        _write_generator(state, out / HUB_MODEL, license=license)
        config, step, scores = state["config"], int(state["step"]), _scores(run_of(ckpt))
    atomic_write(out / HUB_CONFIG, json.dumps({"library_name": "torch-sagan", **config}, indent=2) + "\n")
    atomic_write(out / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    G = load_generator(out / HUB_MODEL)
    k = G.num_classes
    y = torch.arange(min(k, 10)).repeat_interleave(8) if k else None
    save_grid(G.sample(len(y) if k else 64, y=y, seed=0), out / HUB_SAMPLES, columns=8)
    atomic_write(out / HUB_CARD, _model_card(config, step, scores, license, repo_id or "OWNER/REPO"))
    return out
