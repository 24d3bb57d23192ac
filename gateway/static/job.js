// The job page: follow progress (server-sent events, polling as fallback), then show the results.
"use strict";

const jobId = decodeURIComponent(window.location.pathname.split("/").filter(Boolean).pop());
const api = `/api/v1/jobs/${encodeURIComponent(jobId)}`;

const titleEl = document.getElementById("job-title");
const badgeEl = document.getElementById("job-badge");
const subEl = document.getElementById("job-sub");
const progressEl = document.getElementById("job-progress");
const progressText = document.getElementById("progress-text");
const etaText = document.getElementById("eta-text");
const errorBox = document.getElementById("job-error");
const warningsBox = document.getElementById("job-warnings");
const deleteButton = document.getElementById("delete-button");

let finished = false;
let source = null;
let pollTimer = null;
// (time, progress) samples since the job started running, for the estimate of the time left.
const samples = [];

function setProgress(fraction, state) {
  const pct = Math.round(fraction * 100);
  progressEl.firstElementChild.style.width = `${pct}%`;
  progressEl.setAttribute("aria-valuenow", String(pct));
  progressEl.classList.toggle("done", state === "succeeded");
  progressEl.classList.toggle("failed", state === "failed");
}

function estimateLeft(job) {
  if (job.status !== "running" || job.progress <= 0) return null;
  const now = Date.now() / 1000;
  samples.push([now, job.progress]);
  while (samples.length > 30) samples.shift();
  // From the start of the run when known (steadier); else, or when the clocks of browser and server
  // disagree, from the first sample this page saw.
  const since = job.started_at ? now - new Date(job.started_at).getTime() / 1000 : -1;
  const [t0, p0] = since > 0 && since < 86400 ? [now - since, 0] : samples[0];
  if (job.progress <= p0 || now - t0 < 1) return null;
  const rate = (job.progress - p0) / (now - t0);
  return (1 - job.progress) / rate;
}

// Photo formats as people call them (job.video.format of a photo job).
const PHOTO_NAMES = { jpeg: "JPEG", png: "PNG", webp: "WebP", heif: "HEIC" };

function isPhoto(job) {
  return Boolean(job.video && job.video.kind === "image");
}

function describe(job) {
  const v = job.video;
  if (!v || !v.width) return "";  // an upload the worker has not looked at yet
  const uploaded = ` · uploaded ${timeAgo(job.created_at)}`;
  if (isPhoto(job)) return `${v.width}×${v.height} · ${PHOTO_NAMES[v.format] || "photo"} photo${uploaded}`;
  return `${v.width}×${v.height} · ${formatDuration(v.duration_s)} · ${v.frames} frames · ` +
    `${v.fps.toFixed(v.fps % 1 ? 2 : 0)} fps${v.has_audio ? " · with sound" : ""}${uploaded}`;
}

function showJob(job) {
  document.title = `Emoji video · ${job.filename}`;
  titleEl.textContent = job.filename;
  badgeEl.replaceChildren(statusBadge(job.status));
  subEl.textContent = describe(job);
  deleteButton.classList.remove("hidden");
  setProgress(job.progress, job.status);
  etaText.textContent = "";
  if (job.status === "queued") {
    progressText.textContent = "Waiting for a worker to pick it up…";
  } else if (job.status === "running" && isPhoto(job)) {
    progressText.textContent = "Finding faces and drawing the emoji…";
  } else if (job.status === "running") {
    // The stages fill the bar in this order (common/jobs.py): faces 55 %, drawing 40 %, joining 5 %.
    const stage = job.progress < 0.55 ? "Finding faces and emotions" : job.progress < 0.95 ? "Drawing the emoji"
      : "Putting the video together";
    const frames = job.frames_total && job.progress >= 0.55 ? ` · ${job.frames_done} of ${job.frames_total} frames drawn` : "";
    progressText.textContent = `${stage}… ${Math.round(job.progress * 100)}%${frames}`;
    const left = estimateLeft(job);
    if (left !== null) etaText.textContent = `about ${formatDuration(left)} left`;
  } else if (job.status === "succeeded") {
    const took = job.started_at && job.finished_at
      ? ` in ${formatDuration((new Date(job.finished_at) - new Date(job.started_at)) / 1000)}` : "";
    progressText.textContent = `Done${took}.`;
  } else if (job.status === "failed") {
    progressText.textContent = "The job failed.";
    const message = job.error ? job.error.message : "no reason was recorded";
    errorBox.replaceChildren(
      el("strong", { text: "This video could not be processed" }),
      el("span", { text: `${capitalize(message)}. ` }),
      el("span", { text: "Try uploading it again; if it fails again, try another file or tell the operator " +
        `(job ${job.id}${job.error ? `, code ${job.error.code}` : ""}).` }),
    );
    errorBox.classList.remove("hidden");
  }
  // A job can succeed with parts missing (a damaged file): say which, never silently.
  if (job.warnings && job.warnings.length) {
    warningsBox.replaceChildren(
      el("strong", { text: "Part of this video could not be processed" }),
      ...job.warnings.map((w) => el("span", { text: `${capitalize(w.message)} (${w.code}). ` })),
    );
    warningsBox.classList.remove("hidden");
  }
  if ((job.status === "succeeded" || job.status === "failed") && !finished) {
    finished = true;
    stopFollowing();
    if (job.status === "succeeded") showResults(job);
  }
}

