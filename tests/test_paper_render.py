"""Rendering the paper: placeholders filled, md + html written, links resolve, PDF decision recorded."""

import json
import re
import shutil
from pathlib import Path

import pytest

from paper_fakes import tiny_config, write_results
from weldfilm.errors import CheckpointError, ConfigError
from weldfilm.paper import FIGURE_NAMES, FIGURES_DIR, TABLE_NAMES, TABLES_DIR
from weldfilm.paper.latex import markdown_to_latex
from weldfilm.paper.render import render_paper
from weldfilm.paper.tables import build_tables

PAPER_SRC = Path(__file__).resolve().parents[1] / "paper"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Real tables, stand-in figure files (rendering only links them), the repository's paper.md."""
    root = tmp_path_factory.mktemp("paper_render")
    cfg = tiny_config(seeds=(0,))
    write_results(root / "results", cfg)
    out = root / "paper"
    build_tables(cfg, root / "results", out / TABLES_DIR)
    for name in FIGURE_NAMES:
        for suffix in (".png", ".pdf"):
            path = out / FIGURES_DIR / f"{name}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"stand-in")
    return cfg, root, out


def _no_latex(monkeypatch, tmp_path):
    empty = tmp_path / "empty_bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))


def test_render_writes_md_and_html_with_tables_inlined_and_links_resolving(prepared, monkeypatch, tmp_path):
    cfg, root, out = prepared
    _no_latex(monkeypatch, tmp_path)
    paths = render_paper(cfg, PAPER_SRC, root / "results", out)
    assert [p.name for p in paths] == ["paper.md", "paper.html", "render.json"]
    md, page = (out / "paper.md").read_text(), (out / "paper.html").read_text()
    assert "{{" not in md
    assert (out / TABLES_DIR / "main.md").read_text().strip() in md
    assert page.count("<table>") == len(TABLE_NAMES) and "Causal-FiLM" in page
    assert "Appendix: where the runs differ from the authors' code" in md
    assert (out / TABLES_DIR / "deviations.md").read_text().strip() in md
    md_links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    html_links = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(md_links) == len(FIGURE_NAMES) and sorted(md_links) == sorted(html_links)
    assert all(not Path(link).is_absolute() and (out / link).is_file() for link in html_links)
    assert "These are not the paper's results" in md and "tiny random-initialised" in md
    assert "synthetic runs in the real on-disk layout" in md


def test_render_records_why_pdf_was_skipped(prepared, monkeypatch, tmp_path):
    cfg, root, out = prepared
    _no_latex(monkeypatch, tmp_path)
    render_paper(cfg, PAPER_SRC, root / "results", out)
    record = json.loads((out / "render.json").read_text())
    assert record["formats"] == ["md", "html"]
    assert record["pdf"]["produced"] is False and "no LaTeX engine" in record["pdf"]["reason"]
    always = {**cfg, "paper": {"render_pdf": "always"}}
    with pytest.raises(ConfigError, match="render_pdf is 'always'"):
        render_paper(always, PAPER_SRC, root / "results", out)


def test_render_pdf_with_an_engine_on_path(prepared, monkeypatch, tmp_path):
    cfg, root, out = prepared
    bin_dir = tmp_path / "fake_tex"
    bin_dir.mkdir()
    engine = bin_dir / "pdflatex"  # stands in for a real engine: writes paper.pdf in its working folder
    engine.write_text("#!/bin/sh\ngrep -q 'includegraphics' paper.tex && printf '%%PDF-1.4 fake' > paper.pdf\n")
    engine.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    if shutil.which("xelatex"):
        pytest.skip("a real xelatex is on PATH and would be chosen first")
    paths = render_paper(cfg, PAPER_SRC, root / "results", out)
    record = json.loads((out / "render.json").read_text())
    assert record["formats"] == ["md", "html", "pdf"] and record["pdf"]["engine"] == "pdflatex"
    assert (out / "paper.pdf").read_bytes().startswith(b"%PDF") and out / "paper.pdf" in paths
    tex = (out / "paper.tex").read_text()
    assert r"\toprule" in tex and r"\includegraphics[width=\linewidth]{roc_pr.pdf}" in tex
    assert not [p for p in out.iterdir() if p.name.startswith(".latex_build")]


def test_no_banner_for_real_data_and_pretrained_backbones(prepared, monkeypatch, tmp_path):
    cfg, root, out = prepared
    _no_latex(monkeypatch, tmp_path)
    real = {**cfg, "data": {**cfg["data"], "source": "real"}, "backbones": {**cfg["backbones"], "source": "pretrained"}}
    render_paper(real, PAPER_SRC, root / "results", out)
    md = (out / "paper.md").read_text()
    assert "not the paper's results" not in md and "pretrained checkpoints" in md


def test_unknown_placeholder_and_missing_table_are_errors(prepared, tmp_path):
    cfg, root, out = prepared
    src = tmp_path / "src"
    src.mkdir()
    (src / "paper.md").write_text("# T\n\n{{table:nope}}\n")
    with pytest.raises(ConfigError, match=r"unknown placeholder '\{\{table:nope\}\}'"):
        render_paper(cfg, src, root / "results", tmp_path / "o1")
    (src / "paper.md").write_text("# T\n\n{{table:main}}\n")
    with pytest.raises(CheckpointError, match="tables/main.md"):
        render_paper(cfg, src, root / "results", tmp_path / "o2")


def test_markdown_to_latex_structure():
    md = "# Title\n\nSome *it* and **bold** 5% `a_b` $x_1$.\n\n## Sec\n\n- one\n- two\n\n\x00RAW0\x00\n"
    tex = markdown_to_latex(md, [r"\begin{table}X\end{table}"])
    assert r"\title{Title}" in tex and r"\section*{Sec}" in tex
    assert r"\emph{it}" in tex and r"\textbf{bold}" in tex and r"5\%" in tex and r"\texttt{a\_b}" in tex
    assert "$x_1$" in tex
    assert tex.index(r"\begin{itemize}") < tex.index(r"\item two") < tex.index(r"\end{itemize}")
    assert r"\begin{table}X\end{table}" in tex and tex.rstrip().endswith(r"\end{document}")
