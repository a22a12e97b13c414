// bonexr web page: the same /upload, /predict, /predict/study and /heatmap any client uses.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "bonexr-api-key"; // sessionStorage: gone when the tab closes

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("X-API-Key", key);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch {
    throw new ApiError("The server could not be reached (network error). Check the connection and try again.");
  }
  if (response.status === 401) {
    $("key-section").hidden = false;
    throw new ApiError("This server needs an API key: enter it above.");
  }
  if (!response.ok) {
    let detail = `The server answered ${response.status}.`;
    try {
      const body = await response.json();
      if (body && typeof body.detail === "string") detail = body.detail;
    } catch { /* not JSON: keep the status sentence */ }
    const error = new ApiError(sentence(detail));
    error.status = response.status;
    throw error;
  }
  return response;
}

function sentence(text) {
  const t = String(text).trim();
  return t.charAt(0).toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".");
}

function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

function percent(p) { return `${(100 * p).toFixed(1)}%`; }

// ------------------------------------------------------------------ model and rules

async function loadModel() {
  try {
    const rules = await (await api("/rules", { headers: { Accept: "application/json" } })).json();
    showRules(rules);
    if (rules.synthetic) $("demo-banner").hidden = false;
    if (rules.model) {
      $("model").textContent = `Model ${rules.model.name}, version ${rules.model.version}`;
    } else {
      $("model").textContent = `No model loaded (${rules.model_status}).`;
    }
  } catch (error) {
    $("model").textContent = error instanceof ApiError ? error.message : "The server could not be reached.";
  }
}

function showRules(rules) {
  const list = $("rules");
  list.replaceChildren();
  const items = [
    `Formats: ${rules.accepted_formats.join(", ")} (checked by content).`,
    `At most ${(rules.max_upload_bytes / 1048576).toFixed(1)} MiB and ${rules.max_pixels.toLocaleString()} pixels per image; at least ${rules.min_side_pixels} pixels a side.`,
    `Body parts: ${rules.body_parts.join(", ") || "none loaded"}.`,
    `"abnormal" means: ${rules.abnormal_means}`,
    rules.not_a_medical_device,
    rules.intended_use,
  ];
  if (rules.retention_hours) items.push(`Uploads are deleted after ${rules.retention_hours} hours.`);
  for (const text of items) list.append(element("li", { textContent: text }));
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value);
  $("api-key").value = "";
  $("key-section").hidden = true;
  $("key-error").textContent = "";
  $("change-key").hidden = false;
  loadModel();
  keyChanged();
});

$("change-key").hidden = !sessionStorage.getItem(KEY);
$("change-key").addEventListener("click", () => {
  $("key-section").hidden = false;
  $("api-key").focus();
});

// ---------------------------------------------------------------------------- views

function viewCard(file) {
  const card = element("li", { className: "view" });
  card.append(
    element("h3", { textContent: file.name }),
    element("p", { className: "status", textContent: "Uploading…", role: "status" }),
  );
  $("views").append(card);
  $("views-section").hidden = false;
  return card;
}

function setStatus(card, text, isError = false) {
  const status = card.querySelector(".status, .error");
  status.className = isError ? "error" : "status";
  status.setAttribute("role", isError ? "alert" : "status");
  status.textContent = text;
}

async function imageUrl(path) {
  return URL.createObjectURL(await (await api(path)).blob());
}

