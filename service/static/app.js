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
    `"fractured" means: ${rules.fractured_means}`,
    rules.not_a_medical_device,
    rules.intended_use,
  ];
  if (rules.retention_hours) items.push(`Uploads are deleted after ${rules.retention_hours} hours.`);
  for (const text of items) list.append(element("li", { textContent: text }));
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value);
  $("key-section").hidden = true;
  $("key-error").textContent = "";
  loadModel();
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
  const heat = element("img", { className: "heat", alt: `${file.name}: heat map of the ${answer.bone_type} model` });
  if (answer.heatmap_url) {
    heat.src = await imageUrl(`${answer.heatmap_url}?opacity=1`);
  } else {
    heat.hidden = true;
  }
  const frame = element("div", { className: "frame" }, base, heat);
  const verdict = element("p", {
    className: `verdict ${answer.result}`,
    textContent: answer.result === "fractured" ? "Abnormal (MURA positive)" : "Normal",
  });
  verdict.dataset.result = answer.result;
  const details = element("dl");
  const rows = [
    ["Body part", `${answer.bone_type} (${percent(answer.bone_type_probabilities[answer.bone_type])})`],
    ["P(abnormal)", `${percent(answer.abnormality_probability)} (threshold ${percent(answer.threshold)})`],
    ["Router", Object.entries(answer.bone_type_probabilities).map(([p, v]) => `${p} ${percent(v)}`).join(", ")],
  ];
  for (const [term, value] of rows) details.append(element("dt", { textContent: term }), element("dd", { textContent: value }));
  card.dataset.filename = stored.filename;
  card.dataset.boneType = answer.bone_type;
  card.dataset.probability = String(answer.abnormality_probability);
  const status = card.querySelector(".status, .error");
  status.replaceWith(frame, verdict, details);
  for (const text of [...stored.warnings, ...answer.warnings]) card.append(element("p", { className: "warn", textContent: text }));
  applyHeatControls();
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

function showStudy(study) {
  const body = $("study-body");
  body.replaceChildren();
  const verdict = element("p", {
    className: `verdict ${study.result}`,
    textContent: study.result === "fractured" ? "Study abnormal (MURA positive)" : "Study normal",
  });
  verdict.dataset.result = study.result;
  const details = element("dl");
  const rows = [
    ["Body part", `${study.bone_type} (${study.bone_type_source === "client" ? "chosen" : "from the router, all views"})`],
    ["P(abnormal)", `${percent(study.abnormality_probability)} (study threshold ${percent(study.threshold)})`],
    ["Views", String(study.views.length)],
  ];
  for (const [term, value] of rows) details.append(element("dt", { textContent: term }), element("dd", { textContent: value }));
  body.append(verdict, details);
  body.dataset.probability = String(study.abnormality_probability);
  for (const text of study.warnings) body.append(element("p", { className: "warn", textContent: text }));
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
  const done = [];
  await Promise.all([...files].map(async (file) => {
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
      done.push(stored.filename);
    } catch (error) {
      setStatus(card, error instanceof ApiError ? error.message : "Something went wrong with this view.", true);
    }
  }));
  if (done.length >= 2) {
    try {
      const study = await (await api("/predict/study", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ filenames: done }),
      })).json();
      showStudy(study);
    } catch (error) {
      studyError(error instanceof ApiError ? error.message : "The study could not be classified.");
    }
  }
  $("status").textContent = `${done.length} of ${files.length} view(s) classified.`;
}

$("files").addEventListener("change", (event) => handleFiles(event.target.files));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  handleFiles(event.dataTransfer.files);
});

loadModel();