function stopFollowing() {
  if (source) { source.close(); source = null; }
  if (pollTimer) { clearTimeout(pollTimer); pollTimer = null; }
}

async function poll() {
  try {
    showJob(await apiGet(api));
  } catch (err) {
    if (err.status === 404) { notFound(err.message); return; }
    progressText.textContent = `Lost touch with the server (${err.message}); retrying…`;
  }
  if (!finished) pollTimer = setTimeout(poll, 1000);
}

function follow() {
  if (!window.EventSource) { poll(); return; }
  source = new EventSource(`${api}/events`);
  source.addEventListener("job", (event) => showJob(JSON.parse(event.data)));
  source.addEventListener("gone", () => { stopFollowing(); notFound("The job was deleted."); });
  // Any trouble with the stream (a proxy that buffers, a restart): fall back to plain polling.
  source.onerror = () => { if (!finished) { stopFollowing(); poll(); } };
}

function notFound(message) {
  finished = true;
  stopFollowing();
  titleEl.textContent = "Job not found";
  badgeEl.replaceChildren();
  progressText.textContent = "";
  errorBox.replaceChildren(el("strong", { text: "There is no such job" }),
    el("span", { text: `${capitalize(message)} ` }));
  errorBox.classList.remove("hidden");
  deleteButton.classList.add("hidden");
}

async function showResults(job) {
  document.getElementById("dl-json").href = `${api}/timeline?download=true`;
  document.getElementById("dl-csv").href = `${api}/timeline.csv`;
  if (isPhoto(job)) { showPhoto(job); return; }
  const player = document.getElementById("player");
  player.src = `${api}/video`;
  document.getElementById("dl-video").href = `${api}/video?download=true`;
  document.getElementById("result-card").classList.remove("hidden");

  let timeline;
  try {
    timeline = await apiGet(`${api}/timeline`);
  } catch (err) {
    document.getElementById("chart-help").textContent = `The timeline could not be loaded: ${err.message}`;
    document.getElementById("chart-card").classList.remove("hidden");
    return;
  }
  const video = timeline.video || job.video || {};
  const fps = video.fps || 25;
  const chart = new EmotionChart(document.getElementById("chart"), document.getElementById("chart-tip"), {
    duration: video.duration_s || (job.video && job.video.duration_s) || 1,
    frameSeconds: 1 / fps,
    onSeek: (t) => {
      player.currentTime = t;
      chart.setPlayhead(t);
    },
  });
  document.getElementById("chart-card").classList.remove("hidden");
  chart.setLanes(lanesFromTimeline(timeline));

  let raf = null;
  const tick = () => { chart.setPlayhead(player.currentTime); raf = player.paused ? null : requestAnimationFrame(tick); };
  player.addEventListener("play", () => { if (!raf) raf = requestAnimationFrame(tick); });
  player.addEventListener("seeked", () => chart.setPlayhead(player.currentTime));
  player.addEventListener("pause", () => chart.setPlayhead(player.currentTime));

  const emotions = timeline.emotions || EMOTIONS;
  document.getElementById("legend").replaceChildren(...emotions.map((name) => {
    const swatch = el("i");
    swatch.style.background = EMOTION_COLORS[name] || "#888";
    return el("span", {}, swatch, capitalize(name));
  }));
  showSummary(timeline, emotions);
}

