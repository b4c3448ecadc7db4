"""index.html: one self-contained page (figures embedded as data URIs, no scripts, no external
requests), readable on a phone and a desktop. Every string that came from a file goes through
`esc` before it reaches the page.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html as _html
import json
import math
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

CSS = """
:root{--fg:#1d1f23;--muted:#5b616b;--bg:#fff;--card:#f4f6f8;--line:#dde1e6;--ok:#1b6e2a;
--warn:#9a6200;--bad:#b3261e;--info:#0b57d0;--accent:#0b57d0}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);background:var(--bg)}
main{max-width:1120px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:1.6rem;line-height:1.25;margin:.3em 0 .1em;overflow-wrap:anywhere}
h2{font-size:1.25rem;margin:1.8em 0 .6em;padding-bottom:.2em;border-bottom:1px solid var(--line)}
h3{font-size:1.02rem;margin:1.3em 0 .4em}
.finding h3{margin:0 0 .3em}
a{color:var(--accent)}
.muted{color:var(--muted)}
.meta{color:var(--muted);margin:0 0 .8em;overflow-wrap:anywhere}
nav{position:sticky;top:0;z-index:1;background:rgba(255,255,255,.95);border-bottom:1px solid var(--line);
margin:0 -20px;padding:6px 20px;display:flex;gap:4px 14px;overflow-x:auto;white-space:nowrap;font-size:.92rem}
nav a{text-decoration:none}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:10px;margin:12px 0}
.card{background:var(--card);border-radius:10px;padding:10px 14px}
.card .k{font-size:.8rem;color:var(--muted);text-transform:uppercase;letter-spacing:.03em}
.card .v{font-size:1.45rem;font-weight:650;font-variant-numeric:tabular-nums}
.card .s{font-size:.85rem;color:var(--muted)}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,440px),1fr));gap:18px;align-items:start}
figure{margin:0}
figure img{width:auto;max-width:100%;height:auto;display:block;border:1px solid var(--line);border-radius:6px;background:#fff}
figcaption{font-size:.88rem;color:var(--muted);margin-top:4px}
.row{display:flex;flex-wrap:wrap;gap:0 48px}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin:8px 0 14px;max-width:100%}
table{border-collapse:collapse;font-size:.9rem}
th,td{padding:5px 12px 5px 0;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap;vertical-align:top}
th{font-weight:600;color:var(--muted)}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;padding-left:12px}
td.wrap{white-space:normal;overflow-wrap:anywhere;min-width:12em}
tr.sel td{font-weight:650}
.finding{border-left:5px solid var(--info);background:var(--card);border-radius:0 10px 10px 0;padding:10px 14px;margin:10px 0}
.finding p{margin:.3em 0}
.finding.problem{border-color:var(--bad)}.finding.warning{border-color:var(--warn)}
.finding.ok{border-color:var(--ok)}
.badge{display:inline-block;font-size:.72rem;font-weight:700;text-transform:uppercase;letter-spacing:.04em;
border-radius:4px;padding:0 6px;margin-right:6px;color:#fff;background:var(--info);vertical-align:1px}
.badge.problem{background:var(--bad)}.badge.warning{background:var(--warn)}.badge.ok{background:var(--ok)}
.suspect{font-weight:650}
.note{background:#fff8e1;border:1px solid #f0d48a;border-radius:8px;padding:8px 12px;margin:8px 0}
.missing{background:var(--card);border:1px dashed var(--line);border-radius:8px;padding:12px 14px}
ul.files{padding-left:1.2em}ul.files li{overflow-wrap:anywhere}
footer{margin-top:3em;font-size:.85rem;color:var(--muted)}
@media (max-width:600px){body{font-size:15px}main{padding:10px 12px 32px}nav{margin:0 -12px;padding:6px 12px}
h1{font-size:1.3rem}.card .v{font-size:1.25rem}.cards{grid-template-columns:repeat(auto-fit,minmax(140px,1fr))}}
"""


def esc(x: Any) -> str:
    return _html.escape("" if x is None else str(x), quote=True)


class Raw(str):
    """Markup built here from escaped parts; `cell` passes it through unescaped."""


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def pct(x, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%" if _finite(x) else "—"


def seconds(s) -> str:
    if not _finite(s):
        return "—"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def _fmt(x) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"  # as YAML writes it, not Python's True/False
    if isinstance(x, float):
        return f"{x:.4g}" if _finite(x) else str(x)
    if isinstance(x, (dict, list)):
        return json.dumps(x, default=str)
    return "—" if x is None else str(x)


def cell(x) -> str:
    return x if isinstance(x, Raw) else esc(_fmt(x))


def table(headers: list[str], rows: Iterable[Iterable[Any]], num: Iterable[int] = (),
          wrap: Iterable[int] = (), row_class=None) -> str:
    num, wrap = set(num), set(wrap)

    def cls(i):
        c = ("num" if i in num else "") + (" wrap" if i in wrap else "")
        return f' class="{c.strip()}"' if c.strip() else ""

    num_attr = ' class="num"'
    head = "".join(f"<th{num_attr if i in num else ''}>{esc(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for r_i, r in enumerate(rows):
        rc = row_class(r_i) if row_class else None
        tr = f'<tr class="{rc}">' if rc else "<tr>"
        body.append(tr + "".join(f"<td{cls(i)}>{cell(v)}</td>" for i, v in enumerate(r)) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _card(key: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="k">{esc(key)}</div><div class="v">{esc(value)}</div>'
            + (f'<div class="s">{esc(sub)}</div>' if sub else "") + "</div>")


def _figure(figs: dict, out: Path, key: str, alt: str, caption: str = "") -> str:
    if key not in figs:
        return ""
    name = figs[key]
    return (f'<figure id="fig-{esc(key)}">'
            f'<a href="{esc(name)}"><img src="{data_uri(out / name)}" alt="{esc(alt)}"></a>'
            + (f"<figcaption>{esc(caption)}</figcaption>" if caption else "") + "</figure>")


FIGURE_TITLES = {"loss.png": "loss curves", "accuracy.png": "accuracy curves",
                 "lr.png": "learning-rate curve", "confusion.png": "confusion matrix",
                 "reliability.png": "reliability diagram"}


def _findings(findings: list[dict], figs: dict) -> str:
    names = {v: k for k, v in figs.items()}
    parts = []
    for f in findings:
        sev = esc(f["severity"])
        body = f'<div class="finding {sev}"><h3><span class="badge {sev}">{sev}</span>{esc(f["title"])}</h3>'
        body += f"<p>{esc(f['detail'])}</p>"
        causes = f.get("evidence", {}).get("causes")
        if causes:
            body += "<ol>" + "".join(
                (f'<li class="suspect">Suspect: {esc(c["text"])}</li>' if c["suspect"]
                 else f'<li>{esc(c["text"])}</li>') for c in causes) + "</ol>"
        if f.get("advice"):
            body += f"<p><b>What to try:</b> {esc(f['advice'])}</p>"
        fig = f.get("figure")
        if fig and fig in names:
            body += (f'<p class="muted">Seen in the <a href="#fig-{esc(names[fig])}">'
                     f'{esc(FIGURE_TITLES.get(fig, fig))}</a>.</p>')
        parts.append(body + "</div>")
    return "".join(parts)


def _headline(a: dict) -> str:
    r, ev, cal = a["results"], a["eval"], a["calibration"]
    split = r.get("eval_split") or (ev or {}).get("split")
    cards = []
    if _finite(r.get("test_acc")):
        sub = (f"with flip TTA: {pct(r.get('test_acc_tta'))}" if _finite(r.get("test_acc_tta"))
               else "no TTA run")
        cards.append(_card("Test accuracy", pct(r["test_acc"]), sub))
    elif ev and ev.get("accuracy") is not None:
        cards.append(_card(f"Accuracy ({split or 'eval'})", pct(ev["accuracy"]),
                           f"{ev['n']} images, from predictions.npz"))
    if _finite(r.get("best_val_acc")):
        cards.append(_card("Best validation", pct(r["best_val_acc"]),
                           f"at epoch {r['best_epoch']}" if r.get("best_epoch") is not None else ""))
    if r.get("selected"):
        cards.append(_card("Selected weights", str(r["selected"]).upper(), "held by best.pt"))
    if cal and cal.get("ece") is not None:
        cards.append(_card("ECE", pct(cal["ece"]), f"{cal['n_bins']} bins, {split or 'eval'} split"))
    if _finite(r.get("train_seconds")):
        cards.append(_card("Training time", seconds(r["train_seconds"]),
                           f"{r.get('epochs')} epochs" if r.get("epochs") is not None else ""))
    if _finite(r.get("params")):
        cards.append(_card("Parameters", f"{r['params'] / 1e6:.2f} M", str(r.get("model") or "")))
    html = f'<div class="cards">{"".join(cards)}</div>' if cards else ""
    tables = []
    cand = r.get("candidates")
    if isinstance(cand, dict) and cand:
        sel = r.get("selected")
        keys = list(cand)
        tables.append("<div><h3>Weights compared on validation</h3>" + table(
            ["weights", "validation accuracy", "selected"],
            [[k.upper() if isinstance(k, str) else k, pct(cand[k]) if _finite(cand[k]) else "not used",
              "✓" if k == sel else ""] for k in keys], num=[1],
            row_class=lambda i: "sel" if keys[i] == sel else None) + "</div>")
    tta = r.get("time_to_acc")
    if isinstance(tta, dict) and tta:
        rows = []
        for k, v in tta.items():
            try:
                label = pct(float(k), 0)
            except (TypeError, ValueError):
                label = str(k)
            rows.append([label, seconds(v) if _finite(v) else "not reached"])
        tables.append("<div><h3>Time to accuracy (validation)</h3>"
                      + table(["accuracy", "wall time"], rows, num=[1]) + "</div>")
    if tables:
        html += f'<div class="row">{"".join(tables)}</div>'
    return html


def _key_values(d: dict) -> str:
    if not d:
        return '<p class="muted">Not recorded.</p>'
    return table(["key", "value"], [[k, v] for k, v in d.items()], wrap=[1])


def _page(title: str, body: str) -> str:
    from .. import __version__

    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>{body}"
            f"<footer>Built by resnet-cifar {esc(__version__)} on {esc(stamp)}.</footer>"
            "</main></body></html>\n")


# Config keys that mean nothing for some runs: shown only where they apply.
SCHEDULER_KEYS = {"multistep": ("milestones", "gamma"), "plateau": ("plateau_factor", "plateau_patience")}
OPTIMIZER_KEYS = {"muon": ("muon_lr", "muon_momentum"), "sam": ("sam_rho",)}
CIFAR_ONLY_KEYS = ("download",)


def shown_config(cfg: dict) -> dict:
    """The config as the report lists it: keys of another scheduler or optimizer, and `download` for
    an image folder (nothing is ever downloaded there), left out."""
    drop = {k for sched, keys in SCHEDULER_KEYS.items() if cfg.get("scheduler") != sched for k in keys}
    drop |= {k for opt, keys in OPTIMIZER_KEYS.items() if cfg.get("optimizer") != opt for k in keys}
    if cfg.get("dataset") == "folder":
        drop.update(CIFAR_ONLY_KEYS)
    return {k: v for k, v in cfg.items() if k not in drop}


def _plural(n, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _header(a: dict) -> list[str]:
    r, cfg = a["results"], a["config"]
    run_name = Path(a["run_dir"]).name
    meta = " · ".join(esc(x) for x in (
        r.get("model") or cfg.get("model"), r.get("dataset") or cfg.get("dataset"),
        _plural(r["epochs"], "epoch") if r.get("epochs") is not None else None,
        f"seed {r['seed']}" if r.get("seed") is not None else None, r.get("device"),
        f"torch {r['torch_version']}" if r.get("torch_version") else None) if x)
    nav = ("<nav>" + "".join(f'<a href="#{i}">{t}</a>' for i, t in (
        ("results", "Results"), ("diagnosis", "Diagnosis"), ("curves", "Curves"),
        ("confusion", "Confusion"), ("calibration", "Calibration"), ("examples", "Examples"),
        ("config", "Config"), ("environment", "Environment"), ("files", "Files"))) + "</nav>")
    b = [f"<h1>Run report: {esc(run_name)}</h1>", f'<p class="meta">{meta}</p>' if meta else "", nav]
    return b + [f'<div class="note">{esc(n)}</div>' for n in a["notes"]]


def _curves(a: dict, figs: dict, out: Path) -> str:
    b = '<h2 id="curves">Training curves</h2>'
    if not a["rows"]:
        return b + '<p class="missing">metrics.csv is missing or empty: no curves.</p>'
    last = a["rows"][-1]["epoch"]
    cut_note = "Dotted lines: learning-rate cuts." if any(c["epoch"] < last for c in a["lr_cuts"]) else ""
    return (b + '<div class="figs">'
            + _figure(figs, out, "loss", "Training and validation loss per epoch", cut_note)
            + _figure(figs, out, "accuracy", "Training and validation accuracy per epoch",
                      "Train accuracy is measured on augmented images during the epoch.")
            + _figure(figs, out, "lr", "Learning rate per epoch") + "</div>")


def _confusion(a: dict, figs: dict, out: Path) -> list[str]:
    ev = a["eval"]
    split = (ev or {}).get("split") or a["results"].get("eval_split") or "eval"
    b = [f'<h2 id="confusion">Confusion matrix ({esc(split)} split)</h2>']
    if ev is None:
        return b + ['<p class="missing">predictions.npz is missing: no confusion matrix, per-class '
                    'numbers, calibration or example images. Rerun <code>resnet-cifar evaluate</code> '
                    'on this run to write it.</p>']
    b.append(f'<p>{ev["n"]} images, accuracy {pct(ev["accuracy"])} (from predictions.npz, '
             f'without TTA). Rows are the true class, columns the prediction; each cell shows '
             f'the count and its share of the row.</p>')
    b.append(_figure(figs, out, "confusion", "Confusion matrix heatmap",
                     "Click or tap a figure to open it full size."))
    b.append("<h3>Most confused pairs</h3>")
    if ev["top_confused"]:
        b.append(table(["true class", "predicted as", "images", "% of true class"],
                       [[p["true"], p["pred"], p["count"], pct(p["share_of_true"], 1)]
                        for p in ev["top_confused"]], num=[2, 3]))
    else:
        b.append('<p class="muted">No mistakes.</p>')
    b.append("<h3>Per class</h3>" + table(
        ["class", "images", "precision", "recall", "F1", "accuracy (one-vs-rest)"],
        [[c["class"], c["support"], pct(c["precision"], 1), pct(c["recall"], 1),
          pct(c["f1"], 1), pct(c["accuracy"], 1)] for c in ev["per_class"]],
        num=[1, 2, 3, 4, 5]))
    return b


def _calibration(a: dict, figs: dict, out: Path) -> str:
    b = '<h2 id="calibration">Calibration</h2>'
    cal = a["calibration"]
    if cal is None or cal.get("ece") is None:
        return b + '<p class="missing">No predictions, so no calibration.</p>'
    return (b + f'<p>Expected calibration error <b>{pct(cal["ece"])}</b> ({cal["n_bins"]} '
            f'equal-width confidence bins; 0 is perfect). Mean confidence '
            f'{pct(cal["mean_confidence"])} against accuracy {pct(cal["accuracy"])}'
            f'{" (overconfident)" if cal["mean_confidence"] > cal["accuracy"] + 0.01 else ""}'
            f'{" (underconfident)" if cal["mean_confidence"] < cal["accuracy"] - 0.01 else ""}; '
            f'largest bin gap {pct(cal["mce"])}.</p>'
            + _figure(figs, out, "reliability", "Reliability diagram",
                      "Bars: accuracy of the predictions in each confidence bin; a calibrated "
                      "model's bars touch the diagonal. Below: how many images fall in each bin."))


def _examples(a: dict, figs: dict, out: Path) -> str:
    b = '<h2 id="examples">Example images</h2>'
    if "mistakes" not in figs and "least_confident" not in figs:
        return b + f'<p class="missing">Images are not shown: {esc(a["images_missing"] or "none to show.")}</p>'
    b += ('<div class="figs">'
          + _figure(figs, out, "mistakes", "Grid of the most confident misclassified images",
                    "Most confident mistakes first: true label, predicted label and the "
                    "predicted probability.")
          + _figure(figs, out, "least_confident", "Grid of the least confident correct images",
                    "Correct, but with the lowest confidence first.") + "</div>")
    if a["eval"] is not None and not a["examples"]["mistakes"]:
        b += '<p class="muted">No misclassified images.</p>'
    return b


def _config_env_files(a: dict, files: list[tuple[str, str]]) -> str:
    r = a["results"]
    env = dict(r.get("env") or {}) if isinstance(r.get("env"), dict) else {}
    for k in ("device", "torch_version", "seed", "model", "params", "dataset"):
        if r.get(k) is not None and k not in env:
            env[k] = r[k]
    return ('<h2 id="config">Configuration</h2>' + _key_values(shown_config(a["config"]))
            + '<h2 id="environment">Environment</h2>' + _key_values(env)
            + '<h2 id="files">Files</h2><ul class="files">'
            + "".join(f'<li><a href="{esc(quote(href))}">{esc(label)}</a></li>' for label, href in files)
            + "</ul>")


def render_run_page(a: dict, figs: dict[str, str], out: Path, files: list[tuple[str, str]]) -> str:
    """The page of one run. a: build.analyse_run's dict; figs: {key: png name in out}."""
    b = _header(a)
    b.append('<h2 id="results">Results</h2>' + (_headline(a) or '<p class="muted">No results yet.</p>'))
    b.append('<h2 id="diagnosis">Diagnosis</h2>' + _findings(a["diagnosis"], figs))
    b.append(_curves(a, figs, out))
    b += _confusion(a, figs, out)
    b += [_calibration(a, figs, out), _examples(a, figs, out), _config_env_files(a, files)]
    return _page(f"Run report: {Path(a['run_dir']).name}", "".join(b))
