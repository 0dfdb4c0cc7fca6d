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
