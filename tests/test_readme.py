"""Every ```sh and ```python block of README.md runs as written (issue 16 item 7).

Each block runs on its own (a reader copies one block, not the page), in a fresh folder that looks
like the checkout (its top-level files and folders linked in, so `docs/img/chelsea.jpg` and
`install.py` are where the README says; what a block writes stays in that folder), with HOME in a
temporary folder, the stand-in weights (tests/fake_weights.py) as CLIPASSO_MODELS_DIR and a few
iterations (CLIPASSO_ITERATIONS). Shell blocks run under `bash -e`: every command must succeed.

What is not run, and why:
- A block preceded by `<!-- not run by tests/test_readme.py: REASON -->` (the reason is required,
  and shows as the test's skip message).
- Inside blocks, the commands in STAND_INS, which a test cannot run: installing (install.py writes
  into the real home folder and Inkscape profile and downloads PyTorch; tests/test_install.py covers
  it in temporary folders), downloading weights (no network here; the stand-in weights are in place)
  and running the whole test suite (it is what runs this test). Each is replaced by a one-line stub
  that says it stood in; every other command of the block runs as written. The engine install.py
  would have made at ~/.local/share/clipasso/venv is this checkout's .venv engine.
- Python blocks: the API has no environment default for the number of iterations, so make_config's
  default is CLIPASSO_ITERATIONS here (a preset's 100 to 2000 steps would take minutes); nothing
  else is changed.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w+)\s*$")
LANGUAGES = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python", "py": "python"}
OPT_OUT = re.compile(r"^<!--\s*not run by tests/test_readme\.py:(.*?)-->\s*$")
ITERATIONS = "2"
BLOCK_TIMEOUT_S = 600

# command -> (when the stub stands in, why): the stub prints that it stood in and succeeds
STAND_INS = {
    "python3": ('[ "$1" = install.py ]', "install.py installs into the real home folder and Inkscape profile "
                                          "and downloads PyTorch and 1.3 GB of weights (tests/test_install.py "
                                          "runs it in temporary folders)"),
    "clipasso": ('[ "$1" = download-models ]', "downloading weights needs the network; the stand-in weights "
                                               "are in CLIPASSO_MODELS_DIR"),
    "bash": ('[ "$1" = tests/run.sh ]', "tests/run.sh is the test suite that runs this test"),
}


def readme_blocks(text):
    """[(line number, language, code, opt-out reason or None)] for every sh / python block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, language = i, match.group(1).lower()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        i = end + 1
        if language not in LANGUAGES:
            continue
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        opt_out = OPT_OUT.match(previous.strip())
        blocks.append((start + 1, LANGUAGES[language], "\n".join(lines[start + 1:end]) + "\n",
                       opt_out.group(1).strip() if opt_out else None))
    return blocks


def indented_blocks(text):
    """Line numbers of indented (unfenced) code blocks: Markdown shows them as code, but nothing
    here would run them. Lines inside fences and list items' continuations are not counted."""
    found, in_fence, previous, paragraph_start = [], False, "", ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith("    ") and line.strip() and not previous.strip() \
                and not re.match(r"\s*([-*+]|\d+\.)\s", paragraph_start):
            found.append(number)
        if not in_fence and line.strip() and not previous.strip():
            paragraph_start = line if not line.startswith("    ") else paragraph_start
        previous = line
    return found


README_TEXT = README.read_text(encoding="utf-8")
BLOCKS = readme_blocks(README_TEXT)


def test_the_readme_has_blocks_to_run():
    assert sum(1 for block in BLOCKS if block[3] is None and block[1] == "python") >= 2, BLOCKS
    assert sum(1 for block in BLOCKS if block[3] is None and block[1] == "sh") >= 1, BLOCKS


def test_every_code_block_is_fenced():
    """An indented code block would escape this test: fence it (```sh or ```python) so it runs,
    or fence it and opt out with the reason."""
    assert indented_blocks("text\n\n    clipasso batch x\n\n- item\n\n    more of the item\n") == [3]
    assert indented_blocks(README_TEXT) == [], "README.md lines holding an indented code block"


def test_opting_out_needs_a_reason():
    text = "<!-- not run by tests/test_readme.py:  -->\n```sh\necho hi\n```\n"
    assert readme_blocks(text) == [(2, "sh", "echo hi\n", "")]
    for line, _, _, reason in BLOCKS:
        assert reason is None or len(reason) >= 20, f"README.md line {line}: say why the block is not run"


def write_executable(path, text):
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture(scope="module")
def stage(tmp_path_factory, models_dir):
    """(the checkout-like folder, home, environment) shared by the blocks; stubs on PATH."""
    root = tmp_path_factory.mktemp("readme")
    home, stubs = root / "home", root / "stubs"
    stubs.mkdir()
    venv_bin = Path(sys.executable).parent
    real = {"python3": str(venv_bin / "python"), "clipasso": str(venv_bin / "clipasso"), "bash": "/bin/bash"}
    for name, (condition, why) in STAND_INS.items():
        write_executable(stubs / name, f'#!/bin/sh\nif {condition}; then\n'
                                       f'  echo "tests/test_readme.py stands in for \\`{name} $*\\`: {why}."\n'
                                       f'  exit 0\nfi\nexec "{real[name]}" "$@"\n')
    engine_bin = home / ".local" / "share" / "clipasso" / "venv" / "bin"   # where install.py puts the engine
    engine_bin.mkdir(parents=True)
    (engine_bin / "clipasso").symlink_to(stubs / "clipasso")
    (engine_bin / "python").symlink_to(venv_bin / "python")
    (home / ".local" / "bin").mkdir()
    sitecustomize = root / "site"
    sitecustomize.mkdir()
    (sitecustomize / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('CLIPASSO_README_BLOCK') == 'python':  # see tests/test_readme.py\n"
        "    import clipasso_engine, clipasso_engine.config as _config\n"
        "    _make = _config.make_config\n"
        "    def make_config(preset='paper', **overrides):\n"
        "        overrides.setdefault('num_iterations', int(os.environ['CLIPASSO_ITERATIONS']))\n"
        "        return _make(preset, **overrides)\n"
        "    clipasso_engine.make_config = _config.make_config = make_config\n")
    checkout = root / "checkout"
    checkout.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".git", ".venv"):
            (checkout / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPASSO_", "PYTHON"))}
    env.update({"HOME": str(home), "PATH": f"{stubs}:{home / '.local' / 'bin'}:{venv_bin}:{env.get('PATH', '')}",
                "CLIPASSO_MODELS_DIR": str(models_dir), "CLIPASSO_ITERATIONS": ITERATIONS,
                "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
                "PYTHONPATH": str(sitecustomize)})
    return checkout, env


@pytest.mark.parametrize("line,language,code,opt_out", BLOCKS,
                         ids=[f"README.md:{block[0]}-{block[1]}" for block in BLOCKS])
def test_readme_block_runs_as_written(stage, line, language, code, opt_out):
    if opt_out is not None:
        pytest.skip(f"README.md line {line}: {opt_out}")
    checkout, env = stage
    env = dict(env, CLIPASSO_README_BLOCK=language)
    command = ["/bin/bash", "-e", "-c", code] if language == "sh" else [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=str(checkout), env=env, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S)
    assert done.returncode == 0, (f"README.md line {line} ({language}) failed:\n{code}\n--- stdout\n"
                                  f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
