"""The summary page of a multi-seed directory: one row per seed, linking to each seed's report."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from .html import Raw, _card, _finite, _page, esc, pct, seconds, table


def render_multiseed_page(data: dict) -> str:
    """The summary page of a multi-seed directory (build.build_multiseed_report's data)."""
    run_name = Path(data["run_dir"]).name
    metric = data.get("metric") or "test_acc"
    label = {"test_acc": "test accuracy", "best_val_acc": "best validation accuracy"}.get(metric, metric)
    seeds = data["seeds"]
    b = [f"<h1>Multi-seed summary: {esc(run_name)}</h1>",
         f'<p class="meta">{len(seeds)} seeds · {esc(label)}</p>']
    mean, std = data.get("mean"), data.get("std")
    values = [s.get(metric) for s in seeds if _finite(s.get(metric))]
    spread = f"min {pct(min(values))}, max {pct(max(values))}" if values else ""
    b.append('<div class="cards">'
             + _card(f"{label}, mean ± std",
                     f"{100 * mean:.2f} ± {100 * std:.2f}%" if _finite(mean) and _finite(std)
                     else pct(mean),
                     f"over {len(values)} of {len(seeds)} seeds; {spread}" if spread else "")
             + "</div>")
    rows = []
    for s in seeds:
        link = (Raw(f'<a href="../{esc(quote(s["report"]))}">{esc(s.get("dir") or "report")}</a>')
                if s.get("report") else s.get("dir"))
        issues = [f["title"] for f in s.get("diagnosis") or [] if f["severity"] in ("problem", "warning")]
        status = s["error"] if s.get("error") else ("; ".join(issues) if issues else "healthy")
        rows.append([s.get("seed"), link, pct(s.get("test_acc")), pct(s.get("test_acc_tta")),
                     pct(s.get("best_val_acc")),
                     s.get("best_epoch") if s.get("best_epoch") is not None else "—",
                     str(s["selected"]).upper() if s.get("selected") else "—",
                     seconds(s.get("train_seconds")), pct(s.get("ece")), status])
    b.append('<h2 id="seeds">Seeds</h2>' + table(
        ["seed", "run", "test accuracy", "with TTA", "best validation", "best epoch", "weights",
         "training time", "ECE", "diagnosis"], rows, num=[2, 3, 4, 5, 7, 8], wrap=[9]))
    b.append('<h2 id="files">Files</h2><ul class="files"><li><a href="../summary.json">summary.json'
             '</a></li><li><a href="summary.json">report/summary.json</a></li></ul>')
    return _page(f"Multi-seed summary: {run_name}", "".join(b))
