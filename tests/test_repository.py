"""The repository carries what it cites: documentation in docs/, redistributable fixtures in tests/fixtures
with their licence notes, the non-redistributable SUN-SEG masks outside it, and no test data in an sdist."""
from __future__ import annotations

import re
import shutil
import subprocess
import tarfile

import pytest

from tests.conftest import FIXTURES, REPO_ROOT, SUNSEG_FIXTURES_ENV, sunseg_fixtures_or_skip


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_no_tracked_file_cites_outside_the_repository():
    # ../shared is named only as the fallback location of the SUN-SEG masks, which may not be copied here
    outside = re.compile(r"\.\./shared/(?!fixtures/sunseg-metrics-cvc300)|(?<![\w/])(METHOD|DESIGN)\.md")
    offenders = []
    for name in _tracked_files():
        path = REPO_ROOT / name
        if path.suffix in {".png", ".gif", ".jpg", ".json"} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if outside.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "cite docs/method.md or docs/design.md instead:\n" + "\n".join(offenders)


def test_cited_documentation_exists_with_the_cited_sections():
    method = (REPO_ROOT / "docs" / "method.md").read_text()
    for section in range(1, 10):
        assert re.search(rf"^## {section}\. ", method, re.M), f"docs/method.md lacks section {section}"
    assert (REPO_ROOT / "docs" / "design.md").is_file()


def test_redistributable_fixtures_are_in_the_repository_with_their_licences():
    tracked = set(_tracked_files())
    hc18 = [n for n in tracked if n.startswith("tests/fixtures/hc18-ultrasound/training_set/")]
    pysod = [n for n in tracked if n.startswith("tests/fixtures/pysodmetrics/")]
    assert len(hc18) == 72 and len(pysod) >= 8
    notes = (FIXTURES / "README.md").read_text()
    assert "CC BY 4.0" in notes and "MIT" in notes
    assert "CC BY 4.0" in (FIXTURES / "hc18-ultrasound" / "PROVENANCE.md").read_text()
    assert "MIT" in (FIXTURES / "pysodmetrics" / "PROVENANCE.md").read_text()


def test_sunseg_masks_are_not_in_the_repository():
    assert not [n for n in _tracked_files() if "ColonDB" in n or "sunseg-metrics" in n]


def test_sunseg_fixture_skip_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(SUNSEG_FIXTURES_ENV, str(tmp_path))
    with pytest.raises(pytest.skip.Exception, match=rf"a718e53.*{SUNSEG_FIXTURES_ENV}"):
        sunseg_fixtures_or_skip()


def test_sunseg_fixture_folder_comes_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "GT").mkdir()
    (tmp_path / "Pred").mkdir()
    monkeypatch.setenv(SUNSEG_FIXTURES_ENV, str(tmp_path))
    assert sunseg_fixtures_or_skip() == tmp_path


def test_sdist_leaves_out_test_data(tmp_path):
    build = pytest.importorskip("scikit_build_core.build")
    import os

    cwd = os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        name = build.build_sdist(str(tmp_path))
    finally:
        os.chdir(cwd)
    with tarfile.open(tmp_path / name) as sdist:
        members = sdist.getnames()
    assert any(m.endswith("python/dtc/__init__.py") for m in members)
    assert any(m.endswith("docs/method.md") for m in members)
    data = [m for m in members if "/tests/fixtures" in m or m.endswith(".so") or "ColonDB" in m]
    assert not data, data[:5]
