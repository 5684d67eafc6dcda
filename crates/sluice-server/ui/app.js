// The Sluice UI: flows, runs, the run inspector and acting on runs, over
// the HTTP API with the token a person signs in with. No build step and
// nothing from elsewhere: this file, app.css and index.html are served by
// `sluice serve` from its binary. Every value from the server is put into
// the page as text (never as HTML).

const TOKEN_KEY = "sluice.token";
const state = { me: null, flows: null, stream: null, streamHandlers: new Set(), resumed: new Map() };
const main = () => document.getElementById("main");

// --- elements ---------------------------------------------------------------

/** An element: h("a", {href: "#"}, "text", child, [more]). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v; // through the CSSOM: the page's policy refuses style attributes
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}
function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}
function show(...children) {
  const m = main();
  m.replaceChildren();
  append(m, children);
}
function say(text, error) {
  state.saidAt = Date.now();
  const n = document.getElementById("notice");
  n.replaceChildren(text ? h("p", { class: error ? "error" : "" }, text) : "");
  if (text && !error) setTimeout(() => { if (n.textContent === text) n.replaceChildren(); }, 6000);
}
/** Who must act on an error, by its blame. */
const WHO = { flow: "the flow's author", data: "whoever sent the data (or the flow's author)", external: "the outside system's owner", store: "whoever runs Sluice's store", bug: "Sluice's developers (a bug)" };
const badge = (status) => h("span", { class: `badge s-${status}` }, status);
const when = (t) => (t ? new Date(t).toLocaleString() : "");
function ago(t) {
  if (!t) return "";
  const s = (Date.now() - new Date(t).getTime()) / 1000;
  if (s < 60) return `${Math.max(0, Math.round(s))} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
function took(a, b) {
  if (!a || !b) return "";
  const ms = new Date(b) - new Date(a);
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}
const ms = (n) => (n < 1000 ? `${n.toFixed(n < 10 ? 2 : 0)} ms` : `${(n / 1000).toFixed(2)} s`);
const may = (role) => {
  const order = ["viewer", "operator", "admin"];
  return state.me && order.indexOf(state.me.role) >= order.indexOf(role);
};

// --- the API ----------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `the server answered ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** A call of the API; a 401 sends the person to sign in (the page they were on comes back after). */
async function api(path, { method = "GET", body, raw } = {}) {
  const headers = {};
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, { message: `the server cannot be reached (${e.message})` });
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { message: text }; }
  if (resp.status === 401) {
    // Only a token that was refused needs a word: without one, sign-in is simply next.
    refused(token, data && data.message);
    throw new ApiError(401, data);
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return raw ? { data, headers: resp.headers } : data;
}

/** A call made with token `sent` (or none) was refused: sign out, unless
 * someone signed in since (a late answer to a call made before must not
 * sign out the token that came after it). */
function refused(sent, why) {
  if ((localStorage.getItem(TOKEN_KEY) || null) !== (sent || null)) return;
  signOut(sent ? why : null);
}

function signOut(why) {
  localStorage.removeItem(TOKEN_KEY);
  state.me = null;
  stopStream();
  const back = location.hash.startsWith("#/signin") ? "" : location.hash;
  if (back) sessionStorage.setItem("sluice.back", back);
  location.hash = "#/signin";
  if (why) say(why, true);
}

// --- live changes (server-sent events, read with the token) ------------------

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}
async function startStream() {
  if (state.stream) return;
  const ctl = new AbortController();
  state.stream = ctl;
  const headers = {};
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const resp = await fetch("/api/stream", { headers, signal: ctl.signal });
    if (!resp.ok || !resp.body) throw new Error(String(resp.status));
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (!data) continue;
        let parsed = null;
        try { parsed = JSON.parse(data); } catch { continue; }
        for (const f of state.streamHandlers) f(event, parsed);
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  // The stream ended (the server restarted): open it again shortly.
  if (state.stream === ctl) {
    state.stream = null;
    setTimeout(() => { if (state.me) startStream(); }, 2000);
  }
}
/** Call f(event, data) for each change while the current page is shown. */
function onChange(f) {
  state.streamHandlers.add(f);
  return () => state.streamHandlers.delete(f);
}

// --- JSON viewer, diff and merge patch --------------------------------------

/** A JSON value shown with folds (details/summary: keyboard and screen-reader friendly). */
function jsonView(value, label) {
  const box = h("div", { class: "jv", role: "group", "aria-label": label || "JSON value" });
  box.append(jsonNode(value, null, 0));
  return box;
}
function jsonNode(v, key, depth) {
  const k = key === null ? null : h("span", { class: "k" }, typeof key === "number" ? `${key}: ` : `${JSON.stringify(key)}: `);
  if (v !== null && typeof v === "object") {
    const entries = Array.isArray(v) ? v.map((x, i) => [i, x]) : Object.entries(v);
    const [open, close] = Array.isArray(v) ? ["[", "]"] : ["{", "}"];
    if (entries.length === 0) return h("div", {}, k, `${open}${close}`);
    const d = h("details", { class: "json" });
    if (depth < 2 && entries.length <= 50) d.open = true;
    d.append(h("summary", {}, k, open, h("span", { class: "muted" }, ` ${entries.length} ${Array.isArray(v) ? (entries.length === 1 ? "item" : "items") : (entries.length === 1 ? "key" : "keys")} `), d.open ? "" : close));
    for (const [ck, cv] of entries.slice(0, 1000)) d.append(jsonNode(cv, ck, depth + 1));
    if (entries.length > 1000) d.append(h("div", { class: "muted" }, `… ${entries.length - 1000} more`));
    d.append(h("div", {}, close));
    return d;
  }
  const cls = typeof v === "string" ? "str" : typeof v === "number" ? "n" : "lit";
  return h("div", {}, k, h("span", { class: cls }, JSON.stringify(v)));
}

