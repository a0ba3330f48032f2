// The search page: plain DOM, no framework, no build step, no external requests.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { last: null, reranker: null };  // the last search, to re-run when a control changes

function modality() {
  return document.querySelector("input[name=modality]:checked").value;
}

function params(extra) {
  const p = new URLSearchParams({ k: $("k").value, modality: modality(), ...extra });
  const path = $("path").value.trim();
  if (path) p.set("path", path);
  return p;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function showQueryImage(src, label) {
  const box = $("query-image");
  box.replaceChildren();
  if (!src) { box.hidden = true; return; }
  const img = document.createElement("img");
  img.src = src;
  img.alt = label;
  const text = document.createElement("span");
  text.textContent = label;
  box.append(img, text);
  box.hidden = false;
}

// A result: the card (click: similar items) and, after a text search on a server with a
// fusion model, a "why?" button that shows where that model looks for each word.
function cell(hit, best, text) {
  const box = document.createElement("div");
  box.className = "cell";
  box.append(card(hit, best));
  if (text && state.reranker && hit.modality === "image") {
    const why = document.createElement("button");
    why.type = "button";
    why.className = "why";
    why.textContent = "why?";
    why.title = "Where the fusion model looks for each word";
    why.addEventListener("click", () => explain(hit, text));
    box.append(why);
  }
  return box;
}

function card(hit, best) {
  const el = document.createElement("button");
  el.type = "button";
  el.className = "card";
  el.dataset.id = hit.id;
  el.title = "Find similar items";
  const thumb = document.createElement("div");
  thumb.className = "thumb";
  if (hit.thumbnail) {
    const img = document.createElement("img");
    img.loading = "lazy";
    img.src = hit.thumbnail;
    img.alt = hit.name;
    thumb.append(img);
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  const name = document.createElement("div");
  name.className = hit.modality === "text" ? "caption" : "name";
  name.textContent = hit.name;
  const score = document.createElement("div");
  score.className = "score";
  // re-ranked hits are ordered by both models together; each shows its cosine and P(match)
  score.textContent = `score ${hit.score.toFixed(3)}` +
    (hit.match != null ? ` · P(match) ${hit.match.toFixed(3)}` : "");
  const bar = document.createElement("div");
  bar.className = "bar";
  const fill = document.createElement("span");
  fill.style.width = `${Math.max(4, Math.round(100 * Math.max(0, hit.score) / Math.max(best, 1e-6)))}%`;
  bar.append(fill);
  meta.append(name, score, bar);
  el.append(thumb, meta);
  // a caption leads to its image's neighbours; an image to its own
  const target = hit.modality === "text" ? hit.image_id : hit.id;
  if (target != null) {
    el.addEventListener("click", () => similar(target, hit.thumbnail, hit.name));
  }
  return el;
}

function render(result, search) {
  const grid = $("results");
  grid.classList.toggle("captions", result.modality === "text");
  const best = result.hits.length ? Math.max(...result.hits.map((hit) => hit.score)) : 1;
  grid.replaceChildren(...result.hits.map((hit) => cell(hit, best, search.text)));
  const found = `${result.hits.length} ${result.modality === "text" ? "captions" : "images"}`;
  setStatus(result.hits.length
    ? `${found} for ${search.label} in ${result.took_ms} ms${result.reranked ? " (re-ranked)" : ""}`
    : `Nothing found for ${search.label}.`);
}

async function run(search) {
  state.last = search;
  setStatus("Searching…");
  try {
    render(await search.fetch(), search);
  } catch (err) {
    $("results").replaceChildren();
    setStatus(err.message, true);
  }
}

function searchText(q) {
  showQueryImage(null);
  run({
    label: `“${q}”`,
    text: q,
    fetch: () => {
      const rerank = state.reranker && $("rerank").checked && modality() === "image";
      return call(`/api/search?${params(rerank ? { q, rerank: "true" } : { q })}`);
    },
  });
}

// The explanation dialog: the image under each word's attention map, as the model sees it
// (a centre square, like its preprocessing), the heat normalised per word.
const HEAT = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];  // inferno

function heatColour(v) {
  const x = Math.min(0.9999, Math.max(0, v)) * (HEAT.length - 1);
  const i = Math.floor(x);
  const f = x - i;
  return HEAT[i].map((c, j) => Math.round(c + f * (HEAT[i + 1][j] - c)));
}

function drawMap(canvas, image, map, grid) {
  const ctx = canvas.getContext("2d");
  const side = Math.min(image.naturalWidth, image.naturalHeight);
  ctx.drawImage(image, (image.naturalWidth - side) / 2, (image.naturalHeight - side) / 2, side, side,
    0, 0, canvas.width, canvas.height);
  if (!map) return;
  const heat = document.createElement("canvas");
  heat.width = heat.height = grid;
  const pixels = heat.getContext("2d").createImageData(grid, grid);
  const top = Math.max(...map, 1e-12);
  map.forEach((v, i) => {
    const [r, g, b] = heatColour(v / top);
    pixels.data.set([r, g, b, 255], 4 * i);
  });
  heat.getContext("2d").putImageData(pixels, 0, 0);
  ctx.globalAlpha = 0.6;
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(heat, 0, 0, canvas.width, canvas.height);
  ctx.globalAlpha = 1;
}

function figure(image, label, map, grid) {
  const fig = document.createElement("figure");
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 160;
  drawMap(canvas, image, map, grid);
  const caption = document.createElement("figcaption");
  caption.textContent = label;
  fig.append(canvas, caption);
  return fig;
}

async function explain(hit, text) {
  const dialog = $("explain");
  $("explain-title").textContent = `“${text}” in ${hit.name}`;
  $("explain-maps").replaceChildren();
  $("explain-status").textContent = "Reading the image…";
  $("explain-status").classList.remove("error");
  if (!dialog.open) dialog.showModal();
  try {
    const [found, image] = await Promise.all([
      call(`/api/items/${hit.id}/explain?${new URLSearchParams({ text })}`),
      new Promise((resolve, reject) => {
        const img = new Image();
        img.onload = () => resolve(img);
        img.onerror = () => reject(new Error("the image did not load"));
        img.src = hit.thumbnail;
      }),
    ]);
    $("explain-maps").replaceChildren(figure(image, "image"),
      ...found.words.map((word, i) => figure(image, word, found.maps[i], found.grid)));
    $("explain-status").textContent = `P(match) ${found.match.toFixed(3)} · attention of each word over the ` +
      `image · ${found.took_ms} ms`;
  } catch (err) {
    $("explain-status").textContent = err.message;
    $("explain-status").classList.add("error");
  }
}

function similar(id, thumbnail, name) {
  showQueryImage(thumbnail, `Items like ${name}`);
  run({ label: `items like ${name}`, fetch: () => call(`/api/items/${id}/similar?${params({})}`) });
}

function searchImage(file) {
  if (!file || !file.type.startsWith("image/")) { setStatus("That is not an image file.", true); return; }
  showQueryImage(URL.createObjectURL(file), file.name || "pasted image");
  run({
    label: file.name || "the pasted image",
    fetch: () => {
      const form = new FormData();
      form.append("file", file);
      form.append("k", $("k").value);
      form.append("modality", modality());
      return call("/api/search/image", { method: "POST", body: form });
    },
  });
}

function showStore() {
  call("/api/health").then((h) => {
    state.reranker = h.reranker;
    $("rerank-box").hidden = !h.reranker;
    $("store").textContent = `${h.store} · ${h.images.toLocaleString()} images · ` +
      `${h.texts.toLocaleString()} captions · ${h.index} index`;
  }).catch(() => { $("store").textContent = "store unavailable"; });
}

// Index jobs (started here, by `polymodal index` in a terminal, or over the API): a banner
// drawn from the same progress events as the command-line progress bar.
const JOB_POLL_MS = 2000;
const ENDED = ["done", "failed", "interrupted"];
let watchedJob = null;

function drawJob(event) {
  const banner = $("job");
  banner.hidden = false;
  banner.className = `job ${event.state}`;
  const progress = $("job-progress");
  if (ENDED.includes(event.state)) {
    $("job-text").textContent = event.state === "done" ? `Index updated: ${event.message}`
      : `Index job ${event.state}: ${event.message}`;
    progress.hidden = true;
    return;
  }
  const stage = event.stage === "start" ? "starting" : event.stage;
  $("job-text").textContent = event.total ? `Indexing · ${stage} ${event.done.toLocaleString()} / ` +
    `${event.total.toLocaleString()}` : `Indexing · ${stage}`;
  progress.hidden = false;
  progress.value = event.total ? event.done / event.total : 0;
}

function followJob(id) {
  watchedJob = id;
  const source = new EventSource(`/api/jobs/${encodeURIComponent(id)}/events`);
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    drawJob(event);
    if (ENDED.includes(event.state)) {
      source.close();
      showStore();
      if (state.last && event.state === "done") run(state.last);
      setTimeout(() => { if (watchedJob === id) $("job").hidden = true; }, 8000);
    }
  };
  source.onerror = () => { source.close(); watchedJob = null; };  // the next poll picks it up again
}

