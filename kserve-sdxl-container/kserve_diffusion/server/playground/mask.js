// The inpainting mask: painted with a brush (mouse, pen or finger) on a canvas laid over the picture, at the
// picture's own resolution; sent as a black PNG with the painted area white.
const canvas = document.getElementById("mask");
const context = canvas.getContext("2d");
let painting = false;
let painted = false;

export function reset(width, height) {
  canvas.width = width;
  canvas.height = height;
  painted = false;
}

export const isPainted = () => painted;

function brushAt(event) {
  const box = canvas.getBoundingClientRect();
  const scale = canvas.width / box.width;
  const x = (event.clientX - box.left) * scale;
  const y = (event.clientY - box.top) * scale;
  const radius = (Number(document.getElementById("brush").value) / 2) * scale;
  context.fillStyle = "white";
  context.beginPath();
  context.arc(x, y, radius, 0, 2 * Math.PI);
  context.fill();
  painted = true;
}

canvas.addEventListener("pointerdown", (event) => {
  painting = true;
  canvas.setPointerCapture(event.pointerId);
  brushAt(event);
});
canvas.addEventListener("pointermove", (event) => { if (painting) brushAt(event); });
for (const name of ["pointerup", "pointercancel"]) canvas.addEventListener(name, () => { painting = false; });

export function fill() {
  context.fillStyle = "white";
  context.fillRect(0, 0, canvas.width, canvas.height);
  painted = true;
}

export function clear() {
  context.clearRect(0, 0, canvas.width, canvas.height);
  painted = false;
}

// The mask as a PNG data URL: black everywhere, white where painted.
export function asDataUrl() {
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height;
  const drawing = out.getContext("2d");
  drawing.fillStyle = "black";
  drawing.fillRect(0, 0, out.width, out.height);
  drawing.drawImage(canvas, 0, 0);
  return out.toDataURL("image/png");
}