/** The differences between two JSON values, by path. */
function diff(a, b, path = "", out = []) {
  const obj = (x) => x !== null && typeof x === "object" && !Array.isArray(x);
  if (obj(a) && obj(b)) {
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
      const p = `${path}.${/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) ? k : JSON.stringify(k)}`;
      if (!(k in b)) out.push(["del", p, a[k]]);
      else if (!(k in a)) out.push(["add", p, b[k]]);
      else diff(a[k], b[k], p, out);
    }
  } else if (JSON.stringify(a) !== JSON.stringify(b)) {
    out.push(a === undefined ? ["add", path || ".", b] : ["chg", path || ".", a, b]);
  }
  return out;
}
function diffView(a, b) {
  const d = diff(a, b);
  if (d.length === 0) return h("p", { class: "muted" }, "No change.");
  const short = (v) => { const s = JSON.stringify(v); return s.length > 300 ? `${s.slice(0, 300)}…` : s; };
  return h("ul", { class: "diff", "aria-label": "Changes" }, d.map(([kind, p, x, y]) =>
    h("li", { class: kind }, kind === "add" ? `+ ${p}: ${short(x)}` : kind === "del" ? `− ${p}: ${short(x)}` : `~ ${p}: ${short(x)} → ${short(y)}`)));
}
/** RFC 7396 JSON Merge Patch. */
function mergePatch(target, patch) {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const out = target !== null && typeof target === "object" && !Array.isArray(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}
/** JSON text parsed, or the error at its line and column. */
function parseJson(text) {
  try {
    return { value: JSON.parse(text) };
  } catch (e) {
    const [pos, what] = jsonErrorAt(text);
    const before = text.slice(0, pos);
    const line = before.split("\n").length;
    const col = pos - before.lastIndexOf("\n");
    return { error: `not JSON at line ${line}, column ${col}: ${what}`, pos };
  }
}
/** Where JSON text first goes wrong (browsers' messages no longer say). */
function jsonErrorAt(t) {
  let i = 0;
  const ws = () => { while (i < t.length && " \t\n\r".includes(t[i])) i++; };
  const fail = (what) => { throw [i, what]; };
  const lit = (word) => { if (t.startsWith(word, i)) i += word.length; else fail(`expected a value, found ${t[i] === undefined ? "the end" : JSON.stringify(t[i])}`); };
  const str = () => {
    i++;
    while (i < t.length && t[i] !== '"') {
      if (t[i] === "\\") { i++; if (!'"\\/bfnrtu'.includes(t[i])) fail("a bad escape"); if (t[i] === "u" && !/^[0-9a-fA-F]{4}$/.test(t.slice(i + 1, i + 5))) fail("a bad \\u escape"); if (t[i] === "u") i += 4; }
      else if (t.charCodeAt(i) < 0x20) fail("a control character in a string");
      i++;
    }
    if (i >= t.length) fail("a string that does not end");
    i++;
  };
  const value = () => {
    ws();
    const c = t[i];
    if (c === "{") {
      i++; ws();
      if (t[i] === "}") { i++; return; }
      for (;;) {
        ws(); if (t[i] !== '"') fail("expected a key in double quotes"); str(); ws();
        if (t[i] !== ":") fail("expected `:`"); i++; value(); ws();
        if (t[i] === ",") { i++; continue; } if (t[i] === "}") { i++; return; } fail("expected `,` or `}`");
      }
    } else if (c === "[") {
      i++; ws();
      if (t[i] === "]") { i++; return; }
      for (;;) { value(); ws(); if (t[i] === ",") { i++; continue; } if (t[i] === "]") { i++; return; } fail("expected `,` or `]`"); }
    } else if (c === '"') str();
    else if (c === "t") lit("true"); else if (c === "f") lit("false"); else if (c === "n") lit("null");
    else {
      const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(t.slice(i));
      if (!m || !m[0] || m[0] === "-") fail(`expected a value, found ${c === undefined ? "the end" : JSON.stringify(c)}`);
      i += m[0].length;
    }
  };
  try { value(); ws(); if (i < t.length) fail("more after the value"); return [i, "not JSON"]; } catch (e) { if (Array.isArray(e)) return e; throw e; }
}

// --- pages --------------------------------------------------------------------

const routes = [
  [/^#\/signin$/, signInPage],
  [/^#\/flows\/([^/]+)\/edit$/, (m) => editPage(decodeURIComponent(m[1]))],
  [/^#\/new$/, () => editPage(null)],
  [/^#\/flows\/(.+)$/, (m) => flowPage(decodeURIComponent(m[1]), m[0])],
  [/^#\/flows$/, flowsPage],
  [/^#\/runs\/([^?]+)$/, (m) => runPage(decodeURIComponent(m[1]), m[0])],
  [/^#\/runs(\?.*)?$/, (m) => runsPage(new URLSearchParams((m[1] || "").slice(1)))],
  [/^#\/inbox$/, inboxPage],
];
let leave = [];

/** Whether the address moved on while a page read what it shows: a page
 * read again (a followed run that ended) must not draw over the page the
 * address now names. */
function moved(hash) {
  return hash !== undefined && location.hash !== hash;
}

async function route() {
  for (const f of leave) f();
  leave = [];
  // What was said on the page before goes with it (unless it was just said, for this page).
  if (Date.now() - (state.saidAt || 0) > 1500) document.getElementById("notice").replaceChildren();
  const hash = location.hash || "#/flows";
  // Set once the page is shown (tests wait for it).
  delete document.body.dataset.shown;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (hash.startsWith(`#/${a.dataset.nav}`)) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (hash !== "#/signin" && !state.me) {
    try {
      state.me = await api("/api/me");
    } catch (e) {
      if (e.status !== 401) show(h("h1", {}, "Sluice"), h("p", { class: "error-text" }, e.message));
      return;
    }
    whoAmI();
    startStream();
  }
  if (hash !== "#/signin") inboxCount();
  for (const [re, page] of routes) {
    const m = re.exec(hash);
    if (m) {
      try {
        await page(m);
      } catch (e) {
        if (e.status !== 401) show(h("h1", {}, "Something went wrong"), h("p", { class: "error-text" }, e.message));
      }
      main().focus();
      if (location.hash === hash || (!location.hash && hash === "#/flows")) document.body.dataset.shown = location.hash || hash;
      return;
    }
  }
  show(h("h1", {}, "Not found"), h("p", {}, "Nothing here. ", h("a", { href: "#/flows" }, "See the flows.")));
}

function whoAmI() {
  const who = document.getElementById("who");
  who.replaceChildren();
  if (!state.me) return;
  who.append(
    h("span", {}, state.me.signedIn ? `${state.me.user} · ${state.me.role}` : "no sign-in needed (no tokens)"),
    state.me.signedIn ? h("button", { type: "button", onclick: () => signOut() }, "Sign out") : "",
  );
}

function signInPage() {
  whoAmI();
  const input = h("input", { id: "token", type: "password", autocomplete: "current-password", required: true, "aria-describedby": "token-help" });
  const form = h("form", {
    onsubmit: async (ev) => {
      ev.preventDefault();
      localStorage.setItem(TOKEN_KEY, input.value.trim());
      try {
        state.me = await api("/api/me");
      } catch (e) {
        if (e.status !== 401) say(e.message, true);
        return;
      }
      say("");
      whoAmI();
      startStream();
      const back = sessionStorage.getItem("sluice.back");
      sessionStorage.removeItem("sluice.back");
      location.hash = back || "#/flows";
    },
  },
    h("label", { for: "token" }, "API token", input),
    h("p", { id: "token-help", class: "muted" }, "Made with ", h("code", {}, "sluice tokens create NAME --role viewer|operator|admin"), ". It is kept in this browser until you sign out."),
    h("button", { type: "submit" }, "Sign in"));
  show(h("div", { class: "signin" }, h("h1", {}, "Sign in to Sluice"), form));
  input.focus();
}

function triggerText(t) {
  if (!t) return "";
  const bits = [t.type];
  if (t.path) bits.push(`/hooks/${t.path}`);
  if (t.cron) bits.push(t.cron);
  if (t.eventType) bits.push(t.eventType);
  if (t.table) bits.push(t.table);
  return bits.join(" ");
}

async function flowsPage() {
  const flows = await api("/api/flows");
  state.flows = flows;
  const rows = flows.map((f) => h("tr", {},
    h("td", {}, h("a", { href: `#/flows/${encodeURIComponent(f.id)}` }, f.id)),
    h("td", { class: "opt" }, f.name || ""),
    h("td", {}, h("code", {}, triggerText(f.trigger))),
    h("td", {}, f.enabled ? "on" : h("span", { class: "off" }, "off")),
    h("td", {}, f.lastRun ? [badge(f.lastRun.status), " ", h("a", { href: `#/runs/${encodeURIComponent(f.lastRun.id)}`, title: when(f.lastRun.startedAt) }, ago(f.lastRun.startedAt))] : h("span", { class: "muted" }, "never")),
    h("td", { class: "num" }, h("a", { href: `#/runs?flow=${encodeURIComponent(f.id)}`, "aria-label": `${f.lastDay.runs} runs of ${f.id} in the last day` }, f.lastDay.runs)),
    h("td", { class: "num" }, f.lastDay.failures ? h("a", { href: `#/runs?flow=${encodeURIComponent(f.id)}&status=failed`, class: "s-failed" }, f.lastDay.failures) : "0")));
  show(
    h("h1", {}, "Flows"),
    may("admin") ? h("p", {}, h("a", { class: "button", href: "#/new" }, "New flow")) : null,
    flows.length === 0 ? h("p", {}, "No flows are served. Put flow files in the folder given to ", h("code", {}, "sluice serve --flows"), ".") :
      h("div", { class: "wrap" }, h("table", {},
        h("caption", { class: "muted", style: "text-align:left" }, `${flows.length} flows; runs and failures of the last 24 hours`),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Id"), h("th", { scope: "col", class: "opt" }, "Name"), h("th", { scope: "col" }, "Trigger"), h("th", { scope: "col" }, "On"), h("th", { scope: "col" }, "Last run"), h("th", { scope: "col", class: "num" }, "Runs (24 h)"), h("th", { scope: "col", class: "num" }, "Failures (24 h)"))),
        h("tbody", {}, rows))));
}

/** The flow's grid: the trigger, then each step; success paths go right, failure paths go down and right. */
function flowGrid(flow) {
  const W = 190, H = 74, GX = 60, GY = 34;
  const steps = flow.steps;
  const index = new Map(steps.map((s, i) => [s.key, i]));
  const pos = new Map();
  const taken = new Set();
  const place = (key, col, row) => {
    while (taken.has(`${col},${row}`)) row += 1;
    taken.add(`${col},${row}`);
    pos.set(key, [col, row]);
  };
  const edges = [];
  place("#trigger", 0, 0);
  if (steps.length) {
    edges.push(["#trigger", steps[0].key, "ok"]);
    const queue = [steps[0].key];
    place(steps[0].key, 1, 0);
    while (queue.length) {
      const key = queue.shift();
      const s = steps[index.get(key)];
      const [c, r] = pos.get(key);
      for (const [to, kind, dc, dr] of [[s.next, "ok", 1, 0], [s.onFailure, "fail", 1, 1]]) {
        if (!to) continue;
        edges.push([key, to, kind]);
        if (!pos.has(to)) { place(to, c + dc, r + dr); queue.push(to); }
      }
    }
    for (const s of steps) if (!pos.has(s.key)) place(s.key, 1, Math.max(...[...pos.values()].map((p) => p[1])) + 1);
  }
  const cols = Math.max(...[...pos.values()].map((p) => p[0])) + 1;
  const rows = Math.max(...[...pos.values()].map((p) => p[1])) + 1;
  const width = cols * (W + GX) + 20, height = rows * (H + GY) + 20;
  const xy = (key) => { const [c, r] = pos.get(key); return [10 + c * (W + GX), 10 + r * (H + GY)]; };
  const grid = h("div", { class: "grid", style: `width:${width}px;height:${height}px` });
  const lines = svg("svg", { width, height, "aria-hidden": "true" });
  const defs = svg("defs", {});
  for (const [id, color] of [["ok", "#1d7a3a"], ["fail", "#b3261e"]]) {
    const m = svg("marker", { id: `arrow-${id}`, viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
    m.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: color }));
    defs.append(m);
  }
  lines.append(defs);
  for (const [from, to, kind] of edges) {
    const [x1, y1] = xy(from), [x2, y2] = xy(to);
    const sx = x1 + W, sy = kind === "ok" ? y1 + H / 2 : y1 + H - 12;
    const ex = x2, ey = y2 + H / 2;
    const back = ex <= sx;
    const d = back
      ? `M${sx},${sy} C${sx + 40},${sy} ${sx + 40},${Math.max(sy, ey) + H} ${(sx + ex) / 2},${Math.max(sy, ey) + H / 2 + 20} S${ex - 40},${ey} ${ex},${ey}`
      : `M${sx},${sy} C${sx + GX / 2},${sy} ${ex - GX / 2},${ey} ${ex},${ey}`;
    lines.append(svg("path", { d, fill: "none", stroke: kind === "ok" ? "#1d7a3a" : "#b3261e", "stroke-width": "2", "stroke-dasharray": kind === "ok" ? "" : "6 4", "marker-end": `url(#arrow-${kind})` }));
  }
  grid.append(lines);
  const card = (key, kind, title, sub, extra) => {
    const [x, y] = xy(key);
    return h("div", { class: `op ${extra || ""}`, style: `left:${x}px;top:${y}px`, role: "listitem", "aria-label": sub }, h("div", { class: "kind" }, kind), h("div", { class: "key" }, title), h("div", { class: "line" }, sub.replace(/^.*?; /, "")));
  };
  const list = h("div", { role: "list", "aria-label": `Flow ${flow.id}: the trigger and its steps` });
  list.append(card("#trigger", "trigger", flow.trigger.type, `trigger ${triggerText(flow.trigger)}; ${triggerText(flow.trigger)}`, "trigger"));
  for (const s of steps) {
    const paths = [`then ${s.next || "end"}`];
    if (s.failurePath) paths.push(`on failure ${s.onFailure || "end (failed)"}`);
    list.append(card(s.key, s.type, s.key, `step ${s.key} (${s.type}), line ${s.line}; ${paths.join(", ")}`));
  }
  grid.append(list);
  return h("div", {},
    h("p", { class: "legend" }, h("span", { class: "okline" }, "━ success path"), " · ", h("span", { class: "badline" }, "┅ failure path")),
    h("div", { class: "grid-wrap" }, grid));
}

function runsTable(runs, showFlow = true) {
  if (runs.length === 0) return h("p", { class: "muted" }, "No runs.");
  return h("div", { class: "wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Status"), showFlow ? h("th", { scope: "col" }, "Flow") : null, h("th", { scope: "col" }, "Run"), h("th", { scope: "col" }, "Started"), h("th", { scope: "col", class: "num opt" }, "Took"), h("th", { scope: "col", class: "num opt" }, "Steps"), h("th", { scope: "col" }, "Error"))),
    h("tbody", {}, runs.map((r) => h("tr", {},
      h("td", {}, badge(r.status)),
      showFlow ? h("td", {}, h("a", { href: `#/flows/${encodeURIComponent(r.flowId)}` }, r.flowId)) : null,
      h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(r.id)}`, class: "mono" }, r.id)),
      h("td", { class: "when", title: when(r.startedAt) }, ago(r.startedAt)),
      h("td", { class: "num opt" }, took(r.startedAt, r.endedAt)),
      h("td", { class: "num opt" }, r.steps),
      h("td", {}, r.error ? h("span", { class: "error-text" }, r.errorStep ? `${r.errorStep}: ` : "", r.error.length > 160 ? `${r.error.slice(0, 160)}…` : r.error) : ""))))));
}

async function flowPage(id, hash) {
  const [flow, runs] = await Promise.all([api(`/api/flows/${encodeURIComponent(id)}`), api(`/api/runs?flow=${encodeURIComponent(id)}&limit=20`)]);
  if (moved(hash)) return;
  const parts = [
    h("h1", {}, `Flow ${flow.id}`, flow.enabled ? "" : h("span", { class: "off" }, " (off)")),
    h("dl", { class: "meta" },
      flow.name ? [h("dt", {}, "Name"), h("dd", {}, flow.name)] : null,
      flow.description ? [h("dt", {}, "Description"), h("dd", {}, flow.description)] : null,
      h("dt", {}, "Trigger"), h("dd", {}, h("code", {}, triggerText(flow.trigger))),
      h("dt", {}, "File"), h("dd", {}, flow.file || ""),
      h("dt", {}, "Version"), h("dd", { class: "mono" }, flow.version)),
  ];
  if (may("admin")) parts.push(h("p", {}, h("a", { class: "button", href: `#/flows/${encodeURIComponent(flow.id)}/edit` }, "Edit the flow file")));
  if (flow.trigger.type === "manual" && may("operator")) parts.push(manualForm(flow));
  parts.push(h("h2", {}, "Steps"), flowGrid(flow));
  parts.push(h("h2", {}, "Recent runs ", h("a", { href: `#/runs?flow=${encodeURIComponent(flow.id)}`, class: "muted" }, "(all)")), runsTable(runs, false));
  parts.push(h("h2", {}, "File"), h("pre", { class: "source", tabindex: "0", "aria-label": "The flow file" }, flow.source));
  show(parts);
}

/** Start a manual flow: a form of its fields (or its input as JSON when it declares none), checked, confirmed if the flow asks, then the run opens. */
function manualForm(flow) {
  const fields = flow.trigger.fields || [];
  const out = h("p", { class: "error-text", role: "alert" });
  const inputs = [];
  const parts = [];
  if (fields.length === 0) {
    const raw = h("textarea", { id: "manual-input", rows: "4", "aria-describedby": "manual-help" }, "{}");
    inputs.push({ read: () => { const p = parseJson(raw.value.trim() || "null"); if (p.error) throw new Error(p.error); return p.value; } });
    parts.push(h("label", { for: "manual-input" }, "Start a run with this input (JSON)", raw),
      h("p", { id: "manual-help", class: "muted" }, "The input becomes the run's state data and ", h("code", {}, "$trigger.body"), "."));
  } else {
    for (const f of fields) {
      const id = `field-${f.name}`;
      const type = f.type || "string";
      const help = f.description ? h("span", { id: `${id}-help`, class: "muted" }, f.description) : null;
      const problem = h("span", { id: `${id}-problem`, class: "error-text" });
      const attrs = { id, name: f.name, required: !!f.required && f.default === undefined, "aria-describedby": `${help ? `${id}-help ` : ""}${id}-problem` };
      let el;
      if (type === "boolean") el = h("input", { ...attrs, type: "checkbox", required: false });
      else if (type === "json") el = h("textarea", { ...attrs, rows: "3", spellcheck: "false" });
      else el = h("input", { ...attrs, type: type === "string" ? "text" : "number", step: type === "integer" ? "1" : "any" });
      if (f.default !== undefined && f.default !== null) {
        if (type === "boolean") el.checked = !!f.default;
        else el.value = type === "json" ? JSON.stringify(f.default, null, 2) : String(f.default);
      }
      inputs.push({ name: f.name, problem, el, read: () => {
        if (type === "boolean") return el.checked;
        const v = el.value.trim();
        if (v === "") { if (attrs.required) throw Object.assign(new Error("is required"), { field: f.name }); return undefined; }
        if (type === "number" || type === "integer") {
          const n = Number(v);
          if (!Number.isFinite(n) || (type === "integer" && !Number.isInteger(n))) throw Object.assign(new Error(`is ${type === "integer" ? "a whole number" : "a number"}`), { field: f.name });
          return n;
        }
        if (type === "json") { const p = parseJson(v); if (p.error) throw Object.assign(new Error(p.error), { field: f.name }); return p.value; }
        return el.value;
      } });
      parts.push(h("div", { class: "field" }, h("label", { for: id }, `${f.label || f.name}${attrs.required ? " (required)" : ""}`, el), help, " ", problem));
    }
  }
  const dialog = flow.trigger.confirm ? h("dialog", { "aria-labelledby": "confirm-text" }, h("p", { id: "confirm-text" }, flow.trigger.confirm),
    h("form", { method: "dialog", class: "row" }, h("button", { value: "yes" }, "Start"), h("button", { value: "no", class: "quiet" }, "Back"))) : null;
  const asked = () => new Promise((resolve) => {
    if (!dialog) { resolve(true); return; }
    dialog.returnValue = "";
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.showModal();
  });
  const form = h("form", { class: "panel", "aria-label": `Start ${flow.id}`, novalidate: true, onsubmit: async (ev) => {
    ev.preventDefault();
    out.textContent = "";
    let body;
    let bad = false;
    for (const i of inputs) {
      if (i.problem) i.problem.textContent = "";
      if (i.el) i.el.removeAttribute("aria-invalid");
    }
    if (fields.length === 0) {
      try { body = inputs[0].read(); } catch (e) { out.textContent = e.message; return; }
    } else {
      body = {};
      for (const i of inputs) {
        try { const v = i.read(); if (v !== undefined) body[i.name] = v; } catch (e) { i.problem.textContent = e.message; i.el.setAttribute("aria-invalid", "true"); bad = true; }
      }
      if (bad) { out.textContent = "Some fields need a look."; return; }
    }
    if (!(await asked())) return;
    try {
      const r = await api(`/api/flows/${encodeURIComponent(flow.id)}/runs`, { method: "POST", body });
      location.hash = `#/runs/${encodeURIComponent(r.runId)}`;
    } catch (e) {
      out.textContent = e.message;
      for (const p of (e.body && e.body.details && e.body.details.fields) || []) {
        const i = inputs.find((x) => x.name === p.field);
        if (i && i.problem) { i.problem.textContent = p.message; i.el.setAttribute("aria-invalid", "true"); }
      }
    }
  } }, h("h2", {}, "Start a run"), parts, out, h("button", { type: "submit" }, "Start run"));
  return h("div", {}, form, dialog);
}

async function runsPage(params) {
  const flows = state.flows || (state.flows = await api("/api/flows"));
  const field = (name, label, el) => { el.id = `f-${name}`; el.name = name; return h("label", { for: el.id }, label, el); };
  const flowSel = h("select", {}, h("option", { value: "" }, "all flows"), flows.map((f) => h("option", { value: f.id }, f.id)));
  const statusSel = h("select", {}, h("option", { value: "" }, "any status"), ["running", "waiting", "succeeded", "failed", "incident", "cancelled"].map((s) => h("option", { value: s }, s)));
  const since = h("input", { type: "datetime-local" });
  const until = h("input", { type: "datetime-local" });
  const fieldIn = h("input", { type: "text", placeholder: "trigger.body.email", size: "18" });
  const valueIn = h("input", { type: "text", size: "14" });
  const jq = h("input", { type: "text", placeholder: ".output.total > 100", size: "26", class: "mono" });
  flowSel.value = params.get("flow") || "";
  statusSel.value = params.get("status") || "";
  const local = (t) => { if (!t) return ""; const d = new Date(t); return new Date(d - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16); };
  since.value = local(params.get("since"));
  until.value = local(params.get("until"));
  fieldIn.value = params.get("field") || "";
  valueIn.value = params.get("value") || "";
  jq.value = params.get("search") || "";
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter runs", onsubmit: (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    if (flowSel.value) q.set("flow", flowSel.value);
    if (statusSel.value) q.set("status", statusSel.value);
    if (since.value) q.set("since", new Date(since.value).toISOString());
    if (until.value) q.set("until", new Date(until.value).toISOString());
    if (fieldIn.value) { q.set("field", fieldIn.value); q.set("value", valueIn.value); }
    if (jq.value) q.set("search", jq.value);
    const next = `#/runs${q.toString() ? `?${q}` : ""}`;
    if (location.hash === next) route(); else location.hash = next;
  } },
    field("flow", "Flow", flowSel), field("status", "Status", statusSel), field("since", "Started after", since), field("until", "Started before", until),
    field("field", "Field", fieldIn), field("value", "equals", valueIn), field("search", "or a jq predicate", jq),
    h("button", { type: "submit" }, "Show"));
  const results = h("div", { "aria-live": "polite" });
  const more = h("button", { type: "button", class: "quiet" }, "More");
  const live = h("span", { class: "live" });
  const shown = [];
  const q = new URLSearchParams(params);
  q.set("limit", "50");
  const searching = params.has("search") || params.has("field");
  async function load(after, replace) {
    const qq = new URLSearchParams(q);
    if (after) qq.set("after", after);
    let r;
    try {
      r = await api(`/api/runs?${qq}`, { raw: true });
    } catch (e) {
      if (e.status === 401) return;
      results.replaceChildren(h("p", { class: "error-text", role: "alert" }, e.message));
      more.hidden = true;
      return;
    }
    if (replace) shown.length = 0;
    shown.push(...r.data);
    const next = r.headers.get("sluice-next-after");
    const read = r.headers.get("sluice-runs-read");
    results.replaceChildren(runsTable(shown), searching && read ? h("p", { class: "muted" }, `${shown.length} found; ${read} runs read by the last search${next ? " (more may match further back)" : ""}.`) : "");
    more.hidden = !next;
    more.onclick = () => load(next, false);
  }
  await load(null, true);
  show(h("h1", {}, "Runs ", live), form, results, more);
  // Live: the first page is read again as this process's runs start and
  // end, and every 5 s (the runs other processes drive on a shared store).
  if (!searching) {
    let timer = null;
    live.textContent = "● live";
    leave.push(onChange(() => {
      if (shown.length > 50) return;
      clearTimeout(timer);
      timer = setTimeout(() => load(null, true), 300);
    }));
    const every = setInterval(() => { if (shown.length <= 50) load(null, true); }, 5000);
    leave.push(() => clearInterval(every));
  }
}

function stepAttempts(log) {
  const seen = new Map();
  return log.map((s) => { const n = (seen.get(s.key) || 0) + 1; seen.set(s.key, n); return n; });
}

async function runPage(id, hash) {
  const run = await api(`/api/runs/${encodeURIComponent(id)}`);
  if (moved(hash)) return;
  const log = run.stepLog;
  const attempts = stepAttempts(log);
  const t0 = new Date(run.startedAt).getTime();
  const tEnd = Math.max(run.endedAt ? new Date(run.endedAt).getTime() : Date.now(), ...log.map((s) => new Date(s.startedAt).getTime() + s.durationMs), t0 + 1);
  const span = tEnd - t0;
  const detail = h("section", { "aria-label": "Step", "aria-live": "polite" });
  const buttons = [];
  const select = (i) => {
    buttons.forEach((b, j) => b.setAttribute("aria-current", String(i === j)));
    detail.replaceChildren(stepDetail(run, i, attempts[i]));
  };
  const timeline = h("ol", { class: "timeline", "aria-label": "Steps, in the order they ran" }, log.map((s, i) => {
    const start = new Date(s.startedAt).getTime() - t0;
    const b = h("button", { type: "button", onclick: () => select(i) },
      h("div", { class: "steptitle" }, h("span", {}, s.ok ? "✓ " : "✗ ", h("strong", {}, s.key), attempts[i] > 1 ? ` (attempt ${attempts[i]})` : ""), h("span", { class: "muted" }, ms(s.durationMs))),
      h("div", { class: "muted" }, s.type),
      h("div", { class: "bar", "aria-hidden": "true" }, h("span", { style: `left:${(100 * start / span).toFixed(2)}%;width:${Math.max(0.5, 100 * s.durationMs / span).toFixed(2)}%` })));
    buttons.push(b);
    return h("li", { class: s.ok ? "" : "fail" }, b);
  }));
  const parts = [
    h("h1", {}, "Run ", h("span", { class: "mono" }, run.id), " ", badge(run.status)),
    h("dl", { class: "meta" },
      h("dt", {}, "Flow"), h("dd", {}, h("a", { href: `#/flows/${encodeURIComponent(run.flowId)}` }, run.flowId), h("span", { class: "muted" }, ` version ${run.flowVersion || "?"}`)),
      h("dt", {}, "Started"), h("dd", {}, when(run.startedAt)),
      h("dt", {}, "Took"), h("dd", {}, run.endedAt ? took(run.startedAt, run.endedAt) : "still going"),
      h("dt", {}, "Trigger"), h("dd", {}, runTrigger(run.trigger)),
      run.accountability && run.accountability.user ? [h("dt", {}, "Started by"), h("dd", {}, `${run.accountability.user} (${run.accountability.trigger || ""})`)] : null,
      run.parent ? [h("dt", {}, "Part of"), h("dd", {}, h("a", { href: `#/runs/${encodeURIComponent(run.parent.runId)}` }, run.parent.runId), ` item ${run.parent.item}`)] : null),
  ];
  parts.push(statusPanel(run));
  parts.push(runActions(run));
  parts.push(h("div", { class: "inspector" }, h("nav", { "aria-label": "Timeline" }, h("h2", {}, `Timeline (${log.length} steps)`), log.length ? timeline : h("p", { class: "muted" }, "No step has run.")), detail));
  parts.push(h("h2", {}, "Trigger"), jsonView(run.trigger, "Trigger"));
  if (run.output !== null) parts.push(h("h2", {}, "Output"), jsonView(run.output, "Output"));
  if (run.actions && run.actions.length) {
    parts.push(h("h2", {}, "What people did"), h("ul", {}, run.actions.map((a) => h("li", {}, `${when(a.at)}: ${a.action} by ${a.user || "anyone"}${a.details && a.details.runId ? ` → ${a.details.runId}` : ""}`))));
  }
  show(parts);
  const failed = log.findIndex((s) => !s.ok);
  if (log.length) select(failed >= 0 && run.status !== "succeeded" ? log.length - 1 - [...log].reverse().findIndex((s) => !s.ok) : log.length - 1);
  // Follow a run under way: at once from this process's events, and by
  // reading it again every 2 s (an event sent before this page listened,
  // or a run another process drives).
  const resuming = run.status === "incident" && Date.now() - (state.resumed.get(run.id) || 0) < 30000;
  if (["running", "waiting"].includes(run.status) || resuming) {
    leave.push(onChange((event, c) => { if (c.runId === run.id && c.status !== run.status) route(); }));
    const again = setInterval(async () => {
      try {
        const now = await api(`/api/runs/${encodeURIComponent(run.id)}`);
        if (now.status !== run.status || now.steps !== run.steps) route();
      } catch { /* said by the next page */ }
    }, 2000);
    leave.push(() => clearInterval(again));
  }
}

/** What started a run, in a few words. */
function runTrigger(t) {
  if (!t || typeof t !== "object") return "";
  if (t.type === "schedule" || t.scheduledAt) return `schedule, for ${when(t.scheduledAt)}`;
  if (t.method && t.path) return `webhook: ${t.method} ${t.path}`;
  if (t.specversion) return `event ${t.type || ""} from ${t.source || ""}`;
  return t.type || "";
}

function statusPanel(run) {
  if (run.status === "incident" || run.status === "failed") {
    const step = [...run.stepLog].reverse().find((s) => !s.ok);
    return h("div", { class: `panel ${run.status}`, role: "region", "aria-label": "Why the run stopped" },
      h("strong", {}, run.status === "incident" ? "Stopped at an incident" : "Failed", run.errorStep ? ` at step ${run.errorStep}` : ""),
      h("p", { class: "error-text" }, run.error || ""),
      step && step.blame ? h("p", {}, "Who must act: ", h("strong", {}, WHO[step.blame] || step.blame)) : null,
      run.status === "incident" ? h("p", { class: "muted" }, "An incident waits for a person: patch the state data below and resume, or retry, or cancel.") : null);
  }
  if (run.status === "waiting") {
    const w = run.wait || {};
    const what = w.kind === "event" ? `an event${w.eventType ? ` of type ${w.eventType}` : ""}${w.source ? ` from ${w.source}` : ""}${w.wakeAt ? `, until ${when(w.wakeAt)}` : ""}` : w.kind === "retry" ? `its next attempt at ${when(w.wakeAt)}` : w.kind === "sleep" ? `the end of a sleep at ${when(w.wakeAt)}` : "something";
    return h("div", { class: "panel waiting", role: "region", "aria-label": "What the run waits for" }, h("strong", {}, "Waiting"), w.step ? ` at step ${w.step}` : "", `: for ${what}.`,
      w.correlation && Object.keys(w.correlation).length ? h("p", { class: "muted" }, `Correlated by ${JSON.stringify(w.correlation)}`) : null);
  }
  return null;
}

function runActions(run) {
  if (!may("operator")) return null;
  const box = h("div", { class: "actions" });
  const busy = async (button, f) => {
    button.disabled = true;
    try { await f(); } catch (e) { if (e.status !== 401) say(e.message, true); } finally { button.disabled = false; }
  };
  if (["running", "waiting", "incident"].includes(run.status)) {
    const b = h("button", { type: "button", class: "danger", onclick: () => {
      if (!confirm(`Cancel run ${run.id}?`)) return;
      busy(b, async () => { await api(`/api/runs/${encodeURIComponent(run.id)}/cancel`, { method: "POST" }); say("The run is cancelled."); route(); });
    } }, "Cancel run");
    box.append(b);
  }
  if (!["running", "waiting"].includes(run.status)) {
    for (const [which, label] of [["current", "Retry with the flow as it is now"], ["recorded", "Retry with the flow as it ran"]]) {
      const b = h("button", { type: "button", class: "quiet", onclick: () => busy(b, async () => {
        const r = await api(`/api/runs/${encodeURIComponent(run.id)}/retry?flow=${which}`, { method: "POST" });
        location.hash = `#/runs/${encodeURIComponent(r.runId)}`;
      }) }, label);
      box.append(b);
    }
  }
  const parts = [box];
  if (run.status === "incident") parts.push(resumeForm(run));
  return h("div", {}, parts);
}

/** Resume an incident after patching its state data: the patch is checked and its effect shown before it is sent. */
function resumeForm(run) {
  const draftKey = `sluice.patch.${run.id}`;
  const text = h("textarea", { id: "patch", rows: "6", "aria-describedby": "patch-help patch-error", spellcheck: "false" });
  text.value = sessionStorage.getItem(draftKey) || "{}";
  const error = h("p", { id: "patch-error", class: "error-text", role: "alert" });
  const preview = h("div", { "aria-live": "polite" });
  const send = h("button", { type: "submit" }, "Resume with this patch");
  const check = () => {
    sessionStorage.setItem(draftKey, text.value);
    const p = parseJson(text.value.trim() || "{}");
    if (p.error) {
      error.textContent = p.error;
      preview.replaceChildren();
      send.disabled = true;
      text.setAttribute("aria-invalid", "true");
      return null;
    }
    error.textContent = "";
    text.removeAttribute("aria-invalid");
    send.disabled = false;
    const after = mergePatch(run.state, p.value);
    preview.replaceChildren(h("h3", {}, "The state data after the patch"), diffView(run.state, after));
    return p;
  };
  text.addEventListener("input", check);
  const form = h("form", { class: "panel", onsubmit: async (ev) => {
    ev.preventDefault();
    const p = check();
    if (!p) return;
    send.disabled = true;
    try {
      const body = JSON.stringify(p.value) === "{}" ? undefined : p.value;
      await api(`/api/runs/${encodeURIComponent(run.id)}/resume`, { method: "POST", body });
      sessionStorage.removeItem(draftKey);
      say("The run resumed.");
      // Followed while it still shows the incident: the server answers
      // before the run has moved on.
      state.resumed.set(run.id, Date.now());
      route();
    } catch (e) {
      if (e.status !== 401) error.textContent = e.message;
      send.disabled = false;
    }
  } },
    h("h2", {}, "Resume"),
    h("label", { for: "patch" }, "A JSON Merge Patch for the state data (null removes a key)", text),
    h("p", { id: "patch-help", class: "muted" }, "The run continues at step ", h("code", {}, run.nextStep || run.errorStep || "?"), " with its state data patched."),
    error, preview, send);
  setTimeout(check, 0);
  return form;
}

function stepDetail(run, i, attempt) {
  const s = run.stepLog[i];
  let before = run.input;
  for (let j = i - 1; j >= 0; j--) { if (run.stepLog[j].ok && run.stepLog[j].output !== undefined) { before = run.stepLog[j].output; break; } }
  const section = (title, body) => [h("h3", {}, title), body];
  return h("div", { class: "panel" },
    h("h2", {}, `Step ${s.key}`, attempt > 1 ? ` (attempt ${attempt})` : ""),
    h("dl", { class: "meta" },
      h("dt", {}, "Type"), h("dd", {}, s.type),
      h("dt", {}, "Started"), h("dd", {}, when(s.startedAt)),
      h("dt", {}, "Took"), h("dd", {}, ms(s.durationMs)),
      h("dt", {}, "Outcome"), h("dd", {}, s.ok ? badge("succeeded") : badge("failed"))),
    s.error ? [h("h3", {}, "Error"), h("p", { class: "error-text" }, s.error), s.blame ? h("p", {}, "Who must act: ", h("strong", {}, WHO[s.blame] || s.blame)) : null] : null,
    s.logs && s.logs.length ? section("Logs", h("pre", { class: "source" }, s.logs.map((l) => (typeof l === "string" ? l : JSON.stringify(l))).join("\n"))) : null,
    section("Options (after templating)", jsonView(s.options, "Options")),
    section("Input", jsonView(s.input, "Input")),
    section("Result", jsonView(s.result, "Result")),
    s.ok ? section("Output", jsonView(s.output, "Output")) : null,
    s.ok ? section("State data: what the step changed", diffView(before, s.output)) : null);
}

const NEW_FLOW = `id: my-flow
name: My flow
trigger: {type: manual}
steps:
  - key: hello
    type: transform
    options:
      value: {greeting: "Hello {{ .name // \"you\" }}"}
`;

/** The flow file in an editor: checked as one types (the problems at their line and column), saved into the flows folder. */
async function editPage(id) {
  const draftKey = `sluice.draft.${id || "#new"}`;
  let original = NEW_FLOW;
  let version = null;
  if (id) {
    const f = await api(`/api/flows/${encodeURIComponent(id)}`);
    original = f.source;
    version = f.version;
  }
  const draft = sessionStorage.getItem(draftKey);
  const text = h("textarea", { id: "editor", class: "editor", wrap: "off", spellcheck: "false", rows: "28", "aria-describedby": "problems-title", "aria-label": "The flow file" });
  text.value = draft !== null ? draft : original;
  const gutter = h("div", { class: "gutter", "aria-hidden": "true" });
  const problemsBox = h("div", { id: "problems", "aria-live": "polite" });
  const save = h("button", { type: "submit" }, id ? "Save" : "Create");
  let lastProblems = [];
  const lines = () => text.value.split("\n").length;
  const drawGutter = () => {
    const bad = new Set(lastProblems.map((p) => p.line));
    gutter.replaceChildren(...Array.from({ length: lines() }, (_, i) => h("div", { class: bad.has(i + 1) ? "bad" : "" }, i + 1)));
    gutter.scrollTop = text.scrollTop;
  };
  const goTo = (line, column) => {
    const all = text.value.split("\n");
    let pos = 0;
    for (let i = 0; i < line - 1 && i < all.length; i++) pos += all[i].length + 1;
    pos += Math.max(0, column - 1);
    text.focus();
    text.setSelectionRange(pos, pos);
  };
  const showProblems = (problems, title) => {
    lastProblems = problems;
    drawGutter();
    if (!problems.length) { problemsBox.replaceChildren(h("p", { id: "problems-title", class: "live" }, title || "No problems.")); return; }
    problemsBox.replaceChildren(h("h2", { id: "problems-title" }, title || `${problems.length} problem${problems.length === 1 ? "" : "s"}`),
      h("ul", { class: "problems" }, problems.map((p) => h("li", {}, h("button", { type: "button", class: "quiet", onclick: () => goTo(p.line, p.column) }, `line ${p.line}, column ${p.column}`), " ", h("span", { class: "error-text" }, p.message), p.help ? h("span", { class: "muted" }, ` (${p.help})`) : ""))));
  };
  let timer = null, seq = 0;
  const checkNow = async () => {
    const mine = ++seq;
    const token = localStorage.getItem(TOKEN_KEY);
    try {
      const resp = await fetch("/api/flows/check", { method: "POST", headers: { Authorization: `Bearer ${token || ""}`, "Content-Type": "text/plain" }, body: text.value });
      if (resp.status === 401) { refused(token, (await resp.json()).message); return; }
      const r = await resp.json();
      if (mine === seq) showProblems(r.problems || []);
    } catch (e) { if (mine === seq) problemsBox.replaceChildren(h("p", { class: "error-text" }, `Not checked: ${e.message}`)); }
  };
  text.addEventListener("input", () => {
    sessionStorage.setItem(draftKey, text.value);
    drawGutter();
    clearTimeout(timer);
    timer = setTimeout(checkNow, 250);
  });
  // A check still to come is not made once the page is left.
  leave.push(() => clearTimeout(timer));
  text.addEventListener("scroll", () => { gutter.scrollTop = text.scrollTop; });
  const form = h("form", { class: "edit", onsubmit: async (ev) => {
    ev.preventDefault();
    const m = /^id:\s*["']?([A-Za-z0-9_.-]+)/m.exec(text.value);
    const target = id || (m && m[1]);
    if (!target) { showProblems([{ line: 1, column: 1, message: "the flow needs an `id`" }]); return; }
    save.disabled = true;
    try {
      const headers = { "Content-Type": "text/plain" };
      const token = localStorage.getItem(TOKEN_KEY);
      if (token) headers.Authorization = `Bearer ${token}`;
      const guard = id ? `version=${encodeURIComponent(version)}` : "new=true";
      const resp = await fetch(`/api/flows/${encodeURIComponent(target)}?${guard}`, { method: "PUT", headers, body: text.value });
      const r = await resp.json().catch(() => ({}));
      if (resp.status === 401) { refused(token, r.message); return; }
      if (!resp.ok) {
        const problems = (r.details && (r.details.problems || (r.details.files || []).flatMap((f) => (f.problems || [{ line: 1, column: 1, message: `${f.file}: ${f.message}` }])))) || [];
        showProblems(problems.length ? problems : [{ line: 1, column: 1, message: r.message }], `Not saved: ${r.message}`);
        return;
      }
      sessionStorage.removeItem(draftKey);
      state.flows = null;
      say(r.created ? `Flow ${r.id} created in ${r.file}.` : `Flow ${r.id} saved to ${r.file}.`);
      location.hash = `#/flows/${encodeURIComponent(r.id)}`;
    } catch (e) { say(e.message, true); } finally { save.disabled = false; }
  } },
    h("div", { class: "editor-wrap" }, gutter, text),
    h("div", { class: "row" }, save, h("a", { href: id ? `#/flows/${encodeURIComponent(id)}` : "#/flows" }, "Back"),
      draft !== null && draft !== original ? h("button", { type: "button", class: "quiet", onclick: () => { sessionStorage.removeItem(draftKey); route(); } }, "Discard my changes") : null));
  show(h("h1", {}, id ? `Edit flow ${id}` : "New flow"),
    h("p", { class: "muted" }, "The file is checked as you type, as ", h("code", {}, "sluice check"), " checks it. Saving writes it into the flows folder and loads the folder again; a flow with problems is not saved."),
    draft !== null && draft !== original ? h("p", { class: "notice-inline" }, "Your unsaved changes are back.") : null,
    form, problemsBox);
  drawGutter();
  checkNow();
}

/** The unread count beside "Inbox": read at each page, as runs end (a `notify` step sends from a run) and every 30 s. */
async function inboxCount() {
  if (!state.me) return;
  let r;
  try { r = await api("/api/notifications?limit=1000"); } catch { return; }
  const el = document.getElementById("inbox-count");
  el.textContent = r.unread ? String(r.unread) : "";
  document.getElementById("inbox-link").setAttribute("aria-label", r.unread ? `Inbox, ${r.unread} unread` : "Inbox");
}
{
  let timer = null;
  state.streamHandlers.add((event, c) => {
    if (event !== "run" || ["running"].includes(c.status)) return;
    clearTimeout(timer);
    timer = setTimeout(inboxCount, 400);
  });
  setInterval(inboxCount, 30000);
}

async function inboxPage() {
  const r = await api("/api/notifications?limit=200");
  const list = r.notifications.map((n) => {
    const mark = n.read ? null : h("button", { type: "button", class: "quiet", onclick: async () => {
      await api(`/api/notifications/${encodeURIComponent(n.id)}/read`, { method: "POST" });
      route();
    } }, "Mark read");
    return h("li", { class: `panel note ${n.read ? "read" : "unread"}` },
      h("div", { class: "steptitle" }, h("strong", {}, n.read ? "" : "● ", n.subject), h("span", { class: "muted", title: when(n.at) }, ago(n.at))),
      n.message ? h("p", { class: "message" }, n.message) : null,
      h("div", { class: "row muted" }, n.user ? `to ${n.user}` : `to ${n.role}s`, n.runId ? [" · from run ", h("a", { href: `#/runs/${encodeURIComponent(n.runId)}`, class: "mono" }, n.runId), n.step ? ` (step ${n.step})` : ""] : null, mark));
  });
  show(h("h1", {}, "Inbox"), h("p", { class: "muted" }, `${r.unread} unread. Notifications come from `, h("code", {}, "notify"), " steps, to you or to your role."),
    list.length ? h("ul", { class: "notes" }, list) : h("p", {}, "Nothing yet."));
  inboxCount();
  leave.push(onChange((event, c) => { if (event === "run" && c.status !== "running") setTimeout(route, 400); }));
}

window.addEventListener("hashchange", route);
route();
