"""A stand-in for `python -m clipasso_engine sketch ...`: speaks the wire, returns known strokes.

Stdlib only, so any Python runs it. The extension is pointed at it through CLIPASSO_ENGINE_PYTHON
naming a tiny wrapper script (see tests/test_extension.py: make_engine_wrapper) that runs
`<python> engine_double.py "$@"`; the leading `-m clipasso_engine` is skipped here.

ENGINE_DOUBLE_MODE picks the behaviour:
  ok        start, status, 3 progress events, result, exit 0 (default)
  error     an error event (code bad_image), exit 1
  crash     a few progress events then a traceback on stderr, exit 1, no result
  killed    a few progress events then SIGKILL to itself (what the OOM killer does)
  noresult  exit 0 without a result event
  garbage   non-JSON chatter on stdout around a normal run
  hang      progress, then wait forever; exits when stdin closes or on SIGTERM (like the engine)
  stubborn  progress, then ignore stdin and SIGTERM (only SIGKILL ends it)
  spawn     like stubborn, and also starts a grandchild `sleep`; pids go to ENGINE_DOUBLE_PIDS
ENGINE_DOUBLE_RECORD: a file to which one JSON line {argv, image_bytes, image_size} is appended.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time

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


def canvas_to_image(width, height):
    """Pad-to-square, as the engine does: the canvas covers a max(W, H) square centred on the image."""
    side = max(width, height)
    scale = side / CANVAS
    return [scale, 0.0, 0.0, scale, -(side - width) / 2.0, -(side - height) / 2.0]


def parse(argv):
    args = list(argv)
    if args[:2] == ["-m", "clipasso_engine"]:
        args = args[2:]
    assert args[0] == "sketch", args
    options = {"image": args[1]}
    i = 2
    while i < len(args):
        name = args[i]
        if name in ("--mask-background", "--stretch"):
            options[name[2:]] = True
            i += 1
        else:
            options[name.lstrip("-")] = args[i + 1]
            i += 2
    return options


def wait_forever(obey_stdin):
    if obey_stdin:
        def watch():
            sys.stdin.read()  # returns at EOF: the extension closed our stdin
            os._exit(130)
        threading.Thread(target=watch, daemon=True).start()
    while True:
        time.sleep(0.05)


def main():
    mode = os.environ.get("ENGINE_DOUBLE_MODE", "ok")
    options = parse(sys.argv[1:])
    strokes_n = int(options.get("strokes", 16))
    if mode in ("stubborn", "spawn"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    record = os.environ.get("ENGINE_DOUBLE_RECORD")
    caller = os.environ.get("CLIPASSO_CALLER")
    try:
        size = image_size(options["image"])
    except (OSError, ValueError) as error:
        emit(event="error", code="bad_image", message=f"{os.path.basename(options['image'])}: {error}.")
        return 1
    if record:
        with open(options["image"], "rb") as handle:
            image_bytes = len(handle.read())
        with open(record, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"argv": sys.argv[1:], "image_bytes": image_bytes, "image_size": size,
                                     "caller": caller}) + "\n")

    print("engine double: loading nothing", file=sys.stderr)
    emit(event="start", version="0.1.0", device="cpu", backend="torch", preset=options.get("preset"),
         strokes=strokes_n, iterations=30, seeds=1, models={})
    emit(event="status", message="Loading models")
    emit(event="notice", message="No GPU found: running on the CPU.")
    if mode == "garbage":
        print("some library printing on stdout")
        print("{not json")
    if mode == "error":
        emit(event="error", code="bad_image",
             message=f"{os.path.basename(options['image'])}: not an image file (cannot identify format).")
        return 1
    for iteration in (10, 20):
        emit(event="progress", iteration=iteration, total=30, loss=1.0 / iteration, best_loss=1.0 / iteration,
             elapsed=iteration * 0.1, eta=(30 - iteration) * 0.1)
    if mode == "crash":
        print("Traceback (most recent call last):\nRuntimeError: boom", file=sys.stderr)
        return 1
    if mode == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "spawn":
        child = subprocess.Popen(["sleep", "60"])
        with open(os.environ["ENGINE_DOUBLE_PIDS"], "w", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()} {child.pid}\n")
    if mode in ("hang", "stubborn", "spawn"):
        wait_forever(obey_stdin=(mode == "hang"))
    emit(event="progress", iteration=30, total=30, loss=0.05, best_loss=0.05, elapsed=3.0, eta=0.0)
    if mode == "noresult":
        return 0
    strokes = known_strokes(strokes_n)
    out = options.get("o")
    with open(out, "w", encoding="utf-8") as handle:
        handle.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{CANVAS}" height="{CANVAS}"/>\n')
    emit(event="result", svg=os.path.abspath(out), canvas=[CANVAS, CANVAS], image_size=list(size),
         canvas_to_image=canvas_to_image(*size), stroke_width=3.0, seed=0, loss=0.05, strokes=strokes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
