"""The project explains itself: docs/ALGORITHM.md lists every default and every deviation the code has,
the code cites documents that are in the repository, and nothing names a path of the build machine."""

import re
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from clipasso_engine.config import DEVIATIONS, FIXED_DEVIATIONS, Config

ROOT = Path(__file__).resolve().parents[1]
ALGORITHM = ROOT / "docs/ALGORITHM.md"
README = ROOT / "README.md"
DOCS = ("docs/ALGORITHM.md", "docs/STACK.md")


def tracked_files(*patterns):
    out = subprocess.run(["git", "ls-files", "--", *patterns], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.stdout.splitlines() if (ROOT / name).is_file()]


def documented_defaults(text):
    """field -> the default written in a table row `| `field` | `value` | ...`."""
    return dict(re.findall(r"^\|\s*`(\w+)`\s*\|\s*`([^`]*)`\s*\|", text, re.M))


def section(text, title):
    """The text of the `## title` section, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/ALGORITHM.md has no '## {title}' section"
    return match.group(1)


def test_every_config_field_is_documented_with_its_default():
    written = documented_defaults(ALGORITHM.read_text(encoding="utf-8"))
    defaults = Config()
    missing = [f.name for f in fields(Config) if f.name not in written]
    assert not missing, f"docs/ALGORITHM.md, Defaults: add a row | `name` | `default` | ... for {missing}"
    wrong = {f.name: (written[f.name], repr(getattr(defaults, f.name))) for f in fields(Config)
             if written[f.name] != repr(getattr(defaults, f.name))}
    assert not wrong, f"docs/ALGORITHM.md, Defaults: (written, code) differ for {wrong}"


def test_every_deviation_is_explained():
    deviations = section(ALGORITHM.read_text(encoding="utf-8"), "Deviations from the reference")
    explained = set(re.findall(r"^- \*\*`([^`]+)`\*\*", deviations, re.M))
    in_code = [name for name, _ in DEVIATIONS]
    assert not set(in_code) - explained, (f"docs/ALGORITHM.md, Deviations: explain "
                                          f"{sorted(set(in_code) - explained)} (config.DEVIATIONS)")
    assert not explained - set(in_code), (f"docs/ALGORITHM.md, Deviations: {sorted(explained - set(in_code))} "
                                          "are not in config.DEVIATIONS")


def test_every_deviation_is_a_switch_or_says_why_not():
    field_names = {f.name for f in fields(Config)}
    neither = [name for name, _ in DEVIATIONS if name not in field_names and name not in FIXED_DEVIATIONS]
    assert not neither, f"config.DEVIATIONS: {neither} must be Config fields, or FIXED with the reason"
    assert not FIXED_DEVIATIONS & field_names


def test_the_readme_lists_the_deviations_one_to_one():
    text = README.read_text(encoding="utf-8")
    listed = re.search(r"^## How it works, and where it differs from the reference\n(.*?)(?=^## )", text, re.M | re.S)
    bullets = re.findall(r"^- \*\*[^*]+\*\* \(`(\w+)`", listed.group(1), re.M)
    in_code = [name for name, _ in DEVIATIONS]
    assert sorted(bullets) == sorted(in_code), (
        f"README, How it works: one bullet '- **Title** (`name`...)' per config.DEVIATIONS entry; missing "
        f"{sorted(set(in_code) - set(bullets))}, extra {sorted(set(bullets) - set(in_code))}")


def test_the_code_cites_documents_that_are_in_the_repository():
    for doc in DOCS:
        assert (ROOT / doc).is_file(), f"{doc} is missing"
    bare = []
    for path in tracked_files("*.py", "*.sh", "*.inx"):
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for doc in (Path(d).name for d in DOCS):
                if re.search(rf"(?<![\w/]){re.escape(doc)}", line) and f"docs/{doc}" not in line:
                    bare.append(f"{path.relative_to(ROOT)}:{number}")
    assert not bare, f"cite the document by its path in the repository (docs/ALGORITHM.md, docs/STACK.md): {bare}"


def test_nothing_names_a_path_of_the_build_machine():
    machine_path = "/" + "work" + "/"   # written in two parts so that this file does not name it
    found = [str(path.relative_to(ROOT)) for path in tracked_files("*.py", "*.sh", "*.md", "*.inx", "*.toml")
             if machine_path in path.read_text(encoding="utf-8", errors="replace")]
    assert not found, f"{found} name {machine_path}...: find files relative to the repository instead"
