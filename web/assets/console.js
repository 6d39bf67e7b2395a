// gocron console: the little JavaScript the pages use. No inline script anywhere (the
// Content-Security-Policy forbids it); everything written into the page goes through
// textContent, never innerHTML, so job output and names stay text.
"use strict";

// Forms with data-confirm ask first (delete, kill).
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});

// The job form: the rule's next five fire times, as you type.
function previewFireTimes() {
  const box = document.getElementById("next-fires");
  const rule = document.getElementById("rule");
  const zone = document.getElementById("time_zone");
  if (!box || !rule || !zone) {
    return;
  }
  let timer = null;
  let asked = 0;
  const show = async () => {
    const mine = ++asked;
    const query = new URLSearchParams({ rule: rule.value, time_zone: zone.value, count: "5" });
    let body;
    try {
      const response = await fetch(box.dataset.preview + "?" + query, { credentials: "same-origin" });
      body = await response.json();
    } catch (e) {
      body = { error: "cannot reach the server: " + e };
    }
    if (mine !== asked) {
      return; // a newer keystroke has asked since
    }
    box.replaceChildren();
    if (rule.value.trim() === "") {
      return;
    }
    if (body.error) {
      const p = document.createElement("p");
      p.className = "error-text";
      p.textContent = body.error;
      box.append(p);
      return;
    }
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.textContent = body.next.length ? "Next fire times:" : "This rule fires no more.";
    box.append(hint);
    const list = document.createElement("ol");
    body.next.forEach((at, i) => {
      const li = document.createElement("li");
      const time = document.createElement("time");
      time.dateTime = at;
      time.textContent = body.shown[i];
      li.append(time);
      list.append(li);
    });
    box.append(list);
  };
  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(show, 200);
  };
  rule.addEventListener("input", later);
  zone.addEventListener("input", later);
}

// The run page: while the run is in flight, its output as it is produced. The stream is
// plain chunked HTTP from the monitor (which relays the executor), so it passes any proxy.
// The page keeps the last MAX_CHARS characters, so a chatty job cannot freeze it.
const MAX_CHARS = 1 << 20;

async function followOutput() {
  const pre = document.getElementById("output");
  if (!pre || !pre.dataset.follow) {
    return;
  }
  const live = document.getElementById("live");
  try {
    const response = await fetch(pre.dataset.follow, { credentials: "same-origin" });
    if (!response.ok || !response.body) {
      throw new Error("HTTP " + response.status);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let text = "";
    let first = true;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        break;
      }
      if (first) {
        text = ""; // the stream starts from the beginning of what the executor holds
        first = false;
      }
      text += decoder.decode(value, { stream: true });
      if (text.length > MAX_CHARS) {
        text = text.slice(text.length - MAX_CHARS);
      }
      pre.textContent = text;
      pre.scrollTop = pre.scrollHeight;
    }
    text += decoder.decode();
    pre.textContent = text;
    if (live) {
      live.textContent = "ended";
    }
    // The run has ended: show its recorded outcome.
    setTimeout(() => window.location.reload(), 500);
  } catch (e) {
    if (live) {
      live.textContent = "live tail stopped: " + e.message;
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  previewFireTimes();
  followOutput();
});
