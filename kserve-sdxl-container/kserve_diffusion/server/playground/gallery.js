// This page's results: each image or video with the parameters that made it, a download link, "use as
// input" and "copy as curl" (the same request, seed included, to the server's :predict route).
import { base } from "./api.js";

const $ = (id) => document.getElementById(id);
const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4", "image/gif": "gif" };

function shellQuote(text) {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

// The request as a curl command against this server: the body on stdin, so prompts need no escaping.
export function curlCommand(model, fields) {
  const url = new URL(`v1/models/${encodeURIComponent(model)}:predict`, base).href;
  const key = $("api_key").value.trim() ? ` \\\n  -H "Authorization: Bearer $API_KEY"` : "";
  const body = JSON.stringify({ instances: [fields] });
  return `curl -sS --fail-with-body ${shellQuote(url)} \\\n  -H 'Content-Type: application/json'${key} \\\n`
    + `  --data-binary @- <<'REQUEST_BODY'\n${body}\nREQUEST_BODY`;
}

function describe(fields, prediction) {
  const list = document.createElement("dl");
  const shown = { ...fields, seed: prediction.seed };
  for (const [name, value] of Object.entries(shown)) {
    if (["image", "images", "mask", "image_url"].includes(name)) continue;
    const term = document.createElement("dt");
    const detail = document.createElement("dd");
    term.textContent = name;
    detail.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
    list.append(term, detail);
  }
  return list;
}

function button(text, action) {
  const made = Object.assign(document.createElement("button"), { type: "button", textContent: text });
  made.addEventListener("click", action);
  return made;
}

// Adds a succeeded job's predictions; `useAsInput(url)` feeds a result to a picture task.
export function add(model, job, fields, useAsInput) {
  $("empty").hidden = true;
  for (const prediction of job.predictions || []) {
    const files = prediction.video ? [prediction.video] : prediction.images || [];
    files.forEach((file, index) => {
      const figure = document.createElement("figure");
      const media = document.createElement(prediction.video ? "video" : "img");
      media.src = file;
      if (prediction.video) Object.assign(media, { controls: true, loop: true, muted: true, playsInline: true });
      else media.alt = `${fields.task_type}: ${fields.prompt}`;
      const type = file.startsWith("data:") ? file.slice(5, file.indexOf(";")) : "";
      const download = Object.assign(document.createElement("a"), { href: file, textContent: "Download" });
      download.download = `${job.id}-${index}.${EXTENSIONS[type] || (prediction.video ? "mp4" : "png")}`;
      const actions = document.createElement("div");
      actions.className = "row";
      actions.append(download);
      if (!prediction.video) actions.append(button("Use as input", () => useAsInput(file)));
      actions.append(button("Copy as curl", () => showCurl(model, { ...fields, seed: prediction.seed })));
      const caption = document.createElement("figcaption");
      caption.append(describe(fields, prediction));
      figure.append(media, actions, caption);
      $("gallery").prepend(figure);
    });
  }
}

function showCurl(model, fields) {
  const command = curlCommand(model, fields);
  $("curl-command").value = command;
  const copied = navigator.clipboard ? navigator.clipboard.writeText(command) : Promise.reject(new Error("no clipboard"));
  copied.then(
    () => { $("curl-hint").textContent = "Copied to the clipboard. It asks the same server for the same result."; },
    () => { $("curl-hint").textContent = "Select the command and copy it (this page cannot reach the clipboard)."; },
  );
  $("curl-dialog").showModal();
  $("curl-command").select();
}
