/* genopt report: builds the page from the inline JSON data with Apache ECharts (inline).
 * Text from the warehouse is put into the DOM as text (textContent), never as HTML.
 * window.genoptReport = {data, charts} lets a test or a reader inspect what was drawn. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("genopt-data").textContent);
  var charts = [];
  window.genoptReport = { data: data, charts: charts, ready: false };

  // -- small helpers ---------------------------------------------------------------------
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") node.textContent = String(v);
      else if (k === "cls") node.className = v;
      else if (k === "style") node.setAttribute("style", v);
      else node.setAttribute(k, v === true ? "" : String(v));
    });
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }
  // ids shortened for tables and legends (the full id is in the title / tooltip):
  // param sets keep "ps_" and 8 hex digits, other ids their first 8 characters
  function short(id) {
    if (!id) return "-";
    var s = String(id);
    return s.slice(0, s.indexOf("ps_") === 0 ? 11 : 8);
  }
  function num(v, digits) {
    if (v === null || v === undefined || typeof v !== "number" || !isFinite(v)) return "-";
    return v.toFixed(digits === undefined ? 3 : digits);
  }
  function signed(v) { return typeof v === "number" ? (v >= 0 ? "+" : "") + num(v) : "-"; }
  function usd(v) { return typeof v === "number" ? "$" + v.toFixed(4) : "unpriced"; }
  function ms(s) { // naive ISO (UTC) or YYYY-MM-DD -> epoch ms
    if (!s) return null;
    var t = String(s);
    if (t.length === 10) t += "T00:00:00";
    if (!/[zZ]|[+-]\d\d:?\d\d$/.test(t)) t += "Z";
    return Date.parse(t);
  }
  function when(s) { return s ? String(s).replace("T", " ").slice(0, 19) : "-"; }
  function text(v) {
    if (v === null || v === undefined) return "";
    return typeof v === "string" ? v : JSON.stringify(v, null, 2);
  }
  function badge(v, extra) { return el("span", { cls: "badge " + (v || "") + " " + (extra || ""), text: v || "-" }); }
  function empty(body, what) { body.appendChild(el("p", { cls: "empty", text: what })); }
  function table(headers, rows) {
    var head = el("tr", {}, headers.map(function (h) {
      return el("th", { cls: h.num ? "num" : null, text: h.label || h });
    }));
    var t = el("table", {}, [el("thead", {}, [head])]);
    var tb = el("tbody");
    rows.forEach(function (r) { tb.appendChild(r); });
    t.appendChild(tb);
    return t;
  }
  function cell(v, isNum) {
    return el("td", { cls: isNum ? "num" : null }, [v instanceof Node ? v : String(v === null || v === undefined ? "-" : v)]);
  }
  function chart(parent, option, cls) {
    var div = el("div", { cls: "chart " + (cls || "") });
    parent.appendChild(div);
    var c = echarts.init(div, null, { renderer: "svg" });
    option.animation = false;
    option.useUTC = true;
    c.setOption(option);
    charts.push(c);
    div.setAttribute("data-series", String(option.series.length));
    return c;
  }
  function body(id) { return document.querySelector("#" + id + " .body"); }
  // a mean line with its interval as a band (lower bound + stacked width)
  function banded(name, points, color, yAxisIndex) {
    var stack = "ci-" + name;
    var low = points.map(function (p) { return [p.x, p.ci ? p.ci[0] : null]; });
    var width = points.map(function (p) { return [p.x, p.ci ? p.ci[1] - p.ci[0] : null]; });
    var common = { type: "line", yAxisIndex: yAxisIndex || 0, symbol: "none", stack: stack,
                   silent: true, tooltip: { show: false }, lineStyle: { opacity: 0 } };
    return [
      Object.assign({ name: name + " 95% low", data: low }, common),
      Object.assign({ name: name + " 95% interval", data: width,
                      areaStyle: { color: color, opacity: 0.15 } }, common),
      { name: name, type: "line", yAxisIndex: yAxisIndex || 0, color: color, symbolSize: 6,
        data: points.map(function (p) { return [p.x, p.y]; }), connectNulls: true }
    ];
  }
  var PALETTE = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#718096",
                 "#b7791f", "#e53e3e", "#3182ce"];
  var MARK_COLORS = { proposal: "#805ad5", started: "#dd6b20", promote: "#38a169",
                      abort: "#e53e3e", withdraw: "#e53e3e", pin: "#2d3748", unpin: "#718096",
                      pause: "#b7791f", resume: "#3182ce" };
  var MARK_LABELS = { proposal: "proposal", started: "rollout start", promote: "promoted",
                      abort: "rolled back", withdraw: "withdrawn", pin: "pin", unpin: "unpin",
                      pause: "paused", resume: "resumed" };

  // -- header ----------------------------------------------------------------------------
  document.getElementById("title").textContent = "genopt report: " + data.pipeline;
  document.getElementById("subtitle").textContent =
    "last " + data.days + " days (since " + when(data.since) + " UTC), made " +
    when(data.generated_at) + " UTC";

  // -- KPI over time -----------------------------------------------------------------------
  (function () {
    var b = body("kpi");
    if (!data.kpis || !data.kpis.length) return empty(b, "No KPI feedback in the window.");
    var marks = (data.marks || []).map(function (m) {
      var label = MARK_LABELS[m.kind] || m.kind;
      return { xAxis: ms(m.at), name: label + " " + short(m.ref),
               lineStyle: { color: MARK_COLORS[m.kind] || "#718096", type: "dashed" },
               label: { formatter: label, color: MARK_COLORS[m.kind] || "#718096" } };
    });
    data.kpis.forEach(function (k) {
      b.appendChild(el("h3", { text: k.kpi + " (" + k.n + " values)" }));
      var series = [];
      k.param_sets.forEach(function (ps, i) {
        var pts = ps.days.map(function (d) { return { x: ms(d.day), y: d.mean, ci: d.ci }; });
        series = series.concat(banded(short(ps.param_set_id), pts, PALETTE[i % PALETTE.length]));
      });
      series.push({ name: "events", type: "line", data: [], markLine: { symbol: "none", data: marks,
                    label: { position: "insideEndTop", fontSize: 10 } } });
      chart(b, {
        tooltip: { trigger: "axis" },
        legend: { top: 0, data: k.param_sets.map(function (p) { return short(p.param_set_id); }) },
        grid: { left: 50, right: 30, top: 36, bottom: 30 },
        xAxis: { type: "time" },
        yAxis: { type: "value", scale: true, name: k.kpi },
        series: series
      });
    });
    b.appendChild(el("p", { cls: "note", text: "Daily mean per param set (both arms pooled), " +
      "band: 95% normal interval. Dashed lines: proposals, rollout start / promote / rollback, pins." }));
  })();

  // -- rollouts ----------------------------------------------------------------------------
  (function () {
    var b = body("rollouts");
    if (!data.rollouts || !data.rollouts.length) return empty(b, "No rollout in the window.");
    data.rollouts.forEach(function (r) {
      b.appendChild(el("h3", {}, [
        "Rollout " + short(r.rollout_id) + " ", badge(r.status),
        " stable " + short(r.stable_param_set_id) + " vs canary " + short(r.canary_param_set_id) +
        ", started " + when(r.created_at) + (r.proposal_id ? ", proposal " : ""),
        r.proposal_id ? el("a", { href: "#proposal-" + r.proposal_id, text: short(r.proposal_id) }) : null
      ]));
      if (!r.checks.length) {
        b.appendChild(el("p", { cls: "empty", text: "No check yet." }));
      } else {
        var pts = function (arm) {
          return r.checks.map(function (c) {
            return { x: ms(c.created_at), y: c["mean_" + arm], ci: c["ci_" + arm] };
          });
        };
        var series = banded("stable", pts("stable"), "#2b6cb0")
          .concat(banded("canary", pts("canary"), "#dd6b20"));
        series.push({ name: "weight", type: "line", step: "end", yAxisIndex: 1, color: "#718096",
                      symbol: "none", lineStyle: { type: "dotted" },
                      data: r.checks.map(function (c) { return [ms(c.created_at), c.weight]; }) });
        series.push({ name: "decision", type: "scatter", symbol: "pin", symbolSize: 26, color: "#2d3748",
                      data: r.checks.map(function (c) {
                        return { value: [ms(c.created_at), c.mean_canary], name: c.decision || "" };
                      }),
                      label: { show: true, formatter: function (p) { return p.name; }, position: "top",
                               fontSize: 10 } });
        chart(b, {
          tooltip: { trigger: "axis" },
          legend: { top: 0, data: ["stable", "canary", "weight", "decision"] },
          grid: { left: 50, right: 50, top: 36, bottom: 30 },
          xAxis: { type: "time" },
          yAxis: [{ type: "value", scale: true, name: r.checks[0].kpi || "KPI" },
                  { type: "value", min: 0, max: 1, name: "weight", splitLine: { show: false } }],
          series: series
        }, "small");
        b.appendChild(table(
          ["check", { label: "step", num: 1 }, { label: "weight", num: 1 }, { label: "n stable", num: 1 },
           { label: "n canary", num: 1 }, { label: "stable", num: 1 }, { label: "canary", num: 1 },
           { label: "effect", num: 1 }, "verdict", "decision", "reason"],
          r.checks.map(function (c) {
            return el("tr", {}, [cell(when(c.created_at)), cell(c.step, 1), cell(num(c.weight, 2), 1),
              cell(c.n_stable, 1), cell(c.n_canary, 1), cell(num(c.mean_stable), 1),
              cell(num(c.mean_canary), 1), cell(signed(c.effect), 1), cell(c.verdict),
              cell(badge(c.decision)), cell(c.reason)]);
          })));
      }
    });
  })();

  // -- proposals ---------------------------------------------------------------------------
  (function () {
    var b = body("proposals");
    if (!data.proposals || !data.proposals.length) return empty(b, "No proposal in the window.");
    function diffCell(d) {
      if (!d || typeof d !== "object") return cell("-");
      var box = el("div");
      Object.keys(d).forEach(function (name) {
        var ch = d[name] || {};
        box.appendChild(el("details", {}, [
          el("summary", {}, [el("code", { text: name })]),
          el("pre", { text: "- " + text(ch.from) + "\n+ " + text(ch.to) })
        ]));
      });
      return el("td", {}, [box]);
    }
    function offlineCell(p) {
      var ev = p.offline_evidence, lines = [];
      if (p.evidence_kpi_mean !== null && p.evidence_kpi_mean !== undefined)
        lines.push("evidence " + p.kpi + " " + num(p.evidence_kpi_mean) + " over " + p.evidence_units + " units");
      if (ev && ev.selection && ev.selection.n)
        lines.push("selection: " + num(ev.selection.winner_mean) + " vs parent " + num(ev.selection.parent_mean) +
                   " on " + ev.selection.n);
      if (ev && ev.confirmation && ev.confirmation.n)
        lines.push("confirmation: " + num(ev.confirmation.candidate_mean) + " vs " +
                   num(ev.confirmation.parent_mean) + " on " + ev.confirmation.n + ", p " +
                   num(ev.confirmation.p_value, 4));
      if (p.gate) lines.push("replay gate: " + p.gate.outcome + " (" + signed(p.gate.effect) + " on " + p.gate.n_items + ")");
      return el("td", {}, lines.map(function (l) { return el("div", { text: l }); }));
    }
    function ratingCell(r) {
      if (!r) return cell("-");
      return el("td", {}, [badge(r.outcome), " " + r.source + " " + signed(r.effect)]);
    }
    function lineageCell(p) {
      var td = el("td");
      td.appendChild(el("div", { text: short(p.parent_param_set_id) + " → " + short(p.candidate_param_set_id) }));
      (p.lineage || []).forEach(function (l) {
        if (l.depth === 1) return;
        td.appendChild(el("div", { cls: "note" }, [
          "ancestor " + short(l.ancestor_param_set_id) + " via ",
          el("a", { href: "#proposal-" + l.proposal_id, text: short(l.proposal_id) })
        ]));
      });
      return td;
    }
    b.appendChild(table(["created", "proposal", "status", "diff", "offline evidence", "rating", "lineage", "cost"],
      data.proposals.map(function (p) {
        return el("tr", { id: "proposal-" + p.proposal_id }, [
          cell(when(p.created_at)), el("td", {}, [el("code", { text: short(p.proposal_id), title: p.proposal_id })]),
          el("td", {}, [badge(p.status), p.status_reason ? el("div", { cls: "note", text: p.status_reason }) : null]),
          diffCell(p.diff), offlineCell(p), ratingCell(p.rating), lineageCell(p),
          cell(usd(p.cost_usd) + " / " + ((p.input_tokens || 0) + (p.output_tokens || 0)) + " tok", 1)
        ]);
      })));
  })();

  // -- optimizer nights --------------------------------------------------------------------
  (function () {
    var b = body("nights");
    if (!data.nights || !data.nights.length) return empty(b, "No optimizer night (search) in the window.");
    data.nights.forEach(function (n) {
      b.appendChild(el("h3", {}, [
        "Night " + short(n.night_id) + " (" + when(n.at) + ") ", badge(n.status),
        " " + (n.kpi || "") + ", tokens " + ((n.input_tokens || 0) + (n.output_tokens || 0)) +
        ", cost " + usd(n.cost_usd) + (n.task_calls ? ", task calls " + n.task_calls : "")
      ]));
      var names = n.candidates.map(function (c) {
        return short(c.candidate_id) + (c.parent ? " (parent)" : c.generator ? " (" + c.generator + ")" : "");
      });
      function pool(key) {
        return n.candidates.map(function (c) { return c[key] ? c[key].mean : null; });
      }
      chart(b, {
        tooltip: { trigger: "axis" },
        legend: { top: 0, data: ["selection", "confirmation"] },
        grid: { left: 50, right: 20, top: 36, bottom: 50 },
        xAxis: { type: "category", data: names, axisLabel: { interval: 0, rotate: 15, fontSize: 10 } },
        yAxis: { type: "value", name: n.kpi || "score" },
        series: [{ name: "selection", type: "bar", data: pool("selection"), color: "#2b6cb0" },
                 { name: "confirmation", type: "bar", data: pool("confirmation"), color: "#38a169" }]
      }, "small");
    });
  })();

  // -- traces ------------------------------------------------------------------------------
  (function () {
    var b = body("traces");
    if (!data.traces || !data.traces.length) return empty(b, "No run in the window.");
    // an LLM call's messages ([{role, content}]) one per paragraph, its choices one per line;
    // anything else (or a value cut at storage, no longer JSON) as stored
    function chat(value) {
      var v;
      try { v = JSON.parse(value); } catch (e) { return value; }
      if (!Array.isArray(v)) return value;
      return v.map(function (m) {
        if (m && typeof m === "object" && "content" in m)
          return "[" + (m.role || "?") + "] " + text(m.content);
        return text(m);
      }).join("\n\n");
    }
    function spanNode(s, kids, total, root) {
      var left = total > 0 && s.offset_ms !== null ? Math.max(0, s.offset_ms / total * 100) : 0;
      var width = total > 0 && s.duration_ms !== null ? Math.max(0.5, s.duration_ms / total * 100) : 0;
      var tokens = s.input_tokens || s.output_tokens ? (s.input_tokens || 0) + "+" + (s.output_tokens || 0) + " tok" : "";
      var summary = el("summary", {}, [
        badge(s.type, s.type), el("span", { cls: "name", text: s.name || s.type }),
        el("span", { cls: "waterfall " + s.type + " " + (s.status || "") }, [
          el("i", { style: "left:" + Math.min(left, 99.5).toFixed(2) + "%;width:" + Math.min(width, 100 - Math.min(left, 99.5)).toFixed(2) + "%" })]),
        el("span", { cls: "meta", text: num(s.duration_ms, 1) + " ms" + (tokens ? ", " + tokens : "") +
          (s.model ? ", " + s.model : "") }),
        s.status === "ERROR" ? badge("ERROR") : null
      ]);
      var kv = el("dl", { cls: "kv" });
      function row(k, v) { if (v !== null && v !== undefined && v !== "") { kv.appendChild(el("dt", { text: k })); kv.appendChild(el("dd", { text: text(v) })); } }
      row("arm", s.arm); row("item", s.item_key); row("model", s.model);
      row("tokens", tokens); row("cost", typeof s.cost_usd === "number" ? usd(s.cost_usd) : null);
      row("start", (s.offset_ms >= 0 ? "+" : "") + num(s.offset_ms, 1) + " ms after the run's start");
      row("params read", s.params_read && Object.keys(s.params_read).length ? s.params_read : null);
      var details = el("details", { "data-span-id": s.span_id }, [summary, kv]);
      if (s.error) details.appendChild(el("pre", { cls: "err", text: "error: " + s.error }));
      if (s.inputs) details.appendChild(el("div", {}, [el("b", { text: s.type === "llm" ? "messages" : "inputs" }), el("pre", { cls: "inputs", text: s.type === "llm" ? chat(s.inputs) : s.inputs })]));
      if (s.output) details.appendChild(el("div", {}, [el("b", { text: s.type === "llm" ? "completion" : "output" }), el("pre", { cls: "output", text: s.type === "llm" ? chat(s.output) : s.output })]));
      kids.forEach(function (k) { details.appendChild(k); });
      return el("div", { cls: "span" + (root ? " root" : "") }, [details]);
    }
    function tree(run) {
      var byId = {}, children = {}, roots = [];
      run.spans.forEach(function (s) { byId[s.span_id] = s; });
      run.spans.forEach(function (s) {
        if (s.parent_span_id && byId[s.parent_span_id]) (children[s.parent_span_id] = children[s.parent_span_id] || []).push(s);
        else roots.push(s);
      });
      var total = (run.duration_s || 0) * 1000;
      run.spans.forEach(function (s) { total = Math.max(total, (s.offset_ms || 0) + (s.duration_ms || 0)); });
      function build(s, root) {
        return spanNode(s, (children[s.span_id] || []).map(function (k) { return build(k, false); }), total, root);
      }
      var box = el("div", { cls: "trace" });
      if (run.status_message) box.appendChild(el("pre", { cls: "err", text: run.status_message }));
      if (run.genopt_errors) box.appendChild(el("p", { cls: "note", text: "genopt errors (the flow went on): " + text(run.genopt_errors) }));
      roots.forEach(function (s) { box.appendChild(build(s, true)); });
      if (!roots.length) box.appendChild(el("p", { cls: "empty", text: "No span recorded for this run." }));
      box.querySelectorAll(".span.root > details").forEach(function (d) { d.open = true; });
      return box;
    }
    var rows = [];
    data.traces.forEach(function (run) {
      var kpis = run.kpis && typeof run.kpis === "object" ? Object.keys(run.kpis).map(function (k) { return k + " " + num(run.kpis[k]); }).join(", ") : "";
      var tr = el("tr", { cls: "run-row", "data-run-id": run.run_id, tabindex: "0", title: "click to expand the span tree" }, [
        cell(when(run.start_time)), el("td", {}, [el("code", { text: short(run.run_id), title: run.run_id })]),
        el("td", {}, [badge(run.status)]), cell(short(run.param_set_id)), el("td", {}, [badge(run.arm)]),
        cell(num(run.duration_s, 2) + " s", 1), cell(run.tasks, 1), cell(run.llm_calls, 1),
        cell(run.llm_tokens, 1), cell(typeof run.llm_cost_usd === "number" ? usd(run.llm_cost_usd) : "-", 1), cell(kpis)
      ]);
      var detail = el("tr", { cls: "run-detail", hidden: true }, [el("td", { colspan: "11" })]);
      function toggle() {
        var open = detail.hidden;
        if (open && !detail.firstChild.firstChild) detail.firstChild.appendChild(tree(run));
        detail.hidden = !open;
        tr.classList.toggle("open", open);
      }
      tr.addEventListener("click", toggle);
      tr.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(); } });
      rows.push(tr, detail);
    });
    b.appendChild(el("p", { cls: "note", text: "Newest first. Click a run to open its span tree (flow → tasks → LLM calls); click a span for its inputs, output, params read, arm, tokens and error." }));
    b.appendChild(table(["start (UTC)", "run", "status", "param set", "arm", { label: "duration", num: 1 },
      { label: "tasks", num: 1 }, { label: "LLM calls", num: 1 }, { label: "tokens", num: 1 }, { label: "cost", num: 1 }, "KPIs"], rows));
  })();

  // -- LLM usage ---------------------------------------------------------------------------
  (function () {
    var b = body("usage");
    if (!data.usage || !data.usage.length) return empty(b, "No LLM call in the window.");
    var days = [], models = [];
    data.usage.forEach(function (u) {
      if (days.indexOf(u.day) < 0) days.push(u.day);
      if (models.indexOf(u.model) < 0) models.push(u.model);
    });
    var priced = data.usage.some(function (u) { return typeof u.cost_usd === "number"; });
    var series = models.map(function (m, i) {
      return { name: m, type: "bar", stack: "cost", color: PALETTE[i % PALETTE.length],
               data: days.map(function (d) {
                 var u = data.usage.filter(function (x) { return x.day === d && x.model === m; })[0];
                 return [ms(d), u ? (priced ? u.cost_usd || 0 : u.calls) : 0];
               }) };
    });
    series.push({ name: "tokens", type: "line", yAxisIndex: 1, color: "#2d3748",
                  data: days.map(function (d) {
                    return [ms(d), data.usage.filter(function (x) { return x.day === d; })
                      .reduce(function (a, x) { return a + (x.input_tokens || 0) + (x.output_tokens || 0); }, 0)];
                  }) });
    chart(b, {
      tooltip: { trigger: "axis" },
      legend: { top: 0 },
      grid: { left: 60, right: 60, top: 36, bottom: 30 },
      xAxis: { type: "time" },
      yAxis: [{ type: "value", name: priced ? "cost (USD)" : "calls" },
              { type: "value", name: "tokens", splitLine: { show: false } }],
      series: series
    });
    var totals = {};
    data.usage.forEach(function (u) {
      var t = totals[u.model] = totals[u.model] || { calls: 0, tin: 0, tout: 0, cost: 0, unpriced: 0, errors: 0 };
      t.calls += u.calls; t.tin += u.input_tokens || 0; t.tout += u.output_tokens || 0;
      t.cost += u.cost_usd || 0; t.unpriced += u.unpriced_calls; t.errors += u.errors;
    });
    b.appendChild(table(["model", { label: "calls", num: 1 }, { label: "input tokens", num: 1 },
      { label: "output tokens", num: 1 }, { label: "cost", num: 1 }, { label: "unpriced calls", num: 1 }, { label: "errors", num: 1 }],
      models.map(function (m) {
        var t = totals[m];
        return el("tr", {}, [cell(m), cell(t.calls, 1), cell(t.tin, 1), cell(t.tout, 1), cell(usd(t.cost), 1), cell(t.unpriced, 1), cell(t.errors, 1)]);
      })));
  })();

  window.addEventListener("resize", function () { charts.forEach(function (c) { c.resize(); }); });
  window.genoptReport.ready = true;
})();