// A photo: the drawn photo, its download, and each face with its emotion (no chart: one moment has no
// course over time).
async function showPhoto(job) {
  const photo = document.getElementById("photo");
  photo.src = `${api}/image`;
  photo.classList.remove("hidden");
  document.getElementById("player").classList.add("hidden");
  const download = document.getElementById("dl-video");
  download.href = `${api}/image?download=true`;
  download.textContent = `Download ${PHOTO_NAMES[job.video.format] || "photo"}`;
  document.getElementById("result-card").classList.remove("hidden");
  document.getElementById("shares-title").textContent = "Share of faces";
  let timeline;
  try {
    timeline = await apiGet(`${api}/timeline`);
  } catch (err) {
    document.getElementById("people").replaceChildren(
      el("li", { class: "muted small", text: `The faces could not be loaded: ${err.message}` }));
    document.getElementById("summary-grid").classList.remove("hidden");
    return;
  }
  showSummary(timeline, timeline.emotions || EMOTIONS);
  const faces = (timeline.frames[0] || { faces: [] }).faces;
  document.getElementById("people").replaceChildren(...(faces.length ? faces.map((face) => {
    const sure = Math.round((face.smoothed_probabilities[face.shown_emotion] || 0) * 100);
    return el("li", { class: "face" },
      el("img", { src: emojiUrl(face.shown_emotion), alt: "", class: "face-emoji" }),
      el("span", { class: "job-name", text: `Person #${face.person_id}` }),
      el("span", { class: "badge", text: capitalize(face.shown_emotion) }),
      el("span", { class: "job-meta", text: `${sure}% sure` }));
  }) : [el("li", { class: "muted small", text: "No faces were found in this photo." })]));
}

function showSummary(timeline, emotions) {
  const summary = timeline.summary || {};
  const share = summary.share || {};
  const shares = document.getElementById("shares");
  if (!summary.face_time_ms) {
    shares.replaceChildren(el("p", { class: "muted small", text: "No faces were found, so there is nothing to count." }));
  } else {
    shares.replaceChildren(...emotions.map((name) => {
      const fill = el("div");
      fill.style.width = `${Math.round((share[name] || 0) * 100)}%`;
      fill.style.background = EMOTION_COLORS[name];
      const label = el("span", {}, el("img", { src: emojiUrl(name), alt: "" }), capitalize(name));
      return el("div", { class: "share-row" }, label, el("div", { class: "bar" }, fill),
        el("span", { class: "pct", text: `${Math.round((share[name] || 0) * 100)}%` }));
    }));
  }
  const people = document.getElementById("people");
  const list = timeline.people || [];
  if (!list.length) {
    people.replaceChildren(el("li", { class: "muted small", text: "Nobody was seen in this video." }));
  } else {
    people.replaceChildren(...list.map((person) => {
      const dom = person.dominant_emotion;
      const span = `${formatClock(person.first_ms / 1000)} – ${formatClock(person.last_ms / 1000)}`;
      const link = el("a", { href: "#" },
        el("span", { class: "job-name", text: `Person #${person.person_id}` }),
        el("span", { class: "badge", text: dom ? capitalize(dom) : "—" }),
        el("span", { class: "job-meta", text: `in view ${span} · ${(person.segments || []).length} mood stretch${(person.segments || []).length === 1 ? "" : "es"}` }));
      link.addEventListener("click", (event) => {
        event.preventDefault();
        document.getElementById("player").currentTime = person.first_ms / 1000;
      });
      return el("li", {}, link);
    }));
  }
  document.getElementById("summary-grid").classList.remove("hidden");
}

deleteButton.addEventListener("click", async () => {
  if (!window.confirm("Delete this job, its video and its timeline? This cannot be undone.")) return;
  const response = await fetch(api, { method: "DELETE" });
  if (response.ok || response.status === 404) {
    window.location.assign("/");
  } else {
    errorBox.replaceChildren(el("strong", { text: "Could not delete the job" }), el("span", { text: await apiError(response) }));
    errorBox.classList.remove("hidden");
  }
});

follow();
