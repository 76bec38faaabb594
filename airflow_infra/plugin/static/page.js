// The airflow-infra plugin page: plain JS, no build step. Reads the plugin's JSON API with the
// Airflow UI's session cookie; `?dag_id=...` shows one DAG (the DAG tab).
"use strict";

(function () {
  const content = document.getElementById("content");
  const dagId = new URLSearchParams(location.search).get("dag_id");
  const airflowRoot = location.pathname.replace(/\/infra(\/.*)?$/, "");

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "-";
    const units = [["Ti", 2 ** 40], ["Gi", 2 ** 30], ["Mi", 2 ** 20], ["Ki", 2 ** 10]];
    for (const [suffix, factor] of units) {
      if (n >= factor) return (n % factor === 0 ? n / factor : (n / factor).toFixed(1)) + suffix;
    }
    return String(n);
  }

  function seconds(s) {
    if (s === null || s === undefined) return "-";
    if (s < 0.01) return "<0.01s";
    if (s < 120) return `${+s.toFixed(2)}s`;
    if (s < 7200) return `${+(s / 60).toFixed(1)}m`;
    return `${+(s / 3600).toFixed(1)}h`;
  }

  class AuthError extends Error {}

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401 || response.status === 403) throw new AuthError(`${response.status}`);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${await response.text()}`);
    return response.json();
  }

  function requestedList(requested, templated) {
    const parts = [];
    if (requested.cpu !== undefined) parts.push(`cpu ${requested.cpu}`);
    if (requested.memory !== undefined) parts.push(`memory ${bytes(requested.memory)}`);
    if (requested.gpu) parts.push(`gpu ${requested.gpu}${requested.gpu_type ? " " + requested.gpu_type : ""}`);
    if (requested.disk !== undefined) parts.push(`disk ${bytes(requested.disk)}`);
    if (requested.shm !== undefined) parts.push(`shm ${bytes(requested.shm)}`);
    if (requested.timeout !== undefined) parts.push(`timeout ${seconds(requested.timeout)}`);
    const items = parts.map((p) => el("div", {}, p));
    for (const [field, template] of Object.entries(templated || {})) {
      items.push(el("div", { class: "why" }, `${field} = `, el("code", {}, template), " (at run time)"));
    }
    return items.length ? items : [el("span", { class: "why" }, "nothing declared")];
  }

  function imageCell(plan) {
    if (!plan.image) return "-";
    let badge;
    if (!plan.needs_image) badge = el("span", { class: "badge none" }, `not needed on ${plan.kind}`);
    else if (plan.exists === true) badge = el("span", { class: "badge ok" }, "exists");
    else if (plan.exists === false) badge = el("span", { class: "badge bad" }, "missing");
    else badge = el("span", { class: "badge none" }, "not checked");
    return [el("code", {}, plan.image), badge];
  }

  function environmentCell(env) {
    if (!env) return "-";
    const lines = [];
    if (env.packages.length) lines.push(el("div", {}, el("code", {}, env.packages.join(", "))));
    if (env.requirements) lines.push(el("div", {}, "requirements ", el("code", {}, env.requirements)));
    if (env.apt_packages.length) lines.push(el("div", {}, "apt ", el("code", {}, env.apt_packages.join(", "))));
    if (env.python) lines.push(el("div", {}, `python ${env.python}`));
    if (env.base_image) lines.push(el("div", {}, "base ", el("code", {}, env.base_image)));
    if (env.env.length) lines.push(el("div", { class: "why" }, `env: ${env.env.join(", ")}`));
    return lines.length ? lines : el("span", { class: "why" }, "default environment");
  }

  function targetCell(plan) {
    const name = plan.kind === plan.target ? plan.target : `${plan.target} (${plan.kind})`;
    return el("td", {}, el("div", {}, name), el("div", { class: "why" }, plan.reason));
  }

  function planRow(plan) {
    const task = el("td", {}, el("strong", {}, plan.task_id), plan.mapped ? el("div", { class: "why" }, "mapped") : null);
    if (!plan.target) return el("tr", { "data-task-id": plan.task_id }, task, el("td", { colspan: "4", class: "error" }, plan.error));
    return el(
      "tr",
      { "data-task-id": plan.task_id },
      task,
      targetCell(plan),
      el("td", {}, imageCell(plan), plan.error ? el("div", { class: "error" }, plan.error) : null),
      el("td", {}, requestedList(plan.requested, plan.templated)),
      el("td", {}, environmentCell(plan.environment)),
    );
  }

  function table(className, headings, rows) {
    return el(
      "table",
      { class: className },
      el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows),
    );
  }

  function planTable(plans) {
    return table("plan", ["Task", "Target and why", "Image", "Requested", "Environment"], plans.map(planRow));
  }

  function usage(call) {
    const req = call.requested || {};
    const met = call.measured || {};
    const peak = met.peak_memory_bytes;
    const memory = el("td", {}, bytes(peak), " of ", bytes(req.memory));
    if (peak && req.memory && peak > req.memory) memory.classList.add("over");
    // on_oom: where the request came from (escalated after an earlier try's out-of-memory kill).
    const up = call.escalated;
    if (up) memory.append(el("div", { class: "why" }, `escalated from ${up.from} after try ${up.after_try}`));
    const used = met.wall_seconds ? (met.cpu_seconds || 0) / met.wall_seconds : null;
    const cpu = el("td", {}, used === null ? "-" : `${used.toFixed(2)} cores`, " of ", req.cpu === undefined || req.cpu === null ? "-" : String(req.cpu));
    // memory="auto" / cpu="auto": the request was sized from earlier runs (or is the first-run default).
    const auto = call.autosized || {};
    for (const [field, cell] of [["memory", memory], ["cpu", cpu]]) {
      const sized = auto[field];
      if (!sized) continue;
      const why = sized.source === "history"
        ? `auto: from ${sized.calls} call(s) in ${sized.runs.length} run(s)` + (sized.bound ? ` (${sized.bound} bound)` : "")
        : "auto: first-run default";
      cell.append(el("div", { class: "why auto", title: (sized.runs || []).join(", ") }, why));
    }
    return [memory, cpu, el("td", {}, seconds(met.wall_seconds))];
  }

  function runsTable(runs) {
    const rows = [];
    for (const run of runs) {
      // A folder of the run that is not a readable call gets a row saying what is wrong.
      const problems = run.problems || [];
      const span = String(run.calls.length + problems.length);
      const runCell = el("td", { rowspan: span }, el("code", {}, run.run_id), el("div", { class: "why" }, run.submitted_at || "?"));
      run.calls.forEach((call, i) => {
        rows.push(
          el(
            "tr",
            { "data-run-id": run.run_id },
            i === 0 ? runCell : null,
            el("td", {}, call.map_index >= 0 ? `${call.task_id}[${call.map_index}]` : call.task_id),
            el("td", {}, call.target),
            el("td", { class: call.ok ? "" : "error" }, call.status, call.try_number > 1 ? ` (try ${call.try_number})` : ""),
            usage(call),
            el("td", {}, call.hints.map((h) => el("div", { class: "hint" }, h))),
          ),
        );
      });
      problems.forEach((problem, i) => {
        rows.push(
          el(
            "tr",
            { "data-run-id": run.run_id, class: "broken" },
            i === 0 && run.calls.length === 0 ? runCell : null,
            el("td", {}, "-"),
            el("td", {}, "-"),
            el("td", { class: "error" }, `broken: ${problem}`),
            el("td", {}, "-"),
            el("td", {}, "-"),
            el("td", {}, "-"),
            el("td", {}, ""),
          ),
        );
      });
    }
    const headings = ["Run", "Task", "Target", "Outcome", "Peak memory of requested", "CPU used of requested", "Wall", "Hints"];
    return table("runs", headings, rows);
  }

  // -- per task: requested vs used across recent runs, as small SVG charts ------------------

  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    for (const child of children) if (child) node.append(child);
    return node;
  }

  // One point per run (oldest first) and task: the largest request and use among its calls
  // (a mapped task's indexes), and whether a call's request was escalated after an OOM kill.
  function series(runs, taskId, field) {
    const points = [];
    for (const run of [...runs].reverse()) {
      const calls = run.calls.filter((c) => c.task_id === taskId);
      if (!calls.length) continue;
      const requested = Math.max(0, ...calls.map((c) => (c.requested || {})[field] || 0));
      const used = Math.max(0, ...calls.map((c) => {
        const m = c.measured || {};
        if (field === "memory") return m.peak_memory_bytes || 0;
        return m.wall_seconds ? (m.cpu_seconds || 0) / m.wall_seconds : 0;
      }));
      const escalated = calls.some((c) => field === "memory" && c.escalated);
      const auto = calls.some((c) => c.autosized && c.autosized[field]);
      points.push({ run: run.run_id, requested, used, escalated, auto });
    }
    return points;
  }

  // Bars of use inside outlines of the request, one pair per run; an escalated run's
  // outline is drawn in the error colour and titled so.
  function chart(points, field) {
    const width = 24 * points.length + 8, height = 60;
    const top = Math.max(1, ...points.map((p) => Math.max(p.requested, p.used)));
    const show = field === "memory" ? bytes : (v) => `${v.toFixed(2)} cores`;
    const bars = points.map((p, i) => {
      const x = 4 + 24 * i, h = (v) => Math.max(1, Math.round((v / top) * (height - 4)));
      const marks = [];
      if (p.requested) {
        marks.push(svg("rect", { x, y: height - h(p.requested), width: 18, height: h(p.requested),
          class: p.escalated ? "requested escalated" : "requested" }));
      }
      marks.push(svg("rect", { x: x + 4, y: height - h(p.used), width: 10, height: h(p.used), class: p.used > p.requested && p.requested ? "used over" : "used" }));
      const title = svg("title");
      title.textContent = `${p.run}: used ${show(p.used)} of ${p.requested ? show(p.requested) : "no request"}` +
        (p.escalated ? " (escalated after an out-of-memory kill)" : "") + (p.auto ? " (auto)" : "");
      return svg("g", { class: "point", "data-run-id": p.run, "data-escalated": String(p.escalated) }, title, ...marks);
    });
    return svg("svg", { class: `chart ${field}`, width, height, viewBox: `0 0 ${width} ${height}`, role: "img" }, ...bars);
  }

  function chartsTable(runs) {
    const tasks = [...new Set(runs.flatMap((run) => run.calls.map((c) => c.task_id)))];
    const rows = tasks.map((taskId) =>
      el("tr", { "data-task-id": taskId }, el("td", {}, taskId),
        el("td", {}, chart(series(runs, taskId, "memory"), "memory")),
        el("td", {}, chart(series(runs, taskId, "cpu"), "cpu"))),
    );
    return table("charts", ["Task", "Memory: peak in requested (oldest run first)", "CPU: cores used in requested"], rows);
  }

  // A fan-out's items in brief: one bar per quantile of their wall time and peak memory.
  function quantileChart(values, quantiles, field) {
    const width = 14 * values.length + 8, height = 48;
    const top = Math.max(1e-9, ...values);
    const show = field === "memory" ? bytes : seconds;
    const bars = values.map((v, i) => {
      const h = Math.max(1, Math.round((v / top) * (height - 4)));
      const title = svg("title");
      title.textContent = `p${Math.round(quantiles[i] * 100)}: ${show(v)}`;
      return svg("g", { class: "quantile" }, title, svg("rect", { x: 4 + 14 * i, y: height - h, width: 10, height: h, class: "used" }));
    });
    return svg("svg", { class: `chart quantiles ${field}`, width, height, viewBox: `0 0 ${width} ${height}`, role: "img" }, ...bars);
  }

  function fanOutTable(runs) {
    const rows = [];
    for (const run of runs) {
      for (const call of run.calls.filter((c) => c.fan_out)) {
        const f = call.fan_out, m = f.measured || {};
        const failed = f.failed_items.map((i) => {
          const e = f.errors[String(i)];
          return el("div", { class: "failed-item" }, e ? `item ${i}: ${e.type}: ${e.message}` : `item ${i}`);
        });
        rows.push(el("tr", { "data-task-id": call.task_id, "data-run-id": run.run_id },
          el("td", {}, run.run_id), el("td", {}, call.task_id),
          el("td", { class: "counts" }, `${f.items} items: ${f.ran} ran, ${f.reused} reused, ${f.failed} failed`),
          el("td", {}, m.wall_seconds && m.wall_seconds.length ? quantileChart(m.wall_seconds, m.quantiles, "wall") : "—"),
          el("td", {}, m.peak_memory_bytes && m.peak_memory_bytes.length ? quantileChart(m.peak_memory_bytes, m.quantiles, "memory") : "—"),
          el("td", { class: "slowest" }, (m.slowest || []).map((s) => `item ${s.index} (${seconds(s.wall_seconds)})`).join(", ")),
          el("td", { class: "failed" }, ...(failed.length ? failed : ["none"]))));
      }
    }
    return rows.length
      ? table("fan-outs", ["Run", "Task", "Items", "Wall time per item (quantiles)", "Peak memory", "Slowest", "Failed"], rows)
      : null;
  }

  async function fillRuns(section, id) {
    const holder = el("div", {}, el("p", { class: "note" }, "Loading runs…"));
    section.append(el("h3", {}, "Recent runs: measured vs requested"), holder);
    try {
      const data = await getJSON(`api/dags/${encodeURIComponent(id)}/runs?limit=10`);
      holder.replaceChildren(
        ...(data.runs.length
          ? [chartsTable(data.runs), fanOutTable(data.runs.slice(0, 5)), runsTable(data.runs.slice(0, 5))].filter(Boolean)
          : [el("p", { class: "note" }, "No runs in the artifact store yet.")]),
      );
    } catch (err) {
      holder.replaceChildren(el("p", { class: "error" }, `Could not read runs: ${err.message}`));
    }
  }

  function dagSection(dag) {
    const link = el("a", { href: `${airflowRoot}/dags/${encodeURIComponent(dag.dag_id)}`, target: "_top" }, dag.dag_id);
    const section = el("section", { class: "dag", "data-dag-id": dag.dag_id }, el("h2", {}, link));
    if (dag.error) section.append(el("p", { class: "error" }, dag.error));
    else section.append(planTable(dag.plans));
    return section;
  }

  async function main() {
    const url = dagId ? `api/dags/${encodeURIComponent(dagId)}/plans` : "api/plans";
    let data;
    try {
      data = await getJSON(url);
    } catch (err) {
      const message =
        err instanceof AuthError
          ? el("p", { class: "error" }, "Not signed in to Airflow (or not allowed to read DAGs). ",
              el("a", { href: `${airflowRoot}/`, target: "_top" }, "Sign in"), " and open this page again.")
          : el("p", { class: "error" }, `Could not load plans: ${err.message}`);
      content.replaceChildren(message);
      return;
    }
    if (!data.dags.length) {
      content.replaceChildren(el("p", { class: "note" }, dagId ? `${dagId} has no infra tasks.` : "No DAG with infra tasks yet."));
      return;
    }
    content.replaceChildren(...data.dags.map(dagSection));
    const sections = content.querySelectorAll("section.dag");
    await Promise.all(data.dags.map((dag, i) => (dag.error ? null : fillRuns(sections[i], dag.dag_id))));
  }

  // Tests wait for this attribute: set once everything has rendered, errors included.
  main().finally(() => document.body.setAttribute("data-loaded", "true"));
})();
