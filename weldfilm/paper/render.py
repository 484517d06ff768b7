"""Render the paper: fill the placeholders of ``paper/paper.md`` and write paper.md, paper.html, paper.pdf.

Placeholders: ``{{table:NAME}}`` (the generated Markdown table), ``{{figure:NAME}}`` (a numbered
figure linking ``figures/NAME.png``, relative to the output), ``{{provenance}}`` (which data,
backbones, seeds, config and commit produced the numbers). A banner saying that the numbers are not
the paper's is put under the title whenever the data are synthetic or the backbones tiny.
PDF: ``paper.render_pdf`` auto (when a LaTeX engine is on PATH) | always (fail without one) | never.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from weldfilm.errors import CheckpointError, ConfigError
from weldfilm.io import provenance, stable_hash, write_json, write_text
from weldfilm.paper import FIGURE_NAMES, FIGURES_DIR, TABLE_NAMES, TABLES_DIR
from weldfilm.paper.latex import RAW_BLOCK, compile_pdf, find_engine, markdown_to_latex
from weldfilm.paper.formatting import latex_escape
from weldfilm.paper.results import add_common_arguments, config_from_args

PLACEHOLDER = re.compile(r"\{\{\s*(table|figure|provenance)(?::([A-Za-z0-9_]+))?\s*\}\}")
FIGURE_CAPTIONS = {
    "roc_pr": "ROC and precision-recall curves of all methods on TEST (fair protocol, first seed).",
    "score_distributions": "Causal-FiLM anomaly scores per class on TEST (fair protocol, first seed).",
    "per_defect_heatmap": "Per-defect I-AUROC (good vs each class), methods x classes (fair, mean over seeds).",
    "ablations": "I-AUROC of each ablation (fair protocol); error bars: standard deviation over seeds.",
    "training_curves": "Causal-FiLM loss terms and validation I-AUROC per epoch, every seed (fair protocol).",
    "modalities": "The four modalities of example runs (from the dataset card).",
}
HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{max-width:60em;margin:2em auto;font-family:serif;line-height:1.45;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0;font-size:0.85em}}th,td{{border-top:1px solid #999;
border-bottom:1px solid #999;padding:0.25em 0.6em}}img{{max-width:100%}}
blockquote{{border-left:4px solid #D55E00;margin-left:0;padding-left:1em;background:#fff4ec}}</style>
</head><body>
{body}
</body></html>
"""


def not_paper_results_banner(cfg: dict) -> str | None:
    """The warning shown under the title unless the run used real data and pretrained backbones."""
    parts = []
    if cfg["data"]["source"] != "real":
        parts.append("synthetic data from the project's causal simulator")
    if cfg["backbones"]["source"] != "pretrained":
        parts.append("tiny random-initialised backbones of the paper's model classes")
    if not parts:
        return None
    return ("> **These are not the paper's results.** Every number, table and figure below was produced with "
            + " and ".join(parts) + ". They test the pipeline end to end; they say nothing about how "
            "Causal-FiLM performs on real welding data.")