async function showView(card, file, stored, answer) {
  const base = element("img", { alt: `${file.name}: the radiograph as stored`, src: await imageUrl(`/heatmap/${stored.filename}?opacity=0`) });
  const heat = element("img", { className: "heat", alt: `${file.name}: heat map of the ${answer.body_part} model` });
  if (answer.heatmap_url) {
    heat.src = await imageUrl(`${answer.heatmap_url}?opacity=1`);
  } else {
    heat.hidden = true;
  }
  const frame = element("div", { className: "frame" }, base, heat);
  const verdict = element("p", {
    className: `verdict ${answer.result}`,
    textContent: answer.result === "abnormal" ? "Abnormal" : "Normal",
  });
  verdict.dataset.result = answer.result;
  const details = element("dl");
  const rows = [
    ["Body part", `${answer.body_part} (${percent(answer.body_part_probabilities[answer.body_part])})`],
    ["P(abnormal)", `${percent(answer.abnormality_probability)} (threshold ${percent(answer.threshold)})`],
    ["Router", Object.entries(answer.body_part_probabilities).map(([p, v]) => `${p} ${percent(v)}`).join(", ")],
    ["Operating point", pointSummary(answer.operating_point)],
  ];
  for (const [term, value] of rows) details.append(element("dt", { textContent: term }), element("dd", { textContent: value }));
  card.dataset.filename = stored.filename;
  card.dataset.bodyPart = answer.body_part;
  card.dataset.probability = String(answer.abnormality_probability);
  const status = card.querySelector(".status, .error");
  status.replaceWith(frame, verdict, details);
  for (const text of [...stored.warnings, ...answer.warnings]) card.append(element("p", { className: "warn", textContent: text }));
  applyHeatControls();
}

// What an operating point promises: its held-out test figures, never the in-sample ones.
function pointSummary(point) {
  if (!point) return "–";
  const interval = (ci) => (ci ? ` [${percent(ci[0])}, ${percent(ci[1])}]` : "");
  const parts = [point.name];
  if (point.test_sensitivity != null) parts.push(`test sensitivity ${percent(point.test_sensitivity)}${interval(point.test_sensitivity_ci)}`);
  if (point.test_specificity != null) parts.push(`specificity ${percent(point.test_specificity)}${interval(point.test_specificity_ci)}`);
  if (point.insufficient_data) parts.push("insufficient data for its target (see the warning)");
  return parts.join(", ");
}

function applyHeatControls() {
  const show = $("show-heat").checked;
  const opacity = $("opacity").value;
  for (const img of document.querySelectorAll(".frame img.heat")) {
    img.style.opacity = show ? opacity : "0";
  }
}
$("show-heat").addEventListener("change", applyHeatControls);
$("opacity").addEventListener("input", applyHeatControls);

function showStudy(study, refusedViews = []) {
  const body = $("study-body");
  body.replaceChildren();
  const verdict = element("p", {
    className: `verdict ${study.result}`,
    textContent: study.result === "abnormal" ? "Study abnormal" : "Study normal",
  });
  verdict.dataset.result = study.result;
  const details = element("dl");
  const rows = [
    ["Body part", `${study.body_part} (${study.body_part_source === "client" ? "chosen" : "from the router, all views"})`],
    ["P(abnormal)", `${percent(study.abnormality_probability)} (study threshold ${percent(study.threshold)})`],
    ["Views", String(study.views.length)],
    ["Operating point", pointSummary(study.operating_point)],
  ];
  for (const [term, value] of rows) details.append(element("dt", { textContent: term }), element("dd", { textContent: value }));
  body.append(verdict, details);
  if (study.record_id) {
    const open = element("button", { type: "button", textContent: "Open in the worklist" });
    open.addEventListener("click", () => openRecord(study.record_id));
    body.append(open);
  }
  body.dataset.probability = String(study.abnormality_probability);
  for (const text of study.warnings) body.append(element("p", { className: "warn", textContent: text }));
  if (refusedViews.length) { // answered from the other views: say which were left out, and why
    body.append(element("p", { className: "warn", textContent: `Not in this study (${refusedViews.length} of ${refusedViews.length + study.views.length} views):` }),
      element("ul", { className: "refused-views" }, ...refusedViews.map((view) => element("li", { textContent: `${view.name}: ${view.reason}` }))));
  }
  $("study").hidden = false;
}

function studyError(message) {
  $("study-body").replaceChildren(element("p", { className: "error", role: "alert", textContent: message }));
  $("study").hidden = false;
}

// ---------------------------------------------------------------------------- flow

