"""Refining and adding to given strokes (issue 14), on a real trained network: what --start-from and
--keep-start give, and whether added strokes should start away from the kept ones.

    .venv/bin/python benchmarks/bench_refine.py [--photos coffee,horse] [--threads 1]

ImageNet stand-in for CLIP (tests/standin_net.py, as bench_quality.py): the numbers are about the method on a
trained network, never about CLIP. Per photo, 16 strokes, the `fast` preset, seed 0:
  sketch      a fresh sketch (its best clean-view loss)
  refine      --start-from that sketch, 0 added strokes, another `fast` run: how much lower it gets
  keep8+8     its 8 most important strokes kept, 8 added (new_stroke_clearance 4 px, the default: added
              strokes start away from the kept ones), against the same with clearance 0 (start anywhere)
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

from bench_quality import PHOTOS, photo  # noqa: E402
from clipasso_engine import imageio, sketcher, strokes  # noqa: E402
from clipasso_engine.config import make_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--net", default="efficientnet-lite0")
    args = parser.parse_args()
    from standin_net import standin_models, unavailable_reason
    if unavailable_reason(args.net):
        sys.exit(unavailable_reason(args.net))
    torch.set_num_threads(args.threads)
    config = make_config("fast", num_strokes=16, threads=args.threads)
    runtime = sketcher.prepare(config, loaded_models=standin_models(args.net))
    print(f"ImageNet stand-in for CLIP ({args.net}); fast preset, 16 strokes; best clean-view loss, lower is better\n")
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
        added = {c: run(start_strokes=kept, keep_start=True, num_strokes=8, new_stroke_clearance=c) for c in (4.0, 0.0)}
        on_edges = {c: strokes.edge_alignment(np.delete(r.points, r.kept, axis=0), edges) for c, r in added.items()}
        rows.append(f"| {name} | {first.loss:.4f} | {refined.loss:.4f} | {added[4.0].loss:.4f} | {added[0.0].loss:.4f} "
                    f"| {on_edges[4.0] * 100:.0f} % / {on_edges[0.0] * 100:.0f} % |")
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
