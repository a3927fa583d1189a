// Flux dashboard: the live request list (server-sent events) and the trace waterfall (virtualised rows, so a
// trace of 10,000 spans stays fast). No dependencies; the pages work without it except for these two.
"use strict";

(function () {
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function ms(us) {
    return us === null || us === undefined ? "" : (us / 1000).toFixed(1) + " ms";
  }

  function json(value) {
    return value === null || value === undefined ? "—" : JSON.stringify(value, null, 2);
  }

  // -- the live request list --------------------------------------------------------------------------------

  function followRequests(table) {
    const body = table.tBodies[0];
    const state = document.getElementById("live-state");
    const seen = new Set(Array.from(body.querySelectorAll("a")).map((a) => a.getAttribute("href")));
    const source = new EventSource(table.dataset.live);
    source.addEventListener("request", (event) => {
      const r = JSON.parse(event.data);
      const href = "/flux/requests/" + r.id;
      if (seen.has(href)) return;
      seen.add(href);
      const row = el("tr", (r.ok ? "ok" : "failed") + " fresh");
      const started = new Date(r.started_at);
      const cells = [
        started.toTimeString().slice(0, 8) + "." + String(started.getMilliseconds()).padStart(3, "0"),
        r.kind, (r.method || "") + " " + (r.path || ""), r.function || "",
        r.status + (r.error_code ? " " + r.error_code : ""), ms(r.duration_us),
      ];
      for (const text of cells) row.appendChild(el("td", "", text));
      const link = el("a", "", r.id.slice(0, 8));
      link.href = href;
      row.appendChild(el("td")).appendChild(link);
      body.insertBefore(row, body.firstChild);
      while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
    });
    source.addEventListener("gone", () => {
      source.close();
      if (state) state.textContent = "paused: reload the page to follow again";
    });
    source.addEventListener("error", () => {
      // each answer of the feed ends within seconds and the browser asks again: only a closed one stalls
      if (state) state.classList.toggle("stalled", source.readyState === EventSource.CLOSED);
    });
  }

  // -- the trace waterfall ----------------------------------------------------------------------------------

  const ROW_PX = 22;
  const OVERSCAN = 10;

  function criticalPath(spans, col) {
    // From the root, each time the child that ends last: the spans the request waited on.
    const children = new Map();
    const roots = [];
    for (const s of spans) {
      const parent = s[col.parent_seq];
      if (parent === null) roots.push(s);
      else {
        if (!children.has(parent)) children.set(parent, []);
        children.get(parent).push(s);
      }
    }
    const end = (s) => Number(s[col.offset_us] || 0) + Number(s[col.duration_us] || 0);
    const latest = (list) => list.reduce((best, s) => (best === null || end(s) > end(best) ? s : best), null);
    const path = new Set();
    let at = latest(roots);
    while (at) {
      path.add(at[col.seq]);
      at = latest(children.get(at[col.seq]) || []);
    }
    return path;
  }

  function drawWaterfall(box) {
    const began = performance.now();
    fetch(box.dataset.src, { credentials: "same-origin", headers: { accept: "application/json" } })
      .then((answer) => {
        if (!answer.ok) throw new Error("the trace did not load (" + answer.status + ")");
        return answer.json();
      })
      .then((data) => {
        const col = {};
        data.columns.forEach((name, i) => { col[name] = i; });
        let spans = data.spans;
        if (data.unattached) {
          // row changes no span made: one row of their own, at the time they came, clicked like a span's
          const lone = data.columns.map(() => null);
          lone[col.seq] = -1;
          lone[col.depth] = 0;
          lone[col.module] = "data";
          lone[col.name] = "row changes outside any span";
          lone[col.offset_us] = data.unattached.offset_us;
          lone[col.duration_us] = 0;
          lone[col.ok] = true;
          spans = spans.concat([lone]);
        }
        const total = Math.max(1, Number(data.request.duration_us || 0),
          ...spans.slice(0, 20000).map((s) => Number(s[col.offset_us] || 0) + Number(s[col.duration_us] || 0)));
        const critical = criticalPath(data.spans, col);
        let shown = spans;
        let selected = null;
        box.textContent = "";
        // as tall as its rows, up to 60 % of the window (then it scrolls)
        box.style.height = Math.min(window.innerHeight * 0.6, spans.length * ROW_PX + 4) + "px";
        const canvas = el("div", "wf-canvas");
        box.appendChild(canvas);

        function row(span) {
          const seq = span[col.seq];
          const classes = ["wf-row"];
          if (span[col.ok] === false) classes.push("failed");
          if (critical.has(seq)) classes.push("critical");
          if (seq === selected) classes.push("selected");
          const line = el("div", classes.join(" "));
          line.dataset.seq = seq;
          const label = el("div", "wf-label");
          label.style.paddingLeft = Math.min(span[col.depth], 30) * 10 + 4 + "px";
          label.appendChild(el("span", "wf-module wf-" + span[col.module], span[col.module]));
          label.appendChild(el("span", "wf-name", span[col.name]));
          const changes = data.mutations[String(seq)];
          if (changes) label.appendChild(el("span", "wf-rows", changes.length + " row" + (changes.length > 1 ? "s" : "")));
          line.appendChild(label);
          const lane = el("div", "wf-lane");
          const bar = el("div", "wf-bar");
          bar.style.left = (100 * Number(span[col.offset_us] || 0)) / total + "%";
          bar.style.width = Math.max(0.15, (100 * Number(span[col.duration_us] || 0)) / total) + "%";
          lane.appendChild(bar);
          lane.appendChild(el("span", "wf-ms", ms(span[col.duration_us])));
          line.appendChild(lane);
          return line;
        }

        let frame = 0;
        function render() {
          frame = 0;
          canvas.style.height = shown.length * ROW_PX + "px";
          const first = Math.max(0, Math.floor(box.scrollTop / ROW_PX) - OVERSCAN);
          const last = Math.min(shown.length, Math.ceil((box.scrollTop + box.clientHeight) / ROW_PX) + OVERSCAN);
          const lines = document.createDocumentFragment();
          for (let i = first; i < last; i++) {
            const line = row(shown[i]);
            line.style.top = i * ROW_PX + "px";
            lines.appendChild(line);
          }
          canvas.replaceChildren(lines);
        }
        function later() {
          if (!frame) frame = requestAnimationFrame(render);
        }
        box.addEventListener("scroll", later, { passive: true });
        window.addEventListener("resize", later);

        const filter = document.getElementById("span-filter");
        if (filter) {
          filter.addEventListener("input", () => {
            const text = filter.value.trim().toLowerCase();
            shown = text ? spans.filter((s) => (s[col.module] + " " + s[col.name]).toLowerCase().includes(text)) : spans;
            box.scrollTop = 0;
            render();
          });
        }

        box.addEventListener("click", (event) => {
          const line = event.target.closest(".wf-row");
          if (!line) return;
          selected = Number(line.dataset.seq);
          showSpan(data, spans.find((s) => s[col.seq] === selected), col);
          render();
        });

        render();
        box.dataset.spans = String(data.spans.length);
        box.dataset.renderedMs = (performance.now() - began).toFixed(1);
        box.classList.add("ready");
      })
      .catch((error) => {
        box.textContent = error.message;
        box.classList.add("failed");
      });
  }

  function showSpan(data, span, col) {
    const seq = String(span[col.seq]);
    const detail = data.details[seq] || {};
    const panel = document.getElementById("span-detail");
    panel.hidden = false;
    document.getElementById("span-title").textContent =
      "#" + seq + " " + span[col.module] + " " + span[col.name] + " · " + ms(span[col.duration_us]);
    document.getElementById("span-input").textContent = json(detail.input);
    document.getElementById("span-output").textContent = json(detail.output);
    document.getElementById("span-error").textContent = json(detail.error);
    const changes = document.getElementById("span-mutations");
    changes.textContent = "";
    const rows = data.mutations[seq] || [];
    if (rows.length) changes.appendChild(el("h4", "", "Row changes"));
    for (const m of rows) {
      const item = el("div", "mutation");
      item.appendChild(el("strong", "", m.op + " " + m.table + " " + JSON.stringify(m.key)));
      for (const column of m.changed || Object.keys(m.new || m.old || {})) {
        const was = m.old ? JSON.stringify(m.old[column]) : "";
        const now = m.new ? JSON.stringify(m.new[column]) : "deleted";
        item.appendChild(el("div", "", column + ": " + (was ? was + " → " : "") + now));
      }
      changes.appendChild(item);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const requests = document.getElementById("requests");
    if (requests && requests.dataset.live) followRequests(requests);
    const waterfall = document.getElementById("waterfall");
    if (waterfall) drawWaterfall(waterfall);
  });
})();
