// Shared by the three pages: the emotion palette, API calls with readable errors, formatting.
"use strict";

const EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"];
const EMOTION_COLORS = {
  angry: "#e5484d", disgust: "#46a758", fear: "#8e4ec6", happy: "#f5b700",
  sad: "#3e63dd", surprise: "#f76b15", neutral: "#8b8d98",
};
// Shown when an emoji PNG cannot be loaded; the system's emoji font draws these.
const EMOTION_CHARS = {
  angry: "\u{1F620}", disgust: "\u{1F922}", fear: "\u{1F628}", happy: "\u{1F604}",
  sad: "\u{1F622}", surprise: "\u{1F62E}", neutral: "\u{1F610}",
};

function emojiUrl(name) {
  return `/emojis/${encodeURIComponent(name)}.png`;
}

// Emoji images, loaded once; `ready` is false until (and unless) the PNG loads.
const emojiImages = {};
function emojiImage(name) {
  if (!emojiImages[name]) {
    const img = new Image();
    img.decoding = "async";
    img.src = emojiUrl(name);
    emojiImages[name] = img;
  }
  return emojiImages[name];
}

// The API's error body is {"error": {"code", "message"}}; anything else becomes a plain sentence.
async function apiError(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (e) { /* not JSON */ }
  return `the server answered ${response.status} ${response.statusText || ""}`.trim();
}

async function apiGet(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    const err = new Error(await apiError(response));
    err.status = response.status;
    throw err;
  }
  return response.json();
}

function capitalize(text) {
  return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
}

function formatBytes(bytes) {
  const units = ["bytes", "KB", "MB", "GB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  if (unit === 0) return `${value} bytes`;
  // Three significant digits, like the server's messages: 19.5 KB, 2 GB, 512 MB.
  return `${value >= 100 ? value.toFixed(0) : Number(value.toPrecision(3))} ${units[unit]}`;
}

function formatDuration(seconds) {
  if (!isFinite(seconds) || seconds < 0) return "";
  if (seconds < 1) return "less than a second";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function formatClock(seconds) {
  const s = Math.max(0, seconds);
  const m = Math.floor(s / 60);
  return `${m}:${(s % 60).toFixed(1).padStart(4, "0")}`;
}

function timeAgo(iso) {
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const STATUS_WORDS = { queued: "Queued", running: "Running", succeeded: "Done", failed: "Failed" };

function statusBadge(status) {
  return el("span", { class: `badge ${status}`, text: STATUS_WORDS[status] || status });
}
