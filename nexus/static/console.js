// The Model Nexus console: plain JavaScript, same-origin requests only.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // the model shown in the panel: the details of one of its versions
let versionsView = null; // GET /models/<id>/versions of that model: its versions, routing and shares
let versionToDelete = null; // the version the "Delete version?" dialog asks about

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// A 401 means the server wants its API token: say so and put the cursor in the token field.
function tokenHint(status) {
  if (status !== 401) return "";
  $("token").focus();
  return $("token").value.trim() ? " (the API token entered is not the server's)" : " (enter the server's API token in the upload form and try again)";
}

// The status in words, the same whoever answered (Flask, the hot routes, a proxy; HTTP/2 has no reason phrase).
// The server's own: 422 a configured limit (model memory, load time, inference memory), 503 a model
// still loading (with Retry-After) or no model directory, 504 a run stopped at NEXUS_INFERENCE_TIMEOUT_S.
const STATUS = {
  400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
  413: "Too Large", 415: "Unsupported Media Type", 422: "Over a Limit", 500: "Server Error", 502: "Bad Gateway",
  503: "Not Ready", 504: "Timed Out", 507: "Storage Full",
};
function statusLine(status, reason) {
  return `${status} ${STATUS[status] || reason || "Error"}`;
}

// Retry-After in words (seconds or an HTTP date), unless the server's sentence already says when to retry.
function retryHint(retryAfter, detail) {
  if (!retryAfter || /retry|try again/i.test(detail)) return "";
  let seconds = Number(retryAfter);
  if (!/^\s*\d+\s*$/.test(retryAfter)) seconds = Math.ceil((Date.parse(retryAfter) - Date.now()) / 1000);
  if (!Number.isFinite(seconds)) return "";
  return seconds > 0 ? ` (try again in ${seconds} s)` : " (try again now)";
}

// One readable sentence for a refusal: "409 Conflict: model 'x' is already registered".
function refusal(status, reason, text, retryAfter) {
  let detail;
  try {
    const body = JSON.parse(text);
    detail = body.error || JSON.stringify(body);
  } catch (_) {
    detail = "the answer carried no JSON error";
  }
  return `${statusLine(status, reason)}: ${detail}${retryHint(retryAfter, detail)}${tokenHint(status)}`;
}

async function explain(response) {
  let text = "";
  try {
    text = await response.text();
  } catch (_) { /* the body was cut off: said as "no JSON error" */ }
  return refusal(response.status, response.statusText, text, response.headers.get("Retry-After"));
}

