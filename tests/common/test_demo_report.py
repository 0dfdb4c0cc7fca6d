"""The demo report writer: Markdown + self-contained HTML with inlined PNGs."""

import base64

from trainkit.demo import Section, run_demo, write_report


def _png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)


def test_report_inlines_images_and_lists_headlines(tmp_path):
    (tmp_path / "kan").mkdir()
    _png(tmp_path / "kan" / "loss.png")
    sec = Section(
        title="KAN",
        headline={"test RMSE": "1.0e-05"},
        markdown="- a point\n",
        images=[("loss curve", "kan/loss.png")],
        command="trainkit kan fit",
        seconds=3,
    )
    md, page = write_report(tmp_path, [sec], 3.0)
    text = md.read_text()
    assert "| test RMSE | 1.0e-05 |" in text
    assert "![loss curve](kan/loss.png)" in text
    assert "trainkit kan fit" in text
    html = page.read_text()
    b64 = base64.b64encode((tmp_path / "kan" / "loss.png").read_bytes()).decode()
    assert f"src='data:image/png;base64,{b64}'" in html
    assert "<li>a point</li>" in html


def test_run_demo_with_no_parts_writes_empty_report(tmp_path):
    out = run_demo(parts=[], quick=True, out=str(tmp_path / "r"))
    assert (out / "report.md").read_text().startswith("# trainkit demo report")
    assert (out / "report.html").exists()


def test_inline_markdown_is_rendered_not_printed_raw():
    from trainkit.demo import _md_inline, md_spans

    assert md_spans("**Preference learning.** a < b, `x*y` and *em* 2*3*4") == (
        "<strong>Preference learning.</strong> a &lt; b, <code>x*y</code> and <em>em</em> 2*3*4"
    )
    assert md_spans("see [docs](docs/rlhf.md), [x](javascript:alert(1))") == (
        "see <a href='docs/rlhf.md'>docs</a>, [x](javascript:alert(1))"
    )
    got = _md_inline("- a **b**\n- c\n\npara *i*\n\n| k | **v** |\n|---|---|\n| 1 | 2 |")
    assert got == (
        "<ul>\n<li>a <strong>b</strong></li>\n<li>c</li>\n</ul>\n<p>para <em>i</em></p>\n"
        "<table><tr><td>k</td><td><strong>v</strong></td></tr><tr><td>1</td><td>2</td></tr>"
        "</table>"
    )
    assert "**" not in got


def test_report_opens_with_a_summary_table(tmp_path):
    secs = [
        Section(
            title="GRPO",
            headline={"steps": "4", "held-out accuracy": "4% -> 20%"},
            command="trainkit rlhf grpo --config c.yaml\nmore",
            seconds=12.4,
        ),
        Section(
            title="KAN", headline={"test RMSE": "1e-05"}, command="trainkit kan fit", seconds=3
        ),
    ]
    md, page = write_report(tmp_path, secs, 15.0)
    text = md.read_text()
    # the summary comes before the first section, one row per section
    assert text.index("## Summary") < text.index("## GRPO")
    assert (
        "| GRPO | held-out accuracy: 4% -> 20% | 12 s | `trainkit rlhf grpo --config c.yaml` |"
        in text
    )
    assert "| KAN | test RMSE: 1e-05 | 3 s | `trainkit kan fit` |" in text
    html = page.read_text()
    assert html.index("<h2>Summary</h2>") < html.index("<h2>GRPO</h2>")
    assert "<td>held-out accuracy: 4% -&gt; 20%</td>" in html


def test_improvement_check_flags_a_figure_that_got_worse(tmp_path):
    from trainkit.demo import improvement_failures

    def report(*sections):
        md, _ = write_report(tmp_path, list(sections), 1.0)
        return md.read_text()

    good = Section(
        "RLHF: x",
        headline={"accuracy": "50% -> 100% (64 pairs)", "RMSE": "1.2e-03 -> 4.1e-06", "n": "3"},
        better={"accuracy": "higher", "RMSE": "lower"},
    )
    md = report(good)
    assert "| accuracy ↑ | 50% -> 100% (64 pairs) |" in md and "| RMSE ↓ |" in md
    assert "## Summary" in md and improvement_failures(md) == []  # Summary rows: not checked
    worse = md.replace("50% -> 100%", "50% -> 40%")
    assert improvement_failures(worse) == [
        "RLHF: x: 'accuracy ↑' did not improve: 50% -> 40% (64 pairs)"
    ]
    flat = md.replace("1.2e-03 -> 4.1e-06", "4.1e-06 -> 4.1e-06")
    assert improvement_failures(flat) == ["RLHF: x: 'RMSE ↓' did not improve: 4.1e-06 -> 4.1e-06"]
    undirected = Section("KAN", headline={"loss": "2 -> 1"})
    assert improvement_failures(report(undirected)) == ["KAN: 'loss' has no direction (↑ or ↓)"]
    none = Section("Long context", headline={"steps": "20"})
    assert improvement_failures(report(none)) == ["Long context: no before -> after figure"]
