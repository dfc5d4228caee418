// The Model Nexus console: plain JavaScript, same-origin requests only.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // the model shown in the panel

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
  $("upload-message").className = "";
  $("upload-message").textContent = "";
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

// A cell for a name or a type (output_probability, seq(map(int64,tensor(float)))) that may wrap after _ . - ( ,
// at narrow widths rather than in the middle of a word.
function breakableCell(row, text) {
  const td = document.createElement("td");
  const parts = text.split(/(?<=[_.\-(,])/);
  parts.forEach((part, i) => td.append(part, ...(i < parts.length - 1 ? [document.createElement("wbr")] : [])));
  row.appendChild(td);
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
    cell(row, model.version);
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

async function openModel(id) {
  const response = await fetch(`/models/${encodeURIComponent(id)}`, { headers: authHeaders(), cache: "no-store" });
  if (!response.ok) {
    $("models-error").textContent = await explain(response);
    $("models-error").hidden = false;
    return;
  }
  current = await response.json();
  for (const row of $("models").querySelectorAll("tbody tr")) row.setAttribute("aria-selected", String(row.dataset.id === id));
  $("panel").hidden = false;
  $("panel-title").textContent = `${current.name} (${current.id})`;
  $("panel-meta").textContent = `version ${current.version} · ${formatSize(current.size_bytes)} · created ${formatTime(current.created_at)}`
    + ` · sha256 ${current.sha256.slice(0, 12)}…`;
  fillTable("inputs", current.inputs);
  fillTable("outputs", current.outputs);
  const example = exampleRequest(current);
  $("request").value = compactJson(example.request);
  $("request-note").hidden = example.notes.length === 0;
  $("request-note").textContent = example.notes.length === 0 ? ""
    : `${example.notes.join("; ")}: too many to prefill (the console writes at most ${PREFILL_LIMIT.toLocaleString("en-US")} `
      + "values an input). Put the values in place of [], or send the request with curl.";
  $("response").textContent = "";
  $("response-meta").className = "muted";
  $("response-meta").textContent = "";
  updateCurl();
  $("predict").focus();
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
      $("response-meta").className = "error";
      $("response-meta").textContent = `${await explain(response)} (request ${requestId})`;
      $("response").textContent = "";
      return;
    }
    const result = await response.json();
    $("response-meta").className = "muted";
    $("response-meta").textContent = `prediction ${JSON.stringify(result.prediction)} · ${result.latency_ms} ms · request ${result.request_id}`;
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
      message.className = "ok";
      message.textContent = `Uploaded ${body.model.id} (${body.model.name} ${body.model.version}).`;
      for (const id of ["upload-file", "upload-id", "upload-name", "upload-version"]) $(id).value = ""; // the token stays
      await refreshModels();
      openModel(body.model.id);
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
    $("response-meta").className = "error";
    $("response-meta").textContent = `Delete refused: ${await explain(response)}`;
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
async function loadIdPattern() {
  try {
    const response = await fetch("/openapi.json");
    const upload = (await response.json()).paths["/models/upload"].post.requestBody.content["multipart/form-data"];
    const pattern = upload.schema.properties.id.pattern.replace(/^\^/, "").replace(/\$$/, "").replace(/(?<!\\)-\]/g, "\\-]");
    $("upload-id").pattern = pattern;
  } catch (_) {
    // Without the document the server still checks the id and says what is wrong.
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
  loadIdPattern();
  refreshStatus();
  refreshModels();
  setInterval(refreshStatus, 10000);
});