// Each action the user starts clears what earlier ones said: the errors and the upload's message.
// A prediction's result stays (it still belongs to the model shown) until the next prediction.
function clearMessages() {
  $("models-error").hidden = true;
  $("models-error").textContent = "";
  for (const id of ["upload-message", "versions-message", "routing-message"]) {
    $(id).className = "";
    $(id).textContent = "";
  }
  if ($("response-meta").className === "error") {
    $("response-meta").className = "muted";
    $("response-meta").textContent = "";
  }
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function formatTime(timestamp) {
  return timestamp ? timestamp.replace("T", " ").replace(/\.\d+Z$/, " UTC") : "";
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}

// Text (a name, a type, a version) that may wrap after _ . - + ( , at narrow widths rather than in the middle of a word.
function appendBreakable(element, text) {
  const parts = text.split(/(?<=[_.\-+(,])/);
  parts.forEach((part, i) => element.append(part, ...(i < parts.length - 1 ? [document.createElement("wbr")] : [])));
}

// A cell for a name or a type (output_probability, seq(map(int64,tensor(float)))).
function breakableCell(row, text) {
  const td = document.createElement("td");
  appendBreakable(td, text);
  row.appendChild(td);
  return td;
}

function option(value, text) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = text;
  return element;
}

// A share of traffic as the server states it (percent, to 0.01): 90%, 33.33%.
function percent(value) {
  return `${Number((Number(value) || 0).toFixed(2))}%`;
}

async function refreshStatus() {
  const badge = $("status");
  try {
    const response = await fetch("/health/ready", { cache: "no-store" });
    const body = await response.json();
    if (response.ok) {
      badge.className = "badge badge-ready";
      badge.textContent = `ready · ${body.models} model${body.models === 1 ? "" : "s"}`;
      $("version").textContent = `server ${body.version}`;
    } else {
      badge.className = "badge badge-down";
      badge.textContent = `not ready: ${body.error}`;
    }
  } catch (_) {
    badge.className = "badge badge-down";
    badge.textContent = "unreachable";
  }
}

async function refreshModels() {
  const tbody = $("models").querySelector("tbody");
  $("models-error").hidden = true;
  let list;
  try {
    const response = await fetch("/models", { headers: authHeaders(), cache: "no-store" });
    if (!response.ok) throw new Error(await explain(response));
    list = (await response.json()).models;
  } catch (error) {
    $("models-error").textContent = `Could not list models: ${error.message}`;
    $("models-error").hidden = false;
    return;
  }
  const details = await Promise.all(list.map((m) => fetch(`/models/${encodeURIComponent(m.id)}`, { headers: authHeaders() })
    .then((r) => (r.ok ? r.json() : m)).catch(() => m)));
  tbody.replaceChildren();
  for (const model of details) {
    const row = document.createElement("tr");
    row.tabIndex = 0;
    row.dataset.id = model.id;
    row.setAttribute("aria-describedby", "models-hint");
    row.setAttribute("aria-selected", String(current !== null && current.id === model.id));
    breakableCell(row, model.id);
    cell(row, model.name);
    const version = breakableCell(row, model.version);
    if (Array.isArray(model.versions) && model.versions.length > 1) {
      const count = document.createElement("span");
      count.className = "muted";
      count.textContent = ` (${model.versions.length} versions)`;
      version.append(count);
    }
    cell(row, model.size_bytes === undefined ? "" : formatSize(model.size_bytes));
    cell(row, formatTime(model.created_at));
    row.addEventListener("click", () => {
      clearMessages();
      openModel(model.id);
    });
    row.addEventListener("keydown", (event) => {
      if (event.target === row && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        clearMessages();
        openModel(model.id);
      }
    });
    tbody.appendChild(row);
  }
  $("models-empty").hidden = details.length > 0;
  $("models-hint").hidden = details.length === 0;
  refreshStatus();
}

// A value of the input's element type: 0, false or "".
function zeroFor(type) {
  if (type.includes("bool")) return false;
  if (type.includes("string")) return "";
  return 0;
}

// The most values the console writes into an example input; a bigger one is left for the user to fill.
const PREFILL_LIMIT = 1000;

// The size of one sample: dynamic dimensions (-1) count as 1, a declared 0 as 0.
function sampleShape(shape) {
  return shape.map((d) => (d < 0 ? 1 : d));
}

// Nested zeros of a shape from sampleShape (small: the caller checks the count first).
function zeros(shape, value) {
  const [first, ...rest] = shape;
  return Array.from({ length: first }, () => (rest.length === 0 ? value : zeros(rest, value)));
}

// The request the panel starts with, and notes for the inputs too big to prefill.
// /predict reads every value as a list: a 0-d input takes a one-element list ([0]), the rest nested zeros.
function exampleRequest(model) {
  const inputs = {};
  const notes = [];
  for (const input of model.inputs) {
    const shape = sampleShape(input.shape);
    const count = shape.reduce((n, d) => n * d, 1);
    if (shape.length === 0) {
      inputs[input.name] = [zeroFor(input.type)];
    } else if (count <= PREFILL_LIMIT) {
      inputs[input.name] = zeros(shape, zeroFor(input.type));
    } else {
      inputs[input.name] = [];
      notes.push(`${input.name} [${input.shape.join(", ")}] takes ${count.toLocaleString("en-US")} values`);
    }
  }
  return { request: { model_id: model.id, inputs }, notes };
}

// JSON on one line with spaces: [[0, 0, 0, 0]], {"0": 0.98, "1": 0.02}.
function oneLine(value) {
  if (Array.isArray(value)) return `[${value.map(oneLine).join(", ")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.entries(value).map(([key, item]) => `${JSON.stringify(key)}: ${oneLine(item)}`).join(", ")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

// Readable JSON: the top-level object one field a line, anything short or holding only plain values on one line.
function compactJson(value, indent = "") {
  if (value === null || typeof value !== "object") return oneLine(value);
  const plain = Object.values(value).every((item) => item === null || typeof item !== "object");
  const line = oneLine(value);
  if (indent !== "" && (plain || indent.length + line.length <= 72)) return line;
  const inner = `${indent}  `;
  const items = Array.isArray(value)
    ? value.map((item) => inner + compactJson(item, inner))
    : Object.entries(value).map(([key, item]) => `${inner}${JSON.stringify(key)}: ${compactJson(item, inner)}`);
  if (items.length === 0) return line;
  const [open, close] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
  return `${open}\n${items.join(",\n")}\n${indent}${close}`;
}

function fillTable(id, tensors) {
  const tbody = $(id).querySelector("tbody");
  tbody.replaceChildren();
  for (const tensor of tensors) {
    const row = document.createElement("tr");
    breakableCell(row, tensor.name);
    breakableCell(row, tensor.type);
    cell(row, `[${tensor.shape.join(", ")}]`);
    tbody.appendChild(row);
  }
}

// The request shown, as a curl command; the token itself is never written out, only $NEXUS_API_TOKEN.
function updateCurl() {
  const auth = $("token").value.trim() ? ` \\\n  -H "Authorization: Bearer $NEXUS_API_TOKEN"` : "";
  const body = $("request").value.replace(/\s*\n\s*/g, " ").replace(/'/g, "'\\''");
  $("curl").value = `curl -X POST ${window.location.origin}/predict \\\n  -H 'Content-Type: application/json'${auth} \\\n  -d '${body}'`;
}

function modelPath(id, ...rest) {
  return ["/models", id, ...rest].map((part, i) => (i === 0 ? part : encodeURIComponent(part))).join("/");
}

// The title, the line under it and the inputs and outputs: of the version shown (the default, or the one chosen to answer).
function showDetails() {
  $("panel-title").textContent = `${current.name} (${current.id})`;
  const role = versionsView && versionsView.versions.length > 1 && current.version === versionsView.default ? " (the default)" : "";
  $("panel-meta").textContent = `version ${current.version}${role} · ${formatSize(current.size_bytes)} · created ${formatTime(current.created_at)}`
    + ` · sha256 ${current.sha256.slice(0, 12)}…`;
  fillTable("inputs", current.inputs);
  fillTable("outputs", current.outputs);
}

// The example request for the version shown, with the version chosen to answer ("" : none, the routing chooses).
function fillExample(version) {
  const example = exampleRequest(current);
  if (version) example.request.version = version;
  $("request").value = compactJson(example.request);
  $("request-note").hidden = example.notes.length === 0;
  $("request-note").textContent = example.notes.length === 0 ? ""
    : `${example.notes.join("; ")}: too many to prefill (the console writes at most ${PREFILL_LIMIT.toLocaleString("en-US")} `
      + "values an input). Put the values in place of [], or send the request with curl.";
  updateCurl();
}

async function openModel(id) {
  const [response, versions] = await Promise.all([
    fetch(modelPath(id), { headers: authHeaders(), cache: "no-store" }),
    fetch(modelPath(id, "versions"), { headers: authHeaders(), cache: "no-store" }).catch(() => null),
  ]);
  if (!response.ok) {
    $("models-error").textContent = await explain(response);
    $("models-error").hidden = false;
    return;
  }
  const model = await response.json();
  const view = versions && versions.ok ? await versions.json().catch(() => null) : null;
  // Everything read: the panel changes at once, never half one model and half another.
  current = model;
  versionsView = null;
  for (const row of $("models").querySelectorAll("tbody tr")) row.setAttribute("aria-selected", String(row.dataset.id === id));
  $("predict-version").value = "";
  if (view) {
    renderVersions(view);
  } else {
    $("versions-box").hidden = true;
    $("predict-version").replaceChildren(option("", "routed (the routing chooses the version)"));
  }
  showDetails();
  $("panel").hidden = false;
  fillExample("");
  $("response").textContent = "";
  $("response-meta").className = "muted";
  $("response-meta").textContent = "";
  resetSection("monitoring");
  resetSection("accuracy");
  $("predict").focus();
}

// -- versions and routing ------------------------------------------------------------------------

// The versions table, the routing form and the choice of version to predict with, from GET /models/<id>/versions.
function renderVersions(view) {
  versionsView = view;
  $("versions-box").hidden = false;
  const tbody = $("versions").querySelector("tbody");
  tbody.replaceChildren();
  for (const version of view.versions) {
    const row = document.createElement("tr");
    row.dataset.version = version.version;
    const name = breakableCell(row, version.version);
    if (version.version === view.default) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "default";
      name.append(" ", tag);
    }
    row.appendChild(showState(document.createElement("td"), version));
    cell(row, percent(version.traffic_percent));
    cell(row, percent(version.shadow_percent));
    cell(row, formatTime(version.created_at));
    const actions = document.createElement("td");
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "danger small";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete version ${version.version}`);
    remove.addEventListener("click", () => askDeleteVersion(version.version));
    actions.appendChild(remove);
    row.appendChild(actions);
    tbody.appendChild(row);
  }
  pollStates(view, STATE_POLLS);
  fillRouting(view);
  const select = $("predict-version");
  const chosen = select.value;
  select.replaceChildren(option("", `routed (now ${routedWords(view)})`),
    ...view.versions.map((v) => option(v.version, `${v.version} only (pinned)`)));
  select.value = view.versions.some((v) => v.version === chosen) ? chosen : "";
  return chosen !== select.value; // the version chosen is gone
}

