"""A stand-in for `python -m clipasso_engine sketch ...`: speaks the wire, returns known strokes.

Stdlib only, so any Python runs it. The extension is pointed at it through CLIPASSO_ENGINE_PYTHON
naming a tiny wrapper script (see tests/test_extension.py: make_engine_wrapper) that runs
`<python> engine_double.py "$@"`; the leading `-m clipasso_engine` is skipped here.

One process for all images and stroke counts, as the CLI: `sketch IMG1 IMG2 -o OUT --strokes 8,16
--name A --name B ...` -> start (jobs), status, notice, progress + preview events, one result per job
(job = image * levels + level), done.

ENGINE_DOUBLE_MODE picks the behaviour:
  ok        the whole run, exit 0 (default)
  error     an error event (code bad_image), exit 1
  crash     a few progress events then a traceback on stderr, exit 1, no result
  killed    a few progress events then SIGKILL to itself (what the OOM killer does)
  noresult  exit 0 without a result event
  garbage   non-JSON chatter on stdout around a normal run
  hang      progress and previews, then wait for a command on stdin: finish -> results with
            finished_early true; cancel or EOF -> exit 130 (like the engine); SIGTERM -> 143
  stubborn  progress, then ignore stdin and SIGTERM (only SIGKILL ends it)
  spawn     like stubborn, and also starts a grandchild `sleep`; pids go to ENGINE_DOUBLE_PIDS
--crop L,T,R,B (or -) per image, as the engine: the strokes are drawn inside that rectangle of the
image's pixels (squeezed into the part of the canvas it fills), while image_size and canvas_to_image
still refer to the whole image; a crop outside the image is the engine's bad_argument error.
ENGINE_DOUBLE_RECORD: a file to which one JSON line {argv, image_bytes, image_sizes, caller} is appended.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clipasso_engine import wire  # noqa: E402  (stdlib only; the same import the extension falls back to)

CANVAS = 224


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def image_size(path):
    """(width, height) of a PNG or JPEG, read from its header."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                height, width = struct.unpack(">HH", data[i + 5:i + 9])
                return width, height
            i += 2 + length
    raise ValueError("not a PNG or JPEG")


def known_strokes(n):
    """Stroke 0 runs through the canvas corners (so placement of all four corners is visible in
    the output), the rest follow a fixed arithmetic pattern."""
    strokes = [[[0.0, 0.0], [224.0, 0.0], [224.0, 224.0], [0.0, 224.0]]]
    for k in range(1, n):
        strokes.append([[float((37 * k + 53 * j) % 224) + 0.25 * j, float((61 * k + 29 * j) % 224) + 0.5]
                        for j in range(4)])
    return strokes


def canvas_to_image(width, height, crop=None):
    """Pad-to-square, as the engine does: the canvas covers a max(w, h) square centred on the image,
    or on the crop (w x h) and then shifted by the crop's offset into the whole image."""
    left, top, right, bottom = crop or (0, 0, width, height)
    width, height = right - left, bottom - top
    side = max(width, height)
    scale = side / CANVAS
    return [scale, 0.0, 0.0, scale, left - (side - width) / 2.0, top - (side - height) / 2.0]


def inside_crop(strokes, crop):
    """With a crop, squeeze the known strokes into the part of the canvas the crop fills (the rest
    is padding), so that every control point lies on the cropped pixels, as the engine's would."""
    if crop is None:
        return strokes
    width, height = crop[2] - crop[0], crop[3] - crop[1]
    side = max(width, height)
    kx, ky = width / side, height / side
    ox, oy = CANVAS * (1 - kx) / 2, CANVAS * (1 - ky) / 2
    return [[[ox + kx * x, oy + ky * y] for x, y in stroke] for stroke in strokes]


def parse_crop(text, size, name):
    """'L,T,R,B' -> a tuple of ints checked against the image size, '-' -> None (the engine's rule)."""
    if text.strip() == "-":
        return None
    left, top, right, bottom = (int(round(float(v))) for v in text.split(","))
    width, height = size
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f"{name}: the crop {text} is empty or outside the image ({width} x {height} pixels)")
    return left, top, right, bottom


def parse(argv):
    """The CLI's shape: sketch IMAGE [IMAGE ...] options; --name/--crop repeat (lists)."""
    args = list(argv)
    if args[:2] == ["-m", "clipasso_engine"]:
        args = args[2:]
    assert args[0] == "sketch", args
    options = {"images": [], "name": []}
    i = 1
    while i < len(args) and not args[i].startswith("--") and args[i] != "-o":
        options["images"].append(args[i])
        i += 1
    while i < len(args):
        name = args[i]
        if name in ("--mask-background", "--stretch"):
            options[name[2:]] = True
            i += 1
        elif name in ("--name", "--crop"):
            options.setdefault(name[2:], []).append(args[i + 1])
            i += 2
        else:
            options[name.lstrip("-")] = args[i + 1]
            i += 2
    return options