async function handleFiles(files) {
  if (!files.length) return;
  $("views").replaceChildren();
  $("study").hidden = true;
  $("status").textContent = `Sending ${files.length} file(s)…`;
  const done = []; // by upload order: the study and the worklist keep it
  const refusedViews = [];
  await Promise.all([...files].map(async (file, index) => {
    const card = viewCard(file);
    try {
      const form = new FormData();
      form.append("file", file, file.name);
      const stored = await (await api("/upload", { method: "POST", body: form })).json();
      setStatus(card, "Classifying…");
      const answer = await (await api("/predict", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ filename: stored.filename, heatmap: true }),
      })).json();
      await showView(card, file, stored, answer);
      done[index] = { filename: stored.filename, name: file.name };
    } catch (error) {
      const message = error instanceof ApiError ? error.message : "Something went wrong with this view.";
      setStatus(card, message, true);
      refusedViews[index] = { name: file.name, reason: message };
    }
  }));
  const answered = done.filter(Boolean);
  if (answered.length >= 1) { // one view is a study too: it is recorded in the worklist
    try {
      const study = await (await api("/predict/study", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ filenames: answered.map((v) => v.filename), view_names: answered.map((v) => v.name) }),
      })).json();
      showStudy(study, refusedViews.filter(Boolean));
      refreshWorklist();
    } catch (error) {
      studyError(error instanceof ApiError ? error.message : "The study could not be classified.");
    }
  }
  $("status").textContent = `${answered.length} of ${files.length} view(s) classified.`;
}

$("files").addEventListener("change", (event) => handleFiles(event.target.files));

// GET /samples: radiographs the site put beside the service (BONEXR_SAMPLES_DIR), to try.
async function loadSamples() {
  try {
    const listed = await (await api("/samples", { headers: JSON_ACCEPT })).json();
    if (!listed.samples.length) return;
    $("samples-attribution").textContent = listed.attribution || "";
    $("samples-list").replaceChildren(...listed.samples.map((sample) => {
      const button = element("button", { type: "button", textContent: sample.name });
      button.addEventListener("click", async () => {
        const blob = await (await api(sample.url)).blob();
        handleFiles([new File([blob], sample.name, { type: blob.type })]);
      });
      return element("li", {}, button);
    }));
    $("samples").hidden = false;
  } catch (error) {
    $("samples").hidden = true; // samples are a convenience: no key yet, or none configured
  }
}
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  handleFiles(event.dataTransfer.files);
});


// ------------------------------------------------------------------------ worklist
// GET /worklist (triage order, polled), GET /worklist/{id} (the study view) and
// POST /worklist/{id}/review. The server audits each of these calls with the key's name,
// so the page asks only for what changed: the open study is fetched again only when its
// row says another review came in, and each heat map is fetched once per page.

const POLL_MS = 5000;
const PAGE_SIZE = (() => {
  const asked = Number(new URLSearchParams(location.search).get("worklist_limit"));
  return Number.isInteger(asked) && asked >= 1 && asked <= 200 ? asked : 25;
})();
const JSON_ACCEPT = { Accept: "application/json" };
const worklist = { items: [], cursor: null, counts: null, signature: "", queue: Promise.resolve() };
let current = null; // the open study: { id, study (null until loaded) }
const me = { name: null }; // who this key is (GET /whoami): whose review a new verdict amends

async function loadIdentity() {
  try {
    me.name = (await (await api("/whoami", { headers: JSON_ACCEPT })).json()).name;
  } catch (error) {
    me.name = null;
  }
  if (current && current.study) showReviewButtons(current.study);
}
let openToken = 0;
let reviewBusy = false;
const heatUrls = new Map(); // heatmap_url -> object URL

function resultWord(result) {
  return result === "abnormal" ? "Abnormal" : result === "normal" ? "Normal" : "No finding";
}
function maybePercent(p) { return typeof p === "number" ? percent(p) : "–"; }
function statusWord(status) { return status === "unread" ? "Unread" : "Reviewed"; }
function messageOf(error, fallback) { return error instanceof ApiError ? error.message : fallback; }

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function setNotice(node, text, isError = false) {
  node.classList.toggle("error", isError);
  node.classList.toggle("status", !isError);
  setText(node, text);
}

