// Case viewer of totalseg_report: NiiVue shows the image with the label map; the class list and the statistics
// table are plain HTML. The volumes come from data/*.js (base64 NIfTI in window.TSR_VOLUMES), because a page
// opened from disk may not fetch() local files. The preview grid is shown first; the full grid (if stored) is
// loaded on request, or at once where the browser has a hardware GPU. window.TSR exposes the state for tests.
"use strict";
(function () {
  const meta = JSON.parse(document.getElementById("tsr-meta").textContent);
  const TSR = (window.TSR = { ready: false, error: null, meta: meta, grid: null, marks: {} });
  const $ = (id) => document.getElementById(id);
  const mark = (name) => (TSR.marks[name] = Math.round(performance.now()));
  const visible = new Map(meta.classes.map((c) => [c.id, true]));
  const top = meta.classes.reduce((m, c) => Math.max(m, c.id), 0);
  let windowLevel = meta.windows[0];

  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = "status" + (isError ? " error" : "");
  }

  function fail(message) {
    TSR.error = String(message);
    status("Cannot show the case: " + TSR.error, true);
    document.body.dataset.error = "1";
  }

  function bytes(key) {
    const text = (window.TSR_VOLUMES || {})[key];
    if (!text) throw new Error("data/" + key + ".js did not load");
    delete window.TSR_VOLUMES[key]; // the base64 text is not needed again
    if (Uint8Array.fromBase64) return Uint8Array.fromBase64(text);
    const raw = atob(text);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }

  function loadScripts(paths) {
    return Promise.all(paths.map((src) => new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = src;
      s.onload = resolve;
      s.onerror = () => reject(new Error(src + " did not load"));
      document.body.append(s);
    })));
  }

  // The label lookup table: one RGBA entry per id, alpha 0 hides a class (and the background). NiiVue's slice
  // shader rounds any value above the table's minimum up to at least 2/256 of the table's width (its
  // issue 1139) and samples the table linearly, which would tint label 0 with label 1's colour; transparent
  // entries below 0 keep label 0 at the centre of its own entry.
  function labelColormap() {
    const pad = Math.max(1, Math.ceil((((top + 1) / 128 - 0.5) * 128) / 127) + 1);
    const cm = { R: [], G: [], B: [], A: [], I: [] };
    const byId = new Map(meta.classes.map((c) => [c.id, c]));
    for (let i = -pad; i <= top; i++) {
      const c = i > 0 ? byId.get(i) : undefined;
      cm.I.push(i);
      cm.R.push(c ? c.rgb[0] : 0);
      cm.G.push(c ? c.rgb[1] : 0);
      cm.B.push(c ? c.rgb[2] : 0);
      cm.A.push(c && visible.get(i) ? 255 : 0);
    }
    return cm;
  }

  // Names by label value, as NiiVue's location text looks them up.
  function labelNames() {
    const names = Array(top + 1).fill("");
    meta.classes.forEach((c) => (names[c.id] = c.name));
    return names;
  }

  // Wait until the GPU has done the queued work (WebGL calls return before it is done): reading one pixel
  // back does, so "ready" means the first frame is on the canvas.
  function finish() {
    const gl = TSR.nv.gl;
    gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
  }

  // Each change of a layer re-renders every layer into NiiVue's 3D textures (seconds for a large volume on a
  // software GPU): batch the volume changes, then render once.
  function batched(nv, change) {
    const update = nv.updateGLVolume;
    nv.updateGLVolume = () => {};
    try {
      change();
    } finally {
      nv.updateGLVolume = update;
    }
    nv.updateGLVolume();
  }

  async function loadGrid(grid) {
    const [imageKey, labelsKey] = grid.keys;
    const image = await niivue.NVImage.new(bytes(imageKey).buffer, "image.nii.gz", "gray", 1, null,
      windowLevel.min, windowLevel.max, true);
    mark("image " + grid.step);
    const labels = await niivue.NVImage.new(bytes(labelsKey).buffer, "labels.nii.gz", "gray",
      +$("opacity").value, null, 0, top, true);
    labels.setColormapLabel(labelColormap());
    labels.colormapLabel.labels = labelNames();
    mark("labels " + grid.step);
    return [image, labels];
  }

  function show(nv, image, labels, mm) {
    batched(nv, () => {
      while (nv.volumes.length) nv.removeVolumeByIndex(0);
      nv.addVolume(image);
      nv.addVolume(labels);
      if (mm) nv.scene.crosshairPos = nv.mm2frac(mm);
    });
  }

  function setWindow(lo, hi) {
    windowLevel = { min: lo, max: hi };
    const image = TSR.nv.volumes[0];
    image.cal_min = lo;
    image.cal_max = hi;
    TSR.nv.updateGLVolume();
  }

  // Show or hide one class: its alpha in the label lookup table.
  function setVisible(id, on) {
    visible.set(id, on);
    const box = document.querySelector('#classes input[data-id="' + id + '"]');
    if (box) box.checked = on;
    const labels = TSR.nv.volumes[1];
    const lut = labels.colormapLabel;
    const k = (id - (lut.min || 0)) * 4 + 3;
    if (k >= 3 && k < lut.lut.length) lut.lut[k] = on ? 255 : 0;
    TSR.nv.updateGLVolume();
  }

  function setAll(on) {
    meta.classes.forEach((c) => visible.set(c.id, on));
    document.querySelectorAll("#classes input").forEach((b) => (b.checked = on));
    TSR.nv.volumes[1].setColormapLabel(labelColormap());
    TSR.nv.volumes[1].colormapLabel.labels = labelNames();
    TSR.nv.updateGLVolume();
  }

  function jumpTo(id) {
    const c = meta.classes.find((x) => x.id === id);
    if (!c || !c.inside_mm) return;
    TSR.nv.scene.crosshairPos = TSR.nv.mm2frac(c.inside_mm);
    TSR.nv.createOnLocationChange();
    TSR.nv.drawScene(); // slices are cut from the 3D textures: no re-render of the layers needed
    document.querySelectorAll("#classes li").forEach((li) => li.classList.toggle("current", +li.dataset.id === id));
  }

  function buildClassList() {
    const list = $("classes");
    const present = meta.classes.filter((c) => c.id > 0 && c.voxels > 0);
    const absent = meta.classes.filter((c) => c.id > 0 && !(c.voxels > 0));
    for (const c of present) {
      const li = document.createElement("li");
      li.dataset.id = c.id;
      li.dataset.name = c.name;
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = true;
      box.dataset.id = c.id;
      box.title = "show or hide " + c.name;
      box.addEventListener("change", () => setVisible(c.id, box.checked));
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = "rgb(" + c.rgb.join(",") + ")";
      const name = document.createElement("button");
      name.className = "name";
      name.textContent = c.name;
      name.title = "go to " + c.name;
      name.addEventListener("click", () => jumpTo(c.id));
      li.append(box, swatch, name);
      if (c.incomplete) li.append(Object.assign(document.createElement("span"), { className: "cut", textContent: "cut", title: "reaches the edge of the image" }));
      list.append(li);
    }
    $("class-count").textContent = present.length + " classes found" + (absent.length ? ", " + absent.length + " empty" : "");
    if (absent.length) $("empty-classes").textContent = "Empty: " + absent.map((c) => c.name).join(", ");
    $("filter").addEventListener("input", (e) => {
      const q = e.target.value.toLowerCase();
      list.querySelectorAll("li").forEach((li) => (li.hidden = !li.dataset.name.toLowerCase().includes(q)));
    });
    $("show-all").addEventListener("click", () => setAll(true));
    $("hide-all").addEventListener("click", () => setAll(false));
  }

  function fmt(v, digits) {
    if (v === null || v === undefined) return "";
    if (typeof v === "boolean") return v ? "yes" : "";
    if (typeof v === "number") return v.toLocaleString("en-US", { maximumFractionDigits: digits });
    return String(v);
  }

  function buildStatsTable() {
    const cols = meta.stats_columns; // [[key, title, decimals]]
    const rows = meta.classes.filter((c) => c.id > 0 && c.voxels > 0).map((c) => ({ c: c, s: meta.stats[c.name] || {} }));
    const table = $("stats");
    const head = table.createTHead().insertRow();
    for (const [key, title] of [["", "class"], ...cols]) {
      const th = document.createElement("th");
      th.textContent = title;
      th.dataset.key = key;
      head.append(th);
    }
    const body = table.createTBody();
    let sortKey = "", sortDir = 1;
    function render() {
      rows.sort((a, b) => {
        const x = sortKey ? a.s[sortKey] : a.c.id, y = sortKey ? b.s[sortKey] : b.c.id;
        return (x > y ? 1 : x < y ? -1 : 0) * sortDir;
      });
      body.replaceChildren();
      for (const { c, s } of rows) {
        const tr = body.insertRow();
        tr.dataset.id = c.id;
        const td = tr.insertCell();
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = "rgb(" + c.rgb.join(",") + ")";
        td.append(swatch, c.name);
        for (const [key, , digits] of cols) tr.insertCell().textContent = fmt(s[key], digits);
        tr.addEventListener("click", () => jumpTo(c.id));
      }
      head.querySelectorAll("th").forEach((th) => (th.className = th.dataset.key === sortKey ? (sortDir > 0 ? "asc" : "desc") : ""));
    }
    head.querySelectorAll("th").forEach((th) =>
      th.addEventListener("click", () => {
        sortDir = th.dataset.key === sortKey ? -sortDir : th.dataset.key ? -1 : 1;
        sortKey = th.dataset.key;
        render();
      })
    );
    render();
  }

  function buildControls() {
    const presets = $("window");
    meta.windows.forEach((w, i) => presets.add(new Option(w.name + " (" + w.min + ".." + w.max + ")", i)));
    presets.addEventListener("change", () => setWindow(meta.windows[+presets.value].min, meta.windows[+presets.value].max));
    $("opacity").addEventListener("input", (e) => TSR.nv.setOpacity(1, +e.target.value));
    document.querySelectorAll("#views button").forEach((b) =>
      b.addEventListener("click", () => {
        TSR.nv.setSliceType(+b.dataset.view);
        document.querySelectorAll("#views button").forEach((x) => x.classList.toggle("on", x === b));
      })
    );
    const full = meta.grids.full;
    if (full) {
      $("full").hidden = false;
      $("full").textContent = "full grid " + full.shape.join("×");
      $("full").addEventListener("click", () => loadFull().catch((e) => status("Full grid not shown: " + (e.message || e), true)));
    }
  }

  async function loadFull() {
    const full = meta.grids.full;
    if (!full || TSR.grid === "full" || TSR.loadingFull) return;
    TSR.loadingFull = true;
    $("full").disabled = true;
    status("loading the full grid " + full.shape.join("×") + "…");
    await loadScripts(full.scripts);
    const [image, labels] = await loadGrid(full);
    const mm = Array.from(TSR.nv.frac2mm(TSR.nv.scene.crosshairPos)).slice(0, 3);
    show(TSR.nv, image, labels, mm);
    finish();
    TSR.grid = "full";
    mark("full");
    $("full").textContent = "full grid shown";
    status("");
  }

  function softwareGPU(gl) {
    const info = gl.getExtension("WEBGL_debug_renderer_info");
    const name = info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
    return /swiftshader|llvmpipe|softpipe|software|basic render/i.test(String(name));
  }

  async function start() {
    mark("script");
    buildClassList();
    buildStatsTable();
    buildControls();
    if (!window.niivue) throw new Error("assets/niivue.umd.js did not load");
    const nv = new niivue.Niivue({
      backColor: [0, 0, 0, 1],
      isRadiologicalConvention: true,
      show3Dcrosshair: true,
      // the 3D view has its own button: ray casting on every frame is slow on software GPUs
      multiplanarShowRender: niivue.SHOW_RENDER.NEVER,
      multiplanarLayout: niivue.MULTIPLANAR_TYPE.GRID,
      isColorbar: false,
      logLevel: "warn",
    });
    TSR.nv = nv;
    await nv.attachToCanvas($("gl"));
    mark("attached");
    const [image, labels] = await loadGrid(meta.grids.preview);
    const focus = meta.classes.find((c) => c.id === meta.focus);
    nv.onLocationChange = (data) => ($("location").textContent = data.string || "");
    show(nv, image, labels, focus ? focus.inside_mm : null);
    nv.setSliceType(nv.sliceTypeMultiplanar);
    finish();
    mark("ready");
    const preview = meta.grids.preview;
    TSR.grid = preview.step > 1 ? "preview" : "full";
    TSR.readyAt = performance.now(); // ms since navigation start
    status(preview.step > 1 ? "shown: grid " + preview.shape.join("×") + " (1 in " + preview.step + " voxels per axis)" +
      (meta.grids.full ? "; the button loads the full grid" : "") : "");
    TSR.ready = true;
    document.body.dataset.ready = "1";
    if (meta.grids.full && !softwareGPU(nv.gl)) await loadFull();
  }

  TSR.setVisible = setVisible;
  TSR.jumpTo = jumpTo;
  TSR.setWindow = setWindow;
  TSR.loadFull = loadFull;
  window.addEventListener("error", (e) => { if (!TSR.ready) fail(e.message); });
  start().catch((e) => fail(e && e.message ? e.message : e));
})();
