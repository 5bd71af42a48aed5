// maxproxy's status page: polls GET /v1/status and renders it. Plain DOM, no framework, no build step. Every piece
// of data reaches the page through textContent (never innerHTML), so a model name or key name cannot inject markup;
// the CSP forbids inline style, so widths are set through the CSSOM (el.style.width), which it allows.
"use strict";

const KEY_ITEM = "maxproxy.key"; // sessionStorage: this tab only, gone when it closes; never a cookie or a URL
const WINDOW_NAMES = {
  five_hour: "5-hour", seven_day: "7-day", seven_day_opus: "7-day Opus", seven_day_sonnet: "7-day Sonnet",
};
const SVG = "http://www.w3.org/2000/svg";

let refreshSeconds = 3;
let skew = 0; // server clock minus ours, so countdowns agree with the server's resets_at
let timer = null;
let generation = 0; // a poll started later (a key entered, "forget key") supersedes one in flight

const $ = (selector) => document.querySelector(selector);

// An element with properties (className, dataset entries, ...) and children (nodes or text).
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(el.dataset, value);
    else el[name] = value;
  }
  for (const child of children) el.append(child instanceof Node ? child : String(child ?? ""));
  return el;
}

const num = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
const usd = (n) =>
  n == null ? "–" : n === 0 ? "$0" : n < 0.0001 ? "< $0.0001" : "$" + Number(n).toFixed(n >= 1 ? 2 : 4);
const ms = (n) => (n == null ? "–" : n >= 1000 ? (n / 1000).toFixed(1) + " s" : Math.round(n) + " ms");
const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB");

function countdown(resetsAt) {
  const left = Math.max(0, Math.round(resetsAt - (Date.now() / 1000 + skew)));
  const d = Math.floor(left / 86400), hr = Math.floor((left % 86400) / 3600), m = Math.floor((left % 3600) / 60);
  if (d) return `resets in ${d}d ${hr}h`;
  if (hr) return `resets in ${hr}h ${m}m`;
  return `resets in ${m}m ${left % 60}s`;
}

function tickCountdowns() {
  for (const el of document.querySelectorAll("[data-resets-at]")) el.textContent = countdown(+el.dataset.resetsAt);
}

// --- access --------------------------------------------------------------------------------------------------

function headers() {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorText(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `HTTP ${response.status}`;
  }
}

// No key, or a refused one: the form replaces the data, and whatever was shown before is cleared, not just hidden.
function showLogin(message) {
  $("#data").hidden = true;
  for (const el of document.querySelectorAll("#data tbody, #windows, #plan-warnings, #problems, #worker-states")) {
    el.replaceChildren();
  }
  for (const el of document.querySelectorAll("#data dd, #data [id^=workers-], #plan-subscription, #updated")) {
    el.textContent = "";
  }
  $("#login").hidden = false;
  $("#login-message").textContent = message;
  $("#forget-key").hidden = !sessionStorage.getItem(KEY_ITEM);
  $("#refresh-plan").hidden = true;
  $("#key-input").focus();
}

// --- rendering -----------------------------------------------------------------------------------------------

function renderPlan(plan) {
  $("#plan-subscription").textContent = plan.subscription_type ? `(${plan.subscription_type})` : "";
  const warnings = plan.warnings || [];
  $("#plan-warnings").replaceChildren(...warnings.map((w) => h("p", { className: "warning" }, "⚠ " + w)));
  $("#plan-warnings").hidden = warnings.length === 0;
  const windows = plan.windows || [];
  $("#windows").replaceChildren(
    ...(windows.length ? windows.map((w) => renderWindow(w, plan.warn_percent || [80, 95])) : [h("p", { className: "muted" }, "No plan figures heard yet.")]),
  );
  const o = plan.overage || {};
  $("#overage").textContent =
    o.status == null ? "unknown" : `${o.status}${o.in_use ? ", in use" : ""}${o.disabled_reason ? ` (${o.disabled_reason})` : ""}`;
  $("#overage").className = o.in_use ? "bad" : "";
  $("#plan-updated").textContent = plan.updated_at ? clock(plan.updated_at) : "never";
  // A login without the profile scope (CLAUDE_CODE_OAUTH_TOKEN) cannot read the plan's usage endpoint.
  $("#plan-source").textContent =
    plan.limits_available === false ? "answers only (this login cannot read the usage endpoint)"
      : plan.limits_available ? "answers and the usage endpoint" : "answers";
}

