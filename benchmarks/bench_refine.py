"""Refining and adding to given strokes (issue 14), on a real trained network: what --start-from and
--keep-start give, and whether added strokes should start away from the kept ones.

    .venv/bin/python benchmarks/bench_refine.py [--photos coffee,horse] [--threads 1] [--sheet docs/img/refine_standin.png]

ImageNet stand-in for CLIP (tests/standin_net.py, as bench_quality.py): the numbers are about the method on a
trained network, never about CLIP. Per photo, 16 strokes, the `fast` preset, seed 0:
  sketch      a fresh sketch (its best clean-view loss)
  refine      --start-from that sketch, 0 added strokes, another `fast` run: how much lower it gets
  keep8+8     its 8 most important strokes kept, 8 added (new_stroke_clearance 4 px, the default: added
              strokes start away from the kept ones), against the same with clearance 0 (start anywhere);
              with --seeds K the mean over K seeds of the added strokes (one run's loss moves by ~1 % with the
              float rounding of another thread count alone)
Lower loss is better; all four are the same loss on the same photo, so they compare directly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_quality import PHOTOS, draw_sheet, photo  # noqa: E402
from clipasso_engine import imageio, sketcher, strokes  # noqa: E402
from clipasso_engine.config import make_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--net", default="efficientnet-lite0")
    parser.add_argument("--sheet", help="write a picture: photo | sketch | refined | 8 kept (grey) + 8 added")
    parser.add_argument("--seeds", type=int, default=1,
                        help="run the keep 8 + add 8 cases with this many seeds (0, 1000, ...) and report their mean")
    args = parser.parse_args()
    from standin_net import standin_models, unavailable_reason
    if unavailable_reason(args.net):
        sys.exit(unavailable_reason(args.net))
    torch.set_num_threads(args.threads)
    config = make_config("fast", num_strokes=16, threads=args.threads)
    runtime = sketcher.prepare(config, loaded_models=standin_models(args.net))
    print(f"ImageNet stand-in for CLIP ({args.net}); fast preset, 16 strokes; best clean-view loss, lower is better\n")
    drawn = []
    rows = ["| photo | sketch | refine (+250 steps) | keep 8 + add 8, clearance 4 px | the same, clearance 0 | "
            "added strokes on edges, 4 px / 0 |", "|" + "---|" * 6]
    for name in args.photos.split(","):
        loaded = imageio.load_image(photo(name), config, name=name)
        edges = strokes.edge_map(loaded.target, loaded.photo_box)

        def run(**knobs):
            return sketcher.sketch(loaded, config, runtime=runtime, **knobs)

        first = run()
        refined = run(start_strokes=first.points, num_strokes=0)
        kept = first.points[:8]
        runs = {c: [run(start_strokes=kept, keep_start=True, num_strokes=8, new_stroke_clearance=c, seed=1000 * k)
                    for k in range(args.seeds)] for c in (4.0, 0.0)}
        added = {c: r[0] for c, r in runs.items()}
        loss = {c: np.mean([r.loss for r in rs]) for c, rs in runs.items()}
        on_edges = {c: np.mean([strokes.edge_alignment(np.delete(r.points, r.kept, axis=0), edges) for r in rs])
                    for c, rs in runs.items()}
        rows.append(f"| {name} | {first.loss:.4f} | {refined.loss:.4f} | {loss[4.0]:.4f} | {loss[0.0]:.4f} "
                    f"| {on_edges[4.0] * 100:.0f} % / {on_edges[0.0] * 100:.0f} % |")
        print(rows[-1], flush=True)
        drawn.append((loaded, first, refined, added[4.0]))
    print("\n" + "\n".join(rows))
    if args.sheet:
        refine_sheet(drawn, Path(args.sheet), f"Drawn with an ImageNet stand-in for CLIP ({args.net}), not CLIP")


def refine_sheet(drawn: list, path: Path, label: str) -> None:
    """One row per photo: the canvas, the sketch, the sketch refined, its 8 most important strokes kept (grey)
    with 8 added (black)."""
    from PIL import Image
    from clipasso_engine import raster
    columns = ["photo", "fast sketch", "refined (+250 steps)", "8 kept (grey) + 8 added"]

    def ink(points):
        return raster.render_strokes(torch.tensor(points, dtype=torch.float32)[None], 1.5, 224)[0, 0].numpy()

    def tile(*layers):   # (points, grey level) drawn over white, later layers on top
        canvas = np.ones((224, 224))
        for points, level in layers:
            coverage = 1 - ink(points)
            canvas = canvas * (1 - coverage) + level * coverage
        return Image.fromarray((canvas * 255).round().astype(np.uint8)).convert("RGB")

    rows = []
    for loaded, first, refined, added in drawn:
        target = Image.fromarray((loaded.target[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        new = np.delete(added.points, added.kept, axis=0)
        rows.append([target, tile((first.points, 0.0)), tile((refined.points, 0.0)),
                     tile((added.points[added.kept], 0.6), (new, 0.0))])
    draw_sheet(columns, rows, path, label, cell=200)


if __name__ == "__main__":
    main()
