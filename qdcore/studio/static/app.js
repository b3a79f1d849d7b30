// qd studio: the page. Plain JavaScript, no build step, nothing fetched from the internet.
// Every form is generated from /api/schema (the recipe's JSON Schema, made from the plugins'
// signatures); every check is the server's recipe validation; the page never names a file.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
  return e;
};

const S = {
  schema: null, options: {}, recipe: null, source: "draw",
  sourceParams: { "file-image": {}, "training-batch": {} },
  perturbations: [], filters: [], uploadRef: null, recipeImage: null,
  strokes: [], padRef: null, padDirty: true,
  gen: null, genRecipe: null, timer: null, step: 0, playing: true, polling: null, wasRunning: false,
};

// ---- talking to the server ------------------------------------------------------------------
async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({ error: `Error: ${res.status} ${res.statusText}` }));
  if (!res.ok) throw Object.assign(new Error(data.error || `Error: HTTP ${res.status}`), { status: res.status });
  return data;
}
// Who showed the error on screen: a passing recipe check clears only its own kind, never the
// failure of something the person pressed (a check answering after, or sent after, a failed
// Generate used to hide that failure).
function showError(message, from = "action") {
  S.errorFrom = message ? from : null;
  const box = $("#error");
  document.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
  if (!message) { box.hidden = true; box.textContent = ""; return; }
  box.hidden = false; box.textContent = message;
  // "Error: studio: filters[0].passes: ..." -> mark that field
  const m = /studio: ([^ :]+):/.exec(message);
  if (m) document.querySelectorAll(`[data-where="${CSS.escape(m[1])}"]`).forEach((e) => e.classList.add("invalid"));
}
const status = (text) => { $("#status").textContent = text; };

// ---- schema -> forms ------------------------------------------------------------------------
function optionsOf(def) { return (S.schema.$defs[def].anyOf || []).filter((o) => o.title); }
function optionFor(def, name) { return S.options[def][name]; }
function isPath(p) { return p.format === "path" || (p.anyOf || []).some((a) => a.format === "path"); }
function kindOf(p) {
  if (p.enum) return "enum";
  const types = p.type ? [p.type] : (p.anyOf || []).map((a) => a.type);
  if (types.includes("boolean") && types.length === 1) return "boolean";
  if (types.length === 1 && (types[0] === "integer" || types[0] === "number")) return types[0];
  return "text";
}
function parseText(p, text) {
  const t = text.trim();
  if (t === "") return undefined; // back to the default
  const types = p.type ? [p.type] : (p.anyOf || []).map((a) => a.type);
  if (t === "null" && types.includes("null")) return null;
  if ((types.includes("integer") || types.includes("number")) && t !== "" && !isNaN(Number(t))) return Number(t);
  if (types.includes("array")) {
    if (t.startsWith("[")) { try { return JSON.parse(t); } catch (e) { return t; } }
    if (!types.includes("string") || t.includes(",")) return t.split(",").map((s) => s.trim()).filter(Boolean);
  }
  return t;
}
const show = (v) => (v === undefined || v === null ? "" : Array.isArray(v) ? v.join(", ") : String(v));

