// The emotion chart: one lane per person, coloured by the emotion shown, with a line of the model's confidence.
"use strict";

// Turns timeline.json (schema_version 2) into lanes of per-frame points; tolerant of missing optional fields.
function lanesFromTimeline(timeline) {
  const byPerson = new Map();
  for (const frame of timeline.frames || []) {
    for (const face of frame.faces || []) {
      const id = face.person_id ?? 0;
      if (!byPerson.has(id)) byPerson.set(id, []);
      const shown = face.shown_emotion || face.emotion;
      const probs = face.smoothed_probabilities || face.probabilities || {};
      byPerson.get(id).push({ t: frame.t_ms / 1000, emotion: shown, p: probs[shown] ?? 0 });
    }
  }
  return [...byPerson.entries()].sort((a, b) => a[0] - b[0]).map(([id, points]) => ({ id, points }));
}

class EmotionChart {
  constructor(canvas, tooltip, { duration, frameSeconds, onSeek }) {
    this.canvas = canvas;
    this.tooltip = tooltip;
    this.duration = Math.max(duration, 0.001);
    // A point stands for its frame until the next one; gaps longer than this are drawn as gaps.
    this.frameSeconds = frameSeconds;
    this.onSeek = onSeek;
    this.lanes = [];
    this.playhead = 0;
    this.pad = { left: 44, right: 12, top: 8, bottom: 26 };
    this.laneHeight = 46;
    this.laneGap = 10;
    canvas.addEventListener("click", (e) => this.click(e));
    canvas.addEventListener("mousemove", (e) => this.hover(e));
    canvas.addEventListener("mouseleave", () => this.tooltip.classList.add("hidden"));
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  setLanes(lanes) {
    this.lanes = lanes;
    this.draw();
  }

  setPlayhead(seconds) {
    this.playhead = seconds;
    this.draw();
  }

  plotWidth() {
    return this.canvas.clientWidth - this.pad.left - this.pad.right;
  }

  xOf(t) {
    return this.pad.left + (t / this.duration) * this.plotWidth();
  }

  tOf(x) {
    return Math.min(this.duration, Math.max(0, ((x - this.pad.left) / this.plotWidth()) * this.duration));
  }

  laneTop(i) {
    return this.pad.top + i * (this.laneHeight + this.laneGap);
  }

  draw() {
    const canvas = this.canvas;
    const lanes = Math.max(this.lanes.length, 1);
    const cssHeight = this.pad.top + lanes * this.laneHeight + (lanes - 1) * this.laneGap + this.pad.bottom;
    const cssWidth = canvas.clientWidth || 600;
    const dpr = window.devicePixelRatio || 1;
    canvas.style.height = `${cssHeight}px`;
    if (canvas.width !== Math.round(cssWidth * dpr) || canvas.height !== Math.round(cssHeight * dpr)) {
      canvas.width = Math.round(cssWidth * dpr);
      canvas.height = Math.round(cssHeight * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssWidth, cssHeight);
    const styles = getComputedStyle(document.body);
    const muted = styles.getPropertyValue("--muted").trim() || "#888";
    const line = styles.getPropertyValue("--line").trim() || "#ddd";
    const text = styles.getPropertyValue("--text").trim() || "#111";
    ctx.font = "12px system-ui, sans-serif";
    let drawnPoints = 0;

    this.lanes.forEach((lane, i) => {
      const top = this.laneTop(i);
      const h = this.laneHeight;
      ctx.fillStyle = line;
      ctx.globalAlpha = 0.45;
      ctx.fillRect(this.pad.left, top, this.plotWidth(), h);
      ctx.globalAlpha = 1;
      ctx.fillStyle = muted;
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      ctx.fillText(`#${lane.id}`, this.pad.left - 8, top + h / 2);

      // Bands: each frame's emotion colour until the next point (or one frame's length).
      const pts = lane.points;
      for (let k = 0; k < pts.length; k += 1) {
        const t0 = pts[k].t;
        const next = k + 1 < pts.length ? pts[k + 1].t : t0 + this.frameSeconds;
        const t1 = Math.min(next, t0 + this.frameSeconds * 1.5);
        ctx.fillStyle = EMOTION_COLORS[pts[k].emotion] || muted;
        ctx.globalAlpha = 0.35;
        const x0 = this.xOf(t0);
        ctx.fillRect(x0, top, Math.max(this.xOf(t1) - x0, 1), h);
      }
      ctx.globalAlpha = 1;

      // Confidence line, broken where the person is not in view.
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      let prev = null;
      for (const pt of pts) {
        const x = this.xOf(pt.t);
        const y = top + h - 3 - pt.p * (h - 6);
        const joined = prev && pt.t - prev.t <= this.frameSeconds * 1.5;
        ctx.strokeStyle = EMOTION_COLORS[pt.emotion] || text;
        if (joined) {
          ctx.beginPath();
          ctx.moveTo(prev.x, prev.y);
          ctx.lineTo(x, y);
          ctx.stroke();
        }
        prev = { t: pt.t, x, y };
        drawnPoints += 1;
      }

      // An emoji where each stretch of one emotion starts, when there is room for it.
      let lastIconX = -Infinity;
      let lastEmotion = null;
      for (const pt of pts) {
        if (pt.emotion === lastEmotion) continue;
        lastEmotion = pt.emotion;
        const x = this.xOf(pt.t);
        if (x - lastIconX < 26) continue;
        const img = emojiImage(pt.emotion);
        if (img.complete && img.naturalWidth) {
          ctx.drawImage(img, x + 2, top + 3, 18, 18);
        } else {
          img.addEventListener("load", () => this.draw(), { once: true });
        }
        lastIconX = x;
      }
    });

    // Time axis.
    const axisY = this.pad.top + lanes * this.laneHeight + (lanes - 1) * this.laneGap + 4;
    ctx.fillStyle = muted;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const steps = Math.max(2, Math.min(10, Math.floor(this.plotWidth() / 70)));
    const whole = this.duration / steps >= 1;
    for (let s = 0; s <= steps; s += 1) {
      const t = (this.duration * s) / steps;
      const label = whole ? `${Math.floor(t / 60)}:${String(Math.round(t % 60)).padStart(2, "0")}` : formatClock(t);
      // The end labels stay inside the canvas.
      ctx.textAlign = s === 0 ? "left" : s === steps ? "right" : "center";
      ctx.fillText(label, this.xOf(t) + (s === 0 ? -2 : s === steps ? 2 : 0), axisY + 4);
      ctx.fillRect(this.xOf(t), axisY, 1, 3);
    }

    if (!this.lanes.length) {
      ctx.fillStyle = muted;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("No faces were found in this video.", cssWidth / 2, this.pad.top + this.laneHeight / 2);
    }

    // Playhead.
    const px = this.xOf(this.playhead);
    ctx.fillStyle = text;
    ctx.fillRect(px - 1, this.pad.top - 4, 2, axisY - this.pad.top + 4);

    canvas.dataset.drawn = "true";
    canvas.dataset.points = String(drawnPoints);
    canvas.dataset.lanes = String(this.lanes.length);
  }

  pointAt(x, y) {
    const t = this.tOf(x);
    const laneIndex = this.lanes.findIndex((_, i) => y >= this.laneTop(i) && y <= this.laneTop(i) + this.laneHeight);
    if (laneIndex < 0) return { t, lane: null, point: null };
    const pts = this.lanes[laneIndex].points;
    let best = null;
    for (const pt of pts) {
      if (!best || Math.abs(pt.t - t) < Math.abs(best.t - t)) best = pt;
    }
    const near = best && Math.abs(best.t - t) <= this.frameSeconds * 1.5 ? best : null;
    return { t, lane: this.lanes[laneIndex], point: near };
  }

  click(event) {
    const rect = this.canvas.getBoundingClientRect();
    const { t } = this.pointAt(event.clientX - rect.left, event.clientY - rect.top);
    this.onSeek(t);
  }

  hover(event) {
    const rect = this.canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    const { t, lane, point } = this.pointAt(x, y);
    const text = point
      ? `${formatClock(t)} · person #${lane.id}: ${point.emotion} (${Math.round(point.p * 100)}%)`
      : formatClock(t);
    this.tooltip.textContent = text;
    this.tooltip.style.left = `${x}px`;
    this.tooltip.style.top = `${y}px`;
    this.tooltip.classList.remove("hidden");
  }
}