function renderWindow(w, thresholds) {
  // Not known (a window past its reset) shows as such; a limit reached without a figure is a full bar.
  const rejected = w.status === "rejected";
  const pct = w.utilization != null ? Math.round(w.utilization * 100) : rejected ? 100 : 0;
  const shown = w.utilization != null ? pct + "%" : rejected ? "limit reached" : "–";
  // The server's thresholds (`plan_warn_percent`): past the highest is critical, past any other a warning.
  const crossed = thresholds.filter((t) => pct >= t).length;
  const level = crossed === 0 ? "ok" : crossed === thresholds.length ? "crit" : "warn";
  const fill = h("div", { className: "fill" });
  fill.style.width = Math.min(100, pct) + "%"; // CSSOM: allowed by style-src 'self'
  return h(
    "div",
    { className: `window ${level}`, dataset: { window: w.name, level } },
    h("div", { className: "window-head" },
      h("strong", {}, WINDOW_NAMES[w.name] || w.name),
      h("span", { className: "pct" }, shown)),
    h("div", { className: "bar", role: "meter", ariaValueNow: String(pct), ariaValueMin: "0", ariaValueMax: "100" }, fill),
    h("div", { className: "window-foot muted" },
      h("span", { className: "status" }, w.status || ""),
      w.resets_at ? h("span", { className: "reset", dataset: { resetsAt: String(w.resets_at) } }, countdown(w.resets_at)) : ""),
  );
}

function renderBreaker(trips) {
  const el = $("#breaker");
  el.dataset.state = trips.length ? "open" : "closed";
  el.className = trips.length ? "bad" : "good";
  el.replaceChildren(
    ...(trips.length
      ? trips.map((t) => h("div", {}, `open (${t.scope}) until ${clock(t.until)}: ${t.reason}`))
      : ["closed"]),
  );
}

function renderWorkers(workers, families) {
  $("#workers-total").textContent = workers.total;
  $("#workers-max").textContent = workers.max;
  $("#workers-busy").textContent = workers.busy;
  $("#workers-queued").textContent = workers.queued;
  const states = Object.entries(workers.states || {});
  $("#worker-states").replaceChildren(
    ...states.flatMap(([state, n]) => [
      h("dt", {}, state.replaceAll("_", " ")),
      h("dd", { dataset: { state }, className: n ? "" : "muted" }, n),
    ]),
  );
  $("#families tbody").replaceChildren(
    ...families.map((f) =>
      h("tr", { dataset: { family: f.family } },
        h("td", {}, f.family), h("td", { className: "num busy" }, f.busy),
        h("td", { className: "num" }, f.limit ?? "–"), h("td", { className: "num queued" }, f.queued))),
  );
}

