// Polls /metrics (topics, rates, lag) and /admin/connections; the browser resends the Basic
// credentials it was asked for.
const $ = (id) => document.getElementById(id);
let previous = null;

/** Prometheus text format -> [{name, labels, value}] */
function parse(text) {
  return text.split("\n").filter((l) => l && !l.startsWith("#")).map((line) => {
    const m = line.match(/^([a-z_]+)(?:\{(.*)\})? (\S+)$/);
    if (!m) return null;
    const labels = Object.fromEntries([...(m[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    return { name: m[1], labels, value: Number(m[3]) };
  }).filter(Boolean);
}

function rows(tbody, cells) {
  $(tbody).replaceChildren(...cells.map((row) => {
    const tr = document.createElement("tr");
    for (const [text, numeric] of row) {
      const td = document.createElement("td");
      td.textContent = text;
      if (numeric) td.className = "n";
      tr.append(td);
    }
    return tr;
  }));
}

async function refresh() {
  const [metricsText, connections] = await Promise.all([
    fetch("/metrics").then((r) => r.text()),
    fetch("/admin/connections").then((r) => r.json()),
  ]);
  const metrics = parse(metricsText);
  const one = (name) => metrics.find((m) => m.name === name)?.value ?? 0;
  const now = Date.now();
  const totals = { in: one("wskafka_frames_received_total"), out: one("wskafka_frames_sent_total") };
  if (previous) {
    const seconds = (now - previous.at) / 1000;
    $("in-rate").textContent = ((totals.in - previous.in) / seconds).toFixed(1);
    $("out-rate").textContent = ((totals.out - previous.out) / seconds).toFixed(1);
  }
  previous = { at: now, ...totals };
  $("connections").textContent = String(connections.length);
  $("lagged").textContent = String(one("wskafka_lagged_closes_total"));
  rows("topics", metrics.filter((m) => m.name === "wskafka_subscriptions" && m.value > 0)
    .map((m) => [[m.labels.topic], [String(m.value), true]]));
  rows("lag", metrics.filter((m) => m.name === "wskafka_consumer_lag")
    .map((m) => [[m.labels.topic], [m.labels.partition, true], [String(m.value), true]]));
  rows("list", connections.map((c) => [[String(c.id), true], [c.sub],
    [new Date(c.since).toLocaleTimeString()]]));
}
refresh();
setInterval(refresh, 2000);
