"""The documentation site builds cleanly (mkdocs --strict: no broken links or anchors), and the README stays a
short page whose links into docs/ resolve."""

import re
import subprocess
import sys

from tests.conftest import REPO

README = REPO / "README.md"


def test_docs_build_strict(tmp_path):
    # No importorskip: mkdocs-material is a test dependency, and a missing mkdocs must fail this test.
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr


def test_readme_is_short_and_its_docs_links_resolve():
    size = README.stat().st_size
    assert size < 15_000, f"README.md is {size} bytes; move detail into docs/"
    links = re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)\s]*)?\)", README.read_text())
    assert links, "README links to no docs/ page"
    missing = sorted({link for link in links if not (REPO / link).is_file()})
    assert not missing, f"README links to missing pages: {missing}"