// 24 bars of tokens per hour, oldest first; a bar's <title> is its tooltip.
function chart(hours) {
  const width = 120, height = 28, step = width / Math.max(1, hours.length);
  const peak = Math.max(1, ...hours.map((x) => x.tokens));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "tokens per hour, last 24 hours");
  hours.forEach((x, i) => {
    const barHeight = x.tokens ? Math.max(1.5, (x.tokens / peak) * (height - 2)) : 0.75;
    const rect = document.createElementNS(SVG, "rect");
    for (const [name, value] of Object.entries({
      x: i * step + 0.5, y: height - barHeight, width: Math.max(1, step - 1), height: barHeight,
    })) rect.setAttribute(name, value);
    rect.setAttribute("class", x.tokens ? "used" : "idle");
    rect.dataset.tokens = x.tokens;
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${clock(x.hour).slice(0, 5)}: ${num(x.requests)} requests, ${num(x.tokens)} tokens`;
    rect.append(title);
    svg.append(rect);
  });
  return svg;
}

function renderKeys(keys) {
  $("#keys tbody").replaceChildren(
    ...keys.map((k) =>
      h("tr", { dataset: { key: k.name } },
        h("th", { scope: "row" }, k.name),
        h("td", { className: "num today-requests" }, num(k.today.requests)),
        h("td", { className: "num today-tokens" }, num(k.today.total_tokens)),
        h("td", { className: "num today-cost" }, usd(k.today.cost_usd)),
        h("td", { className: "num week-requests" }, num(k.week.requests)),
        h("td", { className: "num week-tokens" }, num(k.week.total_tokens)),
        h("td", { className: "num week-cost" }, usd(k.week.cost_usd)),
        h("td", {}, chart(k.hours || [])))),
  );
  if (!keys.length) $("#keys tbody").append(h("tr", {}, h("td", { colSpan: 8, className: "muted" }, "No usage in the last 7 days.")));
}

function renderRecent(recent) {
  $("#recent tbody").replaceChildren(
    ...recent.map((r) =>
      h("tr", { dataset: { requestId: r.request_id } },
        h("td", { className: "time", title: r.request_id }, clock(r.time)),
        h("td", { className: "key" }, r.key ?? "–"),
        h("td", { className: "model" }, r.model ?? "–"),
        h("td", { className: "protocol" }, r.protocol + (r.stream ? " · stream" : "")),
        h("td", { className: `num status ${r.status < 400 ? "good" : "bad"}` }, r.status),
        h("td", { className: "num ttft" }, ms(r.ttft_ms)),
        h("td", { className: "num duration" }, ms(r.duration_ms)),
        h("td", { className: "num tokens" }, `${num(r.input_tokens)} → ${num(r.output_tokens)}`))),
  );
  if (!recent.length) $("#recent tbody").append(h("tr", {}, h("td", { colSpan: 8, className: "muted" }, "No requests yet.")));
}

function renderCli(cli) {
  const pinned = cli.version && cli.pinned_version && cli.version !== cli.pinned_version;
  $("#cli-version").textContent = (cli.version || "not found") + (pinned ? ` (pinned ${cli.pinned_version})` : "");
  $("#cli-version").className = pinned || !cli.version ? "bad" : "";
  $("#cli-login").textContent = cli.logged_in === false ? "not logged in" : cli.login || "unknown";
  $("#cli-login").className = cli.logged_in === false ? "bad" : "";
  $("#cli-billing").textContent = cli.billing || "unknown";
  $("#cli-billing").className = cli.billing === "api_key" ? "bad" : ""; // API-key billing costs money per token
  $("#cli-subscription").textContent = cli.subscription_type || "unknown";
}

function render(s) {
  $("#version").textContent = `v${s.version}`;
  $("#updated").textContent = `updated ${clock(s.now)}`;
  $("#problems").replaceChildren(...(s.problems || []).map((p) => h("li", {}, p)));
  $("#problems-box").hidden = !(s.problems || []).length;
  renderPlan(s.plan || {});
  renderBreaker(s.breaker || []);
  renderWorkers(s.workers || {}, s.families || []);
  renderKeys(s.keys || []);
  renderRecent(s.recent || []);
  renderCli(s.cli || {});
}

// --- polling -------------------------------------------------------------------------------------------------

async function poll() {
  clearTimeout(timer);
  timer = null;
  const mine = ++generation;
  let response, status;
  try {
    response = await fetch("/v1/status", { cache: "no-store", headers: headers() });
    status = response.ok ? await response.json() : null;
  } catch (err) {
    if (mine !== generation) return;
    // maxproxy restarting or gone: say so, keep the last figures, and try again.
    $("#error").textContent = `maxproxy is not answering (${err.message}); retrying…`;
    $("#error").hidden = false;
    timer = setTimeout(poll, refreshSeconds * 1000);
    return;
  }
  if (mine !== generation) return;
  if (response.status === 401 || response.status === 403) {
    const had = sessionStorage.getItem(KEY_ITEM);
    sessionStorage.removeItem(KEY_ITEM); // a refused key is not retried on every poll
    $("#error").hidden = true;
    showLogin(had ? (response.status === 403 ? "That key is not an admin key." : "That key was refused.") : "");
    return; // no polling until a key is entered
  }
  if (!response.ok) {
    $("#error").textContent = `GET /v1/status: ${await errorText(response)}`;
    $("#error").hidden = false;
  } else {
    refreshSeconds = Math.max(1, status.refresh_seconds || refreshSeconds);
    skew = status.now - Date.now() / 1000;
    $("#error").hidden = true;
    $("#login").hidden = true;
    $("#data").hidden = false;
    $("#forget-key").hidden = !sessionStorage.getItem(KEY_ITEM);
    $("#refresh-plan").hidden = false;
    render(status);
  }
  timer = setTimeout(poll, refreshSeconds * 1000);
}

async function refreshPlan() {
  const button = $("#refresh-plan");
  button.disabled = true;
  $("#plan-message").textContent = "asking the CLI…";
  try {
    const response = await fetch("/v1/usage/plan/refresh", { method: "POST", cache: "no-store", headers: headers() });
    if (response.ok) {
      renderPlan((await response.json()).plan);
      $("#plan-message").textContent = `plan refreshed at ${new Date().toLocaleTimeString("en-GB")}`;
    } else {
      $("#plan-message").textContent = `refresh failed: ${await errorText(response)}`;
    }
  } catch (err) {
    $("#plan-message").textContent = `refresh failed: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault(); // form-action 'none': the key never leaves as a form submission
    sessionStorage.setItem(KEY_ITEM, $("#key-input").value.trim());
    $("#key-input").value = "";
    poll();
  });
  $("#forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    poll();
  });
  $("#refresh-plan").addEventListener("click", refreshPlan);
  setInterval(tickCountdowns, 1000);
  poll();
});