// A form for an object schema; `values` is edited in place; `where` prefixes data-where.
function form(container, objSchema, values, where, { skip = ["use"] } = {}) {
  container.replaceChildren();
  for (const [name, p] of Object.entries(objSchema.properties || {})) {
    if (skip.includes(name)) continue;
    const id = `f-${where}-${name}`.replace(/[^A-Za-z0-9_-]/g, "_");
    const w = where ? `${where}.${name}` : name;
    const has = Object.prototype.hasOwnProperty.call(values, name);
    const cur = has ? values[name] : p.default;
    let input;
    const k = kindOf(p);
    if (isPath(p)) {
      input = el("input", { id, type: "text", value: show(cur), disabled: true, title: "files are named in a recipe file, or uploaded" });
    } else if (k === "enum") {
      input = el("select", { id });
      p.enum.forEach((v, i) => input.append(el("option", { value: i, text: String(v), selected: v === cur })));
      input.addEventListener("change", () => { values[name] = p.enum[Number(input.value)]; changed(); });
    } else if (k === "boolean") {
      input = el("input", { id, type: "checkbox", checked: !!cur });
      input.addEventListener("change", () => { values[name] = input.checked; changed(); });
    } else {
      const numeric = k === "integer" || k === "number";
      input = el("input", { id, type: numeric ? "number" : "text", value: show(cur), placeholder: p.default === undefined ? "(required)" : p.default === null ? "none" : show(p.default),
        min: p.minimum, max: p.maximum, step: k === "integer" ? 1 : numeric ? "any" : undefined });
      input.addEventListener("change", () => {
        const v = numeric ? (input.value.trim() === "" ? undefined : Number(input.value)) : parseText(p, input.value);
        if (v === undefined) delete values[name]; else values[name] = v;
        changed();
      });
    }
    input.dataset.where = w;
    input.setAttribute("name", name);
    const row = el("div", { class: "field" }, el("label", { for: id, class: "name", text: name, title: p["x-type"] || "" }), input);
    if (p["x-type"] && (p.minimum !== undefined || p.maximum !== undefined || (k === "text" && !isPath(p))))
      row.append(el("div", { class: "range", text: p["x-type"] }));
    container.append(row);
  }
}

function stepCard(def, step, where, onRemove, onMove) {
  const o = optionFor(def, step.use);
  const body = el("div");
  const card = el("div", { class: "step", "data-use": step.use },
    el("header", {}, el("b", { text: step.use }), o ? el("small", { class: "muted", text: o["x-plugin"] }) : null,
      onMove ? el("button", { type: "button", title: "move up", onclick: onMove, text: "↑" }) : null,
      el("button", { type: "button", class: "x", title: "remove", onclick: onRemove, text: "×" })),
    el("div", { class: "desc", text: o ? o.description : "not installed" }), body);
  if (o) form(body, o, step, where);
  return card;
}

function fillAdder(select, def, label, filter = () => true) {
  select.replaceChildren(el("option", { value: "", text: label }));
  for (const o of optionsOf(def).filter(filter)) select.append(el("option", { value: o.title, text: `${o.title} — ${o.description}` }));
}

// ---- rendering the recipe -------------------------------------------------------------------
function renderSteps() {
  const pert = $("#perturbations"); pert.replaceChildren();
  S.perturbations.forEach((s, i) => pert.append(stepCard("seed_strategy", s, `seeds[${i + 1}]`,
    () => { S.perturbations.splice(i, 1); renderSteps(); changed(); })));
  const fil = $("#filters"); fil.replaceChildren();
  S.filters.forEach((s, i) => fil.append(stepCard("filter", s, `filters[${i}]`,
    () => { S.filters.splice(i, 1); renderSteps(); changed(); },
    i > 0 ? () => { [S.filters[i - 1], S.filters[i]] = [S.filters[i], S.filters[i - 1]]; renderSteps(); changed(); } : null)));
  renderSource();
}

function renderSource() {
  document.querySelectorAll("#source-tabs button").forEach((b) => b.classList.toggle("on", b.dataset.source === S.source));
  document.querySelectorAll("[data-pane]").forEach((p) => { p.hidden = p.dataset.pane !== S.source; });
  const box = $("#source-form"); box.replaceChildren();
  const use = { draw: "file-image", upload: "file-image", dataset: "training-batch" }[S.source];
  if (!use || !optionFor("seed_strategy", use)) return;
  const target = S.source === "dataset" ? $("#dataset-form") : box;
  if (S.source === "dataset") box.replaceChildren();
  form(target, optionFor("seed_strategy", use), S.sourceParams[use], "seeds[0]", { skip: ["use", "path"] });
}

