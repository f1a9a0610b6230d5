"""What README.md quotes stays what the code says: the profile table and the paper's citation."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model import MODEL_NAMES
from model.profile import format_table, profile

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAPER = ROOT.parent / "shared" / "paper" / "HEViTPose.md"


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def readme_profile_rows() -> dict[str, list[str]]:
    """The README's profile table, model name -> its cells, found by the header `hevitpose profile` prints."""
    header, rule = format_table([]).splitlines()
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines.count(header) == 1, "README.md should hold one table with the header of `hevitpose profile`"
    start = lines.index(header)
    assert lines[start + 1] == rule
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        row = cells(line)
        rows[row[0]] = row
    return rows


def test_readme_profile_table_lists_every_model_in_the_order_printed():
    assert list(readme_profile_rows()) == list(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_readme_profile_row_is_what_hevitpose_profile_prints(name):
    header = cells(format_table([]).splitlines()[0])
    printed = cells(format_table([profile(name)]).splitlines()[-1])
    quoted = readme_profile_rows()[name]
    assert len(quoted) == len(printed), f"README row {name}: {len(quoted)} cells, the printed row {len(printed)}"
    wrong = [
        f"column {i + 1} ({header[i]}): README {q}, printed {p}"
        for i, (q, p) in enumerate(zip(quoted, printed))
        if q != p
    ]
    assert not wrong, f"README.md's profile row {name} differs from `hevitpose profile`: " + "; ".join(wrong)


def test_citation_cff_is_valid_cff_1_2_0():
    # The Citation File Format schema as vendored by check-jsonschema (a dev dependency).
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.citation-file-format",
            str(ROOT / "CITATION.cff"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_bibtex_and_citation_cff_cite_the_same_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["title"] == "HEViTPose Serve"
    paper = cff["preferred-citation"]
    assert paper["type"] == "article"
    bib = re.search(r"```bibtex\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    field = dict(re.findall(r"^\s*(\w+)\s*=\s*\{(.*)\},?$", bib, re.M))
    assert field["title"].replace("{", "").replace("}", "") == paper["title"]
    authors = [f"{a['family-names']}, {a['given-names']}" for a in paper["authors"]]
    assert field["author"].split(" and ") == authors
    assert int(field["year"]) == paper["year"]
    assert field["doi"] == paper["doi"]


def test_citation_title_and_authors_are_the_papers():
    if not PAPER.is_file():
        pytest.skip("shared/paper/HEViTPose.md not beside the repository")
    text = PAPER.read_text(encoding="utf-8")
    title = re.search(r"^# (.+)$", text, re.M).group(1).strip()
    paper = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))["preferred-citation"]
    assert paper["title"] == title
    byline = text[text.index(title) + len(title) :].strip().splitlines()[0]
    named = [name.strip(" *\\") for name in re.split(r",|\band\b", byline) if name.strip(" *\\")]
    assert [f"{a['given-names']} {a['family-names']}" for a in paper["authors"]] == named