/** A UTC time in the reader's zone: today's as a time only; to the second where `precise`. */
function timeElement(iso, precise = false) {
  const when = new Date(iso);
  let text = iso;
  if (!Number.isNaN(when.getTime())) {
    const timeStyle = precise ? "medium" : "short";
    const today = when.toDateString() === new Date().toDateString();
    text = when.toLocaleString(undefined, today ? { timeStyle } : { dateStyle: "short", timeStyle });
  }
  return element("time", { dateTime: iso, textContent: text, title: `${iso} (UTC)` });
}

function filterStatus() {
  return document.querySelector("input[name=worklist-status]:checked").value;
}

/** One list request at a time, so that a poll never races "more" or a filter change. */
function listQueued(task) {
  const run = worklist.queue.then(task);
  worklist.queue = run.catch(() => {});
  return run;
}

async function fetchWorklist(status, limit, cursor) {
  const query = new URLSearchParams({ status, limit: String(limit) });
  if (cursor) query.set("cursor", cursor);
  return (await api(`/worklist?${query}`, { headers: JSON_ACCEPT })).json();
}

function refreshWorklist() {
  return listQueued(async () => {
    const status = filterStatus();
    try {
      // as many as are shown, so that a poll keeps the pages "more" added
      const limit = Math.min(200, Math.max(PAGE_SIZE, worklist.items.length));
      const page = await fetchWorklist(status, limit, null);
      if (status !== filterStatus()) return; // the filter changed: its own refresh follows
      worklist.items = page.items;
      worklist.cursor = page.next_cursor;
      renderWorklist(page.counts);
    } catch (error) {
      setNotice($("worklist-status"), messageOf(error, "The worklist could not be loaded."), true);
    }
  });
}

function moreWorklist() {
  return listQueued(async () => {
    if (!worklist.cursor) return;
    const status = filterStatus();
    try {
      const page = await fetchWorklist(status, PAGE_SIZE, worklist.cursor);
      if (status !== filterStatus()) return;
      const known = new Set(worklist.items.map((item) => item.id));
      worklist.items.push(...page.items.filter((item) => !known.has(item.id)));
      worklist.cursor = page.next_cursor;
      renderWorklist(page.counts);
    } catch (error) {
      setNotice($("worklist-status"), messageOf(error, "More studies could not be loaded."), true);
    }
  });
}

function renderWorklist(counts) {
  for (const name of ["unread", "reviewed", "all"]) setText($(`count-${name}`), String(counts[name]));
  const status = filterStatus();
  const total = counts[status];
  const noun = status === "all" ? "studies" : `${status} studies`;
  setNotice($("worklist-status"), worklist.items.length
    ? `Showing ${worklist.items.length} of ${total} ${noun}, most urgent first.`
    : `No ${noun}.`);
  $("worklist-more").hidden = !worklist.cursor;
  const signature = JSON.stringify([worklist.items, current && current.id]);
  if (signature !== worklist.signature) { // rebuild only on change: focus and screen readers stay put
    worklist.signature = signature;
    const focused = document.activeElement && document.activeElement.closest("#worklist-rows tr");
    const focusedId = focused ? focused.dataset.id : null;
    const rows = $("worklist-rows");
    rows.replaceChildren(...worklist.items.map((item, i) => worklistRow(item, i + 1)));
    if (focusedId) {
      const again = rows.querySelector(`tr[data-id="${focusedId}"] button.open`);
      if (again) again.focus({ preventScroll: true });
    }
  }
  // another reader reviewed the open study: show it again
  const shown = current && current.study && worklist.items.find((item) => item.id === current.id);
  if (shown && (shown.reviews !== current.study.reviews.length || shown.status !== current.study.status)) {
    openRecord(current.id, { focus: false });
  }
}