// READY, LOADING or UNAVAILABLE (with the reason): in the worker that answered.
function showState(td, version) {
  td.className = `state state-${String(version.state).toLowerCase()}`;
  td.textContent = version.reason ? `${version.state} (${version.reason})` : version.state;
  return td;
}

// A version just uploaded may still be loading in the worker that answered: look again each second, a few
// times, and update the states (and the dates, known once loaded) only: the rest is the user's to refresh.
const STATE_POLLS = 10;
let statePoll = null;
function pollStates(view, tries, shown = view) {
  clearTimeout(statePoll);
  if (tries <= 0 || !view.versions.some((v) => v.state === "LOADING")) return;
  statePoll = setTimeout(async () => {
    let fresh;
    try {
      const response = await fetch(modelPath(view.model_id, "versions"), { headers: authHeaders(), cache: "no-store" });
      if (!response.ok) return;
      fresh = await response.json();
    } catch (_) {
      return;
    }
    if (versionsView !== shown) return; // another model, or these versions read again since
    for (const row of $("versions").querySelectorAll("tbody tr")) {
      const version = fresh.versions.find((v) => v.version === row.dataset.version);
      if (!version) continue;
      showState(row.cells[1], version);
      if (version.created_at) row.cells[4].textContent = formatTime(version.created_at);
    }
    pollStates({ ...view, versions: fresh.versions }, tries - 1, shown);
  }, 1000);
}

// Who answers routed requests, oldest version first: "v1" or "v1 90%, v2 10%".
function routedWords(view) {
  const traffic = view.traffic || {};
  const names = view.versions.map((v) => (typeof v === "string" ? v : v.version));
  const shares = names.filter((name) => traffic[name] > 0).map((name) => [name, traffic[name]]);
  if (shares.length <= 1) return shares.length === 1 ? shares[0][0] : String(view.default);
  return shares.map(([version, share]) => `${version} ${percent(share)}`).join(", ");
}

function fillRouting(view) {
  const names = view.versions.map((v) => v.version);
  const stored = view.routing || {};
  $("routing").hidden = names.length < 2;
  $("routing-single").hidden = names.length >= 2;
  const select = $("routing-default");
  select.replaceChildren(option("", `the newest version (${names[names.length - 1]})`), ...names.map((name) => option(name, name)));
  select.value = names.includes(stored.default) ? stored.default : "";
  const tbody = $("routing-weights").querySelector("tbody");
  tbody.replaceChildren();
  names.forEach((name, i) => {
    const row = document.createElement("tr");
    row.dataset.version = name;
    breakableCell(row, name);
    for (const kind of ["canary", "shadow"]) {
      const td = document.createElement("td");
      const label = document.createElement("label");
      label.className = "visually-hidden";
      label.htmlFor = `${kind}-${i}`;
      label.textContent = `${kind === "canary" ? "Canary" : "Shadow"} percent for version ${name}`;
      const input = document.createElement("input");
      input.type = "number";
      input.id = `${kind}-${i}`;
      input.min = "0";
      input.max = "100";
      input.step = "any";
      input.inputMode = "decimal";
      input.placeholder = "0";
      input.dataset.kind = kind;
      input.dataset.version = name;
      const weight = (stored[kind] || {})[name];
      input.value = weight === undefined || weight === null ? "" : String(weight);
      td.append(label, input);
      row.appendChild(td);
    }
    tbody.appendChild(row);
  });
  syncRoutingInputs();
}

// The default version takes what the canaries leave: it cannot also be a canary or a shadow.
function syncRoutingInputs() {
  const names = versionsView ? versionsView.versions.map((v) => v.version) : [];
  const resolved = $("routing-default").value || names[names.length - 1];
  for (const input of $("routing-weights").querySelectorAll("input")) {
    input.disabled = input.dataset.version === resolved;
    input.title = input.disabled ? "the default version takes the traffic the canaries leave" : "";
  }
}

// Read the versions again (after a change of routing, an upload, a deletion) and show them.
async function refreshVersions() {
  if (!current) return;
  const id = current.id;
  try {
    const response = await fetch(modelPath(id, "versions"), { headers: authHeaders(), cache: "no-store" });
    if (!response.ok) throw new Error(await explain(response));
    const view = await response.json();
    if (!current || current.id !== id) return;
    const gone = renderVersions(view);
    if (gone) setRequestVersion("");
    loadSection("monitoring"); // a version added or deleted: its sections too
    loadSection("accuracy");
    await showVersion($("predict-version").value || view.default);
  } catch (error) {
    $("versions-message").className = "error";
    $("versions-message").textContent = `Could not read the versions: ${error.message}`;
  }
}

// Show the details of ``version`` (inputs, outputs) unless they are shown already; a new example request
// when its inputs differ from those of the version shown before.
async function showVersion(version) {
  if (!current || !version || version === current.version) return;
  const id = current.id;
  let response;
  try {
    response = await fetch(modelPath(id, "versions", version), { headers: authHeaders(), cache: "no-store" });
  } catch (error) {
    $("response-meta").className = "error";
    $("response-meta").textContent = `Version ${version}: the server did not answer: ${error.message}`;
    return;
  }
  if (!response.ok) {
    const words = await explain(response);
    $("response-meta").className = "error";
    $("response-meta").textContent = `Version ${version}: ${words}`;
    return;
  }
  const details = await response.json();
  if (!current || current.id !== id || !Array.isArray(details.inputs)) return;
  const sameInputs = JSON.stringify(details.inputs) === JSON.stringify(current.inputs);
  current = { ...current, ...details };
  showDetails();
  if (!sameInputs) fillExample($("predict-version").value);
}