function renderRecipeForms() {
  const r = S.recipe;
  $("#name").value = r.name || "";
  // dataset: a chooser plus its form
  const ds = $("#dataset"); ds.replaceChildren();
  const choose = el("select", { "aria-label": "dataset" });
  optionsOf("dataset").forEach((o) => choose.append(el("option", { value: o.title, text: o.title, selected: o.title === r.dataset.use })));
  choose.addEventListener("change", () => { r.dataset = { use: choose.value }; renderRecipeForms(); changed(); });
  const dsBody = el("div");
  ds.append(choose, el("div", { class: "desc muted", text: (optionFor("dataset", r.dataset.use) || {}).description || "" }), dsBody);
  if (optionFor("dataset", r.dataset.use)) form(dsBody, optionFor("dataset", r.dataset.use), r.dataset, "dataset");
  form($("#model"), S.schema.properties.model, r.model, "model");
  form($("#train-form"), S.schema.properties.train, r.train, "train");
  // output writer
  const out = $("#output"); out.replaceChildren();
  const wsel = el("select", { "aria-label": "writer" });
  optionsOf("writer").forEach((o) => wsel.append(el("option", { value: o.title, text: `${o.title} — ${o.description}`, selected: o.title === r.output.use })));
  wsel.addEventListener("change", () => { r.output = { use: wsel.value }; renderRecipeForms(); changed(); });
  const wbody = el("div");
  out.append(wsel, wbody);
  if (optionFor("writer", r.output.use)) form(wbody, optionFor("writer", r.output.use), r.output, "output", { skip: ["use", "path"] });
}

function renderPlugins(data) {
  const box = $("#plugins"); box.replaceChildren();
  const titles = { datasets: "Datasets", seed_strategies: "Seed strategies", filters: "Filters", writers: "Writers", models: "Model packs" };
  for (const [kind, rows] of Object.entries(data.kinds)) {
    const ul = el("ul");
    rows.forEach((r) => ul.append(el("li", { "data-name": r.name }, el("code", { text: r.name }), ` from ${r.plugin}`, el("small", { text: r.description }))));
    box.append(el("div", { class: "plugin-kind", "data-kind": kind }, el("h3", { text: `${titles[kind] || kind} · qd_register_${kind}` }), ul));
  }
  data.plugins.filter((p) => p.error).forEach((p) => box.append(el("div", { class: "broken", text: `plugin ${p.name} failed to load: ${p.error}` })));
}

async function renderModels() {
  const { models, packs = [] } = await api("/api/models");
  const ul = $("#models"); ul.replaceChildren();
  if (!models.length && !packs.length) ul.append(el("li", { class: "muted", text: "No models yet: press Train." }));
  // Model packs (imported into the cache, or installed by a plugin): trained elsewhere, ready
  // to draw. "Use" draws the recipe's category from the pack (`model.from`), or the pack's first.
  const imported = new Set(packs.filter((m) => m.source !== "plugin").map((m) => m.name));
  for (const m of packs) {
    const cats = m.categories || [];
    const where = m.source === "plugin" ? `pack from plugin ${m.plugin}` : "pack imported into the cache";
    const shadowed = m.source === "plugin" && imported.has(m.name);  // `from:` finds the imported one first
    const label = m.status !== "finished" ? `${m.name} · ${where} · damaged: ${m.error}`
      : `${m.name} · ${where} · step ${m.steps} · ${cats.length} ${cats.length === 1 ? "category" : "categories"}: ${cats.slice(0, 4).join(", ")}${cats.length > 4 ? ", ..." : ""}`
        + (shadowed ? " · not used: the imported pack of this name comes first" : "");
    const use = m.status === "finished" && !shadowed ? el("button", { type: "button", text: "Use", onclick: () => {
      const d = S.recipe.dataset || {};
      if (!(typeof d.category === "string" && cats.includes(d.category))) S.recipe.dataset = { use: "quickdraw", category: cats[0] };
      S.recipe.model = { from: m.name, if_missing: "train" };
      renderRecipeForms(); changed();
    } }) : null;
    ul.append(el("li", { "data-pack": m.name }, el("span", { text: label }), use));
  }
  for (const m of models) {
    const r = m.recipe;
    const cats = r && r.dataset && Array.isArray(r.dataset.category) ? ` · categories: ${r.dataset.category.join(", ")}` : "";
    const label = `${m.folder} · ${m.finished ? `step ${m.step}` : "unfinished"}${cats}`;
    const use = r ? el("button", { type: "button", text: "Use", onclick: () => {
      if (r.dataset) S.recipe.dataset = r.dataset;
      S.recipe.model = { ...r.model }; S.recipe.train = { ...r.train };
      if (r.name) S.recipe.name = r.name;
      renderRecipeForms(); changed();
    } }) : null;
    ul.append(el("li", {}, el("span", { text: label }), use));
  }
}