def provenance_section(cfg: dict) -> str:
    """Markdown text naming the data, backbones, seeds, config hash and commit behind the numbers."""
    data, backbones, prov = cfg["data"], cfg["backbones"], provenance(cfg)
    if data["source"] == "synthetic":
        synth = cfg["synthetic"]
        data_text = (f"synthetic runs in the real on-disk layout (`weldfilm synth`, seed {synth['seed']}, "
                     f"{synth['good_runs']} good runs + {synth['runs_per_class']} per defect class) "
                     f"at `{data['root']}`")
    else:
        data_text = (f"the real Weld-4M data at `{data['root']}`, split "
                     + (f"from the paper's manifest `{data['paper_manifest']}`" if data["paper_manifest"]
                        else f"by seeded scan (split seed {data['split_seed']})"))
    if backbones["source"] == "tiny":
        backbone_text = (f"tiny random-initialised models of the paper's Hugging Face classes (`weldfilm "
                         f"tiny-backbones`, seed {backbones['tiny_seed']}), not pretrained weights")
    else:
        names = ("video", "audio", "image", "clip", "m3dm_rgb", "dinomaly_encoder")
        backbone_text = "pretrained checkpoints: " + ", ".join(f"{k} `{backbones[k]}`" for k in names)
    lines = [f"- **Data:** {data_text}.", f"- **Backbones:** {backbone_text}.",
             f"- **Seeds:** {', '.join(str(s) for s in cfg['seeds'])}; methods: {', '.join(cfg['methods'])}; "
             f"ablations: {', '.join(cfg['ablations']) or 'none'}.",
             f"- **Config hash:** `{prov['config_hash']}`; **code commit:** `{prov['git_commit']}`.",
             f"- Each table's provenance (the results files it read) is in `{TABLES_DIR}/<table>.provenance.json`; "
             f"the figures' in `{FIGURES_DIR}/figures.provenance.json`."]
    return "\n".join(lines)


def _check_inputs(used: list[tuple[str, str]], out_dir: Path) -> None:
    missing = []
    for kind, name in used:
        if kind == "table":
            missing += [p for p in (out_dir / TABLES_DIR / f"{name}.md", out_dir / TABLES_DIR / f"{name}.tex")
                        if not p.is_file()]
        elif kind == "figure":
            missing += [p for p in (out_dir / FIGURES_DIR / f"{name}.png", out_dir / FIGURES_DIR / f"{name}.pdf")
                        if not p.is_file()]
    if missing:
        listed = "\n  ".join(str(p) for p in missing)
        raise CheckpointError(f"cannot render the paper, missing:\n  {listed}\nRun `weldfilm tables` and "
                              f"`weldfilm figures` with --out {out_dir / TABLES_DIR} / {out_dir / FIGURES_DIR} first.")


def _placeholders(source: str, src_path: Path) -> list[tuple[str, str]]:
    used = []
    for match in PLACEHOLDER.finditer(source):
        kind, name = match.group(1), match.group(2) or ""
        known = {"table": TABLE_NAMES, "figure": FIGURE_NAMES, "provenance": ("",)}[kind]
        if name not in known:
            raise ConfigError(f"{src_path}: unknown placeholder '{match.group(0)}'; known {kind} names: "
                              f"{', '.join(n for n in known if n) or '(none: write {{provenance}})'}")
        used.append((kind, name))
    leftovers = re.findall(r"\{\{[^}]*\}\}", PLACEHOLDER.sub("", source))
    if leftovers:
        raise ConfigError(f"{src_path}: malformed placeholder(s) {leftovers}; use {{{{table:NAME}}}}, "
                          "{{figure:NAME}} or {{provenance}}")
    return used


def fill(source: str, cfg: dict, out_dir: Path, for_latex: bool) -> tuple[str, list[str]]:
    """Replace placeholders; for LaTeX they become RAW_BLOCK lines whose blocks are returned."""
    raw_blocks: list[str] = []
    figure_numbers: dict[str, int] = {}

    def replace(match) -> str:
        kind, name = match.group(1), match.group(2)
        if kind == "provenance":
            return provenance_section(cfg)
        if kind == "table":
            if not for_latex:
                return (out_dir / TABLES_DIR / f"{name}.md").read_text()
            raw_blocks.append((out_dir / TABLES_DIR / f"{name}.tex").read_text())
        else:
            number = figure_numbers.setdefault(name, len(figure_numbers) + 1)
            caption = FIGURE_CAPTIONS[name]
            if not for_latex:
                return f"![Figure {number}: {caption}]({FIGURES_DIR}/{name}.png)\n\n*Figure {number}: {caption}*"
            raw_blocks.append("\n".join([r"\begin{figure}[htbp]\centering",
                                         rf"\includegraphics[width=\linewidth]{{{name}.pdf}}",
                                         rf"\caption{{{latex_escape(caption)}}}\label{{fig:{name}}}",
                                         r"\end{figure}"]))
        return "\n" + RAW_BLOCK.format(len(raw_blocks) - 1) + "\n"

    filled = PLACEHOLDER.sub(replace, source)
    banner = not_paper_results_banner(cfg)
    if banner:
        filled, found = re.subn(r"^(# .*\n)", lambda m: m.group(1) + "\n" + banner + "\n", filled, count=1, flags=re.M)
        if not found:
            filled = banner + "\n\n" + filled
    return filled, raw_blocks