// Put the version chosen into the request shown ("" takes it out), if the request is a JSON object.
function setRequestVersion(version) {
  let body;
  try {
    body = JSON.parse($("request").value);
  } catch (_) {
    return; // predict() adds it to what the user fixes
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) return;
  if (version) body.version = version;
  else delete body.version;
  $("request").value = compactJson(body);
  updateCurl();
}

async function choosePredictVersion() {
  const chosen = $("predict-version").value;
  clearMessages();
  setRequestVersion(chosen);
  if (versionsView) await showVersion(chosen || versionsView.default);
}

async function saveRouting(event) {
  event.preventDefault();
  if (!current) return;
  const id = current.id;
  const message = $("routing-message");
  clearMessages();
  const routing = { default: $("routing-default").value || null, canary: {}, shadow: {} };
  for (const input of $("routing-weights").querySelectorAll("input:not(:disabled)")) {
    if (input.validity.badInput) {
      message.className = "error";
      message.textContent = `${input.labels[0].textContent}: not a number.`;
      input.focus();
      return;
    }
    const value = input.value.trim();
    if (value === "" || Number(value) === 0) continue; // no share: left out of the routing
    routing[input.dataset.kind][input.dataset.version] = Number(value); // the server checks the range and the sum
  }
  $("routing-submit").disabled = true;
  message.className = "muted";
  message.textContent = "Saving…";
  try {
    const response = await fetch(modelPath(id, "routing"), {
      method: "PUT",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(routing),
    });
    if (!response.ok) {
      const words = await explain(response);
      message.className = "error";
      message.textContent = `Refused: ${words}`;
      return;
    }
    const view = await response.json();
    const shadows = Object.entries(view.shadow || {}).map(([version, share]) => `${version} ${percent(share)}`);
    message.className = "ok";
    message.textContent = `Routing saved: ${routedWords(view)} of the traffic${shadows.length ? `; shadow ${shadows.join(", ")}` : ""}.`;
    await refreshVersions();
    refreshModels();
  } catch (error) {
    message.className = "error";
    message.textContent = `The server did not answer: ${error.message}`;
  } finally {
    $("routing-submit").disabled = false;
  }
}

function askDeleteVersion(version) {
  if (!current) return;
  versionToDelete = version;
  $("confirm-version").textContent = version;
  $("confirm-version-model").textContent = current.id;
  $("confirm-version-delete").returnValue = "";
  $("confirm-version-delete").showModal();
}

async function confirmDeleteVersion() {
  const version = versionToDelete;
  versionToDelete = null;
  if ($("confirm-version-delete").returnValue !== "delete" || !current || version === null) return;
  const id = current.id;
  const message = $("versions-message");
  clearMessages();
  try {
    const response = await fetch(modelPath(id, "versions", version), { method: "DELETE", headers: authHeaders() });
    if (!response.ok) {
      const words = await explain(response);
      message.className = "error";
      message.textContent = `Delete refused: ${words}`;
      return;
    }
  } catch (error) {
    message.className = "error";
    message.textContent = `The server did not answer: ${error.message}`;
    return;
  }
  message.className = "ok";
  message.textContent = `Deleted version ${version} of ${id}.`;
  await refreshVersions();
  refreshModels();
}

// Fill the upload form for a new version of the model shown: the same id and name, a version to type.
function uploadNewVersion() {
  if (!current) return;
  $("upload-id").value = current.id;
  $("upload-name").value = current.name;
  $("upload-version").value = "";
  $("upload-file").focus();
  $("upload-file").scrollIntoView({ block: "center" });
}

// -- monitoring ----------------------------------------------------------------------------------

// GET /models/<id>/monitoring, read while the Monitoring section is open: when it opens, when another model
// is opened, and on its Refresh button; never on a timer. Every text from the server goes in as textContent.
let monitoring = null; // the answer shown: {model_id, thresholds, versions: [report...]}
let driftView = "window"; // the drift shown: "window" (the last seconds) or "last_n" (the last predictions)

const SVG = "http://www.w3.org/2000/svg"; // a namespace name, nothing is loaded from it
const DRIFT = { ok: "ok", warn: "warn", alert: "alert", insufficient: "insufficient", no_reference: "no reference" };
const VERDICTS = ["ok", "warn", "alert", "insufficient"];

// A model's section read from the server while it is open (Monitoring, Accuracy): when it opens, when another
// model is opened, after its versions change, and on its Refresh button; never on a timer. Each counts its
// reads: an answer that arrives after a newer read of the section started is dropped. Elements: <name>-box
// (the <details>), <name> (the content), <name>-message, <name>-refresh.
const SECTIONS = {
  monitoring: {
    route: "monitoring", what: "the monitoring", off: null, reads: 0,
    clear: () => { monitoring = null; },
    show: (body) => { monitoring = body; renderMonitoring(); },
  },
  accuracy: {
    route: "performance", what: "the accuracy", reads: 0,
    // the server records nothing (NEXUS_RECORDS=0): a 404 that is no error of the user's
    off: ["records_off", "Recording is off on this server (NEXUS_RECORDS=0): it keeps no predictions to compare labels with."],
    clear: () => {},
    show: (body, id) => renderAccuracy(body, id),
  },
};

// Forget what was shown of another model; read it again if the section is open.
function resetSection(name) {
  const section = SECTIONS[name];
  section.clear();
  section.reads += 1;
  $(name).replaceChildren();
  $(`${name}-message`).className = "";
  $(`${name}-message`).textContent = "";
  $(`${name}-refresh`).disabled = false;
  loadSection(name);
}

