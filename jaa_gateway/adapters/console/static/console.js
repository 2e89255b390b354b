// The guard console's page: live updates over Server-Sent Events, ticking ages and countdowns,
// acknowledge / resolve without a reload, and a sound for a new alarm. No build step.
"use strict";
(function () {
  const W = JSON.parse(document.body.dataset.words || "{}");
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const board = document.getElementById("board");
  const statusBox = document.getElementById("status");
  const live = document.getElementById("live");
  const flash = document.getElementById("flash");
  const soundBtn = document.getElementById("sound");
  let audio = null;
  let known = null; // alarm ids on the page (null: not loaded yet, no sound for the first)

  // ---------------------------------------------------------------- time
  function span(ms) {
    let s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " " + W.u_s;
    let m = Math.floor(s / 60);
    if (m < 60) return m + " " + W.u_min;
    const h = Math.floor(m / 60);
    m = m % 60;
    return h + " " + W.u_h + (m ? " " + m + " " + W.u_min : "");
  }
  function tick() {
    const now = Date.now();
    document.querySelectorAll("[data-age]").forEach((el) => {
      const t = Number(el.dataset.age);
      if (t) el.textContent = span(now - t) + " " + W.ago;
    });
    document.querySelectorAll("[data-countdown]").forEach((el) => {
      const d = Number(el.dataset.countdown) - now;
      el.textContent = d >= 0 ? W.in + " " + span(d) : W.overdue + " " + span(-d);
    });
    const list = document.querySelector(".sessions");
    const quiet = list ? Number(list.dataset.quietAfter) : 0;
    document.querySelectorAll("[data-session-id]").forEach((el) => {
      const due = Number(el.dataset.due || 0);
      const heard = Number(el.dataset.heard || 0);
      const late = (due && due - now <= 5 * 60 * 1000) || (quiet && (!heard || now - heard >= quiet));
      el.classList.toggle("warn", Boolean(late));
    });
  }

  // ---------------------------------------------------------------- sound
  function enableSound() {
    if (!audio) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return;
      audio = new Ctx();
    }
    if (audio.state === "suspended") audio.resume();
    soundBtn.textContent = W.sound_is_on;
    soundBtn.setAttribute("aria-pressed", "true");
  }
  function beep() {
    if (!audio || audio.state !== "running") return;
    const t0 = audio.currentTime;
    for (let i = 0; i < 3; i++) {
      const o = audio.createOscillator();
      const g = audio.createGain();
      o.frequency.value = 880;
      g.gain.setValueAtTime(0.3, t0 + i * 0.3);
      g.gain.setValueAtTime(0, t0 + i * 0.3 + 0.18);
      o.connect(g).connect(audio.destination);
      o.start(t0 + i * 0.3);
      o.stop(t0 + i * 0.3 + 0.2);
    }
  }
  // browsers allow sound only after the user has touched the page
  document.addEventListener("click", enableSound, { once: true });
  document.addEventListener("keydown", enableSound, { once: true });

  // ---------------------------------------------------------------- messages
  let flashTimer = null;
  function say(text, bad) {
    flash.textContent = text;
    flash.className = bad ? "bad" : "ok";
    flash.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { flash.hidden = true; }, 6000);
  }

  // ---------------------------------------------------------------- live board
  // what a guard is doing survives an update: notes being typed, open timelines, focus
  function keep() {
    const state = { notes: {}, open: {}, focus: null };
    board.querySelectorAll("[data-alarm-id]").forEach((el) => {
      const id = el.dataset.alarmId;
      const note = el.querySelector('textarea[name="note"]');
      if (note && note.value) state.notes[id] = note.value;
      const d = el.querySelector("details.timeline");
      if (d && d.open) state.open[id] = d.querySelector(".tl-body").innerHTML;
    });
    const a = document.activeElement;
    const host = a && a.closest ? a.closest("[data-alarm-id]") : null;
    if (host && board.contains(a)) {
      state.focus = {
        id: host.dataset.alarmId,
        sel: a.name ? '[name="' + a.name + '"]' : a.dataset.action ? '[data-action="' + a.dataset.action + '"]' : "summary",
        start: a.selectionStart, end: a.selectionEnd,
      };
    }
    return state;
  }
  function restore(state) {
    board.querySelectorAll("[data-alarm-id]").forEach((el) => {
      const id = el.dataset.alarmId;
      const note = el.querySelector('textarea[name="note"]');
      if (note && state.notes[id]) note.value = state.notes[id];
      if (id in state.open) {
        const d = el.querySelector("details.timeline");
        d.querySelector(".tl-body").innerHTML = state.open[id];
        d.open = true;
      }
    });
    if (state.focus) {
      const host = board.querySelector('[data-alarm-id="' + CSS.escape(state.focus.id) + '"]');
      const el = host ? host.querySelector(state.focus.sel) : null;
      if (el) {
        el.focus({ preventScroll: true });
        if (typeof state.focus.start === "number" && el.setSelectionRange) {
          el.setSelectionRange(state.focus.start, state.focus.end);
        }
      }
    }
  }
  function showBoard(html) {
    const state = keep();
    board.innerHTML = html;
    restore(state);
    const ids = new Set(Array.from(board.querySelectorAll("[data-alarm-id]"), (el) => el.dataset.alarmId));
    const fresh = known === null ? [] : [...ids].filter((id) => !known.has(id));
    known = ids;
    if (fresh.length) {
      fresh.forEach((id) => {
        const el = board.querySelector('[data-alarm-id="' + CSS.escape(id) + '"]');
        if (el) el.classList.add("new");
      });
      beep();
      say(W.new_alarm, true);
      const typing = document.activeElement && document.activeElement.tagName === "TEXTAREA";
      if (!typing) window.scrollTo({ top: 0 });
    }
    tick();
  }

  function connect() {
    const es = new EventSource("/console/events");
    es.addEventListener("open", () => { live.textContent = "● " + W.live; live.className = "live on"; });
    es.addEventListener("board", (e) => showBoard(e.data));
    es.addEventListener("status", (e) => { statusBox.innerHTML = e.data; });
    es.addEventListener("expired", () => { es.close(); window.location.assign("/console/login"); });
    es.addEventListener("error", () => {
      live.textContent = W.reconnecting;
      live.className = "live off";
      if (es.readyState === EventSource.CLOSED) {
        // the stream was refused (401 after an expiry, a restart): find out which
        fetch("/console/board", { credentials: "same-origin" }).then((r) => {
          if (r.status === 401) window.location.assign("/console/login");
          else setTimeout(connect, 2000);
        }, () => setTimeout(connect, 2000));
      }
    });
  }

  // ---------------------------------------------------------------- acting
  board.addEventListener("submit", async (e) => {
    const form = e.target.closest("form.act");
    if (!form) return;
    e.preventDefault();
    const note = form.querySelector('textarea[name="note"]');
    if (note && !note.value.trim()) {
      say(W.need_note, true);
      note.focus();
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const body = new FormData(form);
    body.set("csrf", csrf());
    try {
      const r = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(body),
        credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf(), Accept: "application/json" },
      });
      if (r.status === 401) { window.location.assign("/console/login"); return; }
      const answer = await r.json().catch(() => ({}));
      const text = answer.message || answer.detail || r.statusText;
      say(text, !r.ok);
      if (r.ok && note) note.value = "";
      if (!r.ok) button.disabled = false;
    } catch (err) {
      say(W.reconnecting, true);
      button.disabled = false;
    }
  });

  // the timeline is read when it is opened
  board.addEventListener("toggle", async (e) => {
    const d = e.target;
    if (!(d instanceof HTMLDetailsElement) || !d.open || !d.dataset.timeline) return;
    const r = await fetch(d.dataset.timeline, { credentials: "same-origin" });
    if (r.ok) d.querySelector(".tl-body").innerHTML = await r.text();
  }, true);

  soundBtn.addEventListener("click", enableSound);
  known = new Set(Array.from(board.querySelectorAll("[data-alarm-id]"), (el) => el.dataset.alarmId));
  tick();
  setInterval(tick, 1000);
  connect();
})();