// ---- the recipe the page sends --------------------------------------------------------------
function recipeWith(seedRef) {
  const r = S.recipe;
  let source;
  if (S.source === "prior") source = { use: "prior" };
  else if (S.source === "dataset") source = { use: "training-batch", ...S.sourceParams["training-batch"] };
  else source = { use: "file-image", ...S.sourceParams["file-image"], path: seedRef };
  const n = Number($("#n").value) || undefined;
  return {
    name: $("#name").value || r.name, seed: r.seed ?? 0, dataset: r.dataset, model: r.model, train: r.train,
    generate: { ...r.generate, ...(n ? { n } : {}) },
    seeds: [source, ...S.perturbations], filters: S.filters, output: r.output,
  };
}

async function seedRef() {
  if (S.source === "upload") {
    if (!S.uploadRef) throw new Error("Error: choose an image file to upload first");
    return S.uploadRef;
  }
  if (S.source !== "draw") return null;
  if (S.padDirty || !S.padRef) {
    const res = await api("/api/upload", { image: padDataURL(), recipe: { dataset: S.recipe.dataset, model: S.recipe.model } });
    S.padRef = res.ref; S.padDirty = false;
  }
  return S.padRef;
}

let validateTimer = null;
function changed() {
  clearTimeout(validateTimer);
  validateTimer = setTimeout(validate, 250);
}
async function validate() {
  try {
    const r = recipeWith(S.source === "draw" || S.source === "upload" ? (S.source === "upload" ? S.uploadRef || S.recipeImage : null) : null);
    if (r.seeds[0].use === "file-image" && !r.seeds[0].path) r.seeds[0] = { use: "prior" }; // nothing uploaded yet: check the rest
    const res = await api("/api/validate", { recipe: r });
    if (S.errorFrom === "check") showError(null);
    $("#model-state").textContent = res.training ? `The model for "${res.name}" is training now (cache key ${res.model_key}).`
      : res.draws_from ? `"${res.name}" draws from ${res.draws_from}: nothing to train.`
      : res.trained ? `The model for "${res.name}" is trained (cache key ${res.model_key}).`
      : `The model for "${res.name}" is not trained yet (cache key ${res.model_key}): press Train`
        + (res.starts_from ? ` (it starts from ${res.starts_from} and fine-tunes it).` : ".");
    S.trained = res.trained;
    return true;
  } catch (e) { showError(e.message, "check"); return false; }
}

// ---- drawing pad (pointer events: mouse, pen and touch alike) -------------------------------
function setupPad() {
  const pad = $("#pad"), ctx = pad.getContext("2d");
  let current = null;
  const at = (ev) => { const b = pad.getBoundingClientRect(); return [(ev.clientX - b.left) * pad.width / b.width, (ev.clientY - b.top) * pad.height / b.height]; };
  pad.addEventListener("pointerdown", (ev) => {
    ev.preventDefault(); pad.setPointerCapture(ev.pointerId);
    current = { width: Number($("#pen").value), points: [at(ev)] }; S.strokes.push(current); redraw();
  });
  pad.addEventListener("pointermove", (ev) => {
    if (!current) return;
    const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
    for (const e of events) current.points.push(at(e));
    redraw();
  });
  const end = () => { if (current) { current = null; S.padDirty = true; changed(); } };
  pad.addEventListener("pointerup", end); pad.addEventListener("pointercancel", end);
  $("#undo").addEventListener("click", () => { S.strokes.pop(); S.padDirty = true; redraw(); });
  $("#clear").addEventListener("click", () => { S.strokes = []; S.padDirty = true; redraw(); });
  function redraw() {
    ctx.fillStyle = "white"; ctx.fillRect(0, 0, pad.width, pad.height);
    ctx.strokeStyle = "black"; ctx.lineCap = "round"; ctx.lineJoin = "round";
    for (const s of S.strokes) {
      ctx.lineWidth = s.width; ctx.beginPath();
      s.points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      if (s.points.length === 1) ctx.lineTo(s.points[0][0] + 0.1, s.points[0][1]);
      ctx.stroke();
    }
    pad.dataset.strokes = S.strokes.length;
  }
  redraw();
}
const padDataURL = () => $("#pad").toDataURL("image/png");

