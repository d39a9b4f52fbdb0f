"""``sagan report``: one self-contained HTML page about a run. Plots of the losses, D(real) and
D(fake), every attention gamma, speed and (when logged) FID/IS over training, the truncation
sweeps ``sagan eval`` wrote, a timeline of sample grids, attention maps from the latest
checkpoint and the run's config. Every image is
embedded as a data URI, so the page needs no network and can be mailed or archived as is."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import torch

import yaml

from .config import config_to_dict
from .console import UserError, info, warn
from .rundir import RunDir
from .files import atomic_write, expand, refuse_existing

e = html.escape

__all__ = ["read_metrics", "build_report"]


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training rows, evaluation rows) of ``metrics.jsonl``; unreadable lines (a write cut
    short by a crash) are skipped."""
    path = RunDir(run_dir).metrics
    train, evals = [], []
    if not path.exists():
        return train, evals
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        (evals if rec.get("eval") else train).append(rec)
    # a resumed run may log a step twice (after a crash between log and checkpoint): keep the last
    train = list({r["step"]: r for r in train}.values())
    return sorted(train, key=lambda r: r["step"]), sorted(evals, key=lambda r: r["step"])


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _series(rows: list[dict], keys: dict[str, str]) -> dict[str, tuple[list, list]]:
    out = {}
    for key, label in keys.items():
        pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None and math.isfinite(r[key])]
        if pts:
            out[label] = ([p[0] for p in pts], [p[1] for p in pts])
    return out


def _block_order(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in key.replace("/", ".").split("."))


def _gamma_labels(keys: list[str], config: dict) -> dict[str, str]:
    """'gamma/G.blocks.1.1' -> 'G 16x16 (blocks.1.1)': G's attention layers come in increasing
    feature-map resolution, D's in decreasing, as model.g_attn/d_attn list them."""
    model = config.get("model", {})
    res = {"G": sorted(model.get("g_attn", [])), "D": sorted(model.get("d_attn", []), reverse=True)}
    out = {}
    for net in ("G", "D"):
        mine = [k for k in keys if k.startswith(f"gamma/{net}.")]
        for i, k in enumerate(mine):
            where = f"{res[net][i]}x{res[net][i]}" if len(mine) == len(res[net]) else "?"
            out[k] = f"{net} {where} ({k.split('.', 1)[1]})"
    return out