async function loadSection(name) {
  const section = SECTIONS[name];
  if (!current || !$(`${name}-box`).open) return;
  const id = current.id;
  const read = ++section.reads;
  const message = $(`${name}-message`);
  $(`${name}-refresh`).disabled = true;
  message.className = "muted";
  message.textContent = "Reading…";
  let body = null;
  let words = "";
  let off = false;
  try {
    const response = await fetch(modelPath(id, section.route), { headers: authHeaders(), cache: "no-store" });
    if (response.ok) {
      body = await response.json().catch(() => null); // not JSON: said below
    } else {
      const text = await response.text().catch(() => ""); // cut off: said as "no JSON error"
      off = section.off !== null && response.status === 404 && errorCode(text) === section.off[0];
      if (!off) words = refusal(response.status, response.statusText, text, response.headers.get("Retry-After"));
    }
  } catch (error) {
    words = `the server did not answer: ${error.message}`;
  }
  if (read !== section.reads) return; // another model, or a newer read: that one says what it found
  $(`${name}-refresh`).disabled = false;
  if (off) {
    $(name).replaceChildren();
    message.className = "muted";
    message.textContent = section.off[1];
    return;
  }
  if (body === null || typeof body !== "object") {
    message.className = "error";
    message.textContent = `Could not read ${section.what}: ${words || "the answer was not a JSON object"}`;
    return;
  }
  section.show(body, id);
}

// The code of a JSON error answer ("records_off"), or "".
function errorCode(text) {
  try {
    const body = JSON.parse(text);
    return body && typeof body.code === "string" ? body.code : "";
  } catch (_) {
    return "";
  }
}

function chooseDriftView(view) {
  driftView = view;
  for (const button of $("monitoring-box").querySelectorAll(".toggle button")) {
    button.setAttribute("aria-pressed", String(button.dataset.view === view));
  }
  if (monitoring) renderMonitoring(); // from the answer already read: the toggle asks the server nothing
}

function renderMonitoring() {
  const reports = Array.isArray(monitoring.versions) ? monitoring.versions.filter((r) => r && typeof r === "object") : [];
  const thresholds = monitoring.thresholds || {};
  $("monitoring").replaceChildren(...reports.map((report) => monitorVersion(report, thresholds)));
  $("monitoring-message").className = "muted";
  $("monitoring-message").textContent = reports.length ? "" : "Nothing monitored yet.";
}

// A number as a person reads it: counts whole, the rest to 3 significant digits; "–" for none.
function amount(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(3)));
}

