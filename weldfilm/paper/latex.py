"""A small Markdown -> LaTeX converter for the paper source, and the call of a LaTeX engine.

It supports what ``paper/paper.md`` uses: headings (the first ``#`` is the title), paragraphs,
``-``/``1.`` lists, fenced code, block quotes, ``**bold**``, ``*italic*``, ```code```, links,
``$...$`` / ``\\[...\\]`` math (passed through) and raw LaTeX blocks the renderer inserts for
placeholders (``RAW_BLOCK`` lines).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from weldfilm.paper.formatting import latex_escape

ENGINES = ("xelatex", "pdflatex", "tectonic")
RAW_BLOCK = "\x00RAW{}\x00"
_RAW_LINE = re.compile("^\x00RAW(\\d+)\x00$")
_INLINE = re.compile(r"(`[^`]+`|\$[^$]+\$|\[[^\]]+\]\([^)]+\))")
_HEADINGS = {1: "section", 2: "section", 3: "subsection", 4: "subsubsection"}
PREAMBLE = r"""\documentclass[10pt]{article}
\usepackage[margin=2cm]{geometry}
\usepackage{iftex}
\ifPDFTeX\usepackage[utf8]{inputenc}\usepackage[T1]{fontenc}\fi
\usepackage{amsmath,amssymb,booktabs,graphicx,url,hyperref}
\graphicspath{{../figures/}}
"""


def inline_to_latex(text: str) -> str:
    """Convert one line of inline Markdown; math passes through unchanged."""
    out = []
    for part in _INLINE.split(text):
        if not part:
            continue
        if part.startswith("`"):
            out.append(r"\texttt{" + latex_escape(part[1:-1]) + "}")
        elif part.startswith("$"):
            out.append(part)
        elif part.startswith("[") and "](" in part:
            label, url = part[1:-1].split("](", 1)
            out.append(latex_escape(label) + r"\footnote{\url{" + url.replace("%", r"\%").replace("#", r"\#") + "}}")
        else:
            escaped = latex_escape(part)
            escaped = re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", escaped)
            out.append(re.sub(r"\*(.+?)\*", r"\\emph{\1}", escaped))
    return "".join(out)


def markdown_to_latex(markdown: str, raw_blocks: list[str]) -> str:
    """A complete LaTeX document from the paper Markdown and the raw blocks its RAW_BLOCK lines name."""
    body, title, env = [], "", None
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        list_kind = ("itemize" if re.match(r"^\s*[-*] ", line)
                     else "enumerate" if re.match(r"^\s*\d+\. ", line) else None)
        if env and list_kind != env:
            body.append(rf"\end{{{env}}}")
            env = None
        if stripped.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), len(lines))
            body += [r"\begin{verbatim}", *lines[i + 1:end], r"\end{verbatim}"]
            i = end + 1
            continue
        if match := _RAW_LINE.match(stripped):
            body.append(raw_blocks[int(match.group(1))])
        elif match := re.match(r"^(#{1,4})\s+(.*)$", stripped):
            level, text = len(match.group(1)), match.group(2)
            if level == 1 and not title:
                title = inline_to_latex(text)
            else:
                body.append(rf"\{_HEADINGS[level]}*{{{inline_to_latex(text)}}}")
        elif list_kind:
            if env is None:
                body.append(rf"\begin{{{list_kind}}}")
                env = list_kind
            body.append(r"\item " + inline_to_latex(re.sub(r"^\s*([-*]|\d+\.)\s+", "", line)))
        elif stripped.startswith(">"):
            body.append(r"\begin{quote}" + inline_to_latex(stripped.lstrip("> ")) + r"\end{quote}")
        else:
            body.append(inline_to_latex(line) if stripped else "")
        i += 1
    if env:
        body.append(rf"\end{{{env}}}")
    head = PREAMBLE + (rf"\title{{{title}}}" + "\n\\date{}\n" if title else "")
    start = "\\begin{document}\n" + (r"\maketitle" + "\n" if title else "")
    return head + start + "\n".join(body) + "\n\\end{document}\n"


def find_engine() -> str | None:
    """The first LaTeX engine of ENGINES on PATH, or None."""
    return next((e for e in ENGINES if shutil.which(e)), None)


def compile_pdf(tex: str, engine: str, out_dir: Path) -> tuple[Path | None, str]:
    """Compile ``tex`` in a scratch folder below ``out_dir``; return (pdf path or None, log tail)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".latex_build_", dir=out_dir))
    try:
        (build / "paper.tex").write_text(tex)
        flags = [] if engine == "tectonic" else ["-interaction=nonstopmode", "-halt-on-error"]
        command = [engine, *flags, "paper.tex"]
        log = ""
        for _ in range(1 if engine == "tectonic" else 2):  # twice: references and labels
            done = subprocess.run(command, cwd=build, capture_output=True, text=True, timeout=300)
            log = (done.stdout + done.stderr)[-2000:]
            if done.returncode != 0:
                return None, log
        pdf = build / "paper.pdf"
        if not pdf.is_file():
            return None, log + "\n(no paper.pdf written)"
        target = out_dir / "paper.pdf"
        shutil.move(pdf, target.with_name(".paper.pdf.tmp"))
        target.with_name(".paper.pdf.tmp").replace(target)
        return target, log
    finally:
        shutil.rmtree(build, ignore_errors=True)