def _plots(train: list[dict], evals: list[dict], config: dict) -> list[tuple[str, str, bytes]]:
    """(title, caption, PNG) for each plot the metrics allow."""
    from .plots import figure_png, line_plot, plt

    out = []
    if train:
        s = _series(train, {"d_loss": "D loss", "g_loss": "G loss"})
        out.append(("Losses", "Hinge losses (or the configured loss) averaged over each logging interval.",
                    figure_png(line_plot(s, "Losses", "generator step", "loss"))))
        s = _series(train, {"d_real": "D(real)", "d_fake": "D(fake)"})
        out.append(("Discriminator outputs", "Mean D logits on real and generated images; the gap is how well D "
                    "separates them.", figure_png(line_plot(s, "D(real) and D(fake)", "generator step",
                                                            "mean D output", hline=0.0))))
        gammas = sorted({k for r in train for k in r if k.startswith("gamma/")}, key=_block_order)
        if gammas:
            s = _series(train, _gamma_labels(gammas, config))
            out.append(("Attention gammas", "Each self-attention block outputs x + gamma * o; gamma starts at 0, "
                        "and how far it moves shows how much the network leans on attention.",
                        figure_png(line_plot(s, "Attention gamma", "generator step", "gamma", hline=0.0))))
        s = _series(train, {"img_per_s": "images/s"})
        if s:
            out.append(("Speed", "Real images through D per second (all processes).",
                        figure_png(line_plot(s, "Training speed", "generator step", "images per second"))))
    if evals:
        panels = [("fid", "FID (lower is better)")] + ([("is", "IS (higher is better)")] if any("is" in r for r in evals)
                                                      else [])  # no IS with the bundled Inception features
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), dpi=100, squeeze=False)
        for ax, (key, label) in zip(axes[0], panels):
            pts = [(r["step"], r[key]) for r in evals if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=4, label=label)
            if key == "fid" and any("intra_fid" in r for r in evals):
                pts = [(r["step"], r["intra_fid"]) for r in evals if "intra_fid" in r]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s", markersize=4, label="intra-FID")
            ax.set_xlabel("generator step")
            ax.set_ylabel(key.upper())
            ax.set_title(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        from .evaluation import protocol_line

        n = evals[-1].get("eval_samples", "?")
        how = protocol_line(evals[-1]) if "protocol" in evals[-1] else f"{n} samples each, {evals[-1].get('extractor', '')}"
        out.append(("FID and IS", f"Scores of the EMA generator during training ({how}).", figure_png(fig)))
    return out


def _timeline(run_dir: Path, max_grids: int) -> list[tuple[str, bytes]]:
    grids = sorted(RunDir(run_dir).samples.glob("step_*.png"))
    if max_grids == 1:
        grids = grids[-1:]
    elif len(grids) > max_grids:  # evenly spaced, first and last included
        idx = sorted({round(i * (len(grids) - 1) / (max_grids - 1)) for i in range(max_grids)})
        grids = [grids[i] for i in idx]
    return [(f"step {int(p.stem.split('_')[1]):,}", p.read_bytes()) for p in grids]


def _attention_figure(run_dir: Path, device: torch.device) -> tuple[bytes, str] | None:
    """Attention maps of the latest checkpoint's EMA G (and D on its images), as PNG bytes."""
    from .attention_maps import combined_figure, generated_attention, grid_points
    from .plots import figure_png
    from .loading import load_networks

    G, D, where = load_networks(run_dir, device)
    points, n = grid_points(G.resolution, 2), 2
    y = torch.arange(n) % G.num_classes if G.num_classes else None
    images, layers = generated_attention(G, D, n, y, 0, points)
    if not layers:
        return None
    png = figure_png(combined_figure(images.cpu(), points, layers, max_rows=8))
    return png, f"step {where['step']:,}, EMA generator, seed 0"


CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; }
.timeline { display: flex; flex-wrap: wrap; gap: 12px; }
.timeline figure { width: 250px; margin: 0; }
.facts td { padding: 2px 14px 2px 0; } .muted { color: #777; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
"""

# counts the images the browser decoded, for tests and for a reader wondering about a blank image
SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-decoded', ok);
});
"""


def _facts(train: list[dict], evals: list[dict]) -> str:
    facts = []
    if train:
        last = train[-1]
        facts += [("trained to step", f"{last['step']:,}"),
                  ("last losses", f"D {last['d_loss']:.3f}, G {last['g_loss']:.3f}")]
    if evals:
        best = min(evals, key=lambda r: r["fid"])
        facts.append(("best FID", f"{best['fid']:.2f} at step {best['step']:,}"
                      + (f" (IS {best['is']:.2f})" if "is" in best else "")))
    if not facts:
        return ""
    return "<table class='facts'>" + "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in facts) + "</table>"


def _figure(png: bytes, alt: str, caption: str, more: str = "") -> str:
    return f"<figure><img src='{_uri(png)}' alt='{e(alt)}'><figcaption>{e(caption)}{more}</figcaption></figure>"


def _plots_html(train: list[dict], evals: list[dict], config: dict) -> list[str]:
    plots = _plots(train, evals, config)
    if not plots:
        return ["<p>No metrics logged yet (metrics.jsonl is missing or empty).</p>"]
    return [f"<h2>{e(title)}</h2>" + _figure(png, f"{title} plot", caption) for title, caption, png in plots]


def _sweeps_html(run: RunDir) -> list[str]:
    sweeps = sorted(run.eval.glob("truncation_sweep_*.png"))
    if not sweeps:
        return []
    return ["<h2>Truncation trade-off</h2>"] + [
        _figure(p.read_bytes(), "truncation sweep", f"{p.name} (sagan eval --truncation-sweep)") for p in sweeps]


def _timeline_html(run: RunDir, max_grids: int) -> list[str]:
    grids = _timeline(run.path, max_grids)
    if not grids:
        return ["<h2>Samples over training</h2>", "<p>No sample grids yet.</p>"]
    return ["<h2>Samples over training</h2>",
            "<p>Grids of the EMA generator from fixed z (one row per class for conditional models).</p>"
            "<div class='timeline'>" + "".join(_figure(png, f"samples at {cap}", cap) for cap, png in grids) + "</div>"]


def _attention_html(run: RunDir, device: torch.device) -> list[str]:
    try:
        fig = _attention_figure(run.path, device)
    except UserError as err:
        return ["<h2>Attention maps</h2>", f"<p>No attention maps: {e(str(err))}</p>"]
    if fig is None:
        return ["<h2>Attention maps</h2>", "<p>This model has no self-attention layers.</p>"]
    png, cap = fig
    return ["<h2>Attention maps</h2>", _figure(
        png, "attention maps",
        "For each query point (left, red circle), where each attention layer of G, and of D on the same images, "
        "looks: red is most attended, each map scaled to its own maximum (at least 5x the uniform level, so that "
        f"a flat map stays dark); {cap}. ", f"<code>sagan attention {e(str(run))}</code> draws more.")]


def build_report(run_dir: str | Path, out: str | Path | None = None, overwrite: bool = False,
                 attention: bool = True, device: str | torch.device = "cpu", max_grids: int = 8) -> Path:
    """Write the HTML report of ``run_dir`` to ``out`` (default ``<run_dir>/report.html``)."""
    run = RunDir(run_dir)
    if not run.config_path.exists():
        raise UserError(f"{run} is not a sagan run directory (no config.yaml); pass the --out of a sagan train run")
    config = run.saved_config()
    out = expand(out) if out else run.report
    refuse_existing(out, overwrite)
    train, evals = read_metrics(run.path)
    config_text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    name = e(run.path.resolve().name)
    parts = [f"<h1>SAGAN run: {name}</h1>", f"<p class='muted'>{e(str(run.path.resolve()))}</p>", _facts(train, evals)]
    parts += _plots_html(train, evals, config_to_dict(config)) + _sweeps_html(run) + _timeline_html(run, max_grids)
    if attention:
        parts += _attention_html(run, torch.device(device))
    parts.append(f"<h2>Config</h2><pre>{e(config_text)}</pre>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>SAGAN report: {name}</title><style>{CSS}</style>"
            f"<script>{SCRIPT}</script></head><body>" + "\n".join(parts) + "</body></html>\n")
    atomic_write(out, page)
    if not train:
        warn(f"{run} has no logged metrics yet: the report has no plots")
    info(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained)")
    return out
