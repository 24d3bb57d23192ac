// The upload page: pick or drop a file, check the size limit, upload with progress, go to the job page.
"use strict";

const form = document.getElementById("upload-form");
const input = document.getElementById("file-input");
const dropzone = document.getElementById("dropzone");
const fileRow = document.getElementById("file-row");
const uploadButton = document.getElementById("upload-button");
const progressBox = document.getElementById("upload-progress");
const progressBar = document.getElementById("progress-bar");
const progressText = document.getElementById("progress-text");
const progressRate = document.getElementById("progress-rate");
const errorBox = document.getElementById("upload-error");

let limits = null;
let chosen = null;
let uploading = false;

function showError(title, message) {
  errorBox.replaceChildren(el("strong", { text: title }), el("span", { text: capitalize(message) }));
  errorBox.classList.remove("hidden");
}

function clearError() {
  errorBox.classList.add("hidden");
  errorBox.replaceChildren();
}

function setProgress(fraction) {
  const pct = Math.round(fraction * 100);
  progressBar.firstElementChild.style.width = `${pct}%`;
  progressBar.setAttribute("aria-valuenow", String(pct));
}

// The limit comes from the server so the page never disagrees with it; checked before a byte is sent.
function sizeProblem(file) {
  if (file.size === 0) return "The file is empty; pick a video or a photo.";
  if (limits && file.size > limits.max_upload_bytes) {
    return `The file is ${formatBytes(file.size)}, over the ${formatBytes(limits.max_upload_bytes)} limit. ` +
      "Upload a shorter clip, or compress it first (for example at a lower resolution).";
  }
  return null;
}

function choose(file) {
  if (!file || uploading) return;
  clearError();
  chosen = file;
  document.getElementById("file-name").textContent = file.name;
  document.getElementById("file-size").textContent = formatBytes(file.size);
  fileRow.classList.remove("hidden");
  const problem = sizeProblem(file);
  uploadButton.disabled = Boolean(problem);
  if (problem) showError("This file cannot be uploaded", problem);
}

function upload() {
  if (!chosen || uploading) return;
  const problem = sizeProblem(chosen);
  if (problem) { showError("This file cannot be uploaded", problem); return; }
  clearError();
  uploading = true;
  uploadButton.disabled = true;
  progressBox.classList.remove("hidden");
  setProgress(0);
  progressText.textContent = "Uploading…";

  const data = new FormData();
  data.append("file", chosen, chosen.name);
  // The render options (style, labels) go with the file; the server validates them.
  data.append("style", form.querySelector('input[name="style"]:checked').value);
  data.append("labels", document.getElementById("labels-input").checked ? "true" : "false");
  const xhr = new XMLHttpRequest();
  const started = performance.now();
  xhr.open("POST", "/api/v1/jobs");
  xhr.responseType = "json";
  xhr.upload.onprogress = (event) => {
    if (!event.lengthComputable) return;
    setProgress(event.loaded / event.total);
    const seconds = (performance.now() - started) / 1000;
    const rate = event.loaded / Math.max(seconds, 0.001);
    progressText.textContent = `Uploading… ${formatBytes(event.loaded)} of ${formatBytes(event.total)}`;
    progressRate.textContent = event.loaded < event.total
      ? `${formatBytes(rate)}/s · ${formatDuration((event.total - event.loaded) / rate)} left` : "";
  };
  xhr.upload.onload = () => {
    setProgress(1);
    progressText.textContent = "Checking the file…";
    progressRate.textContent = "";
  };
  xhr.onload = () => {
    const body = xhr.response;
    if (xhr.status === 202 && body && body.links) {
      progressText.textContent = "Accepted; opening the job…";
      window.location.assign(body.links.page);
      return;
    }
    const message = body && body.error ? body.error.message : `the server answered ${xhr.status}`;
    // 429: one of this browser's limits (uploads per minute, jobs at once, storage); the message names it.
    fail(xhr.status === 429 ? "Please wait a little" : "The upload was refused", message);
  };
  xhr.onerror = () => fail("The upload did not finish",
    "the connection broke off. Check that the server is running and your network works, then try again.");
  xhr.send(data);
}

function fail(title, message) {
  uploading = false;
  uploadButton.disabled = false;
  progressBox.classList.add("hidden");
  showError(title, message);
}

input.addEventListener("change", () => choose(input.files[0]));
form.addEventListener("submit", (event) => { event.preventDefault(); upload(); });

for (const name of ["dragenter", "dragover"]) {
  dropzone.addEventListener(name, (event) => { event.preventDefault(); dropzone.classList.add("dragover"); });
}
for (const name of ["dragleave", "drop"]) {
  dropzone.addEventListener(name, () => dropzone.classList.remove("dragover"));
}
dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer.files.length) choose(event.dataTransfer.files[0]);
});

async function loadLimits() {
  try {
    limits = await apiGet("/api/v1/limits");
    const photos = (limits.photo_formats || []).map((f) => (f === "heif" ? "HEIC" : f === "webp" ? "WebP" : f.toUpperCase()));
    document.getElementById("limits-hint").textContent = "Videos: MP4, MOV, MKV, WebM, AVI and more" +
      (photos.length ? ` · photos: ${photos.join(", ")}` : "") + ` · up to ${formatBytes(limits.max_upload_bytes)}`;
    if (chosen) choose(chosen);
  } catch (err) {
    // The server still enforces the limit; the page just cannot check it first.
  }
}

async function loadRecent() {
  const list = document.getElementById("recent-jobs");
  try {
    const { jobs } = await apiGet("/api/v1/jobs?limit=10");
    if (!jobs.length) {
      list.replaceChildren(el("li", { class: "muted small",
        text: "Nothing yet. What you upload from this browser appears here; nobody else sees it." }));
      return;
    }
    list.replaceChildren(...jobs.map((job) => {
      const meta = job.status === "running"
        ? `${Math.round(job.progress * 100)}% · started ${timeAgo(job.started_at || job.created_at)}`
        : `uploaded ${timeAgo(job.created_at)}` + (!job.video || !job.video.width ? ""
          : job.video.kind === "image" ? ` · ${job.video.width}×${job.video.height} photo`
          : ` · ${job.video.width}×${job.video.height}, ${formatDuration(job.video.duration_s)}`);
      return el("li", {}, el("a", { href: job.links.page },
        el("span", { class: "job-name", text: job.filename }), statusBadge(job.status),
        el("span", { class: "job-meta", text: meta })));
    }));
  } catch (err) {
    list.replaceChildren(el("li", { class: "muted small", text: `Could not load recent uploads: ${err.message}` }));
  }
}

loadLimits();
loadRecent();
