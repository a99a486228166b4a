// The playground: a form built from the model's capabilities, generation through the job API (its
// Server-Sent Events drive the progress bar), results in a gallery. Every URL is relative to the page,
// so it works behind a path prefix.
const base = new URL("..", document.baseURI);  // the server's root, wherever it is mounted
const $ = (id) => document.getElementById(id);
let capabilities = null;
let current = null;  // the running job's id

async function load() {
  const models = await (await fetch(new URL("v1/models", base))).json();
  const name = models.models[0];
  capabilities = await (await fetch(new URL(`v1/models/${name}/capabilities`, base))).json();
  $("model").textContent = `${capabilities.name}: ${capabilities.title}`;
  for (const task of Object.keys(capabilities.tasks)) {
    $("task").append(new Option(task, task));
  }
  $("task").addEventListener("change", fillDefaults);
  fillDefaults();
}

function fillDefaults() {
  const defaults = capabilities.tasks[$("task").value].defaults || {};
  $("steps").value = defaults.num_inference_steps ?? "";
  $("steps").max = capabilities.limits.max_steps;
  $("width").value = defaults.width ?? defaults.video_width ?? "";
  $("height").value = defaults.height ?? defaults.video_height ?? "";
}

function instance() {
  const task = $("task").value;
  const video = capabilities.tasks[task].video;
  const fields = { task_type: task, prompt: $("prompt").value };
  const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  fields.num_inference_steps = number("steps");
  fields[video ? "video_width" : "width"] = number("width");
  fields[video ? "video_height" : "height"] = number("height");
  fields.seed = number("seed");
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined));
}

async function generate(event) {
  event.preventDefault();
  $("error").textContent = "";
  const jobs = new URL(`v1/models/${capabilities.name}/jobs`, base);
  const fields = instance();
  const submitted = await fetch(jobs, { method: "POST", body: JSON.stringify({ instances: [fields] }) });
  const job = await submitted.json();
  if (!submitted.ok) {
    $("error").textContent = job.error || JSON.stringify(job);
    return;
  }
  current = job.id;
  $("generate").disabled = true;
  $("cancel").disabled = false;
  const events = new EventSource(new URL(`${jobs.pathname}/${job.id}/events`, base));
  const finish = async (state) => {
    events.close();
    $("generate").disabled = false;
    $("cancel").disabled = true;
    current = null;
    $("status").textContent = state.status;
    if (state.status === "succeeded") {
      show(await (await fetch(new URL(`${jobs.pathname}/${job.id}`, base))).json(), fields);
    } else if (state.error) {
      $("error").textContent = state.error.message;
    }
  };
  const update = (message) => {
    const state = JSON.parse(message.data);
    const progress = state.progress || {};
    $("progress").value = progress.fraction || 0;
    $("status").textContent = `${state.status} ${progress.step ?? 0}/${progress.total_steps ?? "?"}`;
    if (["succeeded", "failed", "cancelled"].includes(state.status)) finish(state);
  };
  for (const name of ["queued", "running", "progress", "succeeded", "failed", "cancelled"]) {
    events.addEventListener(name, update);
  }
}

function show(job, fields) {
  for (const prediction of job.predictions) {
    const files = prediction.video ? [prediction.video] : prediction.images;
    for (const file of files) {
      const figure = document.createElement("figure");
      const media = document.createElement(prediction.video ? "video" : "img");
      media.src = file;
      if (prediction.video) media.controls = true; else media.alt = fields.prompt;
      const caption = document.createElement("figcaption");
      caption.textContent = `${fields.task_type}, seed ${prediction.seed}`;
      figure.append(media, caption);
      $("gallery").prepend(figure);
    }
  }
}

$("form").addEventListener("submit", generate);
$("cancel").addEventListener("click", () => {
  if (current) fetch(new URL(`v1/models/${capabilities.name}/jobs/${current}`, base), { method: "DELETE" });
});
load().catch((error) => { $("model").textContent = `could not read the model: ${error}`; });