function worklistRow(item, rank) {
  const row = element("tr", { className: item.status });
  row.dataset.id = item.id;
  row.dataset.status = item.status;
  row.dataset.result = item.result || "none";
  if (typeof item.abnormality_probability === "number") row.dataset.probability = String(item.abnormality_probability);
  if (current && current.id === item.id) row.setAttribute("aria-current", "true");
  const part = item.body_part || "unknown";
  const open = element("button", { type: "button", className: "open", textContent: "Open" });
  open.setAttribute("aria-label", `Open study ${rank}: ${part}, model ${resultWord(item.result).toLowerCase()}, ${item.status}`);
  open.addEventListener("click", (event) => { event.stopPropagation(); openRecord(item.id); });
  row.addEventListener("click", () => openRecord(item.id));
  const model = element("span", { className: `result ${item.result || "none"}`, textContent: resultWord(item.result) });
  const modelCell = element("td", { className: "model-result" }, model);
  if (item.refused_views) {
    modelCell.append(element("span", { className: "hint", textContent: ` (${item.refused_views} of ${item.views} views refused)` }));
  }
  const statusCell = element("td", {}, element("span", { className: `badge ${item.status}`, textContent: statusWord(item.status) }));
  row.append(
    element("td", { className: "rank", textContent: String(rank) }),
    element("td", { className: "part", textContent: part }),
    modelCell,
    element("td", { className: "probability", textContent: maybePercent(item.abnormality_probability) }),
    element("td", {}, timeElement(item.arrived_at)),
    statusCell,
    element("td", { className: "reviews-count", textContent: String(item.reviews) }),
    element("td", {}, open),
  );
  return row;
}

for (const radio of document.querySelectorAll("input[name=worklist-status]")) {
  radio.addEventListener("change", () => {
    worklist.items = [];
    worklist.cursor = null;
    refreshWorklist();
  });
}
$("worklist-more").addEventListener("click", moreWorklist);

// ------------------------------------------------------------------ the study view

async function openRecord(id, { focus = true } = {}) {
  const token = ++openToken;
  if (!current || current.id !== id) {
    current = { id, study: null };
    $("record-title").textContent = "Study";
    $("record-body").replaceChildren(element("p", { className: "status", textContent: "Loading the study…" }));
    $("record-views").replaceChildren();
    $("record-reviews").replaceChildren();
    $("review-status").textContent = "";
    markCurrentRow();
  }
  $("record").hidden = false;
  $("triage").classList.add("open");
  if (focus) $("record-title").focus();
  try {
    const study = await (await api(`/worklist/${encodeURIComponent(id)}`, { headers: JSON_ACCEPT })).json();
    if (token === openToken) showRecord(study);
  } catch (error) {
    if (token !== openToken) return;
    $("record-body").replaceChildren(element("p", { className: "error", role: "alert", textContent: messageOf(error, "The study could not be loaded.") }));
  }
}

function markCurrentRow() {
  for (const row of document.querySelectorAll("#worklist-rows tr")) {
    if (current && row.dataset.id === current.id) row.setAttribute("aria-current", "true");
    else row.removeAttribute("aria-current");
  }
}

function showRecord(study) {
  current = { id: study.id, study };
  const part = study.body_part || "unknown body part";
  $("record-title").textContent = `Study: ${part}`;
  const body = $("record-body");
  body.dataset.id = study.id;
  body.dataset.status = study.status;
  const verdict = element("p", { className: `verdict ${study.result || "none"}`, textContent: `Model: ${resultWord(study.result).toLowerCase()}` });
  verdict.dataset.result = study.result || "none";
  const details = element("dl", { className: "facts" });
  const refused = study.views.filter((view) => view.refused).length;
  const rows = [
    ["P(abnormal)", `${maybePercent(study.abnormality_probability)} (threshold ${maybePercent(study.threshold)})`],
    ["Operating point", study.operating_point || "–"],
    ["Model", `${study.model.name}, version ${study.model.version}`],
    ["Arrived", timeElement(study.arrived_at, true)],
    ["Source", study.source === "dicom" ? "DICOM node" : "API"],
    ["Status", statusWord(study.status)],
    ["Views", refused ? `${study.views.length} (${refused} refused)` : String(study.views.length)],
  ];
  for (const [term, value] of rows) details.append(element("dt", { textContent: term }), element("dd", {}, value));
  body.dataset.probability = String(study.abnormality_probability);
  body.replaceChildren(verdict, details);
  if (study.refusal) body.append(element("p", { className: "warn", textContent: `No finding: ${study.refusal}` }));
  if (study.warnings.length) {
    body.append(element("ul", { className: "warnings" }, ...study.warnings.map((text) => element("li", { className: "warn", textContent: text }))));
  }
  body.append(element("p", { className: "hint record-id" }, "Record ", element("code", { textContent: study.id })));
  showRecordViews(study);
  showReviews(study.reviews);
  showReviewButtons(study);
  markCurrentRow();
}