def wait_forever():
    while True:
        time.sleep(0.05)


def watch_stdin(finish):
    """finish command -> finish.set(); cancel or EOF -> exit 130 (what the engine does)."""
    def watch():
        for line in sys.stdin:
            command = wire.parse_command(line)
            if command == wire.FINISH:
                finish.set()
            elif command == wire.CANCEL:
                os._exit(wire.EXIT_CANCELLED)
        os._exit(wire.EXIT_CANCELLED)
    threading.Thread(target=watch, daemon=True).start()


def main():
    mode = os.environ.get("ENGINE_DOUBLE_MODE", "ok")
    options = parse(sys.argv[1:])
    levels = [int(n) for n in str(options.get("strokes", 16)).split(",")]
    images = options["images"]
    names = options["name"] or [os.path.basename(path) for path in images]
    if mode in ("stubborn", "spawn"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    finish = threading.Event()
    if mode in ("hang", "finish"):
        watch_stdin(finish)
    record = os.environ.get("ENGINE_DOUBLE_RECORD")
    sizes = []
    for path, name in zip(images, names):
        try:
            sizes.append(image_size(path))
        except (OSError, ValueError) as error:
            emit(event="error", code="bad_image", message=f"{name}: {error}.")
            return 1
    try:
        crops = [parse_crop(text, size, name) for text, size, name in zip(options.get("crop", []), sizes, names)]
    except ValueError as error:
        emit(event="error", code="bad_argument", message=f"{error}.")
        return 2
    crops += [None] * (len(images) - len(crops))
    if record:
        with open(record, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"argv": sys.argv[1:], "image_sizes": sizes,
                                     "image_bytes": [os.path.getsize(path) for path in images],
                                     "caller": os.environ.get(wire.CALLER_ENV)}) + "\n")

    jobs = [{"job": i * len(levels) + j, "image": i, "name": names[i], "strokes": n}
            for i in range(len(images)) for j, n in enumerate(levels)]
    print("engine double: loading nothing", file=sys.stderr)
    emit(event="start", version="0.1.0", device="cpu", backend="torch", preset=options.get("preset"),
         iterations=30, seeds=1, models={}, jobs=jobs)
    emit(event="status", phase="models", message="Loading models")
    emit(event="notice", message="No GPU found: running on the CPU.")
    if mode == "garbage":
        print("some library printing on stdout")
        print("{not json")
    if mode == "error":
        emit(event="error", code="bad_image", message=f"{names[0]}: not an image file (cannot identify format).")
        return 1

    def sketches():
        return [dict(job, points=inside_crop(known_strokes(job["strokes"]), crops[job["image"]]),
                     canvas=[CANVAS, CANVAS], image_size=list(sizes[job["image"]]),
                     canvas_to_image=canvas_to_image(*sizes[job["image"]], crops[job["image"]]))
                for job in jobs]

    for iteration in (10, 20):
        emit(event="progress", iteration=iteration, total=30, loss=1.0 / iteration, best_loss=1.0 / iteration,
             elapsed=iteration * 0.1, eta=(30 - iteration) * 0.1, per_iteration=0.01)
        emit(event="preview", iteration=iteration, total=30,
             sketches=[dict(s, loss=0.1, points=s["points"][:max(1, iteration // 10)]) for s in sketches()])
    if mode == "crash":
        print("Traceback (most recent call last):\nRuntimeError: boom", file=sys.stderr)
        return 1
    if mode == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "spawn":
        child = subprocess.Popen(["sleep", "60"])
        with open(os.environ["ENGINE_DOUBLE_PIDS"], "w", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()} {child.pid}\n")
    if mode in ("stubborn", "spawn"):
        wait_forever()
    if mode in ("hang", "finish"):  # runs until the caller says finish (or cancels: exit 130)
        while not finish.wait(0.05):
            pass
    else:
        emit(event="progress", iteration=30, total=30, loss=0.05, best_loss=0.05, elapsed=3.0, eta=0.0)
    if mode == "noresult":
        return 0
    out = options.get("o")
    for sketch in sketches():
        svg = out if len(jobs) == 1 else os.path.join(out, f"{sketch['image']}-{sketch['strokes']}.svg")
        os.makedirs(os.path.dirname(os.path.abspath(svg)), exist_ok=True)
        with open(svg, "w", encoding="utf-8") as handle:
            handle.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{CANVAS}" height="{CANVAS}"/>\n')
        emit(event="result", svg=os.path.abspath(svg), stroke_width=3.0, seed=0, loss=0.05,
             importance=[1.0] * sketch["strokes"], iteration=20 if finish.is_set() else 30,
             finished_early=finish.is_set(), timings={}, **sketch)
    emit(event="done", results=len(jobs), finished_early=finish.is_set())
    return 0


if __name__ == "__main__":
    sys.exit(main())
