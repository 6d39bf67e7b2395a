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
// plain chunked HTTP from the monitor (which relays the executor), so it passes any proxy; it
// holds the output from its first byte, so it replaces what the page was rendered with.
// Chunks are appended as text nodes (never re-rendering what is there), the page keeps about
// the last MAX_CHARS characters, and it scrolls along only while the reader is at the bottom:
// a chatty job cannot freeze the page, and scrolling up to read is not undone.
const MAX_CHARS = 1 << 20;

async function followOutput() {
  const pre = document.getElementById("output");
  if (!pre || !pre.dataset.follow) {
    return;
  }
  const live = document.getElementById("live");
  const say = (text) => {
    if (live) {
      live.textContent = text;
    }
  };
  let held = 0;
  const append = (text) => {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(document.createTextNode(text));
    held += text.length;
    while (held > MAX_CHARS && pre.firstChild && pre.firstChild !== pre.lastChild) {
      held -= pre.firstChild.textContent.length;
      pre.firstChild.remove();
    }
    if (atBottom) {
      pre.scrollTop = pre.scrollHeight;
    }
  };
  try {
    const response = await fetch(pre.dataset.follow, { credentials: "same-origin" });
    if (!response.ok || !response.body) {
      throw new Error("HTTP " + response.status);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let first = true;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        break;
      }
      if (first) {
        pre.replaceChildren();
        first = false;
      }
      append(decoder.decode(value, { stream: true }));
    }
    append(decoder.decode());
    say("ended");
  } catch (e) {
    say("live tail stopped: " + e.message);
  }
  // Show the recorded outcome once the row has it (asked every 2 s; a reload only then).
  const run = pre.dataset.follow.replace(/\/output\?.*$/, "");
  for (;;) {
    try {
      const response = await fetch(run, { credentials: "same-origin" });
      const body = await response.json();
      if (response.ok && body.status !== "dispatched" && body.status !== "running") {
        window.location.reload();
        return;
      }
    } catch (e) {
      say("live tail stopped: " + e.message);
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  previewFireTimes();
  followOutput();
});
