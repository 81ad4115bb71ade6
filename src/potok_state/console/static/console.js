// The console's behaviour beyond htmx (docs/console.md, "How the pages stay live"):
//  * live regions: an element with data-watch="<watch stream URL>" opens one
//    EventSource (same origin: the session cookie authenticates it); on a change,
//    its [data-live] fragments are fetched again (htmx, hx-trigger="refresh") and
//    its img[data-live-src] reloaded. A `reset` event reloads the page.
//  * actions: button[data-action] and form[data-action] call the API with the
//    session's CSRF token, after a confirmation when data-confirm says so.
//  * lease countdowns ([data-expires]) and local times (<time>).
(() => {
  "use strict";

  const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content ?? "";
  const CHANGE_EVENTS = [
    "entity.created",
    "entity.updated",
    "entity.deleted",
    "subscription.failing",
    "subscription.disabled",
    "subscription.enabled",
  ];
  // Coalesce a burst of changes into one refresh; the last change of a burst
  // is always followed by a refresh.
  const REFRESH_DELAY_MS = 200;

  function announce(text) {
    const region = document.getElementById("announce");
    if (!region) return;
    region.textContent = "";
    window.setTimeout(() => { region.textContent = text; }, 50);
  }

  function refresh(region) {
    region.querySelectorAll("[data-live]").forEach((element) => htmx.trigger(element, "refresh"));
    region.querySelectorAll("img[data-live-src]").forEach((image) => {
      image.src = `${image.dataset.liveSrc}?at=${Date.now()}`;
    });
  }

  function refreshSoon(region) {
    if (region.refreshTimer) return;
    region.refreshTimer = window.setTimeout(() => {
      region.refreshTimer = null;
      refresh(region);
    }, REFRESH_DELAY_MS);
  }

  function watch(region) {
    const source = new EventSource(region.dataset.watch);
    const status = region.querySelector("[data-live-status]");
    const onlyId = region.dataset.entityId;
    const show = (state, text) => {
      if (!status) return;
      status.dataset.state = state;
      status.textContent = text;
    };
    const changed = (event) => {
      if (onlyId) {
        let change;
        try { change = JSON.parse(event.data); } catch { return; }
        if (change.data?.id !== onlyId) return;
      }
      refreshSoon(region);
    };
    CHANGE_EVENTS.forEach((type) => source.addEventListener(type, changed));
    source.addEventListener("reset", () => {
      source.close();
      window.location.reload();
    });
    source.addEventListener("open", () => show("live", "live"));
    source.addEventListener("error", () => {
      show("down", source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…");
    });
    window.addEventListener("pagehide", () => source.close());
  }

  async function act(control, body) {
    if (control.dataset.confirm && !window.confirm(control.dataset.confirm)) return;
    const label = control.dataset.label ?? "Action";
    const button = control.matches("button") ? control : control.querySelector("button");
    if (button) button.disabled = true;
    try {
      const response = await fetch(control.dataset.action, {
        method: control.dataset.method ?? "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json", "x-csrf-token": csrfToken },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      let answer = {};
      try { answer = await response.json(); } catch { /* an empty answer (204) */ }
      if (!response.ok) {
        announce(`${label} failed: ${answer.message ?? response.statusText}`);
        return;
      }
      announce(control.dataset.done ?? `${label}: done.`);
      if (control.dataset.reveal && answer.secret) {
        const shown = document.getElementById(control.dataset.reveal);
        shown.querySelector("output").textContent = answer.secret;
        shown.hidden = false;
      }
      for (const selector of (control.dataset.refresh ?? "").split(" ").filter(Boolean)) {
        const target = document.querySelector(selector);
        if (target) htmx.trigger(target, "refresh");
      }
    } catch (error) {
      announce(`${label} failed: ${error.message}`);
    } finally {
      if (button) button.disabled = false;
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    event.preventDefault();
    act(button, button.dataset.body ? JSON.parse(button.dataset.body) : undefined);
  });

  document.addEventListener("submit", (event) => {
    const form = event.target.closest("form[data-action]");
    if (!form) return;
    event.preventDefault();
    const body = {};
    for (const [name, value] of new FormData(form)) {
      if (value === "") continue;
      body[name] = form.elements[name].type === "number" ? Number(value) : value;
    }
    act(form, body);
  });

  let clockSkewMs = 0;

  function readServerClock() {
    const stamp = document.querySelector("[data-server-now]");
    if (stamp) clockSkewMs = Date.parse(stamp.dataset.serverNow) - Date.now();
  }

  function tick() {
    const now = Date.now() + clockSkewMs;
    document.querySelectorAll("[data-expires]").forEach((element) => {
      const left = Math.round((Date.parse(element.dataset.expires) - now) / 1000);
      element.textContent = left > 0 ? `${left} s` : "lapsed";
      element.dataset.state = left > 5 ? "ok" : left > 0 ? "soon" : "lapsed";
    });
  }

  function localTimes(root) {
    root.querySelectorAll("time[datetime]:not([data-local])").forEach((element) => {
      const when = new Date(element.getAttribute("datetime"));
      if (Number.isNaN(when.getTime())) return;
      element.dataset.local = "";
      element.title = element.getAttribute("datetime");
      element.textContent = when.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "numeric",
        hour: "2-digit", minute: "2-digit", second: "2-digit",
      });
    });
  }

  function start() {
    readServerClock();
    localTimes(document);
    tick();
    window.setInterval(tick, 1000);
    document.querySelectorAll("[data-watch]").forEach(watch);
    document.body.addEventListener("htmx:afterSettle", (event) => {
      readServerClock();
      localTimes(event.target);
      tick();
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
