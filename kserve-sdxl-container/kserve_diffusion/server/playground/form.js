// The form, built from the model's capabilities: each task shows only the fields it reads, with the server's
// defaults and ranges; errors from the server are shown next to the field they name.
import * as mask from "./mask.js";

const $ = (id) => document.getElementById(id);
const ALWAYS = ["prompt", "negative_prompt"];
const CHOICES = { scheduler: "schedulers", output_format: "output_formats" };
// Request fields an error may name, and the control that shows it.
const SHOWN_AT = { image_url: "image", images: "image", mask_url: "mask", video_resolution: "video_width" };

let capabilities = null;
let pictures = [];  // the input pictures as data URLs (or the URLs of results used as input)

export const task = () => capabilities.tasks[$("task_type").value];

export function build(model) {
  capabilities = model;
  for (const name of Object.keys(model.tasks)) $("task_type").append(new Option(name, name));
  for (const field of document.querySelectorAll(".field[data-field]")) {
    const note = document.createElement("p");
    note.className = "field-error";
    note.id = `${field.dataset.field}-error`;
    note.setAttribute("role", "alert");
    field.append(note);
    const control = field.querySelector("[name]");
    if (control) control.setAttribute("aria-describedby", note.id);
  }
  $("task_type").addEventListener("change", () => show());
  $("image").addEventListener("change", () => readFiles($("image").files));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    readFiles(event.dataTransfer.files);
  });
  $("mask-fill").addEventListener("click", mask.fill);
  $("mask-clear").addEventListener("click", mask.clear);
  show();
}

function loraRows(family) {
  const list = $("lora-list");
  list.replaceChildren();
  const adapters = capabilities.loras.filter((adapter) => adapter.family === family);
  for (const adapter of adapters) {
    const row = document.createElement("div");
    row.className = "lora";
    const label = document.createElement("label");
    const use = Object.assign(document.createElement("input"), { type: "checkbox", value: adapter.name });
    label.append(use, ` ${adapter.name} (rank ${adapter.rank})`);
    const scale = Object.assign(document.createElement("input"), { type: "number", value: "1", step: "0.05" });
    Object.assign(scale, { min: "-4", max: "4" });
    scale.setAttribute("aria-label", `${adapter.name} scale`);
    row.append(label, scale);
    list.append(row);
  }
  return adapters.length > 0;
}

// Shows the chosen task's fields with its defaults.
export function show() {
  const chosen = task();
  clearErrors();
  const fields = new Set([...ALWAYS, ...(chosen.fields || [])]);
  for (const field of document.querySelectorAll(".field[data-field]")) {
    const name = field.dataset.field;
    if (name === "image" || name === "mask") field.hidden = !chosen.inputs.includes(name);
    else if (name === "loras") field.hidden = !loraRows(chosen.family);
    else field.hidden = !fields.has(name);
  }
  for (const [name, list] of Object.entries(CHOICES)) {
    $(name).replaceChildren(...(chosen[list] || []).map((value) => new Option(value, value)));
  }
  const defaults = chosen.defaults || {};
  for (const name of chosen.fields || []) {
    const control = $(name);
    if (!control || name === "seed") continue;
    const range = (chosen.ranges || {})[name] || {};
    for (const bound of ["min", "max", "step"]) {
      if (range[bound] !== undefined && range[bound] <= Number.MAX_SAFE_INTEGER) control[bound] = range[bound];
    }
    control.value = defaults[name] ?? "";
    if (chosen.inputs.length && ["width", "height", "video_width", "video_height"].includes(name)) {
      control.placeholder = "the picture's";
    }
  }
  $("image").multiple = chosen.max_input_images > 1;
  $("mask").hidden = !chosen.inputs.includes("mask");
}

function readFiles(files) {
  const chosen = [...files].filter((file) => file.type.startsWith("image/")).slice(0, task().max_input_images);
  Promise.all(chosen.map((file) => new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  }))).then(usePictures);
}

// Makes `urls` the input pictures (the first is shown, and masked for inpainting).
export function usePictures(urls) {
  pictures = urls;
  const picture = $("picture");
  $("stage").hidden = urls.length === 0;
  $("picture-count").textContent = urls.length > 1 ? `${urls.length} pictures: the first is shown` : "";
  if (!urls.length) return;
  picture.onload = () => mask.reset(picture.naturalWidth, picture.naturalHeight);
  picture.src = urls[0];
}

// The request's fields as the form has them (empty fields are left to the server's defaults).
export function read() {
  const chosen = task();
  const fields = { task_type: $("task_type").value, prompt: $("prompt").value };
  if ($("negative_prompt").value.trim()) fields.negative_prompt = $("negative_prompt").value;
  for (const name of chosen.fields || []) {
    const control = $(name);
    if (!control || control.value === "") continue;
    fields[name] = control.type === "number" ? Number(control.value) : control.value;
  }
  if (chosen.inputs.includes("image") && pictures.length) {
    const key = (url) => (url.startsWith("data:") ? "image" : "image_url");
    if (pictures.length > 1) fields.images = pictures;
    else fields[key(pictures[0])] = pictures[0];
  }
  if (chosen.inputs.includes("mask") && mask.isPainted()) fields.mask = mask.asDataUrl();
  const loras = [...document.querySelectorAll("#lora-list .lora")]
    .filter((row) => row.querySelector("[type=checkbox]").checked)
    .map((row) => ({ name: row.querySelector("[type=checkbox]").value, scale: Number(row.querySelector("[type=number]").value) }));
  if (loras.length && !$("lora-list").closest(".field").hidden) fields.loras = loras;
  return fields;
}

export function clearErrors() {
  $("error").textContent = "";
  for (const note of document.querySelectorAll(".field-error")) note.textContent = "";
  for (const control of document.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
}

// Shows the server's message next to the field it names ("<field>: ..."), else above the buttons.
export function showError(message) {
  const named = message.split(":")[0].split(/[.[ ]/)[0];
  const name = SHOWN_AT[named] || named;
  const field = document.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
  if (field && !field.hidden) {
    $(`${name}-error`).textContent = message;
    const control = field.querySelector("[name]") || field.querySelector("input");
    if (control) { control.setAttribute("aria-invalid", "true"); control.focus(); }
  } else {
    $("error").textContent = message;
  }
}
