// The dashboard page: polls /dashboard/data (relative: "data") once a second, keeps a rolling
// window of the answers here in the page, and draws the table and the uPlot charts from it.
// Everything shown comes from that JSON (its shape: docs/servers.md, "Dashboard"); server
// names and ids are put in the page as text only, never as markup.
"use strict";

(() => {
  const POLL_MS = 1000;
  const WINDOW_POINTS = 300; // five minutes at one point a second
  const CHART_HEIGHT = 180;
  const PALETTE = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
  ];
  const LATENCIES = ["store", "delivery", "login"];

  const names = new Map(); // msg_server id -> name, for legends

  const serverLabel = (id) => `${names.get(id) || id} (${id})`;
  const upRows = (doc) => doc.msg_servers.filter((s) => s.up);
  const byServer = (field) => (doc) =>
    new Map(upRows(doc).map((s) => [s.id, field(s)]));

  // One chart: how to read its series from a document, and its rolling window.
  const charts = [
    { el: "chart-messages", label: serverLabel, read: byServer((s) => s.messages_per_s) },
    { el: "chart-users", label: serverLabel, read: byServer((s) => s.users_online) },
    {
      el: "chart-latency",
      label: (k) => `p99 ${k}`,
      read: (doc) =>
        new Map(LATENCIES.map((k) => [k, doc.cluster.latency[k] ? doc.cluster.latency[k].p99_ms : null])),
    },
    {
      el: "chart-lag",
      label: serverLabel,
      read: byServer((s) => (s.latency.loop_lag ? s.latency.loop_lag.p99_ms : null)),
    },
    { el: "chart-errors", label: serverLabel, read: byServer((s) => s.errors_per_s) },
  ].map((c) => ({ ...c, times: [], cols: new Map(), plot: null, keys: "" }));

  function record(chart, doc) {
    const values = chart.read(doc);
    chart.times.push(doc.time);
    for (const [key, value] of values) {
      if (!chart.cols.has(key)) {
        chart.cols.set(key, new Array(chart.times.length - 1).fill(null));
      }
    }
    for (const [key, col] of chart.cols) {
      const value = values.get(key);
      col.push(value === undefined ? null : value); // a msg_server gone: a gap
    }
    if (chart.times.length > WINDOW_POINTS) {
      chart.times.shift();
      for (const col of chart.cols.values()) col.shift();
    }
    // A series that has had no value in the whole window is dropped.
    for (const [key, col] of chart.cols) {
      if (col.every((v) => v === null)) chart.cols.delete(key);
    }
  }

  function draw(chart) {
    const el = document.getElementById(chart.el);
    const keys = [...chart.cols.keys()];
    const data = [chart.times, ...keys.map((k) => chart.cols.get(k))];
    const signature = keys.join("\n");
    if (chart.plot && chart.keys === signature) {
      chart.plot.setData(data);
      return;
    }
    // The set of series changed (a msg_server came or went): build the chart again.
    if (chart.plot) chart.plot.destroy();
    chart.keys = signature;
    chart.plot = new uPlot(
      {
        width: Math.max(el.clientWidth, 300),
        height: CHART_HEIGHT,
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max || 0) * 1.1] } },
        series: [
          {},
          ...keys.map((k, i) => ({
            label: chart.label(k),
            stroke: PALETTE[i % PALETTE.length],
            width: 2,
            points: { show: false },
          })),
        ],
        axes: [{}, { size: 60 }],
      },
      data,
      el,
    );
  }

  // -- the table and the tiles ------------------------------------------------------------

  const num = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
  const latency = (l) => {
    if (!l) return "–";
    const ms = l.p99_ms < 10 ? l.p99_ms.toFixed(1) : l.p99_ms.toFixed(0);
    return `${l.over ? "≥" : ""}${ms} ms`;
  };

  function cell(row, field, text, title) {
    const td = document.createElement("td");
    td.dataset.field = field;
    td.textContent = text;
    if (title) td.title = title;
    row.appendChild(td);
    return td;
  }

  function loadCell(row, s) {
    const td = cell(row, "load", "");
    const box = document.createElement("div");
    box.className = "load";
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = s.load >= 0.9 ? "fill high" : "fill";
    fill.style.width = `${Math.min(100, s.load * 100).toFixed(1)}%`;
    bar.appendChild(fill);
    const text = document.createElement("span");
    text.textContent = `${s.sessions} / ${s.max_sessions}`;
    box.append(bar, text);
    td.appendChild(box);
  }

  function errorsTitle(s) {
    const kinds = Object.entries(s.errors_total || {}).filter(([, n]) => n > 0);
    return kinds.length ? "since start: " + kinds.map(([k, n]) => `${k} ${n}`).join(", ") : "";
  }

  function renderTable(doc) {
    const body = document.querySelector("#servers tbody");
    const rows = doc.msg_servers.map((s) => {
      names.set(s.id, s.name);
      const tr = document.createElement("tr");
      tr.dataset.id = s.id;
      const state = !s.up ? "down" : s.stale ? "stale" : "up";
      tr.className = state;
      cell(tr, "name", s.name);
      cell(tr, "address", s.id);
      cell(tr, "state", !s.up ? `down ${num(s.down_s, 0)} s` : state);
      if (!s.up) {
        const td = cell(tr, "rest", "");
        td.colSpan = 9;
        return tr;
      }
      loadCell(tr, s);
      cell(tr, "users", num(s.users_online, 0));
      cell(tr, "messages", num(s.messages_per_s));
      cell(tr, "deliveries", num(s.deliveries_per_s));
      cell(tr, "store", latency(s.latency.store));
      cell(tr, "delivery", latency(s.latency.delivery));
      cell(tr, "login", latency(s.latency.login));
      cell(tr, "lag", latency(s.latency.loop_lag));
      cell(tr, "errors", num(s.errors_per_s), errorsTitle(s));
      return tr;
    });
    body.replaceChildren(...rows);
    document.getElementById("empty").hidden = rows.length > 0;
  }

  function renderTiles(doc) {
    const c = doc.cluster;
    const set = (id, text) => { document.getElementById(id).textContent = text; };
    set("c-servers", c.msg_servers_down ? `${c.msg_servers} (${c.msg_servers_down} down)` : `${c.msg_servers}`);
    set("c-load", `${c.sessions} / ${c.max_sessions}`);
    set("c-users", num(c.users_online, 0));
    set("c-messages", num(c.messages_per_s));
    set("c-deliveries", num(c.deliveries_per_s));
    set("c-errors", num(c.errors_per_s));
    for (const k of LATENCIES) set(`c-${k}`, latency(c.latency[k]));
  }

  // -- polling ----------------------------------------------------------------------------

  const status = document.getElementById("status");

  async function poll() {
    try {
      const rsp = await fetch("data", { cache: "no-store" });
      if (!rsp.ok) throw new Error(`HTTP ${rsp.status}`);
      const doc = await rsp.json();
      renderTable(doc);
      renderTiles(doc);
      for (const chart of charts) {
        record(chart, doc);
        draw(chart);
      }
      status.textContent = `updated ${new Date(doc.time * 1000).toLocaleTimeString()}`;
      status.className = "status ok";
    } catch (err) {
      status.textContent = `login_server not answering (${err.message}); retrying`;
      status.className = "status error";
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  window.addEventListener("resize", () => {
    for (const chart of charts) {
      if (chart.plot) {
        const el = document.getElementById(chart.el);
        chart.plot.setSize({ width: Math.max(el.clientWidth, 300), height: CHART_HEIGHT });
      }
    }
  });

  poll();
})();