function showRecordViews(study) {
  const part = study.body_part || "body part";
  const wanted = new Set(study.views.map((view) => view.heatmap_url).filter(Boolean));
  for (const [url, objectUrl] of heatUrls) { // keep only this study's heat maps
    if (!wanted.has(url)) { URL.revokeObjectURL(objectUrl); heatUrls.delete(url); }
  }
  const list = $("record-views");
  list.replaceChildren();
  for (const view of study.views) {
    const card = element("li", { className: "record-view" });
    card.dataset.position = String(view.position);
    card.dataset.refused = String(view.refused);
    const label = view.name || `View ${view.position + 1}`;
    card.append(element("h4", { textContent: label }));
    if (view.refused) {
      card.classList.add("refused");
      card.append(element("p", { className: "warn reason", textContent: `Refused: ${view.reason || "not scored"}` }));
    } else {
      if (view.heatmap_url) {
        const img = element("img", { alt: `${label}: the radiograph with the heat map of the ${part} model` });
        card.append(element("div", { className: "heatmap" }, img));
        loadHeatmap(img, view.heatmap_url);
      } else {
        card.append(element("p", { className: "hint", textContent: "No stored image for this view." }));
      }
      card.append(element("p", { className: "view-result" },
        element("span", { className: `result ${view.result || "none"}`, textContent: resultWord(view.result) }),
        ` · P(abnormal) ${maybePercent(view.abnormality_probability)}, threshold ${maybePercent(view.threshold)}`));
    }
    list.append(card);
  }
}

async function loadHeatmap(img, url) {
  try {
    if (!heatUrls.has(url)) heatUrls.set(url, imageUrl(url));
    img.src = await heatUrls.get(url);
  } catch (error) {
    heatUrls.delete(url);
    img.closest(".heatmap").replaceWith(element("p", { className: "error", textContent: messageOf(error, "The heat map could not be loaded.") }));
  }
}

function showReviews(reviews) {
  const list = $("record-reviews");
  if (!reviews.length) {
    list.replaceChildren(element("li", { className: "none hint", textContent: "No reader has reviewed this study yet." }));
    return;
  }
  list.replaceChildren(...reviews.map((review) => {
    const item = element("li", { className: "review" },
      element("strong", { textContent: review.reader }), ": ",
      element("span", { className: `result ${review.reader_result}`, textContent: review.reader_result }), ", ",
      timeElement(review.at, true));
    item.dataset.reader = review.reader;
    item.dataset.result = review.reader_result;
    if (review.replaced_by != null) { // kept, never erased: shown as corrected
      item.classList.add("replaced");
      item.dataset.replaced = "true";
      item.append(" ", element("em", { textContent: "(amended below)" }));
    } else if (review.amends != null) {
      item.append(" ", element("em", { textContent: "(amends the earlier review)" }));
    }
    if (review.note) item.append(element("p", { className: "note", textContent: review.note }));
    return item;
  }));
}

// This key's own review that still counts (what a new verdict from it amends).
function myCurrentReview(study) {
  return study.reviews.find((review) => review.reader === me.name && review.replaced_by == null);
}

function showReviewButtons(study) {
  const amending = Boolean(me.name && myCurrentReview(study));
  $("review-abnormal").textContent = amending ? "Amend my review: abnormal" : "Reader: abnormal";
  $("review-normal").textContent = amending ? "Amend my review: normal" : "Reader: normal";
}