function pollJobs() {
  if (document.visibilityState === "visible") {
    call("/api/jobs?limit=1").then(([job]) => {
      if (job && job.state === "running" && job.id !== watchedJob) followJob(job.id);
    }).catch(() => {});
  }
  setTimeout(pollJobs, JOB_POLL_MS);
}

function init() {
  showStore();
  pollJobs();

  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = $("query").value.trim();
    if (q) searchText(q);
  });
  $("file").addEventListener("change", () => searchImage($("file").files[0]));
  $("explain-close").addEventListener("click", () => $("explain").close());
  for (const el of [$("k"), $("path"), $("rerank"), ...document.querySelectorAll("input[name=modality]")]) {
    el.addEventListener("change", () => { if (state.last) run(state.last); });
  }
  // keyboard: "/" focuses the search box, Escape clears it
  document.addEventListener("keydown", (event) => {
    if (event.key === "/" && document.activeElement !== $("query")) { event.preventDefault(); $("query").focus(); }
    if (event.key === "Escape" && document.activeElement === $("query")) { $("query").value = ""; }
  });
  // drag and drop or paste an image anywhere
  let depth = 0;
  document.addEventListener("dragenter", (event) => { event.preventDefault(); depth += 1; $("drop").hidden = false; });
  document.addEventListener("dragleave", () => { depth -= 1; if (depth <= 0) { depth = 0; $("drop").hidden = true; } });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    $("drop").hidden = true;
    searchImage(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) searchImage(item.getAsFile());
  });
}

init();
