"""The README's and docs' relative links point at files that exist, and their #anchors at headings there.

The results live in two files (README.md leads with the default recipe's table, docs/RESULTS.md keeps every
experiment) that link into each other by heading; a renamed heading or a moved figure breaks a link silently.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "docs/RESULTS.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^#{1,6} (.+)", line)):
            found.add(github_anchor(match.group(1)))
    return found


def test_github_anchor_by_hand():
    assert github_anchor("Results (measured here, on CPU)") == "results-measured-here-on-cpu"
    assert github_anchor("Majority vote (paper Fig. 6)") == "majority-vote-paper-fig-6"
    assert github_anchor("Group norm and a 3000-step stage 0, end to end (session 15), parts family: the default recipe") \
        == "group-norm-and-a-3000-step-stage-0-end-to-end-session-15-parts-family-the-default-recipe"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_resolve(document):
    source = ROOT / document
    broken = []
    for link in LINK.findall(source.read_text()):
        if re.match(r"^[a-z]+://", link) or link.startswith("mailto:"):
            continue
        path, _, anchor = link.partition("#")
        target = (source.parent / path).resolve() if path else source
        if not target.exists():
            broken.append(f"{link} (no file {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target})")
        elif anchor and anchor not in anchors(target):
            broken.append(f"{link} (no heading with anchor #{anchor} in {target.relative_to(ROOT)})")
    assert not broken, f"{document}: broken links:\n" + "\n".join(broken)