async function sendReview(result) {
  if (!current || !current.study || reviewBusy) return;
  reviewBusy = true;
  const id = current.id;
  $("review-form").setAttribute("aria-busy", "true");
  setNotice($("review-status"), "Recording the review…");
  try {
    const body = { reader_result: result };
    if (myCurrentReview(current.study)) body.amend = true; // a correction, not a second vote
    const note = $("review-note").value.trim();
    if (note) body.note = note;
    const study = await (await api(`/worklist/${encodeURIComponent(id)}/review`, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...JSON_ACCEPT },
      body: JSON.stringify(body),
    })).json();
    if (current && current.id === id) {
      openToken++; // an older GET of this study must not overwrite the answer
      $("review-note").value = "";
      showRecord(study);
      const last = study.reviews[study.reviews.length - 1];
      setNotice($("review-status"), `Recorded: ${last.reader_result}, reader ${last.reader}.`);
    }
    refreshWorklist();
    if ($("audit-details").open && !audit.forbidden) loadAudit(); // the review is in it now
  } catch (error) {
    setNotice($("review-status"), messageOf(error, "The review could not be recorded."), true);
  } finally {
    reviewBusy = false;
    $("review-form").removeAttribute("aria-busy");
  }
}

for (const button of document.querySelectorAll("#review-form button[data-result]")) {
  button.addEventListener("click", () => sendReview(button.dataset.result));
}
$("review-form").addEventListener("submit", (event) => event.preventDefault());

$("record-close").addEventListener("click", () => {
  const id = current && current.id;
  current = null;
  openToken++;
  $("record").hidden = true;
  $("triage").classList.remove("open");
  markCurrentRow();
  const row = id && document.querySelector(`#worklist-rows tr[data-id="${id}"] button.open`);
  if (row) row.focus();
});

// ---------------------------------------------------------------------------- audit

const audit = { cursor: null, token: 0, forbidden: false };

async function loadAudit(more = false) {
  const token = ++audit.token;
  const query = new URLSearchParams({ limit: "100" });
  if (more && audit.cursor) query.set("cursor", audit.cursor);
  setNotice($("audit-status"), "Loading the audit trail…");
  try {
    const page = await (await api(`/audit?${query}`, { headers: JSON_ACCEPT })).json();
    if (token !== audit.token) return;
    const rows = $("audit-rows");
    if (!more) rows.replaceChildren();
    rows.append(...page.items.map(auditRow));
    audit.cursor = page.next_cursor;
    $("audit-more").hidden = !page.next_cursor;
    $("audit").hidden = false;
    audit.forbidden = false;
    setNotice($("audit-status"), `${rows.children.length} event(s), newest first.`);
  } catch (error) {
    if (token !== audit.token) return;
    $("audit").hidden = true;
    $("audit-rows").replaceChildren();
    $("audit-more").hidden = true;
    audit.forbidden = error.status === 403;
    setNotice($("audit-status"), messageOf(error, "The audit trail could not be loaded."), true);
  }
}

function auditRow(event) {
  const row = element("tr");
  row.dataset.key = event.key_name;
  row.dataset.action = event.action;
  row.dataset.studyId = event.study_id || "";
  row.dataset.outcome = event.outcome;
  let study = "–";
  if (event.study_id) {
    study = element("button", { type: "button", className: "link", textContent: event.study_id.slice(0, 8), title: event.study_id });
    study.setAttribute("aria-label", `Open study ${event.study_id}`);
    study.addEventListener("click", () => openRecord(event.study_id));
  }
  row.append(
    element("td", {}, timeElement(event.at, true)),
    element("td", { className: "key", textContent: event.key_name }),
    element("td", { className: "action", textContent: event.action }),
    element("td", { className: "study" }, study),
    element("td", { className: `outcome ${event.outcome === "ok" ? "" : "bad"}`.trim(), textContent: event.outcome }),
  );
  return row;
}

// ---------------------------------------------------------------------- model health
// GET /monitoring: the drift statistic per signal, agreement with readers, refusals, the
// shadow bundle's comparison (docs/operations.md).

function healthTable(caption, head, rows) {
  const table = element("table", { className: "health" },
    element("caption", { textContent: caption }),
    element("thead", {}, element("tr", {}, ...head.map((h) => element("th", { scope: "col", textContent: h })))),
    element("tbody", {}, ...rows.map((cells) => element("tr", {}, ...cells.map((c) => c instanceof Node ? element("td", {}, c) : element("td", { textContent: c }))))));
  return element("div", { className: "table-wrap" }, table);
}

