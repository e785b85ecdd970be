"""install.py: the machine-dependent decisions as pure functions (no GPU, OS or network needed), then
real installs into temporary folders: into an existing environment that already has torch (what CI and
developers have), into a fresh environment install.py creates, re-install, uninstall, failures.

The installs never download PyTorch: the existing-environment case uses a real venv that sees this
interpreter's packages through a .pth file (tests/_install_helpers.make_overlay_venv), the fresh case
installs with --torch skip --no-deps.
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from _install_helpers import REPO, load_install_module, make_overlay_venv, run_install, snapshot

inst = load_install_module()
Nvidia = inst.Nvidia
posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX paths and shell scripts")


# ---------------------------------------------------------------------------------------------------
# Where things go

def test_default_venv_dir_per_platform(tmp_path):
    home = tmp_path / "home"
    assert inst.default_venv_dir("Linux", {}, home) == home / ".local/share/clipasso/venv"
    assert inst.default_venv_dir("Linux", {"XDG_DATA_HOME": "/x/data"}, home) == Path("/x/data/clipasso/venv")
    assert inst.default_venv_dir("Darwin", {}, home) == home / "Library/Application Support/clipasso/venv"
    assert inst.default_venv_dir("Windows", {"LOCALAPPDATA": "/w/local"}, home) == Path("/w/local/clipasso/venv")


def test_default_extensions_dir_per_platform(tmp_path):
    home = tmp_path / "home"
    assert inst.default_extensions_dir("Linux", {}, home) == home / ".config/inkscape/extensions"
    assert inst.default_extensions_dir("Linux", {"XDG_CONFIG_HOME": "/c"}, home) == Path("/c/inkscape/extensions")
    assert inst.default_extensions_dir("Windows", {"APPDATA": "/w/roam"}, home) == Path("/w/roam/inkscape/extensions")
    assert inst.default_extensions_dir("Darwin", {}, home) == \
        home / "Library/Application Support/org.inkscape.Inkscape/config/inkscape/extensions"
    # a test profile (INKSCAPE_PROFILE_DIR) wins everywhere, as in Inkscape itself
    assert inst.default_extensions_dir("Linux", {"INKSCAPE_PROFILE_DIR": "/p"}, home) == Path("/p/extensions")


def fake_run(stdout="", returncode=0, raises=None, calls=None):
    def run(cmd, **kwargs):
        if calls is not None:
            calls.append(cmd)
        if raises:
            raise raises
        return subprocess.CompletedProcess(cmd, returncode, stdout=stdout, stderr="")
    return run


def test_extensions_dir_is_asked_from_inkscape_first(tmp_path):
    calls = []
    which = {"inkscape": "/opt/bin/inkscape"}.get
    found, how, answered = inst.locate_extensions_dir(
        None, which=which, run=fake_run("(warning chatter)\n/home/u/.config/inkscape\n", calls=calls),
        system="Linux", env={}, home=tmp_path)
    assert found == Path("/home/u/.config/inkscape/extensions") and answered
    assert calls == [["/opt/bin/inkscape", "--user-data-directory"]] and "inkscape" in how


def test_extensions_dir_falls_back_to_the_platform_default(tmp_path):
    for which, run in [(lambda name: None, fake_run("/nope")),                      # no inkscape
                       ({"inkscape": "/bin/inkscape"}.get, fake_run("", returncode=1)),  # inkscape fails
                       ({"inkscape": "/bin/inkscape"}.get, fake_run(raises=OSError("gone")))]:
        found, how, answered = inst.locate_extensions_dir(None, which=which, run=run, system="Linux",
                                                          env={}, home=tmp_path)
        assert found == tmp_path / ".config/inkscape/extensions" and not answered and "default" in how
    given, how, _ = inst.locate_extensions_dir(str(tmp_path / "x"), which=lambda n: 1 / 0)
    assert given == (tmp_path / "x").resolve() and "--extensions-dir" in how


@pytest.mark.skipif(not __import__("shutil").which("inkscape"), reason="inkscape is not installed")
def test_real_inkscape_honours_inkscape_profile_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("INKSCAPE_PROFILE_DIR", str(tmp_path / "profile"))
    found, _, answered = inst.locate_extensions_dir()
    assert answered and found == tmp_path / "profile" / "extensions"


# ---------------------------------------------------------------------------------------------------
# Which PyTorch

def test_detect_nvidia_from_nvidia_smi():
    smi = fake_run("NVIDIA A100-SXM4-40GB, 535.104.05\nNVIDIA A100-SXM4-40GB, 535.104.05\n")
    gpu = inst.detect_nvidia(run=smi, which={"nvidia-smi": "/usr/bin/nvidia-smi"}.get, proc_version="/nonexistent")
    assert gpu == Nvidia("NVIDIA A100-SXM4-40GB", (535, 104))


def test_detect_nvidia_from_the_loaded_linux_driver(tmp_path):
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n"
                    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    for which, run in [(lambda name: None, None),                                          # no nvidia-smi
                       ({"nvidia-smi": "/x"}.get, fake_run("", returncode=9)),             # smi fails
                       ({"nvidia-smi": "/x"}.get, fake_run(raises=subprocess.TimeoutExpired("x", 30)))]:
        assert inst.detect_nvidia(run=run, which=which, proc_version=str(proc)) == Nvidia("NVIDIA GPU", (550, 54))


def test_no_nvidia():
    assert inst.detect_nvidia(run=fake_run("", returncode=6), which={"nvidia-smi": "/x"}.get,
                              proc_version="/nonexistent/version") is None
    assert inst.detect_nvidia(run=None, which=lambda n: None, proc_version="/nonexistent/version") is None


CPU_ARGS = ["torch", "torchvision", "--index-url", "https://download.pytorch.org/whl/cpu"]


@pytest.mark.parametrize("request_, system, gpu, existing, action, pip_args", [
    # nothing installed: the machine decides
    ("auto", "Linux", None, {}, "install", CPU_ARGS),
    ("auto", "Windows", None, {}, "install", CPU_ARGS),
    ("auto", "Darwin", None, {}, "install", ["torch", "torchvision"]),                      # PyPI: MPS build
    ("auto", "Linux", Nvidia("RTX", (590, 48)), {}, "install", ["torch", "torchvision"]),  # PyPI = CUDA build
    ("auto", "Linux", Nvidia("RTX", (535, 104)), {}, "install",
     ["torch", "torchvision", "--index-url", "https://download.pytorch.org/whl/cu126"]),  # driver too old for PyPI's
    ("auto", "Linux", Nvidia("old", (470, 82)), {}, "install",
     ["torch", "torchvision", "--index-url", "https://download.pytorch.org/whl/cu118"]),
    ("auto", "Windows", Nvidia("RTX", (590, 48)), {}, "install",
     ["torch", "torchvision", "--index-url", "https://download.pytorch.org/whl/cu130"]),  # PyPI's is CPU-only
    ("auto", "Linux", Nvidia("GPU", (0, 0)), {}, "install", ["torch", "torchvision"]),    # driver version unknown
    # an installed torch is respected unless a different build is asked for
    ("auto", "Linux", None, {"torch": "2.15.0", "torch_cuda": "13.2"}, "keep", []),
    ("auto", "Linux", Nvidia("RTX", (590, 48)), {"torch": "2.13.0+cpu"}, "keep", []),
    ("cpu", "Linux", None, {"torch": "2.13.0+cpu"}, "keep", []),
    ("cpu", "Linux", None, {"torch": "2.15.0", "torch_cuda": "13.2"}, "replace", CPU_ARGS),
    ("cuda", "Linux", Nvidia("RTX", (590, 48)), {"torch": "2.15.0", "torch_cuda": "13.2"}, "keep", []),
    ("cuda", "Linux", Nvidia("RTX", (590, 48)), {"torch": "2.13.0+cpu"}, "replace", ["torch", "torchvision"]),
    ("cpu", "Darwin", None, {"torch": "2.15.0"}, "keep", []),
    # explicit
    ("skip", "Linux", Nvidia("RTX", (590, 48)), {}, "skip", []),
    ("torch==2.4.1 torchvision==0.19.1 --index-url https://x/cu121", "Linux", None, {"torch": "2.15.0"}, "install",
     ["torch==2.4.1", "torchvision==0.19.1", "--index-url", "https://x/cu121"]),
])
def test_choose_torch(request_, system, gpu, existing, action, pip_args):
    plan = inst.choose_torch(request_, system, gpu, existing)
    assert (plan.action, plan.pip_args) == (action, pip_args)
    assert plan.reason


def test_a_torchvision_of_another_build_than_torch_is_replaced_with_a_matching_pair():
    # docs/STACK.md: a CPU torch with PyPI's CUDA torchvision cannot `import torchvision`
    plan = inst.choose_torch("auto", "Linux", None, {"torch": "2.13.0+cpu", "torch_cuda": None,
                                                     "torchvision": "0.28.0", "torchvision_build": "cu128"})
    assert (plan.action, plan.pip_args) == ("replace", CPU_ARGS) and "does not match" in plan.reason
    plan = inst.choose_torch("auto", "Linux", None, {"torch": "2.15.0", "torch_cuda": "13.2",
                                                     "torchvision": "0.29.2", "torchvision_build": "cpu"})
    assert (plan.action, plan.pip_args) == ("replace", ["torch", "torchvision"])
    plan = inst.choose_torch("auto", "Linux", None, {"torch": "2.15.0", "torch_cuda": "13.2",
                                                     "torchvision": "0.29.2", "torchvision_build": "cu132"})
    assert plan.action == "keep"


def test_probe_reads_the_builds_without_importing_torch():
    probe = inst.probe_venv(Path(sys.executable))
    import torch
    import torchvision
    assert probe["torch_cuda"] == torch.version.cuda
    assert probe["torchvision_build"] == (torchvision.__version__.split("+")[1] if "+" in torchvision.__version__ else None)
    assert probe["python"][:2] == list(sys.version_info[:2]) and probe["pip"]


def test_keeping_a_cpu_torch_on_a_gpu_machine_says_how_to_switch():
    plan = inst.choose_torch("auto", "Linux", Nvidia("RTX", (590, 48)), {"torch": "2.13.0+cpu"})
    assert "--torch cuda" in plan.reason


def test_impossible_torch_requests_say_what_to_do():
    with pytest.raises(inst.InstallError, match="macOS") as e:
        inst.choose_torch("cuda", "Darwin", None, {})
    assert "--torch auto" in e.value.hint
    with pytest.raises(inst.InstallError, match="too old") as e:
        inst.choose_torch("cuda", "Linux", Nvidia("ancient", (390, 1)), {})
    assert "--torch cpu" in e.value.hint


def test_constraints_pin_torch_and_torchvision_together():
    assert inst.constraints_text({"torch": "2.13.0+cpu", "torchvision": "0.28.0+cpu", "pip": "23"}) == \
        "torch==2.13.0+cpu\ntorchvision==0.28.0+cpu\n"
    assert inst.constraints_text({"torch": "2.15.0"}) == "torch==2.15.0\n"
    assert inst.constraints_text({}) == ""


def test_build_without_isolation_only_when_setuptools_can():
    assert inst.can_build_offline({"setuptools": "84.2.1"})
    assert inst.can_build_offline({"setuptools": "65.5.0", "wheel": "0.42"})
    assert not inst.can_build_offline({"setuptools": "65.5.0"})        # no bdist_wheel: pip must isolate
    assert not inst.can_build_offline({"setuptools": "58.1.0", "wheel": "0.42"})
    assert not inst.can_build_offline({})


# ---------------------------------------------------------------------------------------------------
# Real installs into temporary folders

def engine_location(python: Path) -> str:
    """Where the engine imports from in `python`, asked from a neutral folder (not the checkout)."""
    out = subprocess.run([str(python), "-c", "import clipasso_engine, os; print(os.path.realpath(clipasso_engine.__file__))"],
                         capture_output=True, text=True, cwd="/" if os.name != "nt" else None)
    return out.stdout.strip()


@posix_only
def test_install_into_an_existing_environment_reinstall_and_uninstall(tmp_path):
    venv = make_overlay_venv(tmp_path / "venv")
    ext = tmp_path / "profile" / "extensions"
    before = {"venv": snapshot(venv), "profile": snapshot(tmp_path / "profile")}

    out = run_install("--venv", venv, "--extensions-dir", ext)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "keeping torch" in out.stdout          # detected, not downloaded
    assert "engine ready" in out.stdout           # torch, torchvision and the engine import in the venv
    python = venv / "bin" / "python"
    assert engine_location(python).startswith(str(venv.resolve()))  # installed into the venv, not borrowed

    target = ext / "clipasso"
    assert (target / "clipasso.inx").read_bytes() == (REPO / "clipasso.inx").read_bytes()
    for source in (REPO / "inkscape_extension").glob("*.py"):
        assert (target / "inkscape_extension" / source.name).read_bytes() == source.read_bytes()
    # the wire's one definition beside the extension's scripts, as the extension imports it
    assert (target / "inkscape_extension" / "clipasso_wire.py").read_bytes() == \
        (REPO / "clipasso_engine" / "wire.py").read_bytes()
    assert "inkscape_extension/clipasso_wire.py" in json.loads((target / "install_manifest.json").read_text())["files"]
    assert len(list(ext.rglob("*.inx"))) == 1     # Inkscape scans recursively: exactly one menu entry
    config = json.loads((target / "clipasso_engine.json").read_text())
    assert config == {"python": str(python), "venv": str(venv), "version": "0.1.0", "models_dir": None}
    manifest = json.loads((target / "install_manifest.json").read_text())
    assert manifest["venv_created"] is False and manifest["engine_preinstalled"] is False
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == manifest["files"]
    import torch
    import torchvision
    pins = (venv / "clipasso_constraints.txt").read_text().split()
    assert pins == [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]

    # again, with a models folder that holds the weights: upgraded in place, nothing duplicated, and the
    # weights are reported found (issue 16: a rerun said "not downloaded" while they were in DIR)
    (tmp_path / "weights").mkdir()
    for name in ("RN101.safetensors", "ViT-B-32.safetensors", "u2net.pth"):
        (tmp_path / "weights" / name).write_bytes(b"stand-in")
    out = run_install("--venv", venv, "--extensions-dir", ext, "--models-dir", tmp_path / "weights")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"all weights found in {tmp_path / 'weights'}" in out.stdout and "not downloaded" not in out.stdout
    config = json.loads((target / "clipasso_engine.json").read_text())
    assert config["models_dir"] == str(tmp_path / "weights")
    assert sorted(p.name for p in ext.iterdir()) == ["clipasso"]  # no staging / old copies left

    # uninstall finds the environment through the manifest, takes the engine back, keeps the venv
    out = run_install("--uninstall", "--extensions-dir", ext)
    assert out.returncode == 0, out.stdout + out.stderr
    assert {"venv": snapshot(venv), "profile": snapshot(tmp_path / "profile")} == before
    out = run_install("--uninstall", "--extensions-dir", ext)
    assert out.returncode == 0 and "Nothing to remove" in out.stdout


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@posix_only
@pytest.mark.skipif(not pypi_reachable(), reason="a fresh venv's pip fetches setuptools to build the engine")
def test_fresh_environment_is_created_and_removed_again(tmp_path):
    data = tmp_path / "data"          # the per-user data folder (XDG_DATA_HOME): the default venv goes there
    venv = data / "clipasso" / "venv"
    ext = tmp_path / "extensions"
    env = {"XDG_DATA_HOME": str(data)}
    out = run_install("--extensions-dir", ext, "--torch", "skip", "--no-deps", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "creating" in out.stdout and "no PyTorch in the environment" in out.stdout
    assert json.loads((venv / "clipasso_install.json").read_text())["created_by_install_py"] is True
    assert engine_location(venv / "bin" / "python").startswith(str(venv.resolve()))
    manifest = json.loads((ext / "clipasso" / "install_manifest.json").read_text())
    assert manifest["venv_created"] is True

    out = run_install("--extensions-dir", ext, "--torch", "skip", "--no-deps", env=env)
    assert out.returncode == 0 and "created by install.py" in out.stdout   # re-run reuses it

    out = run_install("--uninstall", "--extensions-dir", ext, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert snapshot(data) == {} and snapshot(ext) == {}   # venv and its clipasso/ folder gone


def closed_port() -> int:
    with socket.socket() as s:   # bound, never listening: connections to it are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def answering_index():
    """A local 'PyTorch index' that answers every page (the dry run only asks whether it answers)."""
    import http.server
    import threading
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.RequestHandlerClass = type("Quiet", (http.server.BaseHTTPRequestHandler,), {
        "do_GET": lambda self: (self.send_response(200), self.end_headers(), self.wfile.write(b"<html></html>")),
        "log_message": lambda self, *a: None})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/whl"
    server.shutdown()


def test_dry_run_changes_nothing_and_plans_the_fallback(tmp_path, answering_index):
    env = {"CLIPASSO_PYTORCH_INDEX": answering_index}
    out = run_install("--dry-run", "--venv", tmp_path / "venv", "--extensions-dir", tmp_path / "ext",
                      "--torch", "cpu", "--download-models", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert snapshot(tmp_path) == {}
    for planned in ("-m venv", f"pip install --upgrade torch torchvision --index-url {answering_index}/cpu",
                    f"if {answering_index}/cpu cannot be reached, would run: {tmp_path / 'venv'}/bin/python -m pip "
                    f"install --upgrade torch torchvision (it runs on the CPU; the larger download",
                    f"pip install -c {tmp_path / 'venv' / 'clipasso_constraints.txt'}", str(REPO), "download-models",
                    inst.WEIGHTS_SIZE):
        assert planned in out.stdout


def test_dry_run_with_an_unreachable_pytorch_index_plans_the_default_index(tmp_path):
    index = f"http://127.0.0.1:{closed_port()}/whl"
    out = run_install("--dry-run", "--venv", tmp_path / "venv", "--extensions-dir", tmp_path / "ext",
                      "--torch", "cpu", env={"CLIPASSO_PYTORCH_INDEX": index})
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{index}/cpu cannot be reached" in out.stdout and "default package index instead" in out.stdout
    assert "pip install --upgrade torch torchvision\n" in out.stdout and "--index-url" not in out.stdout


def test_an_index_the_user_configured_for_pip_wins_over_pytorchs():
    assert inst.configured_index({}, {"PIP_INDEX_URL": "https://mirror/simple"}) == "https://mirror/simple"
    assert inst.configured_index({"global.index-url": "https://corp/simple"}, {}) == "https://corp/simple"
    assert inst.configured_index({}, {"PIP_NO_INDEX": "1"})
    # extra-index-url and find-links only add sources (this machine's pip.conf has both): not a choice of index
    assert inst.configured_index({"global.extra-index-url": "file:///opt/pypi/simple",
                                  "global.find-links": "/opt/wheels"}, {}) is None
    never = lambda url, proxy: pytest.fail("the user's index is not second-guessed")
    source = inst.torch_source(CPU_ARGS, False, {"user.index-url": "https://corp/simple"}, "Linux", {}, never)
    assert source.pip_args == ["torch", "torchvision"] and "https://corp/simple" in source.notes[0]
    # an explicit SPEC is used as given, its index too
    spec = ["torch==2.4.1", "--index-url", "https://x/cu121"]
    assert inst.torch_source(spec, True, {}, "Linux", {}, never).pip_args == spec


def test_pytorch_index_unreachable_now_or_during_the_download():
    asked = []
    source = inst.torch_source(CPU_ARGS, False, {"global.proxy": "http://proxy:3128"}, "Linux", {},
                               lambda url, proxy: asked.append((url, proxy)) or "Connection refused")
    assert asked == [(CPU_ARGS[-1], "http://proxy:3128")]   # pip's proxy is used for the question
    assert source.pip_args == ["torch", "torchvision"] and source.fallback is None
    assert "cannot be reached (Connection refused)" in source.notes[0] and "runs on the CPU" in source.notes[0]
    source = inst.torch_source(CPU_ARGS, False, {}, "Linux", {}, lambda url, proxy: None)
    assert source.pip_args == CPU_ARGS and source.fallback == ["torch", "torchvision"]
    assert inst.index_problem(f"http://127.0.0.1:{closed_port()}/whl/cpu", timeout=3)
    assert inst.failed_for_the_network("WARNING: Retrying (Retry(total=4)) after connection broken by "
                                       "'NewConnectionError(...: Failed to establish a new connection')")
    assert not inst.failed_for_the_network("ERROR: No matching distribution found for torch==9.9")
    cuda = inst.fallback_note("Linux", ["torch", "torchvision", "--index-url", "https://download.pytorch.org/whl/cu126"])
    assert "driver >= 580" in cuda


@posix_only
def test_unreachable_pytorch_index_falls_back_to_the_default_index_and_the_engine_runs(tmp_path):
    # --torch cpu over this interpreter's (CUDA) torch asks for PyTorch's CPU index, which refuses
    # connections here; the default index then serves torch + torchvision (the overlay's are already
    # current, so nothing big is downloaded) and the engine imports torch, torchvision and open_clip.
    venv = make_overlay_venv(tmp_path / "venv")
    index = f"http://127.0.0.1:{closed_port()}/whl"
    import torch
    if not torch.version.cuda:
        pytest.skip("needs a CUDA build of torch in the test environment, so that --torch cpu installs")
    out = run_install("--venv", venv, "--extensions-dir", tmp_path / "ext", "--torch", "cpu", "--no-deps",
                      env={"CLIPASSO_PYTORCH_INDEX": index})
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{index}/cpu cannot be reached" in out.stdout and "default package index instead" in out.stdout
    assert f"--index-url {index}" not in out.stdout
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch, torchvision, open_clip, clipasso_engine"],
                           capture_output=True, text=True, cwd="/")
    assert check.returncode == 0, check.stderr


# ---------------------------------------------------------------------------------------------------
# Failures say what to do

def test_venv_pointing_at_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    out = run_install("--venv", tmp_path / "file", "--extensions-dir", tmp_path / "ext")
    assert out.returncode == 1 and "is a file" in out.stderr and "What to do" in out.stderr
    assert not (tmp_path / "ext").exists()


def test_venv_pointing_at_a_folder_that_is_not_a_venv(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    out = run_install("--venv", tmp_path / "stuff", "--extensions-dir", tmp_path / "ext")
    assert out.returncode == 1 and "not a Python virtual environment" in out.stderr
    assert sorted(os.listdir(tmp_path / "stuff")) == ["notes.txt"]


@posix_only
def test_missing_venv_module_names_the_package_to_install(tmp_path):
    fake = tmp_path / "python3"   # answers the version check, then fails like Debian's python without venv
    fake.write_text("#!/bin/sh\n"
                    "case \"$2\" in venv) echo 'The virtual environment was not created successfully because "
                    "ensurepip is not available.  On Debian/Ubuntu systems, you need to install the python3-venv "
                    "package' >&2; exit 1;; esac\necho 3 11\n")
    fake.chmod(0o755)
    out = run_install("--python", fake, "--venv", tmp_path / "venv", "--extensions-dir", tmp_path / "ext")
    assert out.returncode == 1 and "apt install python3-venv" in out.stderr
    assert not (tmp_path / "venv").exists()


@posix_only
def test_old_base_python_is_refused(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 3 8\n")
    fake.chmod(0o755)
    out = run_install("--python", fake, "--venv", tmp_path / "venv", "--extensions-dir", tmp_path / "ext")
    assert out.returncode == 1 and "3.8" in out.stderr and "3.10" in out.stderr


@posix_only
def test_pip_failure_gives_the_retry_command_and_the_log(tmp_path):
    venv = make_overlay_venv(tmp_path / "venv")
    out = run_install("--venv", venv, "--extensions-dir", tmp_path / "ext", "--torch", "no-such-package-clipasso==0",
                      env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""})
    assert out.returncode == 1
    assert "Installing PyTorch failed" in out.stderr and "retry with" in out.stderr
    log = venv / "clipasso_install.log"
    assert str(log) in out.stderr and "no-such-package-clipasso" in log.read_text()
    assert not (tmp_path / "ext").exists()   # nothing half-installed into Inkscape


@posix_only
def test_a_foreign_clipasso_folder_in_extensions_is_left_alone(tmp_path):
    ext = tmp_path / "ext"
    (ext / "clipasso").mkdir(parents=True)
    (ext / "clipasso" / "someone_elses.py").write_text("")
    out = run_install("--uninstall", "--extensions-dir", ext, "--venv", tmp_path / "none")
    assert out.returncode == 1 and "not made by install.py" in out.stderr
    assert (ext / "clipasso" / "someone_elses.py").exists()


def test_one_number_for_each_download_size():
    source = (REPO / "install.py").read_text()
    sizes = set(re.findall(r"\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)? GB", source))
    constants = {inst.WEIGHTS_SIZE, inst.TORCH_CPU_SIZE, inst.TORCH_PYPI_SIZE}
    assert sizes == set(re.findall(r"\d+(?:\.\d+)? GB", " ".join(constants)))
    assert len(re.findall(r"\d+(?:\.\d+)? GB", source)) == len(constants)   # each written once
    helptext = run_install("--help").stdout
    assert inst.WEIGHTS_SIZE in " ".join(helptext.split())
