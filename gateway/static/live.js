// The live page: webcam frames over a WebSocket, one in flight at a time; emoji drawn on the returned faces.
"use strict";

const MAX_W = 640;
const MAX_H = 480;
const JPEG_QUALITY = 0.8;
// Faces older than this are not drawn: the person may have moved away while answers stalled.
const STALE_MS = 1500;

const video = document.getElementById("camera");
const view = document.getElementById("view");
const stageMsg = document.getElementById("stage-msg");
const errorBox = document.getElementById("live-error");
const startButton = document.getElementById("start-button");
const stopButton = document.getElementById("stop-button");
const coverToggle = document.getElementById("cover-toggle");
const statusEl = document.getElementById("live-status");
const facesList = document.getElementById("faces-list");

const capture = document.createElement("canvas");
// What the tests (and the curious) can read: counts of what happened on this page.
const state = window.liveState = {
  framesSent: 0, answers: 0, facesSeen: 0, emojiDrawn: 0, errors: [], latencies: [], last: null,
};

let stream = null;
let ws = null;
let running = false;
let inFlight = null;
let lastAnswer = null;
let lastAnswerAt = 0;
let reconnectDelay = 500;
const answerTimes = [];

function showError(title, message) {
  errorBox.replaceChildren(el("strong", { text: title }), el("span", { text: message }));
  errorBox.classList.remove("hidden");
}

function clearError() {
  errorBox.classList.add("hidden");
}

function cameraProblem(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return ["The camera was refused",
        "Allow this site to use the camera (the camera icon in the address bar, or your browser's site " +
        "settings), then press “Start camera” again."];
    case "NotFoundError":
    case "OverconstrainedError":
      return ["No camera found", "Connect a webcam (or enable it in your system settings) and press “Start camera”."];
    case "NotReadableError":
    case "AbortError":
      return ["The camera is busy", "Another application is using the camera. Close it and press “Start camera”."];
    default:
      return ["The camera could not start", `${err && err.message ? err.message : err}. Reload the page and try again.`];
  }
}

async function start() {
  clearError();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("The camera is not available here",
      "Browsers allow the camera only on https:// pages or on localhost. Open this page over https, or on the " +
      "machine that runs the server.");
    return;
  }
  startButton.disabled = true;
  stageMsg.textContent = "Waiting for the camera…";
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" }, audio: false,
    });
  } catch (err) {
    startButton.disabled = false;
    stageMsg.textContent = "No camera.";
    showError(...cameraProblem(err));
    return;
  }
  video.srcObject = stream;
  await video.play();
  view.width = video.videoWidth || MAX_W;
  view.height = video.videoHeight || MAX_H;
  view.parentElement.style.aspectRatio = `${view.width} / ${view.height}`;
  stageMsg.classList.add("hidden");
  running = true;
  startButton.classList.add("hidden");
  stopButton.classList.remove("hidden");
  connect();
  requestAnimationFrame(render);
}

function stop() {
  running = false;
  if (ws) ws.close(1000, "viewer stopped");
  ws = null;
  if (stream) stream.getTracks().forEach((track) => track.stop());
  stream = null;
  lastAnswer = null;
  inFlight = null;
  startButton.disabled = false;
  startButton.classList.remove("hidden");
  stopButton.classList.add("hidden");
  stageMsg.textContent = "Stopped. Press “Start camera” to go on.";
  stageMsg.classList.remove("hidden");
  statusEl.textContent = "Not connected.";
}

function connect() {
  const proto = window.location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${proto}//${window.location.host}/api/v1/live`);
  ws.binaryType = "arraybuffer";
  statusEl.textContent = "Connecting…";
  // Open is not yet admitted: the server checks this browser's live limit first, then says hello.
  ws.onopen = () => { statusEl.textContent = "Connecting… (checking the live limit)"; };
  ws.onmessage = (event) => onAnswer(JSON.parse(event.data));
  ws.onclose = (event) => {
    inFlight = null;
    if (!running) return;
    // The server says why before it closes: all slots taken, this browser's own limit, or not allowed.
    if (event.code === 1013 || event.code === 1008) {
      const titles = { too_many_live_viewers: "Too many live pages open", too_many_viewers: "The live service is full" };
      const title = (closingError && titles[closingError.code]) || "The live stream is not available";
      showError(title, closingError ? capitalize(closingError.message)
        : "All live slots are in use. Try again in a minute.");
      closingError = null;
      stop();
      return;
    }
    statusEl.textContent = `Connection lost; reconnecting in ${Math.round(reconnectDelay / 1000)} s…`;
    setTimeout(() => { if (running) connect(); }, reconnectDelay);
    reconnectDelay = Math.min(reconnectDelay * 2, 8000);
  };
}

