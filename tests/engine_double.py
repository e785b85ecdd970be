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
--start-from FILE (or -) per image and --keep-start, as the engine: the strokes read from FILE (a 224 x
224 SVG, as the extension writes it: <path d="absolute data" transform="matrix(...)">, each segment one
cubic stroke, see read_start_strokes) come first in `points`, unchanged, followed by the N usual strokes
(--strokes N: N added, 0 allowed); with --keep-start the result's `kept` lists their indices (else []).
ENGINE_DOUBLE_RECORD: a file to which one JSON line {argv, image_bytes, image_sizes, caller, start_files}
is appended; start_files holds per --start-from {path, text} (the text copied: the extension's
temporary folder is gone once it has finished).
"""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree

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
    return strokes[:n]


SVG_NS = "{http://www.w3.org/2000/svg}"
PATH_TOKEN = re.compile(r"[A-Za-z]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
ARGUMENTS = {"M": 2, "L": 2, "H": 1, "V": 1, "C": 6, "S": 4, "Q": 4, "T": 2, "A": 7, "Z": 0}


def read_start_strokes(text):
    """The start strokes (canvas px, each [[x, y] x 4]) of the SVG the extension writes: every <path>,
    absolute data (M L H V C S Q T A Z), mapped by its matrix(...) transform; every segment one cubic
    (lines and Z's closing line at thirds, quadratics raised exactly; an arc, which only the engine's
    reader draws as it is, as the straight line between its ends). A stand-in for the engine's
    clipasso_engine.svgpaths, for the plain data the extension hands over."""
    root = ElementTree.fromstring(text)
    if root.get("viewBox", "").split() != ["0", "0", str(CANVAS), str(CANVAS)]:
        raise ValueError(f"the start file is not a {CANVAS} x {CANVAS} canvas")
    strokes = []
    for element in root.iter(f"{SVG_NS}path"):
        transform = element.get("transform") or "matrix(1,0,0,1,0,0)"
        if not transform.startswith("matrix("):
            raise ValueError(f"transform {transform!r}: the extension writes matrix(...) only")
        a, b, c, d, e, f = (float(v) for v in PATH_TOKEN.findall(transform[len("matrix"):]))
        strokes += [[[a * x + c * y + e, b * x + d * y + f] for x, y in stroke]
                    for stroke in segments(element.get("d") or "")]
    return strokes


def line(p0, p1):
    return [list(p0), [p0[0] + (p1[0] - p0[0]) / 3, p0[1] + (p1[1] - p0[1]) / 3],
            [p0[0] + 2 * (p1[0] - p0[0]) / 3, p0[1] + 2 * (p1[1] - p0[1]) / 3], list(p1)]


def segments(data):
    """Absolute path data -> one cubic [p0, p1, p2, p3] per segment. control: the previous segment's
    last handle and its kind ('C' for C/S, 'Q' for Q/T), which S and T reflect when of their kind."""
    tokens = PATH_TOKEN.findall(data)
    strokes, current, start, control, letter, i = [], None, None, None, None, 0

    def reflected(kind):
        if control is None or control[1] != kind:
            return current
        return (2 * current[0] - control[0][0], 2 * current[1] - control[0][1])

    while i < len(tokens):
        if tokens[i].isalpha():
            letter = tokens[i]
            i += 1
            if letter not in ARGUMENTS:
                raise ValueError(f"path command {letter!r}: the extension writes absolute data only")
            if letter == "Z":
                if current is not None and current != start:
                    strokes.append(line(current, start))
                current, control = start, None
                continue
        values = [float(v) for v in tokens[i:i + ARGUMENTS[letter]]]
        i += ARGUMENTS[letter]
        if letter == "M":
            current = start = (values[0], values[1])
            letter, control = "L", None  # further pairs are lines
        elif letter in "LHVA":
            end = {"L": lambda: (values[0], values[1]), "H": lambda: (values[0], current[1]),
                   "V": lambda: (current[0], values[0]), "A": lambda: (values[5], values[6])}[letter]()
            strokes.append(line(current, end))
            current, control = end, None
        elif letter in "CS":
            if letter == "C":
                first, values = (values[0], values[1]), values[2:]
            else:
                first = reflected("C")
            second, end = (values[0], values[1]), (values[2], values[3])
            strokes.append([list(current), list(first), list(second), list(end)])
            current, control = end, (second, "C")
        else:  # Q, T: the quadratic raised to a cubic
            if letter == "Q":
                handle, end = (values[0], values[1]), (values[2], values[3])
            else:
                handle, end = reflected("Q"), (values[0], values[1])
            strokes.append([list(current), [current[0] + 2 / 3 * (handle[0] - current[0]),
                                            current[1] + 2 / 3 * (handle[1] - current[1])],
                            [end[0] + 2 / 3 * (handle[0] - end[0]), end[1] + 2 / 3 * (handle[1] - end[1])],
                            list(end)])
            current, control = end, (handle, "Q")
    return strokes


def padding(width, height):
    """The engine's pad-to-square: a max(w, h) square, the picture at whole-pixel offsets (an odd
    difference leaves the extra white column or row right or bottom). -> (side, left, top)."""
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def canvas_to_image(width, height, crop=None):
    """Pad-to-square, as the engine does: the canvas covers a max(w, h) square centred on the image,
    or on the crop (w x h) and then shifted by the crop's offset into the whole image."""
    left, top, right, bottom = crop or (0, 0, width, height)
    side, pad_x, pad_y = padding(right - left, bottom - top)
    scale = side / CANVAS
    return [scale, 0.0, 0.0, scale, float(left - pad_x), float(top - pad_y)]