function duration(seconds) {
  if (typeof seconds !== "number" || !(seconds > 0)) return "window";
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

function svg(name, attributes = {}, text = undefined) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function element(name, className, text = undefined) {
  const node = document.createElement(name);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// A long label cut to fit the chart's label column; the whole of it is in the row's tooltip.
function shorten(text, length) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

function figure(caption, ...content) {
  const node = element("figure");
  node.append(element("figcaption", "", caption), ...content);
  return node;
}

// One version: its header line, then its charts.
function monitorVersion(report, thresholds) {
  const section = element("section", "monitor");
  section.dataset.version = String(report.version ?? "");
  const drift = report.drift || {};
  const status = Object.hasOwn(DRIFT, drift.status) ? drift.status : "unknown";
  const head = element("p", "monitor-head");
  const name = element("strong");
  appendBreakable(name, `version ${report.version ?? "?"}`);
  const task = report.task || {};
  const parts = [task.kind || "unknown task", referenceWords(report.reference), windowWords(report.windows)].filter(Boolean);
  const badge = element("span", `badge drift-badge drift-${status}`, DRIFT[status] || "unknown");
  head.append(name, ...parts.map((part) => ` · ${part}`), " · drift ", badge);
  const regressor = task.kind === "regressor" || Boolean(report.output);
  const classes = report.classes && typeof report.classes === "object" ? Object.entries(report.classes) : [];
  const charts = element("div", "charts");
  charts.append(regressor ? outputFigure(report.output, task) : confidenceFigure(report.confidence));
  if (!regressor || classes.length) charts.append(classesFigure(classes));
  charts.append(driftFigure(drift[driftView], drift.status, report.windows, thresholds));
  section.append(head, charts);
  return section;
}

function referenceWords(reference) {
  if (!reference) return "no reference";
  if (reference.source) return `reference: ${reference.source}, ${amount(reference.rows)} rows`;
  const collecting = reference.collecting;
  return collecting ? `reference: collecting ${amount(collecting.rows)}/${amount(collecting.target)}` : "no reference yet";
}

function windowWords(windows) {
  const span = (windows || {}).window;
  return span ? `${amount(span.predictions)} predictions in the last ${duration(span.seconds)}` : "";
}

// The classifier's confidence: a bar per bucket of top probability (bucket i holds (buckets[i-1], buckets[i]]),
// drawn side by side at equal widths, and a dashed line at the mean.
function confidenceFigure(confidence) {
  const buckets = confidence && Array.isArray(confidence.buckets) ? confidence.buckets : [];
  if (buckets.length === 0 || !(confidence.count > 0)) return figure("Confidence", element("p", "muted", "No predictions in the window yet."));
  const counts = buckets.map((_, i) => (Array.isArray(confidence.counts) && Number(confidence.counts[i])) || 0);
  const [width, height, top, bottom] = [320, 110, 4, 14];
  const slot = width / buckets.length;
  const most = Math.max(...counts) || 1;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": "confidence histogram" });
  const every = Math.ceil(buckets.length / 12); // a tick label under at most 12 bars
  buckets.forEach((upper, i) => {
    const tall = ((height - top - bottom) * counts[i]) / most;
    const bar = svg("rect", { x: i * slot + 1, y: height - bottom - tall, width: slot - 2, height: tall, class: "bar confidence-bar" });
    bar.append(svg("title", {}, `${amount(i ? buckets[i - 1] : 0)}–${amount(upper)}: ${counts[i]}`));
    chart.append(bar);
    if (i % every === 0) chart.append(svg("text", { x: (i + 0.5) * slot, y: height - 3, "text-anchor": "middle" }, amount(upper)));
  });
  const mean = confidence.mean;
  const at = buckets.findIndex((upper) => mean <= upper);
  if (typeof mean === "number" && at >= 0) { // its place inside its bucket, linearly
    const lower = at ? buckets[at - 1] : 0;
    const x = (at + (buckets[at] > lower ? (mean - lower) / (buckets[at] - lower) : 1)) * slot;
    const line = svg("line", { x1: x, x2: x, y1: top, y2: height - bottom, class: "mean" });
    line.append(svg("title", {}, `mean ${amount(mean)}`));
    chart.append(line);
  }
  return figure(`Confidence of ${amount(confidence.count)} predictions · mean ${amount(mean)} · mean margin ${amount(confidence.mean_margin)}`, chart);
}

// A regressor's output: its summary numbers.
function outputFigure(output, task) {
  if (!output && task.kind === "regressor" && !task.output) return figure("Output", element("p", "muted", "No numeric output to read."));
  if (!output || !(output.count > 0)) return figure("Output", element("p", "muted", "No predictions in the window yet."));
  const list = element("dl", "numbers");
  for (const key of ["count", "mean", "std", "min", "max"]) list.append(element("dt", "", key), element("dd", "", amount(output[key])));
  return figure("Output", list);
}

function classesFigure(entries) {
  if (entries.length === 0) return figure("Classes", element("p", "muted", "No classes counted yet."));
  const rows = entries.map(([label, count]) => ({ label, value: Number(count) || 0, note: amount(count), className: "class-bar" }));
  return figure("Classes", barChart(rows, 0, [], "class counts"));
}

// Drift per feature over the view chosen: PSI (or Jensen-Shannon where PSI is null), a bar each colored by
// its verdict, against the warn and alert thresholds.
function driftFigure(drift, status, windows, thresholds) {
  const over = driftView === "last_n"
    ? `the last ${amount(((windows || {}).last_n || {}).size)} predictions` : `the last ${duration(((windows || {}).window || {}).seconds)}`;
  const none = status === "no_reference" ? "No reference to compare with yet." : "Not measured.";
  if (!drift) return figure(`Drift over ${over}`, element("p", "muted", none));
  const caption = `Drift over ${over}: ${DRIFT[drift.status] || "unknown"} · ${amount(drift.rows)} rows`;
  const features = Array.isArray(drift.features) ? drift.features.filter((f) => f && typeof f === "object") : [];
  if (features.length === 0) {
    return figure(caption, element("p", "muted", drift.status === "no_reference" ? none : "No features measured."));
  }
  const method = thresholds.method === "js" ? "js" : "psi";
  const rows = features.map((feature) => {
    const metric = typeof feature[method] === "number" ? method : ["psi", "js"].find((m) => typeof feature[m] === "number");
    const verdict = VERDICTS.includes(feature.verdict) ? feature.verdict : "unknown";
    const label = String(feature.name ?? "?");
    const value = metric ? feature[metric] : 0;
    return {
      label, value, feature: label, className: `drift-bar verdict-${verdict}`,
      note: metric === undefined ? "–" : `${metric === method ? "" : `${metric} `}${amount(value)}`,
      title: `${label}: ${feature.verdict ?? "no verdict"} · psi ${amount(feature.psi)} · js ${amount(feature.js)}`
        + `${feature.missing ? ` · ${amount(feature.missing)} missing` : ""}`,
    };
  });
  const marks = [["warn", thresholds.warn], ["alert", thresholds.alert]].filter(([, value]) => typeof value === "number")
    .map(([kind, value]) => ({ kind, value }));
  const top = Math.max(0, ...marks.map((m) => m.value)) * 1.25;
  return figure(caption, barChart(rows, top, marks, `drift per feature (${method})`));
}

// Horizontal bars, a row each ({label, value, note, className, title, feature}), scaled to the largest value
// or ``top``; ``marks`` are vertical lines at thresholds ({kind, value}).
function barChart(rows, top, marks, label) {
  const [width, left, right, row, head] = [320, 124, 46, 16, marks.length ? 13 : 0];
  const height = head + rows.length * row + 2;
  const scale = Math.max(top, ...rows.map((r) => r.value)) || 1;
  const x = (value) => left + ((width - left - right) * Math.min(Math.max(value, 0), scale)) / scale;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label });
  rows.forEach((r, i) => {
    const y = head + i * row;
    const group = svg("g", {});
    if (r.feature !== undefined) group.dataset.feature = r.feature;
    group.append(svg("title", {}, r.title || `${r.label}: ${r.note}`),
      svg("text", { x: left - 4, y: y + 11, "text-anchor": "end" }, shorten(r.label, 22)),
      svg("rect", { x: left, y: y + 3, width: x(r.value) - left, height: row - 6, class: `bar ${r.className}` }),
      svg("text", { x: x(r.value) + 3, y: y + 11 }, r.note));
    chart.append(group);
  });
  for (const mark of marks) {
    const line = svg("line", { x1: x(mark.value), x2: x(mark.value), y1: head - 2, y2: height, class: `threshold threshold-${mark.kind}` });
    line.append(svg("title", {}, `${mark.kind} at ${amount(mark.value)}`));
    chart.append(line, svg("text", { x: x(mark.value), y: head - 4, "text-anchor": "middle", class: "threshold-label" }, mark.kind));
  }
  return chart;
}

// -- accuracy ------------------------------------------------------------------------------------

// GET /models/<id>/performance, read as the monitoring is: while the Accuracy section is open, when it opens,
// when another model is opened, and on its Refresh button; never on a timer. The labels it counts are the true
// answers sent to POST /models/<id>/feedback, matched with the predictions by their request ids.
const WINDOWS = [["since_upload", "since upload", null], ["day", "last", 86400], ["hour", "last", 3600]];

function renderAccuracy(body, id) {
  const versions = Array.isArray(body.versions) ? body.versions.filter((v) => v && typeof v === "object") : [];
  $("accuracy").replaceChildren(...versions.map(accuracyVersion));
  $("accuracy-message").className = "muted";
  $("accuracy-message").textContent = versions.some(hasLabels) ? ""
    : `No labels yet: send the true answers of predictions, by their request ids, to POST ${modelPath(id, "feedback")}.`;
}

// A window of a version's answer ({} when missing or not an object).
function windowOf(version, key) {
  const windows = version.windows && typeof version.windows === "object" ? version.windows : {};
  return windows[key] && typeof windows[key] === "object" ? windows[key] : {};
}

function timelinePoints(version) {
  const timeline = version.timeline && typeof version.timeline === "object" ? version.timeline : {};
  return Array.isArray(timeline.points) ? timeline.points.filter((p) => p && typeof p === "object") : [];
}

function hasLabels(version) {
  return WINDOWS.some(([key]) => windowOf(version, key).labels > 0) || timelinePoints(version).some((p) => p.labels > 0);
}

