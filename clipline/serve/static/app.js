// clipline serve: progressive behaviour only; every page works as plain forms and links without it.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function postJSON(url, body) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || response.statusText);
  return data;
}

// Forms that post with the CSRF header (log out).
for (const form of document.querySelectorAll("form[data-csrf-form]")) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    await fetch(form.action, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf() } });
    location.href = "/login";
  });
}

// Selects and checkboxes that reload their form when changed.
for (const control of document.querySelectorAll("[data-autosubmit]")) {
  control.addEventListener("change", () => control.form.submit());
}

// Search page: show the chosen file's name; "+ range" adds another score-range row.
const fileInput = document.getElementById("image");
if (fileInput) {
  fileInput.addEventListener("change", () => {
    const name = fileInput.files.length ? fileInput.files[0].name : "image…";
    fileInput.nextElementSibling.textContent = name;
  });
}
const addRange = document.getElementById("add-range");
if (addRange) {
  addRange.addEventListener("click", () => {
    const rows = addRange.parentElement.querySelectorAll(".range");
    const copy = rows[rows.length - 1].cloneNode(true);
    for (const field of copy.querySelectorAll("input, select")) field.value = "";
    addRange.before(copy);
  });
}

// Review queue: one key per decision, on the selected cards or else the focused one.
const queue = document.getElementById("queue");
if (queue) {
  const cards = () => [...queue.querySelectorAll(".card:not(.gone)")];
  let focused = cards()[0] || null;
  let anchor = null;
  let lastBatch = null;

  const focus = (card) => {
    if (!card) return;
    for (const other of queue.querySelectorAll(".card.focused")) other.classList.remove("focused");
    card.classList.add("focused");
    card.focus({ preventScroll: true });
    card.scrollIntoView({ block: "nearest", behavior: "smooth" });
    focused = card;
  };
  const setSelected = (card, on) => {
    card.classList.toggle("selected", on);
    card.querySelector("input.select").checked = on;
  };
  const selected = () => cards().filter((card) => card.classList.contains("selected"));
  const toast = (text, undoable) => {
    document.getElementById("toast-text").textContent = text;
    document.getElementById("undo").hidden = !undoable;
    document.getElementById("toast").hidden = false;
  };

  async function decide(decision) {
    const targets = selected().length ? selected() : focused ? [focused] : [];
    if (!targets.length) return;
    const list = cards();
    const next = list.slice(list.indexOf(targets[targets.length - 1]) + 1).find((card) => !targets.includes(card))
      || list.find((card) => !targets.includes(card));
    try {
      const result = await postJSON("/api/decide", {
        decisions: targets.map((card) => ({ id: card.dataset.id, decision })),
      });
      for (const card of targets) { card.classList.add("gone"); setTimeout(() => card.remove(), 250); }
      lastBatch = result.batch || lastBatch;
      const done = decision === "skip" ? `Skipped ${result.skipped}` : `${decision === "allow" ? "Allowed" : decision === "block" ? "Blocked" : "Set"} ${result.applied}`;
      toast(`${done} row${targets.length === 1 ? "" : "s"}`, Boolean(result.batch));
      if (next) focus(next);
      if (!cards().some((card) => !targets.includes(card))) setTimeout(() => location.reload(), 600);
    } catch (error) {
      toast(`Not saved: ${error.message}`, false);
    }
  }

  async function undo() {
    if (!lastBatch) return;
    try {
      await postJSON("/api/undo", { batch: lastBatch });
      lastBatch = null;
      location.reload();
    } catch (error) {
      toast(`Undo failed: ${error.message}`, false);
    }
  }

  queue.addEventListener("click", (event) => {
    const card = event.target.closest(".card");
    if (!card) return;
    if (event.target.matches("input.select")) {
      setSelected(card, event.target.checked);
    } else if (event.shiftKey && anchor) {
      const list = cards();
      const [from, to] = [list.indexOf(anchor), list.indexOf(card)].sort((a, b) => a - b);
      list.slice(from, to + 1).forEach((item) => setSelected(item, true));
    } else if (event.metaKey || event.ctrlKey) {
      setSelected(card, !card.classList.contains("selected"));
    }
    anchor = card;
    focus(card);
  });
  document.getElementById("actions").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-decision]");
    if (button) decide(button.dataset.decision);
  });
  document.getElementById("undo").addEventListener("click", undo);
  document.addEventListener("keydown", (event) => {
    if (event.target.matches("input[type=number], input[type=search], select, textarea") || event.metaKey || event.ctrlKey || event.altKey) return;
    const list = cards();
    const index = list.indexOf(focused);
    const columns = Math.max(1, Math.round(queue.clientWidth / (list[0] ? list[0].offsetWidth + 14 : 1)));
    const keys = {
      a: () => decide("allow"), b: () => decide("block"), s: () => decide("skip"), u: undo,
      x: () => focused && setSelected(focused, !focused.classList.contains("selected")),
      " ": () => focused && setSelected(focused, !focused.classList.contains("selected")),
      ArrowRight: () => focus(list[index + 1]), j: () => focus(list[index + 1]),
      ArrowLeft: () => focus(list[index - 1]), k: () => focus(list[index - 1]),
      ArrowDown: () => focus(list[index + columns]), ArrowUp: () => focus(list[index - columns]),
      Escape: () => list.forEach((card) => setSelected(card, false)),
    };
    const action = keys[event.key];
    if (action) { event.preventDefault(); action(); }
  });
  focus(focused);
}