function rate(value) { return value == null ? "–" : percent(value); }

function showHealth(health) {
  const body = $("health-body");
  const drift = Object.entries(health.drift).map(([key, d]) => {
    const flagged = d.psi != null && d.psi > health.psi_alert;
    const value = element("span", { className: flagged ? "result abnormal" : "result normal", textContent: d.psi == null ? d.status : `${d.psi.toFixed(2)}${flagged ? " (shift)" : ""}` });
    return [key.replace("/", " · "), value];
  });
  const practice = Object.entries(health.practice).map(([part, p]) => (p.agreement == null
    ? [part, String(p.reviewed), p.status, "–", "–"]
    : [part, String(p.reviewed), rate(p.agreement), rate(p.sensitivity), rate(p.specificity)]));
  const refusals = Object.entries(health.refusals).map(([reason, n]) => [reason, String(n)]);
  const parts = [
    healthTable(`Drift: PSI of the last answers against the first (alert above ${health.psi_alert})`, ["Signal · part", "PSI"], drift.length ? drift : [["no answers yet", "–"]]),
    healthTable("Agreement with the readers (first reader's current verdict)", ["Part", "Reviewed", "Agreement", "Sensitivity", "Specificity"], practice.length ? practice : [["no reviews yet", "–", "–", "–", "–"]]),
    healthTable("Refused as not eligible", ["Reason", "Images"], refusals.length ? refusals : [["none", "0"]]),
  ];
  if (health.shadow) {
    const s = health.shadow;
    const auc = (side) => (side.auroc == null ? side.status : side.auroc.toFixed(3));
    parts.push(healthTable(`Shadow bundle ${s.bundles.join(", ") || "(no answers yet)"}: never shown to readers`, ["Studies", "Agreement with live", "Kappa", "AUROC live", "AUROC shadow", "Time vs live"],
      [[String(s.studies), rate(s.agreement), s.kappa == null ? "–" : s.kappa.toFixed(2), auc(s.live), auc(s.shadow), s.time_ratio == null ? "–" : `${s.time_ratio.toFixed(2)}x`]]));
  }
  body.replaceChildren(...parts);
}

async function loadHealth() {
  setNotice($("health-status"), "Loading…");
  try {
    showHealth(await (await api("/monitoring", { headers: JSON_ACCEPT })).json());
    setNotice($("health-status"), "");
  } catch (error) {
    setNotice($("health-status"), messageOf(error, "The model health could not be loaded."), true);
  }
}

$("health-details").addEventListener("toggle", () => { if ($("health-details").open) loadHealth(); });
$("health-refresh").addEventListener("click", () => loadHealth());

$("audit-details").addEventListener("toggle", () => { if ($("audit-details").open) loadAudit(); });
$("audit-refresh").addEventListener("click", () => loadAudit());
$("audit-more").addEventListener("click", () => loadAudit(true));

// ------------------------------------------------------------------------- start

/** A new key: everything shown may now be allowed (or no longer). */
function keyChanged() {
  loadIdentity();
  loadSamples();
  refreshWorklist();
  if (current) openRecord(current.id, { focus: false });
  if ($("audit-details").open) loadAudit();
}

// The poll asks only whether the worklist changed (GET /worklist/changes shows no study and
// is not audited); the list itself, an audited access, is fetched when the token moves.
let worklistVersion = null;
async function pollWorklist() {
  try {
    const change = await (await api("/worklist/changes", { headers: JSON_ACCEPT })).json();
    if (change.version === worklistVersion) return;
    worklistVersion = change.version;
  } catch { /* the list's own refresh below says what is wrong */ }
  refreshWorklist();
}

setInterval(() => {
  // not while the tab is hidden, nor while the page waits for a key
  if (document.hidden || !$("key-section").hidden) return;
  pollWorklist();
}, POLL_MS);

loadModel();
loadIdentity();
loadSamples();
refreshWorklist();