// A regressor's windows carry the mean absolute error, a classifier's the accuracy.
function isRegressor(version) {
  const kind = (version.task || {}).kind;
  if (kind === "regressor" || kind === "classifier") return kind === "regressor";
  return WINDOWS.some(([key]) => Object.hasOwn(windowOf(version, key), "mae"));
}

// An hour as the server states it (2026-12-01T03:00:00Z) in words: 2026-12-01 03:00 UTC.
function hourWords(stamp) {
  return String(stamp).replace("T", " ").replace(/(:\d\d)?(\.\d+)?Z$/, " UTC");
}

// One version: its header line, its windows in a table and its accuracy (or error) over time.
function accuracyVersion(version) {
  const section = element("section", "monitor accuracy-version");
  section.dataset.version = String(version.version ?? "");
  const task = version.task || {};
  const regressor = isRegressor(version);
  const head = element("p", "monitor-head");
  const name = element("strong");
  appendBreakable(name, `version ${version.version ?? "?"}`);
  const since = windowOf(version, "since_upload");
  head.append(name, ` · ${task.kind || (regressor ? "regressor" : "unknown task")}`, ` · ${amount(since.labels)} labels since upload`);
  section.append(head);
  if (!hasLabels(version)) {
    section.append(element("p", "muted", "No labels yet."));
    return section;
  }
  const charts = element("div", "charts");
  charts.append(windowsFigure(version, regressor), timelineFigure(version, regressor));
  section.append(charts);
  return section;
}

// The windows, a row each: since the upload, the last day, the last hour (by the time the labels arrived).
function windowsFigure(version, regressor) {
  const table = element("table", "table accuracy-windows");
  const headings = element("tr");
  for (const heading of ["Window", "Labels", ...(regressor ? ["MAE", "RMSE"] : ["Correct", "Accuracy"])]) {
    const th = element("th", "", heading);
    th.scope = "col";
    headings.append(th);
  }
  const thead = element("thead");
  thead.append(headings);
  const tbody = element("tbody");
  for (const [key, words, seconds] of WINDOWS) {
    const span = windowOf(version, key);
    const row = element("tr");
    row.dataset.window = key;
    cell(row, seconds === null ? words : `${words} ${duration(typeof span.seconds === "number" ? span.seconds : seconds)}`);
    cell(row, amount(span.labels));
    if (regressor) {
      cell(row, amount(span.mae));
      cell(row, amount(span.rmse));
    } else {
      cell(row, amount(span.correct));
      cell(row, typeof span.accuracy === "number" && Number.isFinite(span.accuracy) ? percent(span.accuracy * 100) : "–");
    }
    tbody.append(row);
  }
  table.append(thead, tbody);
  return figure(`${regressor ? "Error" : "Accuracy"} of the labels received in each window`, table);
}

// The accuracy (a regressor: the mean absolute error) of each hour with labels, oldest first, as a line broken
// where hours without labels come between two points; a dot per hour, its numbers in its tooltip.
function timelineFigure(version, regressor) {
  const key = regressor ? "mae" : "accuracy";
  const what = regressor ? "Mean absolute error" : "Accuracy";
  const timeline = version.timeline && typeof version.timeline === "object" ? version.timeline : {};
  const bucket = Number(timeline.bucket_seconds) > 0 ? Number(timeline.bucket_seconds) : 3600;
  const points = timelinePoints(version)
    .filter((p) => typeof p[key] === "number" && Number.isFinite(p[key]) && Number.isFinite(Date.parse(p.start)))
    .map((p) => ({ time: Date.parse(p.start), value: p[key], labels: p.labels, start: p.start }))
    .sort((a, b) => a.time - b.time);
  const per = bucket === 3600 ? "hour" : duration(bucket);
  if (points.length === 0) return figure(`${what} by ${per}`, element("p", "muted", "No labels in the time kept yet."));
  const [width, height, left, right, top, bottom] = [320, 120, 36, 10, 6, 16];
  const [first, last] = [points[0].time, points[points.length - 1].time];
  const x = (time) => (last > first ? left + ((width - left - right) * (time - first)) / (last - first) : (left + width - right) / 2);
  const most = regressor ? Math.max(...points.map((p) => p.value)) || 1 : 1;
  const y = (value) => top + ((height - top - bottom) * (most - Math.min(Math.max(value, 0), most))) / most;
  const label = `${what.toLowerCase()} by ${per}`;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label });
  for (const value of [0, most / 2, most]) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "grid" }),
      svg("text", { x: left - 4, y: y(value) + 3, "text-anchor": "end" }, regressor ? amount(value) : percent(value * 100)));
  }
  const runs = [];
  points.forEach((point, i) => {
    if (i === 0 || point.time - points[i - 1].time > bucket * 1000) runs.push([]);
    runs[runs.length - 1].push(point);
  });
  for (const run of runs.filter((r) => r.length > 1)) {
    chart.append(svg("polyline", { points: run.map((p) => `${x(p.time)},${y(p.value)}`).join(" "), class: "trend" }));
  }
  for (const point of points) {
    const dot = svg("circle", { cx: x(point.time), cy: y(point.value), r: 2.5, class: "point" });
    const value = regressor ? `MAE ${amount(point.value)}` : percent(point.value * 100);
    dot.append(svg("title", {}, `${hourWords(point.start)}: ${value} of ${amount(point.labels)} labels`));
    chart.append(dot);
  }
  const tick = (time) => new Date(time).toISOString().slice(5, 16).replace("T", " ");
  chart.append(svg("text", { x: left, y: height - 3 }, tick(first)));
  if (last > first) chart.append(svg("text", { x: width - right, y: height - 3, "text-anchor": "end" }, tick(last)));
  return figure(`${what} by ${per} · ${points.length} ${points.length === 1 ? per : `${per}s`} with labels`, chart);
}

