// DartSync dashboard: polls /api/v1/status every second and renders it.
// Every string from the API is untrusted: the DOM is built with
// createElement/textContent only (never innerHTML from data).
"use strict";

(() => {
  const API = "/api/v1/status";
  const POLL_MS = 1000;
  const TIMEOUT_MS = 5000;
  const WINDOW_S = 300; // chart: last 5 minutes
  const SVG_NS = "http://www.w3.org/2000/svg";
  const LABELS = {
    up_to_date: "Up to date",
    syncing: "Syncing",
    waiting: "Waiting",
    tracker_unreachable: "Tracker unreachable",
    pending_approval: "Waiting for approval",
    revoked: "Revoked",
  };

  // What a device's row says about it: its admission first, then its sync.
  function deviceSync(d, fallback) {
    if (d.state === "pending") return "waiting for approval";
    if (d.state === "revoked") return "revoked";
    return fallback;
  }

  const $ = (id) => document.getElementById(id);
  const samples = []; // {t: Unix seconds, v: bytes per second}
  let lastOk = 0; // Date.now() of the last good answer
  let loaded = false;

  // ---- formatting (mirrors the CLI's status_view.rs) ----------------------

  const num = (n) => (Number.isFinite(Number(n)) ? Number(n) : 0);
  const thousands = (n) => Math.round(num(n)).toLocaleString("en-US");
  const count = (n, noun) => (num(n) === 1 ? `1 ${noun}` : `${thousands(n)} ${noun}s`);

  function size(bytes) {
    const units = ["KB", "MB", "GB", "TB", "PB", "EB"];
    const b = Math.max(0, num(bytes));
    if (b < 1000) return `${Math.round(b)} B`;
    let v = b / 1000;
    let u = 0;
    while (v >= 999.95 && u + 1 < units.length) {
      v /= 1000;
      u += 1;
    }
    return `${v < 99.95 ? v.toFixed(1) : v.toFixed(0)} ${units[u]}`;
  }

  function duration(secs) {
    const s = Math.max(0, Math.floor(num(secs)));
    const M = 60, H = 3600, D = 86400;
    if (s < M) return `${s} s`;
    if (s < H) return `${Math.floor(s / M)} min`;
    if (s < D) {
      const m = Math.floor((s % H) / M);
      return m ? `${Math.floor(s / H)} h ${m} min` : `${Math.floor(s / H)} h`;
    }
    const h = Math.floor((s % D) / H);
    return h ? `${Math.floor(s / D)} d ${h} h` : `${Math.floor(s / D)} d`;
  }

  const nowSecs = () => Date.now() / 1000;

  function ago(t) {
    const s = nowSecs() - num(t);
    return s < 5 ? "just now" : `${duration(s)} ago`;
  }

  function percent(done, total) {
    const d = num(done), t = num(total);
    return t <= 0 ? 100 : Math.floor((Math.min(d, t) * 100) / t);
  }

  function mbps(bytesPerSec) {
    const mb = num(bytesPerSec) / 1e6;
    let text;
    if (mb >= 10) text = mb.toFixed(0);
    else if (mb >= 1) text = mb.toFixed(1).replace(/\.0$/, "");
    else text = String(Number(mb.toPrecision(2)));
    return `${text} MB/s`;
  }

  const shortId = (id) => String(id ?? "").slice(0, 8);
  const list = (a) => (Array.isArray(a) ? a : []);

  // ---- DOM helpers ---------------------------------------------------------

  // el("li", {class: "x", dataset: {device: name}}, "text", node, ...)
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "dataset") {
        for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = String(dv);
      } else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids) {
      if (kid == null || kid === false) continue;
      e.append(kid instanceof Node ? kid : String(kid));
    }
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function timeEl(t) {
    if (!Number.isFinite(Number(t)) || t == null) return el("span", { class: "when" }, "unknown time");
    const d = new Date(num(t) * 1000);
    return el("time", { class: "when", datetime: d.toISOString(), title: d.toLocaleString() }, ago(t));
  }

  // Replace a container's children, but only when the result differs, so
  // text selection and focus survive the once-a-second refresh.
  function fill(container, nodes) {
    const tmp = document.createElement(container.tagName);
    tmp.append(...nodes.filter((n) => n != null));
    if (tmp.innerHTML !== container.innerHTML) container.replaceChildren(...tmp.childNodes);
  }

  const empty = (text) => el("li", { class: "empty" }, text);

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  // ---- banner --------------------------------------------------------------

  function showBanner(kind, ...content) {
    const banner = $("banner");
    fill(banner, content.map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
    banner.dataset.kind = kind;
    banner.hidden = false;
    if (!loaded) setText($("state"), "No data");
    if (loaded && kind !== "schema") document.body.dataset.stale = "1";
    else delete document.body.dataset.stale;
  }

  function hideBanner() {
    const banner = $("banner");
    banner.hidden = true;
    banner.replaceChildren();
    delete banner.dataset.kind;
    delete document.body.dataset.stale;
  }

  // ---- shared pieces -------------------------------------------------------

  function setState(state, detail) {
    const label = LABELS[state] ?? String(state);
    const badge = $("state");
    setText(badge, label);
    badge.dataset.state = String(state);
    document.body.dataset.state = String(state);
    setText($("summary"), detail);
  }

  function presence(d) {
    if (d.online) return "online";
    if (d.last_seen != null) return `offline, last seen ${ago(d.last_seen)}`;
    return "offline, never seen";
  }

  function deviceRow(d, syncText, details) {
    const upToDate = Boolean(d.up_to_date);
    return el(
      "li",
      {
        class: "device",
        dataset: { device: d.name ?? "", online: Boolean(d.online), upToDate },
      },
      el(
        "div",
        { class: "dev-main" },
        el("span", { class: `dot ${d.online ? "on" : "off"}`, "aria-hidden": "true" }),
        el("strong", { class: "dev-name" }, d.name ?? ""),
        d.this_device ? el("span", { class: "me" }, " (this device)") : null,
        el("code", { class: "dev-id", title: d.id ?? "" }, shortId(d.id)),
      ),
      el(
        "div",
        { class: "dev-status" },
        el("span", { class: `presence ${d.online ? "on" : "off"}` }, presence(d)),
        el("span", { class: `sync ${upToDate ? "ok" : "busy"}` }, syncText),
        ...details.map((t) => el("span", { class: "detail" }, t)),
      ),
    );
  }

  function conflictRow(c) {
    const what = c.copy != null
      ? `${c.winner}'s version kept; ${c.loser}'s version is in ${c.copy}`
      : `${c.winner}'s edit won over a deletion by ${c.loser}`;
    return el(
      "li",
      { class: "conflict", dataset: { path: c.path ?? "" } },
      el("span", { class: "path" }, c.path ?? ""),
      ": ",
      el("span", { class: "what" }, what),
      " ",
      timeEl(c.at),
    );
  }

  function renderConflicts(conflicts) {
    const rows = list(conflicts).map(conflictRow);
    fill($("conflicts"), rows.length ? rows : [empty("No conflicts.")]);
  }

  function renderEvents(events) {
    const rows = list(events).map((e) =>
      el("li", { class: "event" }, timeEl(e.at), " ", el("span", { class: "what" }, e.what ?? "")));
    fill($("events"), rows.length ? rows : [empty("Nothing has happened yet.")]);
  }

  function fact(term, ...value) {
    return [el("dt", null, term), el("dd", null, ...value)];
  }

  // ---- peer ----------------------------------------------------------------

  function peerDetail(s) {
    const p = s.pending || {};
    const link = s.tracker || {};
    switch (s.state) {
      case "up_to_date":
        return `${count(s.files, "file")}, ${size(s.bytes)}`;
      case "syncing": {
        const parts = [];
        if (num(p.files) > 0) {
          parts.push(count(p.files, "file"), `${size(p.bytes)} left`);
          if (num(p.rate) > 0) parts.push(`${size(p.rate)}/s`);
          if (p.eta_secs != null) parts.push(`about ${duration(p.eta_secs)}`);
        } else if (num(s.unannounced) > 0) {
          parts.push(`announcing ${count(s.unannounced, "local change")}`);
        }
        return parts.join(", ");
      }
      case "waiting":
        return `${count(s.waiting_total, "file")} waiting (see below)`;
      case "pending_approval":
        return `on the tracker machine run: dartsync tracker admit ${s.name ?? s.id ?? ""}`;
      case "revoked":
        return "the tracker refuses this device; only its operator can admit it again";
      case "tracker_unreachable": {
        const since = link.since != null ? `for ${duration(nowSecs() - link.since)} ` : "";
        const why = link.error ? `${link.error} at ${link.addr}` : `${link.addr ?? ""}`;
        return `${since}(${why})`;
      }
      default:
        return "";
    }
  }

  function trackerLink(link) {
    if (!link) return "unknown";
    const since = link.since != null ? ` for ${duration(nowSecs() - link.since)}` : "";
    if (link.connected) return `${link.addr}, connected${since}`;
    return `${link.addr}, unreachable${since}${link.error ? `: ${link.error}` : ""}`;
  }

  function renderPeer(s) {
    const state = s.state ?? "syncing";
    const p = s.pending || {};
    setState(state, peerDetail(s));
    fill($("identity"), [
      el("span", { class: "name" }, s.name ?? ""),
      el("span", { class: "sep", "aria-hidden": "true" }, " · "),
      el("span", { class: "path" }, s.folder ?? ""),
    ]);
    document.title = `DartSync — ${LABELS[state] ?? state} — ${s.name ?? ""}`;

    // Devices
    const devs = list(s.devices).map((d) =>
      deviceRow(d, deviceSync(d, d.up_to_date ? "up to date" : d.online ? "syncing" : "behind"), []));
    fill($("devices"), devs.length ? devs : [empty("No devices known yet.")]);

    // Folder facts
    $("folder").hidden = false;
    const facts = [
      ...fact("State", LABELS[state] ?? String(state)),
      ...fact("Folder", el("span", { class: "path" }, s.folder ?? "")),
      ...fact("Device", `${s.name ?? ""} `, el("code", { title: s.id ?? "" }, shortId(s.id))),
      ...fact("Tracker", trackerLink(s.tracker)),
      ...fact("Files", `${count(s.files, "file")}, ${size(s.bytes)}`),
      ...fact("Pending", num(p.files) > 0 ? `${count(p.files, "file")}, ${size(p.bytes)} left` : "nothing"),
      ...fact("Rate", num(p.rate) > 0 ? `${size(p.rate)}/s` : "idle"),
      ...fact("ETA", p.eta_secs != null ? `about ${duration(p.eta_secs)}` : "—"),
    ];
    if (num(s.received_bytes) > 0) facts.push(...fact("Received", `${size(s.received_bytes)} since start`));
    if (num(s.unannounced) > 0) facts.push(...fact("Not yet announced", count(s.unannounced, "local change")));
    if (s.last_event) facts.push(...fact("Last event", `${s.last_event.what ?? ""} `, timeEl(s.last_event.at)));
    fill($("folder-summary"), facts);

    // Transfers
    const transfers = list(s.transfers);
    const trows = transfers.map((t) => {
      const total = num(t.size);
      const pct = percent(t.done, total);
      return el(
        "li",
        { class: "transfer", dataset: { path: t.path ?? "" } },
        el("div", { class: "path" }, t.path ?? ""),
        el("progress", {
          max: total > 0 ? total : 1,
          value: total > 0 ? Math.min(num(t.done), total) : 1,
          "aria-label": `${t.path ?? ""}: ${pct}%`,
        }, `${pct}%`),
        el("div", { class: "meta" },
          el("span", { class: "pct" }, `${pct}%`),
          ` of ${size(total)} · from ${count(t.sources, "peer")}`),
      );
    });
    if (num(p.files) > transfers.length && transfers.length > 0) {
      trows.push(el("li", { class: "more" }, `and ${thousands(num(p.files) - transfers.length)} more queued`));
    }
    fill($("transfers"), trows.length ? trows : [empty("Nothing downloading.")]);

    // Waiting
    const waiting = list(s.waiting);
    const wrows = waiting.map((w) =>
      el("li", { class: "wait", dataset: { path: w.path ?? "" } },
        el("span", { class: "path" }, w.path ?? ""), ": ", el("span", { class: "reason" }, w.reason ?? "")));
    if (num(s.waiting_total) > waiting.length) {
      wrows.push(el("li", { class: "more" }, `and ${thousands(num(s.waiting_total) - waiting.length)} more`));
    }
    fill($("waiting"), wrows.length ? wrows : [empty("Nothing waiting.")]);

    renderConflicts(s.conflicts);
    renderEvents(s.events ?? (s.last_event ? [s.last_event] : []));
    return num(p.rate);
  }

  // ---- tracker -------------------------------------------------------------

  function renderTracker(s) {
    const devices = list(s.devices);
    const online = devices.filter((d) => d.online && (d.state ?? "admitted") === "admitted");
    const behind = online.filter((d) => !d.up_to_date);
    const state = behind.length === 0 ? "up_to_date" : "syncing";
    let detail;
    if (online.length === 0) detail = `No device online (${thousands(devices.length)} known)`;
    else if (behind.length === 0) {
      detail = online.length === 1 ? "The 1 online device is up to date" : `All ${thousands(online.length)} online devices up to date`;
    } else detail = `${thousands(behind.length)} of ${count(online.length, "online device")} not up to date`;
    setState(state, detail);
    fill($("identity"), [
      el("span", { class: "name" }, "Tracker"),
      el("span", { class: "sep", "aria-hidden": "true" }, " · "),
      el("span", { class: "addr" }, `listening on ${s.listen ?? ""}`),
      el("span", { class: "sep", "aria-hidden": "true" }, " · "),
      el("span", { class: "table" },
        `${count(s.records, "record")} (${count(s.tombstones, "tombstone")}), seq ${thousands(s.seq)}`),
    ]);
    document.title = `DartSync — ${LABELS[state]} — Tracker`;

    let rate = 0;
    const rows = devices.map((d) => {
      rate += num(d.rate);
      const details = [];
      const behindBy = num(d.behind) > 0 ? `behind ${count(d.behind, "change")}` : null;
      const sync = deviceSync(d, d.up_to_date ? "up to date" : d.online ? "syncing" : behindBy ?? "behind");
      if (behindBy && sync !== behindBy) details.push(behindBy);
      if (num(d.pending_files) > 0 || num(d.pending_bytes) > 0) {
        details.push(`${count(d.pending_files, "file")}, ${size(d.pending_bytes)} left`);
      }
      if (num(d.rate) > 0) details.push(`${size(d.rate)}/s`);
      if (num(d.waiting) > 0) details.push(`${thousands(d.waiting)} waiting`);
      if (d.addr) details.push(`at ${d.addr}`);
      return deviceRow(d, sync, details);
    });
    fill($("devices"), rows.length ? rows : [empty("No devices registered yet.")]);

    $("folder").hidden = true;
    // No folder on a tracker: balance the columns with the events.
    const events = document.querySelector(".c-events");
    const right = $("folder").parentElement;
    if (events && right && events.parentElement !== right) right.append(events);
    renderConflicts(s.conflicts);
    renderEvents(s.events);
    return rate;
  }

  // ---- chart ---------------------------------------------------------------

  function niceMax(v) {
    const mb = num(v) / 1e6;
    if (mb <= 1) return 1e6;
    const p = 10 ** Math.floor(Math.log10(mb));
    for (const m of [1, 2, 2.5, 5, 10]) if (mb <= m * p) return m * p * 1e6;
    return 10 * p * 1e6;
  }

  function pushSample(v) {
    const t = nowSecs();
    samples.push({ t, v: Math.max(0, num(v)) });
    while (samples.length && samples[0].t < t - WINDOW_S) samples.shift();
  }

  function drawChart() {
    const W = 600, H = 150;
    const now = nowSecs();
    while (samples.length && samples[0].t < now - WINDOW_S) samples.shift();
    const peak = samples.reduce((m, s) => Math.max(m, s.v), 0);
    const max = niceMax(peak);
    const x = (t) => (((t - (now - WINDOW_S)) / WINDOW_S) * W).toFixed(1);
    const y = (v) => (H - 1 - (Math.min(v, max) / max) * (H - 2)).toFixed(1);

    const root = svg("svg", {
      viewBox: `0 0 ${W} ${H}`,
      preserveAspectRatio: "none",
      role: "img",
      "aria-label": `Transfer rate over the last 5 minutes: now ${mbps(samples.length ? samples[samples.length - 1].v : 0)}, peak ${mbps(peak)}`,
    });
    for (const f of [0.25, 0.5, 0.75]) {
      root.append(svg("line", { class: "gridline", x1: 0, x2: W, y1: (H * f).toFixed(1), y2: (H * f).toFixed(1), "vector-effect": "non-scaling-stroke" }));
    }
    // Split into segments where polling failed (gaps over 5 s).
    const segments = [];
    let seg = [];
    for (const s of samples) {
      if (seg.length && s.t - seg[seg.length - 1].t > 5) {
        segments.push(seg);
        seg = [];
      }
      seg.push(s);
    }
    if (seg.length) segments.push(seg);
    for (const part of segments) {
      const pts = part.map((s) => `${x(s.t)},${y(s.v)}`);
      if (part.length === 1) pts.push(`${x(part[0].t + 1)},${y(part[0].v)}`);
      const first = x(part[0].t), last = x(part[part.length - 1].t + (part.length === 1 ? 1 : 0));
      root.append(svg("polygon", { class: "area", points: `${first},${H} ${pts.join(" ")} ${last},${H}` }));
      root.append(svg("polyline", { class: "line", points: pts.join(" "), "vector-effect": "non-scaling-stroke" }));
    }
    $("chart-plot").replaceChildren(root);
    setText($("chart-max"), mbps(max));
    const cur = samples.length ? samples[samples.length - 1].v : 0;
    setText($("rate-now"), samples.length ? `Now ${mbps(cur)} · peak ${mbps(peak)} (last 5 min)` : "No data yet");
  }

  // ---- polling -------------------------------------------------------------

  function render(body) {
    if (!body || typeof body !== "object" || !body.status || typeof body.status !== "object") {
      throw new Error("no status in the answer");
    }
    document.body.dataset.kind = String(body.kind);
    const rate = body.kind === "tracker" ? renderTracker(body.status) : renderPeer(body.status);
    pushSample(rate);
    drawChart();
    if (body.schema !== 1) {
      showBanner("schema", `This page expects status schema 1 but got ${String(body.schema)}; some details may be missing.`);
    } else {
      hideBanner();
    }
    lastOk = Date.now();
    if (!loaded) {
      loaded = true;
      document.body.dataset.loaded = "1";
    }
  }

  function updateFooter() {
    setText($("updated"), lastOk ? `Updated ${ago(lastOk / 1000)}` : "Not updated yet");
  }

  async function poll() {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), TIMEOUT_MS);
    try {
      let res;
      try {
        res = await fetch(API, {
          cache: "no-store",
          credentials: "same-origin",
          headers: { Accept: "application/json" },
          signal: ctrl.signal,
        });
      } catch (_) {
        showBanner("offline", "Cannot reach DartSync; retrying…");
        return;
      }
      if (res.status === 401) {
        showBanner("auth", "Login required: open the link printed by ",
          el("code", null, "dartsync dashboard-url"), " on the tracker machine");
        return;
      }
      if (!res.ok) {
        showBanner("http", `DartSync answered HTTP ${res.status}; retrying…`);
        return;
      }
      let body;
      try {
        body = await res.json();
      } catch (_) {
        showBanner("invalid", "DartSync sent an unreadable answer; retrying…");
        return;
      }
      try {
        render(body);
      } catch (err) {
        console.error("dashboard render failed", err);
        showBanner("invalid", "DartSync sent a status this page cannot show; retrying…");
      }
    } finally {
      clearTimeout(timer);
      updateFooter();
      if (!loaded || document.body.dataset.stale) drawChart();
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
