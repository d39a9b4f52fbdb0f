import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from sagan.report import build_report, read_metrics

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    """A run of the report's own, with one truncation sweep (a stand-in Inception), so that what
    the page must hold does not depend on what other tests wrote into a shared run."""
    from helpers import StandIn, tiny_config, write_class_folder
    from sagan import evaluation
    from sagan.cli import main
    from sagan.training import Trainer

    root = tmp_path_factory.mktemp("report-run")
    Trainer(tiny_config(write_class_folder(root / "shapes"), steps=2, ema_start=1000), root / "run",
            progress=False).fit()
    with pytest.MonkeyPatch.context() as mp:  # module scope: the per-test private cache is not set up yet
        mp.setenv("SAGAN_CACHE", str(root / "cache"))
        mp.setattr(evaluation, "InceptionExtractor", lambda *a, **k: StandIn())
        assert main(["eval", str(root / "run"), "--n", "8", "--batch_size", "4", "--truncation-sweep", "1.0"]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def report(report_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    return build_report(report_run, out)


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_report_is_self_contained_with_plots_grids_maps_and_config(report, report_run):
    page = report.read_text()
    assert "http://" not in page and "https://" not in page and "src='/" not in page  # nothing fetched
    for title in ("Losses", "Discriminator outputs", "Attention gammas", "Samples over training",
                  "Attention maps", "Config"):
        assert f"<h2>{title}</h2>" in page, title
    imgs = _images(page)
    n_grids = len(list((report_run / "samples").glob("step_*.png")))
    n_sweeps = len(list((report_run / "eval").glob("truncation_sweep_*.png")))
    assert n_sweeps == 1 and n_grids >= 1
    # losses, D outputs, gammas, speed; sweeps; the grids; attention maps
    assert len(imgs) == 4 + n_sweeps + n_grids + 1
    for png in imgs:
        Image.open(io.BytesIO(png)).verify()
    assert "model:" in page and "resolution: 32" in page  # the config, escaped in a <pre>


def test_read_metrics_skips_a_line_cut_short_by_a_crash(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "d_loss": 1.0}\n{"step": 2, "eval": true, "fid": 3.0}\n{"step": 3, "d_lo')
    train, evals = read_metrics(tmp_path)
    assert [r["step"] for r in train] == [1] and [r["fid"] for r in evals] == [3.0]


def test_report_command_refuses_to_overwrite_and_non_runs(trained_run, tmp_path, capsys):
    from helpers import sagan_inproc

    out = tmp_path / "r.html"
    assert sagan_inproc(capsys, "report", trained_run, "--out", out, "--no_attention").returncode == 0
    before = out.read_bytes()
    r = sagan_inproc(capsys, "report", trained_run, "--out", out)
    assert r.returncode == 2 and "--overwrite" in r.stderr and out.read_bytes() == before
    r = sagan_inproc(capsys, "report", tmp_path)
    assert r.returncode == 2 and "not a sagan run directory" in r.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); CI installs it")
def test_report_renders_in_headless_chromium_with_its_images(report, tmp_path):
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}"]
    url = report.resolve().as_uri()
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    n_img = len(_images(report.read_text()))
    # the page's own load handler counts the images the browser decoded
    assert f'data-images="{n_img}"' in dom and f'data-decoded="{n_img}"' in dom, dom[:300]
    shot = tmp_path / "shot.png"
    subprocess.run(common + [f"--screenshot={shot}", "--window-size=1200,2400", url], capture_output=True,
                   timeout=180)
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert px.std() > 20  # not a blank page
    # matplotlib's first line colour (#1f77b4) drawn by the decoded plot images
    blue = (abs(px - np.array([31, 119, 180])).sum(axis=-1) < 40).sum()
    assert blue > 200, blue


def test_a_one_grid_timeline_shows_the_latest_grid(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for step, shade in ((1, 0), (7, 255)):  # more grids than asked for, the newest last
        Image.new("RGB", (34, 34), (shade, 0, 0)).save(run / "samples" / f"step_{step:08d}.png")
    page = build_report(run, tmp_path / "one.html", attention=False, max_grids=1).read_text()
    latest = (run / "samples" / "step_00000007.png").read_bytes()
    assert base64.b64encode(latest).decode() in page
    assert page.count("<figcaption>step ") == 1 and "step 7" in page


def test_report_embeds_truncation_sweeps_found_in_eval(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "eval").mkdir(exist_ok=True)
    Image.new("RGB", (60, 40), (0, 200, 0)).save(run / "eval" / "truncation_sweep_step00000002_ema_n100.png")
    page = build_report(run, tmp_path / "r.html", attention=False).read_text()
    assert "<h2>Truncation trade-off</h2>" in page
    assert base64.b64encode((run / "eval" / "truncation_sweep_step00000002_ema_n100.png").read_bytes()).decode() in page
