// The playground: the form (form.js) sends a job (api.js) whose events drive the progress bar; results go to
// the gallery (gallery.js). Nothing is kept on the server: a reload forgets the gallery.
import * as api from "./api.js";
import * as form from "./form.js";
import * as gallery from "./gallery.js";

const $ = (id) => document.getElementById(id);
let model = null;
let running = null;  // { id, abort } of the job being followed
let lastSeed = null;

async function load() {
  const listed = await api.call("v1/models");
  model = await api.call(`v1/models/${encodeURIComponent(listed.models[0])}/capabilities`);
  $("model").textContent = `Model ${model.name}: ${model.title}`;
  form.build(model);
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("seed-random").addEventListener("click", () => { $("seed").value = ""; });
  $("seed-reuse").addEventListener("click", () => { if (lastSeed !== null) $("seed").value = lastSeed; });
}

function describeState(state) {
  if (state.status === "queued") {
    const ahead = state.queue_position;  // the requests that start before this one
    if (ahead == null) return "Queued";
    return ahead === 0 ? "Queued: next" : `Queued: ${ahead} ahead`;
  }
  const progress = state.progress || {};
  if (state.status === "running") {
    const eta = state.eta_seconds != null ? `, about ${Math.max(0, Math.round(state.eta_seconds))} s left` : "";
    return `Step ${progress.step ?? 0} of ${progress.total_steps ?? "?"}${eta}`;
  }
  return state.status[0].toUpperCase() + state.status.slice(1);
}

function busy(yes) {
  $("generate").disabled = yes;
  $("cancel").disabled = !yes;
}

async function generate(event) {
  event.preventDefault();
  form.clearErrors();
  if (!$("prompt").value.trim()) { form.showError("prompt: write what to generate"); return; }
  let fields;
  try {
    fields = form.read();
  } catch (error) {
    form.showError(String(error.message || error));
    return;
  }
  busy(true);
  $("progress").value = 0;
  $("status").textContent = "Submitting";
  try {
    const job = await api.submit(model.name, fields);
    running = { id: job.id, abort: new AbortController() };
    const state = await api.follow(model.name, job.id, (change) => {
      $("progress").value = change.progress ? change.progress.fraction : 0;
      $("status").textContent = describeState(change);
    }, running.abort.signal);
    $("status").textContent = describeState(state);
    if (state.status === "succeeded") {
      const done = await api.read(model.name, job.id);
      const seeds = (done.predictions || []).map((p) => p.seed);
      if (seeds.length) { lastSeed = seeds[0]; $("seed-reuse").disabled = false; }
      gallery.add(model.name, done, fields, useAsInput);
    } else if (state.error) {
      form.showError(state.error.message || String(state.error));
    }
  } catch (error) {
    $("status").textContent = "";
    if (error.name !== "AbortError") form.showError(error.message || String(error));
  } finally {
    running = null;
    busy(false);
  }
}

async function cancel() {
  if (!running) return;
  $("cancel").disabled = true;
  try {
    await api.cancel(model.name, running.id);
  } catch (error) {
    form.showError(error.message);
  }
}

// A result becomes the input picture of the first picture task (img2img, edit, inpaint, img2video).
function useAsInput(url) {
  const current = form.task();
  if (!current.inputs.includes("image")) {
    const pictureTask = ["img2img", "edit", "inpaint", "img2video"].find((name) => model.tasks[name]);
    if (!pictureTask) return;
    $("task_type").value = pictureTask;
    form.show();
  }
  form.usePictures([url]);
  $("task_type").focus();
}

function start() {
  load().catch((error) => {
    if (error.status !== 401) {
      $("model").textContent = `Could not read the model's capabilities: ${error.message}`;
      return;
    }
    // --api_keys: the page asks for the key, then reads the model again with it.
    $("model").textContent = "This server asks for an API key: type it under \"API key\" below.";
    $("api_key").closest("details").open = true;
    $("api_key").focus();
    $("api_key").addEventListener("change", start, { once: true });
  });
}

start();