def inside_crop(strokes, crop):
    """With a crop, squeeze the known strokes into the part of the canvas the crop fills (the rest
    is padding), so that every control point lies on the cropped pixels, as the engine's would."""
    if crop is None:
        return strokes
    width, height = crop[2] - crop[0], crop[3] - crop[1]
    side, pad_x, pad_y = padding(width, height)
    kx, ky = width / side, height / side
    ox, oy = CANVAS * pad_x / side, CANVAS * pad_y / side
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
        if name in ("--mask-background", "--stretch", "--keep-start"):
            options[name[2:]] = True
            i += 1
        elif name in ("--name", "--crop", "--start-from"):
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
    start_files = [None if text.strip() == "-" else text for text in options.get("start-from", [])]
    start_files += [None] * (len(images) - len(start_files))
    texts = []
    for path in start_files:
        if path is not None:
            with open(path, encoding="utf-8") as handle:
                texts.append(handle.read())
    if record:
        with open(record, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"argv": sys.argv[1:], "image_sizes": sizes,
                                     "image_bytes": [os.path.getsize(path) for path in images],
                                     "caller": os.environ.get(wire.CALLER_ENV),
                                     "start_files": [{"path": path, "text": text} for path, text in
                                                     zip([p for p in start_files if p], texts)]}) + "\n")
    try:
        starts, texts = [], iter(texts)
        for path in start_files:
            starts.append(read_start_strokes(next(texts)) if path else [])
    except (ValueError, ElementTree.ParseError) as error:
        emit(event="error", code="bad_argument", message=f"--start-from: {error}.")
        return 2
    keep = bool(options.get("keep-start"))

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
        return [dict(job, points=starts[job["image"]] + inside_crop(known_strokes(job["strokes"]), crops[job["image"]]),
                     canvas=[CANVAS, CANVAS], image_size=list(sizes[job["image"]]),
                     canvas_to_image=canvas_to_image(*sizes[job["image"]], crops[job["image"]]),
                     kept=list(range(len(starts[job["image"]]))) if keep else [])
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
             importance=[1.0] * len(sketch["points"]), iteration=20 if finish.is_set() else 30,
             finished_early=finish.is_set(), timings={}, **sketch)
    emit(event="done", results=len(jobs), finished_early=finish.is_set())
    return 0


if __name__ == "__main__":
    sys.exit(main())
