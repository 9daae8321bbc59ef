"""README.md: what it names is in the repository, and the folders its examples write are ignored."""

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_files_named_in_the_readme_are_in_the_repository():
    # Repository paths in backticks: a folder of the project, then a file with an extension.
    named = set(re.findall(r"`((?:tc_keras|tools|bench|configs|tests|export)/[\w./-]+\.\w+)`",
                           README))
    assert named, "the pattern no longer matches the README"
    assert not [p for p in sorted(named) if not (ROOT / p).is_file()]
    # Files that live beside the project or are outputs are not pointed to.
    assert not re.search(r"runs/\S*\.png", README)
    assert "../shared" not in README


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None,
                    reason="needs a git checkout")
def test_output_folders_of_the_examples_are_git_ignored():
    outputs = set(re.findall(r"--(?:out|workdir|results)[= ](\S+)", README))
    outputs |= set(re.findall(r"--logdir (\S+)", README))
    outputs = {o for o in outputs if not o.startswith(("/", "$", "DIR", "PATH", "<"))}
    assert {"out/clip", "results", "export/tc", "runs/r18"} <= outputs
    outputs.add("workdir/smoke")  # configs/smoke.flags, the README's first command
    probes = [f"{o}/probe" for o in sorted(outputs)]
    result = subprocess.run(["git", "check-ignore", *probes], cwd=ROOT, capture_output=True,
                            text=True)
    assert sorted(result.stdout.split()) == sorted(probes)
