// Cohort gallery of totalseg_report: one tile per case with status, run time and flags; filter and sort by
// flag; a tile opens the case's viewer. All data is in the page (#tsr-cohort), so it works from disk.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("tsr-cohort").textContent);
  const $ = (id) => document.getElementById(id);
  const grid = $("tiles");
  let filter = "all";
  let sort = "flags";

  function tile(c) {
    const a = document.createElement(c.href ? "a" : "div");
    a.className = "tile status-" + c.status;
    if (c.href) a.href = c.href;
    a.dataset.case = c.id;
    a.dataset.flags = c.flags.map((f) => f.kind).join(" ");
    if (c.tile) {
      const img = document.createElement("img");
      img.src = c.tile;
      img.alt = c.id;
      img.loading = "lazy";
      a.append(img);
    } else {
      a.append(Object.assign(document.createElement("div"), { className: "noimage", textContent: c.status === "done" ? "no picture" : "no result" }));
    }
    const title = document.createElement("div");
    title.className = "title";
    title.append(Object.assign(document.createElement("b"), { textContent: c.id }));
    const facts = [c.status];
    if (c.seconds !== null && c.seconds !== undefined) facts.push(c.seconds.toFixed(1) + " s");
    title.append(" " + facts.join(" · "));
    a.append(title);
    const ul = document.createElement("ul");
    ul.className = "flags";
    for (const f of c.flags) {
      const li = document.createElement("li");
      li.className = "flag flag-" + f.kind;
      li.dataset.kind = f.kind;
      li.textContent = (data.kinds[f.kind] || f.kind) + ": " + f.text;
      ul.append(li);
    }
    a.append(ul);
    return a;
  }

  function order(cases) {
    const key = {
      flags: (c) => [-c.flags.length, c.id],
      id: (c) => [c.id],
      seconds: (c) => [-(c.seconds || 0), c.id],
      status: (c) => [c.status === "done" ? 1 : 0, c.id],
    }[sort];
    return cases.slice().sort((a, b) => {
      const x = key(a), y = key(b);
      for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i] > y[i] ? 1 : -1;
      return 0;
    });
  }

  function render() {
    const shown = data.cases.filter((c) =>
      filter === "all" ? true : filter === "flagged" ? c.flags.length > 0 : filter === "clean" ? c.flags.length === 0 : c.flags.some((f) => f.kind === filter)
    );
    grid.replaceChildren(...order(shown).map(tile));
    $("shown").textContent = shown.length + " of " + data.cases.length + " cases";
    document.querySelectorAll("#filters button").forEach((b) => b.classList.toggle("on", b.dataset.filter === filter));
  }

  function filters() {
    const bar = $("filters");
    const count = (kind) => data.cases.filter((c) => c.flags.some((f) => f.kind === kind)).length;
    const entries = [["all", "all", data.cases.length], ["flagged", "flagged", data.cases.filter((c) => c.flags.length).length],
      ["clean", "no flags", data.cases.filter((c) => !c.flags.length).length]];
    for (const kind of Object.keys(data.kinds)) if (count(kind)) entries.push([kind, data.kinds[kind], count(kind)]);
    for (const [key, label, n] of entries) {
      const b = document.createElement("button");
      b.dataset.filter = key;
      b.textContent = label + " (" + n + ")";
      b.addEventListener("click", () => { filter = key; render(); });
      bar.append(b);
    }
    $("sort").addEventListener("change", (e) => { sort = e.target.value; render(); });
  }

  filters();
  render();
  window.TSR = { ready: true, data: data };
  document.body.dataset.ready = "1";
})();