// ---- generate and play ----------------------------------------------------------------------
// The generation modes the plugins registered (docs/generation.md), as the two buttons ask.
function modeRecipe(recipe, which) {
  const tries = Number($("#n").value) || 4;
  if (which === "complete") return { ...recipe, generate: { ...recipe.generate, n: 1 }, mode: { use: "complete", tries } };
  const morph = { use: "morph" };
  for (const [key, id] of [["start", "#morph-start"], ["end", "#morph-end"]]) if ($(id).value.trim()) morph[key] = $(id).value.trim();
  // A morph's frames are decoded drawings, not steps: no write window to box.
  const output = "attention" in recipe.output ? { ...recipe.output, attention: false } : recipe.output;
  return { ...recipe, output, mode: morph };
}

const SOURCES = { prior: "prior samples", reconstruction: "reconstructions of the seed",
  completion: "completions of the seed (its ink grey, the model's blue)", morph: "morphs" };

async function generate(which) {
  const button = $("#generate");
  button.disabled = true; status("generating…");
  const t0 = performance.now();
  try {
    const ref = await seedRef();
    const recipe = which ? modeRecipe(recipeWith(ref), which) : recipeWith(ref);
    const res = await api("/api/generate", { recipe, n: recipe.generate.n });
    S.genRecipe = recipe;
    await play(res);
    const ms = performance.now() - t0;
    $("#gen-time").textContent = `${res.n} samples × ${res.steps} steps · server ${(res.seconds * 1000).toFixed(0)} ms · page ${ms.toFixed(0)} ms · model step ${res.model_step}`;
    $("#player").dataset.ms = ms.toFixed(0);
    $("#player").dataset.serverMs = (res.seconds * 1000).toFixed(0);
    for (const [id, kind] of [["#dl-gif", "gif"], ["#dl-png", "png"]]) {
      const a = $(id); a.href = `/api/generations/${res.id}.${kind}`; a.setAttribute("aria-disabled", "false");
      a.setAttribute("download", `${recipe.name}.${kind}`);
    }
    $("#copy-yaml").disabled = false;
    showError(null); status(`drew ${res.n} ${SOURCES[res.source] || res.source}`);
  } catch (e) { showError(e.message); status(""); } finally { button.disabled = false; }
}

function loadImage(src) { return new Promise((ok, bad) => { const i = new Image(); i.onload = () => ok(i); i.onerror = bad; i.src = src; }); }

async function play(res) {
  clearInterval(S.timer);
  const strips = await Promise.all(res.frames.map(loadImage));
  S.gen = { ...res, strips };
  const player = $("#player"); player.replaceChildren();
  const size = Math.max(112, res.width);
  for (let i = 0; i < res.n; i++) player.append(el("canvas", { width: size, height: Math.round(size * res.height / res.width), "data-sample": i }));
  const scrub = $("#scrub"); scrub.max = res.steps - 1; scrub.disabled = false;
  $("#play").disabled = false; S.playing = true; $("#play").textContent = "Pause";
  S.step = 0; drawStep(0);
  const hold = 6; let tick = 0;
  S.timer = setInterval(() => {
    if (!S.playing) return;
    tick = (tick + 1) % (res.steps + hold);
    drawStep(Math.min(tick, res.steps - 1));
  }, 160);
}

