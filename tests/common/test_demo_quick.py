"""`trainkit demo --quick` writes the report of every part, with its plots and numbers."""

import re
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    r = subprocess.run(
        [sys.executable, "-m", "trainkit", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_report_has_every_part_and_its_headline_numbers(report):
    md = (report / "report.md").read_text()
    assert md.startswith("# trainkit demo report")
    assert "Machine: " in md and "torch 2." in md
    titles = re.findall(r"^## (.+)$", md, re.M)
    assert [t.split(":")[0] for t in titles] == ["Summary", "KAN", "RLHF", "Long context"]
    # KAN: the recovered formula and its error
    assert "| recovered formula | exp(x2**2 + sin(3.1416*x1)) |" in md
    assert re.search(r"\| formula test RMSE \| \d\.\de-0[5-9] \|", md)
    # RLHF: RM / DPO accuracies and the GRPO curve numbers
    assert re.search(r"\| RM held-out pairwise accuracy ↑ \| \d+% -> \d+%", md)
    assert re.search(r"\| GRPO held-out mean reward ↑ \| \d\.\d{3} -> \d\.\d{3}", md)
    assert "| prompt | before | after | preferred format after |" in md
    # long context: accuracies before and after extension
    assert re.search(
        r"\| passkey @2048 before -> after \(theta 1e6 \+ fine-tune\) ↑ \| \d+% -> \d+% \|", md
    )
    assert re.search(r"\| kv \(4 keys\) @2048 before -> after ↑ \| \d+% -> \d+% \|", md)


def test_every_headline_figure_improved(report):
    """Each section's ``before -> after`` figures moved the way their arrow says, and the
    check itself fails on the same report with one figure made worse."""
    from trainkit.demo import improvement_failures

    md = (report / "report.md").read_text()
    assert improvement_failures(md) == []
    rows = re.findall(r"^\| (.+ [↑↓]) \| (.+?) \|$", md, re.M)
    assert len(rows) >= 4  # KAN, RLHF (several), long context
    name, value = rows[0]
    before, _ = value.split("->", 1)
    flat = f"| {name} | {before}-> {before.split()[-1]} |"  # after := before
    worse = md.replace(f"| {name} | {value} |", flat)
    assert any(f"'{name}' did not improve" in x for x in improvement_failures(worse))
    for section in ("KAN", "RLHF", "Long context"):
        block = md.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
        assert "**What this shows.**" in block and "**What it does not.**" in block


def test_every_linked_image_exists_and_is_inlined_in_html(report):
    md = (report / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) >= 6
    for rel in links:
        data = (report / rel).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, rel
    html = (report / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == len(links)