async function predict() {
  const button = $("predict");
  clearMessages();
  $("response").textContent = "";
  let body;
  try {
    body = JSON.parse($("request").value);
  } catch (error) {
    $("response-meta").textContent = `The request is not valid JSON: ${error.message}`;
    $("response-meta").className = "error";
    return;
  }
  const pinned = $("predict-version").value;
  if (pinned && body !== null && typeof body === "object" && !Array.isArray(body)) body.version = pinned;
  $("response-meta").className = "muted";
  $("response-meta").textContent = "Predicting…";
  button.disabled = true;
  try {
    const response = await fetch("/predict", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
    });
    const requestId = response.headers.get("X-Request-ID");
    if (!response.ok) {
      const words = await explain(response); // read first: the class and the text change together
      $("response-meta").className = "error";
      $("response-meta").textContent = `${words} (request ${requestId})`;
      $("response").textContent = "";
      return;
    }
    const result = await response.json();
    const answered = result.model_version || response.headers.get("X-Model-Version");
    const how = body !== null && typeof body === "object" && body.version !== undefined ? "pinned" : "routed";
    $("response-meta").className = "muted";
    $("response-meta").textContent = `prediction ${JSON.stringify(result.prediction)}${answered ? ` · version ${answered} (${how})` : ""}`
      + ` · ${result.latency_ms} ms · request ${result.request_id}`;
    $("response").textContent = compactJson(result);
  } catch (error) {
    $("response-meta").className = "error";
    $("response-meta").textContent = `The server did not answer: ${error.message}`;
    $("response").textContent = "";
  } finally {
    button.disabled = false;
  }
}

function upload(event) {
  event.preventDefault();
  const form = $("upload");
  const message = $("upload-message");
  clearMessages();
  if (!form.reportValidity()) return;
  const data = new FormData();
  data.append("file", $("upload-file").files[0]);
  data.append("id", $("upload-id").value.trim());
  data.append("name", $("upload-name").value.trim());
  data.append("version", $("upload-version").value.trim());
  // XMLHttpRequest, not fetch: it reports upload progress for large models.
  const request = new XMLHttpRequest();
  const progress = $("upload-progress");
  request.open("POST", "/models/upload");
  for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
  request.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) progress.value = Math.round((100 * e.loaded) / e.total);
  });
  request.addEventListener("load", async () => {
    progress.hidden = true;
    $("upload-submit").disabled = false;
    let body = null;
    try {
      body = JSON.parse(request.responseText);
    } catch (_) { /* not JSON: refusal() says so */ }
    if (request.status === 201 && body && body.model) {
      const { id, name, version } = body.model;
      message.className = "ok";
      message.textContent = `Uploaded ${id} (${name} ${version}).`;
      for (const field of ["upload-file", "upload-id", "upload-name", "upload-version"]) $(field).value = ""; // the token stays
      await refreshModels();
      await openModel(id);
      const added = versionsView && versionsView.model_id === id && versionsView.versions.find((v) => v.version === version);
      if (added && versionsView.versions.length > 1 && !(added.traffic_percent > 0)) {
        message.textContent += ` ${id} has ${versionsView.versions.length} versions now; the routing sends this one no traffic yet (see Versions).`;
      }
    } else {
      message.className = "error";
      message.textContent = `Refused: ${refusal(request.status, request.statusText, request.responseText, request.getResponseHeader("Retry-After"))}`;
    }
  });
  request.addEventListener("error", () => {
    progress.hidden = true;
    $("upload-submit").disabled = false;
    message.className = "error";
    message.textContent = "The upload did not reach the server.";
  });
  progress.value = 0;
  progress.hidden = false;
  $("upload-submit").disabled = true;
  message.className = "muted";
  message.textContent = "Uploading…";
  request.send(data);
}

function askDelete() {
  if (!current) return;
  $("confirm-id").textContent = current.id;
  $("confirm-delete").returnValue = ""; // Escape keeps the last answer otherwise: a failed "delete" would repeat
  $("confirm-delete").showModal();
}

async function confirmDelete() {
  if ($("confirm-delete").returnValue !== "delete" || !current) return;
  const id = current.id;
  clearMessages();
  const response = await fetch(`/models/${encodeURIComponent(id)}`, { method: "DELETE", headers: authHeaders() });
  if (!response.ok) {
    const words = await explain(response);
    $("response-meta").className = "error";
    $("response-meta").textContent = `Delete refused: ${words}`;
    return;
  }
  current = null;
  $("panel").hidden = true;
  $("upload-message").className = "muted";
  $("upload-message").textContent = `Deleted ${id}.`;
  await refreshModels();
}

// The id rule is the server's own (its OpenAPI document), reserved ids included, never a copy kept here.
// An HTML pattern is compiled with the 'v' flag, where a '-' that is not a range must be escaped.
// The same for the version. Any new version of an existing id is welcome: only the server knows which it has.
async function loadIdPattern() {
  try {
    const response = await fetch("/openapi.json");
    const upload = (await response.json()).paths["/models/upload"].post.requestBody.content["multipart/form-data"];
    const asHtml = (pattern) => pattern.replace(/^\^/, "").replace(/\$$/, "").replace(/(?<!\\)-\]/g, "\\-]");
    $("upload-id").pattern = asHtml(upload.schema.properties.id.pattern);
    if (upload.schema.properties.version && upload.schema.properties.version.pattern) {
      $("upload-version").pattern = asHtml(upload.schema.properties.version.pattern);
    }
  } catch (_) {
    // Without the document the server still checks the id and the version and says what is wrong.
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("refresh").addEventListener("click", () => {
    clearMessages();
    refreshModels();
  });
  $("upload").addEventListener("submit", upload);
  $("predict").addEventListener("click", predict);
  $("request").addEventListener("input", updateCurl);
  $("token").addEventListener("input", () => current && updateCurl());
  $("token").addEventListener("change", refreshModels); // servers with NEXUS_PROTECT_PREDICT=1 list models only with it
  $("delete").addEventListener("click", askDelete);
  $("confirm-delete").addEventListener("close", confirmDelete);
  $("confirm-version-delete").addEventListener("close", confirmDeleteVersion);
  $("routing").addEventListener("submit", saveRouting);
  $("routing-default").addEventListener("change", syncRoutingInputs);
  $("predict-version").addEventListener("change", choosePredictVersion);
  $("new-version").addEventListener("click", uploadNewVersion);
  $("monitoring-box").addEventListener("toggle", () => loadSection("monitoring"));
  $("monitoring-refresh").addEventListener("click", () => loadSection("monitoring"));
  for (const button of $("monitoring-box").querySelectorAll(".toggle button")) {
    button.addEventListener("click", () => chooseDriftView(button.dataset.view));
  }
  $("accuracy-box").addEventListener("toggle", () => loadSection("accuracy"));
  $("accuracy-refresh").addEventListener("click", () => loadSection("accuracy"));
  loadIdPattern();
  refreshStatus();
  refreshModels();
  setInterval(refreshStatus, 10000);
});