def to_html(markdown_text: str) -> str:
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code", "sane_lists", "toc"])
    title = next((line[2:].strip() for line in markdown_text.splitlines() if line.startswith("# ")), "paper")
    return HTML_TEMPLATE.format(title=html.escape(title), body=body)


def _render_pdf(cfg: dict, filled_latex: str, raw_blocks: list[str], out_dir: Path) -> dict:
    mode = cfg["paper"]["render_pdf"]
    if mode == "never":
        return {"mode": mode, "produced": False, "engine": None, "reason": "paper.render_pdf is 'never'"}
    engine = find_engine()
    if engine is None:
        reason = "no LaTeX engine (xelatex, pdflatex, tectonic) on PATH"
        if mode == "always":
            raise ConfigError(f"paper.render_pdf is 'always' but there is {reason}; install one or set it to auto")
        return {"mode": mode, "produced": False, "engine": None, "reason": reason}
    tex = markdown_to_latex(filled_latex, raw_blocks)
    write_text(out_dir / "paper.tex", tex)
    pdf, log = compile_pdf(tex, engine, out_dir)
    if pdf is None:
        if mode == "always":
            raise ConfigError(f"{engine} failed on {out_dir / 'paper.tex'}:\n{log}")
        return {"mode": mode, "produced": False, "engine": engine, "reason": f"{engine} failed", "log_tail": log}
    return {"mode": mode, "produced": True, "engine": engine, "reason": None}


def render_paper(cfg: dict, paper_src_dir, results_dir, out_dir) -> list[Path]:
    """Render ``paper_src_dir/paper.md`` with the tables/figures below ``out_dir`` into ``out_dir``."""
    src_path, out_dir = Path(paper_src_dir) / "paper.md", Path(out_dir)
    if not src_path.is_file():
        raise ConfigError(f"paper source {src_path} does not exist (the repository keeps it in paper/paper.md)")
    source = src_path.read_text()
    used = _placeholders(source, src_path)
    _check_inputs(used, out_dir)
    filled_md, _ = fill(source, cfg, out_dir, for_latex=False)
    write_text(out_dir / "paper.md", filled_md)
    write_text(out_dir / "paper.html", to_html(filled_md))
    filled_tex, raw_blocks = fill(source, cfg, out_dir, for_latex=True)
    pdf = _render_pdf(cfg, filled_tex, raw_blocks, out_dir)
    if not pdf["produced"]:
        print(f"weldfilm paper: no PDF ({pdf['reason']}); wrote paper.md and paper.html")
    formats = ["md", "html"] + (["pdf"] if pdf["produced"] else [])
    record = {"formats": formats, "pdf": pdf, "source": str(src_path), "source_hash": stable_hash(source),
              "placeholders": [f"{k}:{n}" if n else k for k, n in used],
              "provenance": provenance(cfg, results_dir=str(results_dir))}
    write_json(out_dir / "render.json", record)
    written = [out_dir / "paper.md", out_dir / "paper.html", out_dir / "render.json"]
    return written + ([out_dir / "paper.tex", out_dir / "paper.pdf"] if pdf["produced"] else [])


def add_cli_arguments(parser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--paper-src", default="paper", help="folder holding paper.md (default: paper)")


def cli(args) -> int:
    cfg, results = config_from_args(args)
    out = Path(args.out) if args.out else results / "paper"
    for path in render_paper(cfg, args.paper_src, results, out):
        print(path)
    return 0
