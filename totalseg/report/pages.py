"""The two HTML pages of a report: the case viewer and the cohort gallery.

Pages carry their data as JSON in a ``<script type="application/json">`` element and load scripts and styles
from the report's ``assets`` folder by relative path, so the report folder can be moved and opened from disk.
"""
from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

ASSETS = ("niivue.umd.js", "NIIVUE_LICENSE.txt", "viewer.js", "gallery.js", "report.css")


def copy_assets(folder: Path) -> None:
    """Copy the page scripts, styles and the NiiVue bundle (with its licence) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    source = resources.files("totalseg.report").joinpath("assets")
    for name in ASSETS:
        (folder / name).write_bytes(source.joinpath(name).read_bytes())


def _json(data: Any) -> str:
    """JSON safe inside a <script> element (no "</" that could close it)."""
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def _flags_html(flags: Sequence[dict]) -> str:
    return "".join(f'<span class="flag flag-{html.escape(f["kind"])}">{html.escape(f["text"])}</span>' for f in flags)


def case_page(meta: dict, assets: str, scripts: Sequence[str]) -> str:
    """The viewer page; ``assets``: relative path of the assets folder, ``scripts``: the volume scripts."""
    title = html.escape(meta.get("title") or "case")
    back = meta.get("back")
    back_link = f'<a href="{html.escape(back)}">&larr; cohort</a>' if back else ""
    data_scripts = "\n".join(f'<script src="{html.escape(s)}"></script>' for s in scripts)
    return _head(title, assets) + f"""<header>{back_link}<h1>{title}</h1><span class="sub">{html.escape(meta.get("subtitle", ""))}</span>
<span class="flags-line">{_flags_html(meta.get("flags", []))}</span></header>
<div id="viewer">
 <aside id="side">
  <input id="filter" type="search" placeholder="filter classes">
  <div class="side-buttons"><button id="show-all">show all</button><button id="hide-all">hide all</button></div>
  <div id="class-count" class="sub"></div>
  <ul id="classes"></ul>
  <div id="empty-classes"></div>
 </aside>
 <main id="centre">
  <div id="toolbar">
   <span id="views">
    <button data-view="0">axial</button><button data-view="1">coronal</button><button data-view="2">sagittal</button>
    <button data-view="3" class="on">all</button><button data-view="4">3D</button>
   </span>
   <label>window <select id="window"></select></label>
   <label>labels <input id="opacity" type="range" min="0" max="1" step="0.05" value="0.6"></label>
   <button id="full" hidden></button>
  </div>
  <div id="status" class="status">loading the image…</div>
  <div id="canvas-box"><canvas id="gl"></canvas></div>
  <div id="location"></div>
 </main>
 <aside id="table-pane"><table id="stats"></table></aside>
</div>
<script type="application/json" id="tsr-meta">{_json(meta)}</script>
<script src="{assets}/niivue.umd.js"></script>
{data_scripts}
<script src="{assets}/viewer.js"></script>
</body></html>
"""


def _head(title: str, assets: str) -> str:
    """The start of every page: ``title`` already escaped, the shared style sheet under ``assets``."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · totalseg report</title>
<link rel="stylesheet" href="{assets}/report.css">
</head><body>
"""


def gallery_page(cohort: dict, assets: str) -> str:
    """The gallery page of a cohort (``cohort``: ``{"title", "cases": [...], "kinds": {...}}``)."""
    title = html.escape(cohort.get("title") or "cohort")
    return _head(title, assets) + f"""<header><h1>{title}</h1><span class="sub">{html.escape(cohort.get("subtitle", ""))}</span></header>
<div id="controls">
 <span id="filters"></span>
 <label>sort <select id="sort">
  <option value="flags">most flags first</option><option value="id">case id</option>
  <option value="seconds">run time</option><option value="status">failed first</option>
 </select></label>
 <span id="shown" class="sub"></span>
</div>
<div id="tiles"></div>
<script type="application/json" id="tsr-cohort">{_json(cohort)}</script>
<script src="{assets}/gallery.js"></script>
</body></html>
"""
