"""The wire between the Inkscape extension and the engine: one definition, stdlib only.

The engine (`clipasso sketch ... --progress jsonl`) writes one JSON object per line on stdout, each
with an "event" key; the caller may write JSON commands, one per line, on the engine's stdin. This
module is imported by the engine, by the extension (install.py copies it beside the extension as
`clipasso_wire.py`; a checkout imports it from here) and by the tests' engine double, so event names,
fields and error codes are typed once. It must stay importable by any Python 3.8+ with no packages.

Events, engine -> caller (fields beyond "event"):
  start     version, device, backend, preset, iterations, seeds, models {name: path|None},
            jobs [{job, image, name, strokes}]
            (one job = one image at one stroke count; job = image * len(levels) + level index;
             image = the index of the image on the command line, name = its display name)
  status    phase, message                  (reading the image, loading models, ...)
  notice    message                         (something the user should know: no GPU, CPU fallback)
  progress  iteration, total, loss, best_loss, elapsed, eta, per_iteration
            (loss = training loss, mean over views and sketches; best_loss = best clean-view loss)
  preview   iteration, total, sketches [{job, image, strokes, points, loss, canvas, image_size,
            canvas_to_image}]  (the current best drawing of each job's leading seed in canvas px,
            with the map to the image's pixels; at evaluations, at most ~2 per second)
  result    job, image, name, strokes, svg, canvas, image_size, canvas_to_image, stroke_width,
            seed, loss, points (N x 4 x 2, canvas px, most important first), importance,
            iteration (steps done), finished_early, timings,
            reseeded (collapsed strokes started again during the run), short_strokes (strokes under 5 canvas
            px in the result), frame_strokes (strokes along the photo's boundary with its padding),
            kept (indices into points of the --start-from strokes kept as given with --keep-start; [] when none;
            "strokes" counts the strokes drawn besides the start ones)
            (one per job, all emitted after the optimisation ends; image_size and canvas_to_image
             refer to the whole input file even when --crop sent only part of it)
  done      results, finished_early      (the last event of a successful run; exit status 0)
  error     code, message, [job, image]  (exit status 1, or 130 for code "cancelled")

Commands, caller -> engine (stdin, one JSON object per line):
  {"command": "finish"}   stop now and return the best strokes so far as normal results
                          ("finished_early": true)
  {"command": "cancel"}   stop now without results (error "cancelled", exit 130)
  end of file             the same as cancel: the caller went away
"""

import json

# --- event names ---------------------------------------------------------------------------------
START = "start"
STATUS = "status"
NOTICE = "notice"
PROGRESS = "progress"
PREVIEW = "preview"
RESULT = "result"
DONE = "done"
ERROR = "error"
EVENTS = (START, STATUS, NOTICE, PROGRESS, PREVIEW, RESULT, DONE, ERROR)

# --- commands on the engine's stdin --------------------------------------------------------------
FINISH = "finish"
CANCEL = "cancel"
COMMANDS = (FINISH, CANCEL)

# --- error codes: add, never rename --------------------------------------------------------------
ERROR_CODES = {
    "bad_image": "the input file cannot be read as an image",
    "bad_argument": "an option value is out of range or inconsistent",
    "weights_missing": "model weights are neither cached nor given, and cannot be downloaded",
    "weights_invalid": "a weights file exists but does not hold the expected model",
    "device_unavailable": "the requested device cannot be used",
    "out_of_memory": "the device ran out of memory",
    "cancelled": "the run was cancelled (cancel command, stdin closed, SIGTERM, Ctrl-C or a callback)",
    "internal": "a bug: anything not foreseen above",
}

# --- exit status ---------------------------------------------------------------------------------
EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 130

PREVIEW_INTERVAL_S = 0.5  # at most ~2 preview events per second: enough to watch, cheap to draw

# Environment variable the extension sets for the engine, so messages can speak to an Inkscape user.
CALLER_ENV = "CLIPASSO_CALLER"
CALLER_INKSCAPE = "inkscape"


def event(kind, **fields):
    """An event dict, checked against the names above."""
    if kind not in EVENTS:
        raise ValueError(f"unknown event {kind!r}")
    fields["event"] = kind
    return fields


def encode(obj):
    """One line of the wire (event or command), without the newline. NaN/inf are not JSON: refuse."""
    return json.dumps(obj, allow_nan=False, separators=(",", ":"), default=float)


def parse_event(line):
    """One stdout line -> event dict, or None for anything that is not a JSON event object."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        return None
    return obj


def command(name):
    """The stdin line (with newline) for a command."""
    if name not in COMMANDS:
        raise ValueError(f"unknown command {name!r}")
    return encode({"command": name}) + "\n"


def parse_command(line):
    """One stdin line -> a command name from COMMANDS, or None for anything else (ignored)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    line = line.strip()
    if not line:
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    name = obj.get("command") if isinstance(obj, dict) else None
    return name if name in COMMANDS else None