function drawStep(t) {
  const g = S.gen; if (!g) return;
  S.step = t;
  const player = $("#player"); player.dataset.step = t;
  $("#scrub").value = t; $("#step-label").textContent = `step ${t + 1} / ${g.steps}`;
  player.querySelectorAll("canvas").forEach((c, i) => {
    const ctx = c.getContext("2d"); ctx.imageSmoothingEnabled = false;
    ctx.drawImage(g.strips[t], i * g.width, 0, g.width, g.height, 0, 0, c.width, c.height);
    if (!g.windows || !g.windows[t]) return; // a completion's first frame is the person's drawing
    // The write window, as plugins/writers.py's attention_box computes it.
    const [gx, gy, delta] = g.windows[t][i], half = delta * g.write_n / 2;
    const sx = c.width / g.model_shape[1], sy = c.height / g.model_shape[0];
    // Clipped to the cell like the writers do, so a window reaching past the edge still shows.
    const clip = (v, hi) => Math.min(Math.max(v, 0), hi - 1);
    const x0 = clip((gx - half + 0.5) * sx - 0.5, c.width), x1 = clip((gx + half + 0.5) * sx - 0.5, c.width);
    const y0 = clip((gy - half + 0.5) * sy - 0.5, c.height), y1 = clip((gy + half + 0.5) * sy - 0.5, c.height);
    ctx.strokeStyle = "#ff3b30"; ctx.lineWidth = Math.max(1, c.width / 64);
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  });
}

async function copyYaml() {
  try {
    const res = await api("/api/recipe.yaml", { recipe: S.genRecipe });
    const box = $("#yaml"); box.hidden = false; box.value = res.yaml;
    try { await navigator.clipboard.writeText(res.yaml); status("recipe copied to the clipboard"); } catch (e) { status("recipe below: select and copy it"); }
  } catch (e) { showError(e.message); }
}