// One frame in flight: the next frame is captured only when the answer to this one has arrived.
function sendFrame() {
  if (!running || !ws || ws.readyState !== WebSocket.OPEN || inFlight) return;
  if (!video.videoWidth) { setTimeout(sendFrame, 50); return; }
  const scale = Math.min(1, MAX_W / video.videoWidth, MAX_H / video.videoHeight);
  capture.width = Math.round(video.videoWidth * scale);
  capture.height = Math.round(video.videoHeight * scale);
  const capturedAt = performance.now();
  capture.getContext("2d").drawImage(video, 0, 0, capture.width, capture.height);
  inFlight = { capturedAt };
  capture.toBlob(async (blob) => {
    if (!blob || !ws || ws.readyState !== WebSocket.OPEN) { inFlight = null; setTimeout(sendFrame, 100); return; }
    ws.send(await blob.arrayBuffer());
    state.framesSent += 1;
  }, "image/jpeg", JPEG_QUALITY);
}

function percentile(values, q) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function showMs(id, value) {
  const node = document.getElementById(id);
  if (!isFinite(value)) { node.textContent = "–"; return; }
  node.replaceChildren(String(Math.round(value)), el("small", { text: "ms" }));
}

// The last refusal before the server closes the socket (it explains the close).
let closingError = null;

function onAnswer(message) {
  if (message.hello) {
    reconnectDelay = 500;
    statusEl.textContent = "Connected.";
    sendFrame();
    return;
  }
  if (message.error && message.seq === undefined) { closingError = message.error; return; }
  const now = performance.now();
  const sent = inFlight;
  inFlight = null;
  if (message.error) {
    state.errors.push(message.error);
    statusEl.textContent = capitalize(message.error.message);
    // A timeout means the workers are busy or gone: wait a little instead of hammering them.
    setTimeout(sendFrame, message.error.code === "live_timeout" ? 1000 : 200);
    return;
  }
  clearError();
  statusEl.textContent = "Connected.";
  lastAnswer = message;
  lastAnswerAt = now;
  state.answers += 1;
  state.last = message;
  state.facesSeen += message.faces.length;
  if (sent) {
    const latency = now - sent.capturedAt;
    state.latencies.push(latency);
    if (state.latencies.length > 200) state.latencies.shift();
    showMs("stat-latency", latency);
    showMs("stat-p95", percentile(state.latencies, 0.95));
  }
  showMs("stat-server", message.server_ms ?? NaN);
  answerTimes.push(now);
  while (answerTimes.length && now - answerTimes[0] > 1000) answerTimes.shift();
  document.getElementById("stat-fps").textContent = String(answerTimes.length);
  facesList.replaceChildren(...message.faces.map((face) => {
    const p = face.probabilities ? face.probabilities[face.shown_emotion] : null;
    return el("li", {}, el("img", { src: emojiUrl(face.shown_emotion), alt: "" }),
      `#${face.person_id} ${capitalize(face.shown_emotion)}${p != null ? ` · ${Math.round(p * 100)}%` : ""}`);
  }));
  if (!message.faces.length) facesList.replaceChildren(el("li", { class: "muted", text: "No face in view." }));
  sendFrame();
}

function drawEmoji(ctx, name, cx, cy, size) {
  const img = emojiImage(name);
  if (img.complete && img.naturalWidth) {
    ctx.drawImage(img, cx - size / 2, cy - size / 2, size, size);
  } else {
    ctx.font = `${Math.round(size * 0.85)}px "Noto Color Emoji", sans-serif`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(EMOTION_CHARS[name] || "?", cx, cy);
  }
  state.emojiDrawn += 1;
}

function render() {
  if (!running) return;
  const ctx = view.getContext("2d");
  const w = view.width;
  const h = view.height;
  // Mirrored, as people expect to see themselves; boxes are mirrored to match.
  ctx.save();
  ctx.setTransform(-1, 0, 0, 1, w, 0);
  ctx.drawImage(video, 0, 0, w, h);
  ctx.restore();
  if (lastAnswer && performance.now() - lastAnswerAt < STALE_MS) {
    const sx = w / lastAnswer.width;
    const sy = h / lastAnswer.height;
    for (const face of lastAnswer.faces) {
      const [x1, y1, x2, y2] = face.box_xyxy;
      const left = w - x2 * sx;
      const top = y1 * sy;
      const bw = (x2 - x1) * sx;
      const bh = (y2 - y1) * sy;
      const cover = coverToggle.checked;
      ctx.lineWidth = 2;
      ctx.strokeStyle = EMOTION_COLORS[face.shown_emotion] || "#fff";
      if (!cover) ctx.strokeRect(left, top, bw, bh);
      const size = cover ? Math.max(bw, bh) * 1.1 : Math.max(bw, bh) * 0.55;
      const cx = cover ? left + bw / 2 : left + bw + size * 0.55;
      const cy = cover ? top + bh / 2 : top + size * 0.5;
      drawEmoji(ctx, face.shown_emotion, cx, cy, size);
    }
  }
  requestAnimationFrame(render);
}

startButton.addEventListener("click", start);
stopButton.addEventListener("click", stop);
if (new URLSearchParams(window.location.search).has("autostart")) start();
