// The admin view: the fleet (/admin/fleet, each hub with its Web Push figures), this hub's
// connections (/admin/connections) and topics (/admin/topics), polled; its charts
// (/admin/charts, drawn with uPlot, loaded before this script as the global `uPlot`). The
// browser resends the Basic credentials it was asked for. Everything shown is set as text:
// user names and topics are not markup.
const $ = (id) => document.getElementById(id);

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function rows(tbody, list) {
  $(tbody).replaceChildren(...list.map((cells) => {
    const tr = document.createElement("tr");
    tr.append(...cells);
    return tr;
  }));
}

const number = (n, digits = 1) => (n == null ? "–" : Number(n).toFixed(digits));

/** A time with its date, unless it is today. */
function when(ms) {
  const date = new Date(ms);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

async function refreshFleet() {
  const [fleet, own] = await Promise.all([
    fetch("/admin/fleet").then((r) => r.json()),
    fetch("/admin/connections").then((r) => r.json()),
  ]);
  $("this-hub").textContent = fleet.this;
  $("connections").textContent = String(own.length);
  const hubs = fleet.hubs;
  const mine = hubs.find((h) => h.instance === fleet.this);
  if (mine) {
    $("in-rate").textContent = number(mine.latest.frames_in);
    $("out-rate").textContent = number(mine.latest.frames_out);
  }
  $("fleet-sockets").textContent = String(hubs.reduce((n, h) => n + h.latest.sockets, 0));
  // The busiest hub stands out when there are several, and so does any hub behind.
  const most = (key) => Math.max(...hubs.map((h) => h.latest[key]));
  const busiest = (key, value) => hubs.length > 1 && value > 0 && value === most(key) ? "n hot" : "n";
  const behind = (lag) => (lag > 0 ? "n behind" : "n");
  rows("fleet", hubs.map((h) => {
    const s = h.latest;
    return [
      cell(h.instance === fleet.this ? `${h.instance} (this hub)` : h.instance),
      cell(when(h.started)),
      cell(String(s.sockets), busiest("sockets", s.sockets)),
      cell(String(s.users), "n"),
      cell(number(s.frames_in), busiest("frames_in", s.frames_in)),
      cell(number(s.frames_out), busiest("frames_out", s.frames_out)),
      cell(number(s.acks), "n"),
      cell(number(s.publish_errors), s.publish_errors > 0 ? "n behind" : "n"),
      cell(String(s.lag), behind(s.lag)),
      cell(String(s.internal_lag), behind(s.internal_lag)),
      cell(s.p99 == null ? "–" : `${number(s.p99)} ms`, "n"),
    ];
  }));

  // Reports of hubs older than the push figures carry none.
  rows("push", hubs.map((h) => {
    const p = h.push ?? { sent: 0, failed: {}, removed: 0, queue: 0 };
    const reasons = Object.entries(p.failed);
    const failed = reasons.reduce((n, [, count]) => n + count, 0);
    return [
      cell(h.instance === fleet.this ? `${h.instance} (this hub)` : h.instance),
      cell(String(p.sent), "n"),
      cell(String(failed), failed > 0 ? "n behind" : "n"),
      cell(reasons.map(([reason, count]) => `${reason}: ${count}`).join(", ") || "–"),
      cell(String(p.removed), "n"),
      cell(String(p.queue), p.queue > 0 ? "n behind" : "n"),
    ];
  }));

  // This hub's connections as they are now; the others' as their hubs last reported.
  const listed = own.slice();
  let unlisted = 0;
  for (const h of hubs) {
    if (h.instance === fleet.this) continue;
    listed.push(...h.connections);
    unlisted += h.connection_count - h.connections.length;
  }
  $("list-note").textContent = unlisted > 0
    ? `${unlisted} more connections on other hubs are not listed (each hub reports 200 at most).`
    : "";
  rows("list", listed.map((c) => {
    const button = document.createElement("button");
    button.className = "revoke";
    button.textContent = "Revoke";
    button.title = `Revoke every token of ${c.sub}`;
    button.dataset.sub = c.sub;
    const action = document.createElement("td");
    action.append(button);
    return [
      cell(c.sub),
      cell(c.hub),
      cell(c.transport),
      cell(c.subscriptions.join(", ") || "–"),
      cell(when(c.since)),
      action,
    ];
  }));
}

async function refreshTopics() {
  const topics = await fetch("/admin/topics").then((r) => r.json());
  const cellsOf = (t) => (t.lag.length === 0
    ? [[cell(t.topic), cell(String(t.subscriptions), "n"), cell("–"), cell("–", "n")]]
    : t.lag.map((p) => [
      cell(t.topic), cell(String(t.subscriptions), "n"), cell(String(p.partition), "n"),
      cell(String(p.lag), p.lag > 0 ? "n behind" : "n"),
    ]));
  rows("topics", topics.filter((t) => !t.internal).flatMap(cellsOf));
  rows("internal-topics", topics.filter((t) => t.internal).flatMap(cellsOf));
}

/** Each chart: its title, unit, and the sample fields it draws. */
const CHARTS = [
  { id: "sockets", title: "Sockets and users", unit: "", digits: 0, series: [["sockets", "sockets", "#2563eb"], ["users", "users", "#16a34a"]] },
  { id: "frames", title: "Frames per second", unit: "/s", series: [["frames_in", "in", "#2563eb"], ["frames_out", "out", "#c2410c"]] },
  { id: "publishes", title: "Publishes per second", unit: "/s", series: [["acks", "acked", "#16a34a"], ["publish_errors", "errors", "#dc2626"]] },
  { id: "lag", title: "Consumer lag (records)", unit: "", digits: 0, series: [["lag", "application topics", "#7c3aed"], ["internal_lag", "own topics", "#6b7280"]] },
  { id: "latency", title: "Delivery latency (ms)", unit: " ms", series: [["p50", "p50", "#16a34a"], ["p90", "p90", "#ca8a04"], ["p99", "p99", "#dc2626"]] },
];
const plots = new Map();

function chartWidth() {
  const figure = document.querySelector("#charts figure");
  return Math.max(300, (figure?.clientWidth ?? 420) - 16);
}

function draw(samples) {
  for (const chart of CHARTS) {
    const data = [samples.map((s) => s.at / 1000), ...chart.series.map(([key]) => samples.map((s) => s[key]))];
    let plot = plots.get(chart.id);
    if (!plot) {
      const figure = document.createElement("figure");
      figure.dataset.chart = chart.id;
      const caption = document.createElement("figcaption");
      caption.textContent = chart.title;
      const latest = document.createElement("span");
      latest.className = "latest";
      caption.append(latest);
      figure.append(caption);
      $("charts").append(figure);
      plot = new uPlot({
        width: chartWidth(),
        height: 180,
        series: [{}, ...chart.series.map(([, label, stroke]) => ({ label, stroke, width: 2, spanGaps: false }))],
        axes: [{}, { size: 60 }],
        scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      }, data, figure);
      plots.set(chart.id, plot);
    } else {
      plot.setData(data);
    }
    const figure = plot.root.parentElement;
    const last = samples[samples.length - 1];
    figure.querySelector(".latest").textContent = last
      ? "latest: " + chart.series.map(([key, label]) => `${label} ${number(last[key], chart.digits)}${chart.unit}`).join(", ")
      : "no samples yet";
    // The largest value drawn, for tests and for anyone reading the page's markup.
    const peak = Math.max(0, ...data.slice(1).flat().filter((v) => v != null));
    figure.dataset.points = String(samples.length);
    figure.dataset.peak = String(peak);
  }
}

async function refreshCharts() {
  const charts = await fetch("/admin/charts").then((r) => r.json());
  const range = Number($("range").value);
  const since = Date.now() - range * 1000;
  const samples = (range > 3600 ? charts.coarse : charts.fine).filter((s) => s.at >= since);
  draw(samples);
}

$("range").addEventListener("change", () => refreshCharts());
window.addEventListener("resize", () => {
  for (const plot of plots.values()) plot.setSize({ width: chartWidth(), height: 180 });
});

// Revoking asks first, then goes through the same path as any revocation: stored, and
// told to every hub over the control topic, so the user's sockets close wherever they are.
$("list").addEventListener("click", async (event) => {
  const button = event.target.closest("button.revoke");
  if (!button) return;
  const sub = button.dataset.sub;
  if (!confirm(`Revoke every token of "${sub}" issued until now? Their sockets close on every hub, and they must sign in again.`)) return;
  button.disabled = true;
  const response = await fetch("/admin/revocations", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sub }),
  });
  $("notice").textContent = response.ok
    ? `Revoked ${sub}'s tokens.`
    : `Could not revoke ${sub}'s tokens: ${await response.text()}`;
  refreshFleet();
});

function every(ms, refresh) {
  const run = () => refresh().catch((e) => console.info("admin view: refresh failed:", e.message));
  run();
  setInterval(run, ms);
}
every(2000, refreshFleet);
every(2000, refreshTopics);
every(5000, refreshCharts);