// ---- training ------------------------------------------------------------------------------
async function train() {
  try {
    const recipe = recipeWith(await seedRef());
    await api("/api/train", { recipe });
    showError(null); pollJobs();
  } catch (e) { showError(e.message); }
}
const fmt = (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
function eta(s) { if (s === null || s === undefined) return "–"; s = Math.round(s); return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`; }
async function pollJobs() {
  clearTimeout(S.polling);
  let running = false;
  try {
    const { jobs } = await api("/api/jobs");
    const box = $("#jobs"); box.replaceChildren();
    for (const j of jobs) {
      const live = j.state === "running" || j.state === "starting";
      running = running || live;
      const pct = j.total ? (100 * j.step / j.total) : 100;
      const bar = el("div", { class: "bar" }, el("div", { style: `width:${pct.toFixed(1)}%` }));
      const cancel = live ? el("button", { type: "button", class: "cancel", text: "Cancel (keeps the last checkpoint)", onclick: async () => {
        try { await api("/api/jobs/cancel", { key: j.key }); } catch (e) { showError(e.message); }
      } }) : null;
      box.append(el("div", { class: "job", "data-state": j.state, "data-step": j.step },
        el("b", { text: `${j.name}: ${j.state}` }), ` · step ${j.step} / ${j.total}`, bar,
        el("div", { class: "figures", text: `L^x ${fmt(j.lx)}  L^z ${fmt(j.lz)}  ·  ${fmt(j.steps_per_s, 1)} steps/s  ·  ETA ${eta(j.eta_s)}` }),
        j.error ? el("div", { class: j.state === "failed" ? "broken" : "muted", text: j.error }) : null, cancel));
    }
    $("#train").disabled = running;
    if (running !== S.wasRunning) { renderModels(); validate(); }
    S.wasRunning = running;
  } catch (e) { showError(e.message); }
  if (running) S.polling = setTimeout(pollJobs, 700);
}

// ---- start ---------------------------------------------------------------------------------
async function start() {
  const t0 = performance.now();
  const [schema, base, plugins] = await Promise.all([api("/api/schema"), api("/api/recipe"), api("/api/plugins")]);
  S.schema = schema;
  for (const def of Object.keys(schema.$defs)) S.options[def] = Object.fromEntries(optionsOf(def).map((o) => [o.title, o]));
  const raw = JSON.parse(JSON.stringify(base.recipe));
  const step = (v) => (typeof v === "string" ? { use: v } : { ...(v || {}) });
  const seeds = (raw.seeds || [{ use: "prior" }]).map(step);
  S.recipe = { name: raw.name || "studio", seed: raw.seed ?? 0, dataset: step(raw.dataset), model: raw.model || {}, train: raw.train || {},
    generate: raw.generate || {}, output: raw.output ? step(raw.output) : { use: "gif", frames: "steps", attention: true } };
  delete S.recipe.output.path;
  const first = seeds[0];
  if (first.use === "prior") S.source = "prior";
  else if (first.use === "training-batch") { S.source = "dataset"; S.sourceParams["training-batch"] = { ...first }; delete S.sourceParams["training-batch"].use; }
  else if (first.use === "file-image") {
    S.source = "upload"; S.uploadRef = S.recipeImage = first.path;
    S.sourceParams["file-image"] = { ...first }; delete S.sourceParams["file-image"].use; delete S.sourceParams["file-image"].path;
  }
  S.perturbations = seeds.slice(1);
  S.filters = (raw.filters || []).map(step);
  if (S.recipe.generate.n) $("#n").value = S.recipe.generate.n;

  fillAdder($("#add-perturbation"), "seed_strategy", "+ add a perturbation…", (o) => !o["x-source"]);
  fillAdder($("#add-filter"), "filter", "+ add a filter…");
  $("#add-perturbation").addEventListener("change", (ev) => { if (ev.target.value) { S.perturbations.push({ use: ev.target.value }); ev.target.value = ""; renderSteps(); changed(); } });
  $("#add-filter").addEventListener("change", (ev) => { if (ev.target.value) { S.filters.push({ use: ev.target.value }); ev.target.value = ""; renderSteps(); changed(); } });
  document.querySelectorAll("#source-tabs button").forEach((b) => b.addEventListener("click", () => { S.source = b.dataset.source; renderSource(); changed(); }));
  $("#file").addEventListener("change", async (ev) => {
    const f = ev.target.files[0]; if (!f) return;
    const url = await new Promise((ok) => { const r = new FileReader(); r.onload = () => ok(r.result); r.readAsDataURL(f); });
    try {
      const res = await api("/api/upload", { image: url, recipe: { dataset: S.recipe.dataset, model: S.recipe.model } });
      S.uploadRef = res.ref; const img = $("#upload-preview"); img.src = res.preview; img.hidden = false; showError(null); changed();
    } catch (e) { showError(e.message); }
  });
  $("#name").addEventListener("change", changed);
  $("#n").addEventListener("change", changed);
  $("#generate").addEventListener("click", () => generate());
  $("#finish").addEventListener("click", () => generate("complete"));
  $("#morph").addEventListener("click", () => generate("morph"));
  $("#play").addEventListener("click", () => { S.playing = !S.playing; $("#play").textContent = S.playing ? "Pause" : "Play"; });
  $("#scrub").addEventListener("input", (ev) => { S.playing = false; $("#play").textContent = "Play"; drawStep(Number(ev.target.value)); });
  $("#copy-yaml").addEventListener("click", copyYaml);
  $("#train").addEventListener("click", train);

  setupPad();
  renderPlugins(plugins);
  renderRecipeForms();
  renderSteps();
  await Promise.all([renderModels(), validate(), pollJobs()]);
  document.body.dataset.ready = "1";
  document.body.dataset.readyMs = (performance.now() - t0).toFixed(0);
  status(base.file ? `recipe: ${base.file}` : "ready");
}

start().catch((e) => showError(e.message || String(e)));
