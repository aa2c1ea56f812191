// The chronoshard recovery console: one page, plain JS, talking only to the console's JSON API (/api/v1).
// Everything shown comes from users and attackers (keys, values, identities), so the DOM is built with
// textContent only, never innerHTML.
"use strict";

(function () {
  const API = "/api/v1";
  let session = null; // {user, groups, csrfToken}
  let timer = null; // the Reversion view's refresh
  let charts = []; // uPlot instances of the current view (destroyed on navigation)

  // ---- small helpers -------------------------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const enc = encodeURIComponent;

  function fmtTime(t) {
    if (t === null || t === undefined || t === "") return "—";
    const d = typeof t === "string" && !/^[\d.]+$/.test(t) ? new Date(t) : new Date(Number(t) * 1000);
    if (isNaN(d.getTime())) return String(t);
    return d.toISOString().replace("T", " ").replace("Z", " UTC");
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = Number(n), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(1)) + " " + units[i];
  }

  function fmtNum(n, digits) {
    return n === null || n === undefined ? "—" : Number(n).toFixed(digits === undefined ? 3 : digits);
  }

  // "2026-12-07T12:00:00Z", "2026-12-07 12:00:00" (UTC) or unix seconds -> unix seconds (NaN when neither).
  function parseTime(s) {
    s = String(s || "").trim();
    if (s === "") return NaN;
    if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
    let iso = s.replace(" UTC", "Z").replace(" ", "T");
    if (!/(Z|[+-]\d\d:?\d\d)$/.test(iso)) iso += "Z";
    const ms = Date.parse(iso);
    return isNaN(ms) ? NaN : ms / 1000;
  }

  function status(msg) { document.getElementById("status").textContent = msg || ""; }

  function alertBox(msg) {
    const el = document.getElementById("alert");
    el.textContent = msg || "";
    el.hidden = !msg;
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && (body.message || body.error)) || "HTTP " + status);
      this.status = status;
      this.body = body || {};
    }
  }

  // Every call is same-origin with the session cookie; a state-changing one carries the CSRF token.
  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && method !== "HEAD" && session) headers["X-CSRF-Token"] = session.csrfToken;
    const resp = await fetch(API + path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (resp.status === 401 && path !== "/session") { showSignIn("Your session has ended: sign in again."); }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  function qs(params) {
    const parts = Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== "" &&
      !(typeof v === "number" && isNaN(v)));
    return parts.length ? "?" + parts.map(([k, v]) => enc(k) + "=" + enc(v)).join("&") : "";
  }

  function ssPath(ns, name) { return "/namespaces/" + enc(ns) + "/shardsets/" + enc(name); }
  function tablePath(ns, name, table) { return ssPath(ns, name) + "/tables/" + enc(table); }

  function link(hash, text, attrs) { return h("a", Object.assign({ href: "#" + hash }, attrs || {}), text); }

  function route(...parts) { return "/" + parts.map(enc).join("/"); }

  function dl(rows) {
    return h("dl", { class: "facts" }, rows.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  // A table with a caption; rows are arrays of cells (strings or nodes).
  function table(caption, headers, rows, empty) {
    if (!rows.length) return h("p", { class: "empty" }, empty || "None.");
    return h("div", { class: "scroll" }, h("table", {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c)))))));
  }

  function section(title, ...children) {
    const id = "s-" + title.toLowerCase().replace(/[^a-z0-9]+/g, "-");
    return h("section", { "aria-labelledby": id }, h("h2", { id }, title), children);
  }

  function jsonText(v) {
    if (v === null || v === undefined) return "—";
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  }

  function errorText(e) {
    if (e instanceof ApiError) {
      if (e.status === 403) return "Not allowed: " + (e.body.message || "Kubernetes RBAC refuses this to you.");
      if (e.status === 502) return "A shard is unreachable: " + (e.body.message || "");
      return (e.body.error ? e.body.error + ": " : "") + (e.body.message || "HTTP " + e.status);
    }
    return String(e && e.message ? e.message : e);
  }

  // A part of a view that loads on its own and shows its own error (a 403 on one part leaves the rest usable).
  function part(loader) {
    const box = h("div", { class: "part", "aria-busy": "true" }, h("p", { class: "loading" }, "Loading…"));
    Promise.resolve().then(loader).then((node) => {
      box.replaceChildren(node);
    }).catch((e) => {
      box.replaceChildren(h("p", { class: "error", role: "alert" }, errorText(e)));
    }).finally(() => box.removeAttribute("aria-busy"));
    return box;
  }

  // ---- session -------------------------------------------------------------------------------------------------

  function showSignIn(msg) {
    session = null;
    stopTimer();
    document.getElementById("who").hidden = true;
    document.getElementById("view").hidden = true;
    document.getElementById("signin").hidden = false;
    document.getElementById("signin-error").textContent = msg || "";
    document.getElementById("crumbs").replaceChildren();
    document.getElementById("token").focus();
  }

  async function loadSession() {
    try {
      session = await api("GET", "/session");
    } catch (e) {
      session = null;
      // Behind the trusted auth proxy the proxy has already said who this is: sign in without a token.
      if (e.status === 401 && e.body.authProxy === true) {
        try {
          await api("POST", "/session", {});
          session = await api("GET", "/session");
        } catch (e2) { session = null; }
      }
    }
    if (!session) { showSignIn(""); return; }
    document.getElementById("signin").hidden = true;
    document.getElementById("who").hidden = false;
    document.getElementById("who-user").textContent = session.user;
    document.getElementById("view").hidden = false;
    render();
  }

  async function signIn(ev) {
    ev.preventDefault();
    const field = document.getElementById("token");
    const token = field.value.trim();
    const err = document.getElementById("signin-error");
    err.textContent = "";
    try {
      await api("POST", "/session", { token });
    } catch (e) {
      err.textContent = e.status === 401 || e.status === 403 ? "The token was not accepted." : errorText(e);
      field.focus();
      return;
    }
    field.value = ""; // the token is not kept by the page
    await loadSession();
  }

  async function signOut() {
    try { await api("DELETE", "/session"); } catch (e) { /* signed out either way */ }
    location.hash = "#/";
    showSignIn("Signed out.");
  }

  // ---- routing -------------------------------------------------------------------------------------------------

  function stopTimer() { if (timer) { clearTimeout(timer); timer = null; } }

  function parseHash() {
    const raw = location.hash.replace(/^#/, "") || "/";
    const [path, query] = raw.split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    const params = new URLSearchParams(query || "");
    return { parts, params };
  }

  function crumbs(items) {
    const ol = document.getElementById("crumbs");
    ol.replaceChildren(...items.map(([text, hash], i) => h("li", {},
      i === items.length - 1 ? h("span", { "aria-current": "page" }, text) : link(hash, text))));
  }

  function mount(title, ...children) {
    const view = document.getElementById("view");
    const heading = h("h1", { tabindex: "-1" }, title);
    view.replaceChildren(heading, ...children.flat());
    document.title = title + " · chronoshard console";
    heading.focus(); // keyboard and screen-reader users start at the new view's heading
  }

  function render() {
    if (!session) return;
    stopTimer();
    charts.forEach((c) => c.destroy());
    charts = [];
    alertBox("");
    status("");
    const { parts: p, params } = parseHash();
    // #/ns/NS/shardsets/NAME[/tables/T/(timeline|incidents/SHARD/ID|keys/KEY|diff|state)] | #/ns/NS/reversions/N
    // | #/ns/NS/mirrorsets/N
    if (p.length === 0) return viewShardSets(params);
    if (p[0] === "ns" && p[2] === "shardsets" && p.length === 4) return viewShardSet(p[1], p[3]);
    if (p[0] === "ns" && p[2] === "shardsets" && p[4] === "tables") {
      const [ns, name, t] = [p[1], p[3], p[5]];
      if (p[6] === "timeline") return viewTimeline(ns, name, t, params);
      if (p[6] === "incidents") return viewIncident(ns, name, t, p[7], p[8]);
      if (p[6] === "keys") return viewKey(ns, name, t, p[7], params);
      if (p[6] === "diff") return viewDiff(ns, name, t, params);
      if (p[6] === "state") return viewState(ns, name, t, params);
    }
    if (p[0] === "ns" && p[2] === "reversions" && p.length === 4) return viewReversion(p[1], p[3]);
    if (p[0] === "ns" && p[2] === "mirrorsets" && p.length === 4) return viewMirrorSet(p[1], p[3]);
    crumbs([["ShardSets", "/"]]);
    mount("Not found", h("p", {}, "No such view. "), link("/", "Back to the ShardSets"));
  }

  // ---- views ---------------------------------------------------------------------------------------------------

  function shardSetCrumbs(ns, name, more) {
    return [["ShardSets", "/"], [ns + "/" + name, route("ns", ns, "shardsets", name)]].concat(more || []);
  }

  function keyVersionsText(k) {
    if (!k || typeof k !== "object") return jsonText(k);
    if ("current" in k || "versions" in k) {
      const one = (v) => v && typeof v === "object" && "id" in v
        ? v.id + " (" + [v.state, v.wrapped ? "wrapped" : null].filter(Boolean).join(", ") + ")" : jsonText(v);
      return "current " + jsonText(k.current) + "; versions " + ((k.versions || []).map(one).join(", ") || "—");
    }
    return jsonText(k);
  }

  function readyText(s) {
    return typeof s.readyShards === "string" && s.readyShards.includes("/") ? s.readyShards
      : jsonText(s.readyShards) + " / " + jsonText(s.shards);
  }

  function detectorText(d) {
    if (!d || typeof d !== "object") return d ? String(d) : "no detector reported";
    const states = d.states && typeof d.states === "object"
      ? Object.entries(d.states).map(([k, v]) => k + " " + jsonText(v)).join(", ") : "";
    return [d.model, d.state, states ? "tables: " + states : null].filter(Boolean).join("; ") || jsonText(d);
  }

  // The tables the ShardSet declares, and those its incidents and Reversions name (a ShadowPolicy may watch tables
  // the ShardSet's spec does not list).
  function tablesOf(s) {
    const out = new Set(s.tables || []);
    for (const a of s.anomalies || []) if (a.table) out.add(a.table);
    for (const r of s.reversions || []) if (r.incident && r.incident.table) out.add(r.incident.table);
    return [...out].sort();
  }

  function viewShardSets(params) {
    crumbs([["ShardSets", "/"]]);
    const ns = params.get("namespace") || "";
    const field = h("input", { id: "ns-filter", name: "namespace", value: ns, spellcheck: "false",
      placeholder: "empty: every namespace you may list" });
    const form = h("form", { class: "inline", onsubmit: (ev) => {
      ev.preventDefault();
      location.hash = "#/" + qs({ namespace: field.value.trim() });
    } }, h("label", { for: "ns-filter" }, "Namespace"), field, h("button", { type: "submit" }, "Show"));
    mount("ShardSets", form, part(async () => {
      let data;
      try {
        data = await api("GET", "/shardsets" + qs({ namespace: ns }));
      } catch (e) {
        if (e.status === 403 && !ns) throw new Error("You may not list ShardSets in every namespace: name one.");
        throw e;
      }
      return table("ShardSets you can see", ["Namespace", "Name", "Shards ready", "Phase", "Tables", "Key versions",
        "Rotations", "Shadow policy", "MirrorSet"], data.items.map((s) => [
        s.namespace,
        link(route("ns", s.namespace, "shardsets", s.name), s.name),
        readyText(s),
        s.phase || "—",
        (s.tables || []).join(", ") || "—",
        keyVersionsText(s.keyVersions),
        (s.rotations || []).map((r) => r.name + " (" + r.phase + ")").join(", ") || "—",
        s.shadowPolicy || "—",
        mirrorSetLink(s.mirrorSet),
      ]), "No ShardSets, or none you may list.");
    }));
  }

  function viewShardSet(ns, name) {
    crumbs(shardSetCrumbs(ns, name));
    mount("ShardSet " + ns + "/" + name, part(async () => {
      const s = await api("GET", ssPath(ns, name));
      const tables = tablesOf(s);
      const other = h("input", { id: "open-table", name: "table", spellcheck: "false", required: true });
      const openTable = h("form", { class: "inline", onsubmit: (ev) => {
        ev.preventDefault();
        location.hash = "#" + route("ns", ns, "shardsets", name, "tables", other.value.trim(), "timeline");
      } }, h("label", { for: "open-table" }, "Another table"), other, h("button", { type: "submit" }, "Open timeline"));
      return h("div", {},
        dl([["Phase", s.phase || "—"], ["Shards ready", readyText(s)],
          ["Key versions", keyVersionsText(s.keyVersions)], ["Shadow policy", s.shadowPolicy || "none"],
          ["MirrorSet", mirrorSetLink(s.mirrorSet)], ["Detector", detectorText(s.detector)]]),
        section("Tables", table("Tables and their views", ["Table", "Views"], tables.map((t) => [t, h("span", {
          class: "actions" },
        link(route("ns", ns, "shardsets", name, "tables", t, "timeline"), "Timeline", { "aria-label": "Timeline of " + t }),
        link(route("ns", ns, "shardsets", name, "tables", t, "state"), "State at a time", { "aria-label": "State of " + t + " at a time" }),
        link(route("ns", ns, "shardsets", name, "tables", t, "diff"), "Diff", { "aria-label": "Diff of " + t }))]),
        "No tables."), openTable),
        section("Key rotations", table("Key rotations", ["Name", "Phase"],
          (s.rotations || []).map((r) => [r.name, r.phase || "—"]), "No key rotations.")),
        section("Incidents", table("Anomaly incidents (newest first)", ["Incident", "Table", "Shard", "Kind", "Started",
          "Keys", "Bytes", "Identities", "Action", "Reversion"], (s.anomalies || []).map((a) => [
          link(route("ns", ns, "shardsets", name, "tables", a.table, "incidents", String(a.shard), a.id), a.id,
            { "aria-label": "Impact of incident " + a.id }),
          a.table, String(a.shard), a.kind || "—", fmtTime(a.startTime), String(a.keys ?? "—"), fmtBytes(a.bytes),
          (a.identities || []).map((x) => x || "unknown").join(", "), a.action || "—",
          a.reversion ? link(route("ns", ns, "reversions", a.reversion), a.reversion) : "—",
        ]), "No incidents detected.")),
        section("Reversions", table("Reversions", ["Name", "Phase", "Digest", "Keys", "Progress", "Incident"],
          (s.reversions || []).map((r) => [link(route("ns", ns, "reversions", r.name), r.name), r.phase || "—",
            h("code", {}, (r.digest || "").slice(0, 12) || "—"), jsonText(r.keys), progressText(r.progress),
            incidentLink(ns, name, r.incident)]), "No Reversions.")),
        weaveSection(s.weavePlan));
    }));
  }

  // The WeavePlan in force ({name, phase, mode, partitions, whatIf, splits}): the partitions most likely to split,
  // and for each predicted split what it would do to the shards before anyone says yes (docs/weaving.md).
  function weaveSection(w) {
    if (!w) {
      return section("Forecast splits", h("p", { class: "empty" },
        "No WeavePlan forecasts this ShardSet's splits (or none you may read)."));
    }
    const parts = table("Partitions most likely to split", ["Partition", "Shard", "Size", "Load", "P(split)",
      "Predicted"], (w.partitions || []).map((p) => [jsonText(p.id), jsonText(p.shard), fmtBytes(p.bytes),
      fmtNum(p.loadRps, 1) + " /s", fmtNum(p.probability, 2), fmtTime(p.predictedTime)]), "No forecast yet.");
    const reports = (w.whatIf || []).map((r) => {
      const f = r.forecast || {}, place = r.placement || {}, size = f.sizeAtWindowEnd || {};
      return h("div", { class: "whatif" },
        h("p", {}, "Partition " + jsonText(r.partition) + " split at " + (r.splitKey || "—") + ": probability " +
          fmtNum(f.probability, 2) + " by " + fmtTime(f.predictedTime) + "; size at the window's end " +
          fmtBytes(size.point) + " (80%: " + fmtBytes(size.low) + " to " + fmtBytes(size.high) + ")."),
        h("p", {}, "Lower half on shard " + jsonText(place.lowerHalfShard) + ", upper half on shard " +
          jsonText(place.upperHalfShard) + "; " + fmtBytes(r.bytesToMove) + " to move, expected cutover pause " +
          fmtNum(r.expectedCutoverPauseMs, 0) + " ms."),
        table("What-if: partition " + jsonText(r.partition) + " split", ["Shard", "Bytes before", "Bytes after",
          "Load before", "Load after"], (r.shards || []).map((s) => [jsonText(s.shard), fmtBytes(s.bytesBefore),
          fmtBytes(s.bytesAfter), fmtNum(s.loadBefore, 1) + " /s", fmtNum(s.loadAfter, 1) + " /s"]), "No shards."));
    });
    return section("Forecast splits",
      dl([["WeavePlan", w.name || "—"], ["Phase", w.phase || "—"], ["Mode", w.mode || "—"],
        ["Last forecast", fmtTime(w.lastForecastTime)]]),
      parts,
      reports.length ? reports : h("p", { class: "empty" }, "No predicted split above the plan's confidence threshold."),
      table("Splits this plan started", ["Reshard", "Partition", "Split key", "Phase"], (w.splits || []).map((s) => [
        s.reshard || "—", jsonText(s.partition), s.splitKey || "—", s.phase || "—"]), "No splits started."));
  }

  // The MirrorSet a ShardSet belongs to ({namespace, name, role, active}) as a link to its page; "none" when it
  // belongs to none the user may read.
  function mirrorSetLink(m) {
    if (!m || !m.name) return "none";
    return h("span", {}, link(route("ns", m.namespace, "mirrorsets", m.name), m.namespace + "/" + m.name,
      { "aria-label": "MirrorSet " + m.namespace + "/" + m.name }),
    " (" + m.role + (m.active ? ", active" : "") + ")");
  }

  // A health or state as text with a class for its colour: the word carries the meaning, the colour only helps.
  function badge(kind, value) {
    const v = value === null || value === undefined || value === "" ? "unknown" : String(value);
    return h("span", { class: kind + " " + kind + "-" + v.toLowerCase().replace(/[^a-z0-9]+/g, "-") }, v);
  }

  function operationRows(op) {
    return [["Kind", op.kind || "—"], ["Step", badge("step", op.step)], ["Term", jsonText(op.term)],
      ["From", op.from || "—"], ["To", op.to || "—"], ["Reason", op.reason || "—"],
      ["Started", fmtTime(op.startedAt)]];
  }

  function copiesTable(shard) {
    return table("Shard " + jsonText(shard.shard) + ": copies (primary " + (shard.primary || "unknown") + ")",
      ["ShardSet", "Role", "Health", "Replication state", "Applied LSN", "Lag"],
      (shard.copies || []).map((c) => [c.shardSet || "—", c.role,
        h("span", {}, badge("health", c.health), (c.reasons || []).length ? ": " + c.reasons.join("; ") : ""),
        c.state || "—", jsonText(c.appliedLSN),
        c.lagSeconds === null || c.lagSeconds === undefined ? "—" : fmtNum(c.lagSeconds, 2) + " s" +
          (c.lagLSN ? " (" + c.lagLSN + " changes)" : "")]), "No copies reported.");
  }

  // Read-only: a switchover is a CLI/kubectl action (it needs a request annotation the controller handles once).
  function viewMirrorSet(ns, mname) {
    crumbs([["ShardSets", "/"], ["MirrorSet " + ns + "/" + mname, route("ns", ns, "mirrorsets", mname)]]);
    mount("MirrorSet " + ns + "/" + mname, part(async () => {
      const m = await api("GET", "/namespaces/" + enc(ns) + "/mirrorsets/" + enc(mname));
      const memberLink = (key) => {
        const [mns, name] = String(key || "").split("/");
        return name ? link(route("ns", mns, "shardsets", name), key) : jsonText(key);
      };
      const last = m.lastOperation;
      return h("div", {},
        dl([["Term", jsonText(m.term)], ["Active member", m.activeShardSet ? memberLink(m.activeShardSet) : "—"],
          ["Phase", badge("phase", m.phase)], ["Mode", m.mode || "—"],
          ["Members", h("span", {}, (m.members || []).map((k, i) => [i ? ", " : "", memberLink(k),
            i === 0 ? " (source)" : ""]))],
          ["Failovers", jsonText(m.failovers)]]),
        section("Conditions", table("Conditions", ["Type", "Status", "Reason", "Message", "Since"],
          (m.conditions || []).map((c) => [c.type, c.status, c.reason || "", c.message || "",
            c.lastTransitionTime || ""]), "No conditions yet.")),
        section("Copies", (m.shards || []).length ? (m.shards || []).map(copiesTable)
          : h("p", { class: "empty" }, "No shard reported yet.")),
        section("Operation in progress", m.operation ? dl(operationRows(m.operation))
          : h("p", { class: "empty" }, "None.")),
        section("Last operation", last ? dl([["Kind", last.kind || "—"], ["Outcome", badge("outcome", last.outcome)],
          ["Term", jsonText(last.term)], ["From", last.from || "—"], ["To", last.to || "—"],
          ["Writes held", last.heldSeconds === null || last.heldSeconds === undefined ? "—"
            : fmtNum(last.heldSeconds, 1) + " s"],
          ["Started", fmtTime(last.startedAt)], ["Finished", fmtTime(last.finishedAt)],
          ["Message", last.message || "—"]]) : h("p", { class: "empty" }, "None yet.")),
        section("Lost writes", table("Writes an async failover lost", ["Shard", "Old primary", "LSNs", "Count",
          "Confirmed", "Term", "Time"], (m.lostWrites || []).map((w) => [jsonText(w.shard), w.shardSet || "—",
          "after " + jsonText(w.fromLSN) + " up to " + jsonText(w.toLSN), jsonText(w.count),
          badge("confirmed", w.confirmed ? "confirmed" : "not confirmed"), jsonText(w.term), fmtTime(w.time)]),
        "No lost writes.")),
        section("Switching over", h("p", {}, "This page is read-only. To move the primary role run ",
          h("code", {}, "kubectl chronoshard -n " + ns + " mirror switchover " + mname + " --to <member> --wait"),
          " (or ", h("code", {}, "mirror failback " + mname + " --wait"), ") as a user allowed to patch the " +
          "MirrorSet.")));
    }));
  }

  // A Reversion's spec.incident ({id, shard, table}) as a link to its impact.
  function incidentLink(ns, shardset, inc) {
    if (!inc || typeof inc !== "object" || !inc.id || !inc.table || !shardset) return inc ? jsonText(inc) : "—";
    return link(route("ns", ns, "shardsets", shardset, "tables", inc.table, "incidents", String(inc.shard ?? 0),
      inc.id), inc.id + " (table " + inc.table + ", shard " + (inc.shard ?? 0) + ")");
  }

  function progressText(p) {
    if (!p) return "—";
    if (typeof p !== "object") return String(p);
    return p.summary || ["done", "skipped", "conflicts", "remaining"].filter((k) => k in p)
      .map((k) => k + " " + p[k]).join(", ");
  }

  // Windows of every shard merged on their start time: the highest score, the summed rates.
  function mergeWindows(windows) {
    const byStart = new Map();
    for (const w of windows) {
      const row = byStart.get(w.start) || { start: w.start, end: w.end, score: 0, put: 0, del: 0, incident: null,
        shard: w.shard };
      const f = w.features || {};
      row.put += f.put_rate || 0;
      row.del += f.delete_rate || 0;
      if (w.score >= row.score) { row.score = w.score; row.shard = w.shard; }
      if (w.incident && !row.incident) { row.incident = w.incident; row.shard = w.shard; }
      byStart.set(w.start, row);
    }
    return [...byStart.values()].sort((a, b) => a.start - b.start);
  }

  function timeRangeForm(params, onSubmit, labels) {
    const from = h("input", { id: "range-from", name: "from", value: params.get("from") || "", placeholder:
      "RFC 3339 or unix seconds", spellcheck: "false" });
    const to = h("input", { id: "range-to", name: "to", value: params.get("to") || "", placeholder:
      "RFC 3339 or unix seconds (empty: now)", spellcheck: "false" });
    return h("form", { class: "inline", onsubmit: (ev) => { ev.preventDefault(); onSubmit(from.value, to.value); } },
      h("label", { for: "range-from" }, labels[0]), from,
      h("label", { for: "range-to" }, labels[1]), to,
      h("button", { type: "submit" }, labels[2]));
  }

  function toParam(s) {
    const t = parseTime(s);
    return isNaN(t) ? "" : String(t);
  }

  function viewTimeline(ns, name, t, params) {
    const base = route("ns", ns, "shardsets", name, "tables", t);
    crumbs(shardSetCrumbs(ns, name, [["Table " + t + ": timeline", base + "/timeline"]]));
    const form = timeRangeForm(params, (f, to) => { location.hash = "#" + base + "/timeline" + qs({ from: f, to }); },
      ["From", "To", "Show"]);
    mount("Timeline of " + t, form, part(async () => {
      const data = await api("GET", tablePath(ns, name, t) + "/timeline" +
        qs({ from: toParam(params.get("from")), to: toParam(params.get("to")) }));
      const rows = mergeWindows(data.windows || []);
      const incidents = data.incidents || [];
      const chartBox = h("div", { class: "chart", role: "group", "aria-label": "Anomaly score of " + t + " per " +
        "window with the threshold " + fmtNum(data.threshold, 2) + " and " + incidents.length +
        " incident(s) marked; the incidents are listed below." });
      const out = h("div", {}, chartBox,
        h("p", { class: "hint" }, "Click a marked (shaded) window, or reach it with Tab, to open its incident's " +
          "impact."),
        section("Incidents", table("Incidents of " + t, ["Incident", "Shard", "Kind", "From", "To", "Keys", "Bytes",
          "Score", "Identities"], incidents.map((i) => [
          link(base + "/incidents/" + enc(String(i.shard)) + "/" + enc(i.id), i.id,
            { "aria-label": "Impact of incident " + i.id }),
          String(i.shard), i.kind || "—", fmtTime(i.startTime), fmtTime(i.endTime), String(i.keys),
          fmtBytes(i.bytes), fmtNum(i.score), (i.identities || []).map((x) => x || "unknown").join(", ")]),
        "No incidents in this span.")));
      if (rows.length && window.uPlot) {
        // Drawn once the box is in the page (uPlot measures its container).
        requestAnimationFrame(() => drawTimeline(chartBox, rows, incidents, data.threshold, (inc) => {
          location.hash = "#" + base + "/incidents/" + enc(String(inc.shard)) + "/" + enc(inc.id);
        }));
      } else {
        chartBox.append(h("p", { class: "empty" }, "No closed windows in this span yet."));
      }
      return out;
    }));
  }

  // An incident's span on the chart: its own, widened to the windows that carry it (a point is a window's start).
  function incidentSpan(inc, rows) {
    let lo = Number(inc.startTime), hi = Math.max(Number(inc.endTime), lo + 1);
    for (const r of rows) {
      if (r.incident === inc.id) { lo = Math.min(lo, r.start); hi = Math.max(hi, r.end); }
    }
    return [lo, hi];
  }

  function drawTimeline(box, rows, incidents, threshold, open) {
    const xs = rows.map((r) => r.start);
    const width = Math.max(480, box.clientWidth || 900);
    const shade = (u) => {
      const ctx = u.ctx;
      ctx.save();
      ctx.fillStyle = "rgba(200, 40, 40, 0.18)";
      for (const inc of incidents) {
        const [lo, hi] = incidentSpan(inc, rows);
        const x0 = u.valToPos(lo, "x", true), x1 = u.valToPos(hi, "x", true);
        ctx.fillRect(x0, u.bbox.top, Math.max(2, x1 - x0), u.bbox.height);
      }
      ctx.restore();
    };
    // Each shaded incident is also a button over the chart: reachable with Tab, named for screen readers. Added
    // once uPlot has laid itself out (its sizes and scales are set in a deferred commit).
    const marks = (u) => {
      const plotWidth = u.bbox.width / (window.devicePixelRatio || 1);
      for (const inc of incidents) {
        const [lo, hi] = incidentSpan(inc, rows);
        const x0 = Math.max(0, u.valToPos(lo, "x")), x1 = Math.min(plotWidth, u.valToPos(hi, "x"));
        if (!isFinite(x0) || !isFinite(x1) || x1 < 0 || x0 > plotWidth) continue;
        const mark = h("button", { type: "button", class: "mark", "aria-label": "Incident " + inc.id +
          " on the chart", title: "Incident " + inc.id + " (" + (inc.kind || "") + ")", onclick: (ev) => { ev.stopPropagation(); open(inc); } });
        mark.style.left = x0 + "px";
        mark.style.width = Math.max(10, x1 - x0) + "px";
        u.over.append(mark);
      }
    };
    const opts = {
      width, height: 300,
      scales: { x: { time: true }, score: { range: [0, 1] }, rate: {} },
      series: [
        { label: "time (UTC)", value: (u, v) => v === null ? "—" : fmtTime(v) },
        { label: "score", scale: "score", stroke: "#b3261e", width: 2 },
        { label: "threshold", scale: "score", stroke: "#555", dash: [6, 4], width: 1 },
        { label: "puts/s", scale: "rate", stroke: "#1f5fbf", width: 1 },
        { label: "deletes/s", scale: "rate", stroke: "#8a5a00", width: 1 },
      ],
      axes: [{}, { scale: "score", label: "score" }, { scale: "rate", side: 1, label: "changes/s",
        grid: { show: false } }],
      hooks: { drawClear: [shade], ready: [marks] },
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    };
    const data = [xs, rows.map((r) => r.score), rows.map(() => threshold), rows.map((r) => r.put),
      rows.map((r) => r.del)];
    const chart = new uPlot(opts, data, box);
    charts.push(chart);
    chart.over.addEventListener("click", () => {
      const idx = chart.cursor.idx;
      if (idx === null || idx === undefined) return;
      const t = xs[idx];
      const inc = incidents.find((i) => i.id === rows[idx].incident) || incidents.find((i) => {
        const [lo, hi] = incidentSpan(i, rows);
        return t >= lo - 1e-6 && t <= hi + 1e-6;
      });
      if (inc) open(inc);
    });
  }

  function viewIncident(ns, name, t, shard, id) {
    const base = route("ns", ns, "shardsets", name, "tables", t);
    crumbs(shardSetCrumbs(ns, name, [["Table " + t + ": timeline", base + "/timeline"],
      ["Incident " + id, base + "/incidents/" + enc(shard) + "/" + enc(id)]]));
    const path = tablePath(ns, name, t) + "/incidents/" + enc(shard) + "/" + enc(id);
    const keysBody = h("div", {});
    mount("Impact of incident " + id, part(async () => {
      const first = await api("GET", path);
      const inc = Object.assign({}, first.incident || {}, await shadowIncident(ns, name, t, shard, id,
        first.incident || {}));
      const rev = part(async () => {
        const s = await api("GET", ssPath(ns, name));
        const row = (s.anomalies || []).find((a) => a.id === id && String(a.shard) === String(shard));
        if (!row || !row.reversion) return h("p", {}, "No Reversion proposed for this incident.");
        return h("p", {}, "Reversion proposed: ", link(route("ns", ns, "reversions", row.reversion), row.reversion),
          " (" + (row.action || "") + ")");
      });
      const keyTime = (inc.knownGoodTime !== undefined) ? String(inc.knownGoodTime) : "";
      appendKeys(keysBody, first, base, keyTime);
      return h("div", {},
        dl([["Table", t], ["Shard", shard], ["Kind", inc.kind || "—"], ["State", inc.state || "—"],
          ["From", fmtTime(inc.startTime)], ["To", fmtTime(inc.endTime)],
          ["Known-good point", fmtTime(inc.knownGoodTime) + " (LSN " + jsonText(inc.knownGoodLsn) + ")"],
          ["Keys", String(inc.keys ?? "—") + (inc.truncated ? " (more changes than the detector holds: a subset)" : "")],
          ["Bytes", fmtBytes(inc.bytes)], ["Identities", (inc.identities || []).map((x) => x || "unknown").join(", ")],
          ["Score", fmtNum(inc.score)], ["Severity", fmtNum(inc.severity)]]),
        rev,
        h("p", {}, link(base + "/diff" + qs({ from: String(inc.knownGoodTime), to: String(inc.endTime) }),
          "Diff from the known-good point to the incident's end")),
        section("Drivers", table("What made the windows anomalous", ["Feature", "Value", "Usual", "Weight"],
          (inc.drivers || []).map((d) => [d.feature, fmtNum(d.value), fmtNum(d.usual), fmtNum(d.weight, 2)]),
          "No drivers recorded.")),
        section("Keys changed", keysBody));
    }));
  }

  // The shard's own record of the incident (exact times, the known-good LSN, drivers), from the table's timeline
  // around the policy's row; {} when the span no longer holds it.
  async function shadowIncident(ns, name, t, shard, id, row) {
    const lo = parseTime(row.startTime), hi = parseTime(row.endTime);
    try {
      const data = await api("GET", tablePath(ns, name, t) + "/timeline" + qs({
        from: isNaN(lo) ? "" : String(lo - 120), to: isNaN(hi) ? "" : String(hi + 120) }));
      return (data.incidents || []).find((i) => i.id === id && String(i.shard) === String(shard)) || {};
    } catch (e) {
      return {};
    }
  }

  // One page of an incident's keys, and a button for the next page.
  function appendKeys(box, page, base, keyTime) {
    const rows = (page.keys || []).map((k) => [
      link(base + "/keys/" + enc(k.key), k.key, { "aria-label": "History of key " + k.key }),
      keyTime ? link(base + "/keys/" + enc(k.key) + qs({ time: keyTime }), "value before",
        { "aria-label": "Value of " + k.key + " at the known-good point" }) : "—",
      fmtBytes(k.bytes), jsonText(k.firstLsn), jsonText(k.lastLsn), k.beforeLsn === null ? "absent" : jsonText(k.beforeLsn)]);
    const existing = box.querySelector("tbody");
    if (existing) {
      rows.forEach((r) => existing.append(h("tr", {}, r.map((c) => h("td", {}, c)))));
    } else {
      box.append(table("Keys the incident changed", ["Key", "At the known-good point", "Bytes", "First LSN", "Last LSN", "Version before"],
        rows, "No keys."));
    }
    const old = box.querySelector("button.more");
    if (old) old.remove();
    if (page.next) {
      const { parts } = parseHash();
      box.append(h("button", { type: "button", class: "more", onclick: async (ev) => {
        ev.target.disabled = true;
        try {
          const more = await api("GET", tablePath(parts[1], parts[3], parts[5]) + "/incidents/" + enc(parts[7]) +
            "/" + enc(parts[8]) + qs({ after: page.next }));
          appendKeys(box, more, base, keyTime);
        } catch (e) { alertBox(errorText(e)); ev.target.disabled = false; }
      } }, "More keys"));
    }
  }

  function valueBlock(v) {
    const body = v.text !== null && v.text !== undefined
      ? h("pre", { class: "value", "aria-label": "Value as text" }, v.text)
      : h("pre", { class: "value hex", "aria-label": "Value as a hex dump" }, v.hex || "");
    return h("div", { class: "valuebox" },
      dl([["Version", "LSN " + jsonText(v.lsn) + " at " + fmtTime(v.time)], ["Size", fmtBytes(v.size)],
        ["Shown as", v.text !== null && v.text !== undefined ? "text (UTF-8)" : "hex dump (not UTF-8)"]]),
      body,
      v.truncated ? h("p", { class: "note" }, "Truncated: the first 4 KiB are shown.") : null,
      v.download ? h("p", {}, h("a", { href: v.download, download: "" }, "Download the value")) : null);
  }

  function viewKey(ns, name, t, key, params) {
    const base = route("ns", ns, "shardsets", name, "tables", t);
    crumbs(shardSetCrumbs(ns, name, [["Table " + t + ": timeline", base + "/timeline"],
      ["Key " + key, base + "/keys/" + enc(key)]]));
    const keyPath = tablePath(ns, name, t) + "/keys/" + enc(key);
    mount("Key " + key + " in " + t, part(async () => {
      const hist = await api("GET", keyPath + "/history");
      const versions = (hist.versions || []).slice().sort((a, b) => a.time - b.time);
      const valueBox = h("div", { id: "value", "aria-live": "polite" });
      if (!versions.length) return h("p", { class: "empty" }, "This key has no recorded history.");
      const lo = versions[0].time, hi = Math.max(versions[versions.length - 1].time, lo + 1);
      const wanted = parseTime(params.get("time"));
      const start = isNaN(wanted) ? hi : Math.min(Math.max(wanted, lo), hi);
      // Whole milliseconds since the first version: a range input rounds large fractional values, which would put
      // its minimum before the first version's time.
      const span = Math.round((hi - lo) * 1000);
      const toTime = (v) => (Number(v) >= span ? hi : lo + Number(v) / 1000);
      const toSlider = (t0) => String(Math.min(span, Math.max(0, Math.round((t0 - lo) * 1000))));
      const slider = h("input", { type: "range", id: "time-slider", min: "0", max: String(span), step: "1",
        value: toSlider(start), "aria-describedby": "time-readout" });
      const readout = h("output", { id: "time-readout", for: "time-slider" }, fmtTime(start));
      let seq = 0, debounce = null;
      async function show(q) {
        const mine = ++seq;
        valueBox.setAttribute("aria-busy", "true");
        try {
          const v = await api("GET", keyPath + "/value" + qs(q));
          if (mine === seq) valueBox.replaceChildren(valueBlock(v));
        } catch (e) {
          if (mine !== seq) return;
          valueBox.replaceChildren(h("p", { class: e.status === 404 ? "empty" : "error" },
            e.status === 404 ? "The key held no value at that time." : errorText(e)));
        } finally {
          if (mine === seq) valueBox.removeAttribute("aria-busy");
        }
      }
      // The version in effect at a time, from the history itself (asked for by its LSN: exact, whatever the
      // rounding of a time between the shadow, JSON and the slider).
      const versionAt = (t0) => {
        let found = null;
        for (const v of versions) if (v.time <= t0 + 0.0005) found = v; // the slider's millisecond rounding
        return found;
      };
      const showAt = (t0) => {
        const v = versionAt(t0);
        if (!v && versions.length >= 1000) {
          show({ time: String(t0) }); // a long history is cut: its older versions are not in the list
        } else if (!v) {
          ++seq;
          valueBox.replaceChildren(h("p", { class: "empty" }, "The key did not exist yet at that time."));
        } else if (v.op === "delete") {
          ++seq;
          valueBox.replaceChildren(h("p", { class: "empty" }, "The key was deleted at that time (LSN " + v.lsn +
            ", " + fmtTime(v.time) + ")."));
        } else {
          show({ lsn: String(v.lsn) });
        }
      };
      const onMove = () => {
        const t0 = toTime(slider.value);
        readout.textContent = fmtTime(t0);
        slider.setAttribute("aria-valuetext", fmtTime(t0));
        clearTimeout(debounce);
        debounce = setTimeout(() => showAt(t0), 150);
      };
      slider.addEventListener("input", onMove);
      slider.addEventListener("change", onMove);
      slider.setAttribute("aria-valuetext", fmtTime(start));
      showAt(start);
      return h("div", {},
        h("div", { class: "slider" },
          h("label", { for: "time-slider" }, "Value at time"), slider, readout,
          h("p", { class: "hint" }, "Arrow keys move the slider; Page Up/Down move it further. The span is the " +
            "key's history: " + fmtTime(lo) + " to " + fmtTime(hi) + ".")),
        valueBox,
        section("History", table("Versions of " + key + " (oldest first)", ["LSN", "Time", "Operation", "Size",
          "Identity", ""], versions.map((v) => [jsonText(v.lsn), fmtTime(v.time), v.op, fmtBytes(v.size),
          v.identity || "unknown", h("button", { type: "button", "aria-label": "Show version LSN " + v.lsn,
            onclick: () => { slider.value = toSlider(v.time); readout.textContent = fmtTime(v.time);
              slider.setAttribute("aria-valuetext", fmtTime(v.time)); show({ lsn: String(v.lsn) }); } },
          "Show")]))));
    }));
  }

  function viewDiff(ns, name, t, params) {
    const base = route("ns", ns, "shardsets", name, "tables", t);
    crumbs(shardSetCrumbs(ns, name, [["Table " + t + ": diff", base + "/diff"]]));
    const form = timeRangeForm(params, (f, to) => { location.hash = "#" + base + "/diff" + qs({ from: f, to }); },
      ["From", "To", "Compare"]);
    const from = toParam(params.get("from"));
    mount("Diff of " + t, form, from === "" ? h("p", { class: "hint" }, "Choose the two times to compare.") :
      part(async () => {
        const data = await api("GET", tablePath(ns, name, t) + "/diff" + qs({ from, to: toParam(params.get("to")) }));
        return table("Keys created, changed or deleted between " + fmtTime(from) + " and " +
          (params.get("to") ? fmtTime(toParam(params.get("to"))) : "now"),
        ["Key", "Change", "Size before", "Size after", "LSN before", "LSN after", "Shard"],
        (data.entries || []).map((e) => [link(base + "/keys/" + enc(e.key) + qs({ time: from }), e.key),
          e.change, fmtBytes(e.sizeBefore), fmtBytes(e.sizeAfter), jsonText(e.lsnBefore), jsonText(e.lsnAfter),
          jsonText(e.shard)]), "No differences.");
      }));
  }

  function viewState(ns, name, t, params) {
    const base = route("ns", ns, "shardsets", name, "tables", t);
    crumbs(shardSetCrumbs(ns, name, [["Table " + t + ": state", base + "/state"]]));
    const now = Date.now() / 1000;
    const at = parseTime(params.get("time"));
    const time = h("input", { id: "state-time", value: isNaN(at) ? "" : fmtTime(at), placeholder:
      "RFC 3339 or unix seconds (empty: now)", spellcheck: "false" });
    const slider = h("input", { type: "range", id: "state-slider", min: String(Math.floor(now - 86400)),
      max: String(Math.ceil(now)), step: "1", value: String(isNaN(at) ? Math.ceil(now) : at) });
    slider.addEventListener("input", () => { time.value = fmtTime(Number(slider.value)); });
    const start = h("input", { id: "state-start", value: params.get("start") || "", spellcheck: "false" });
    const end = h("input", { id: "state-end", value: params.get("end") || "", spellcheck: "false" });
    const form = h("form", { class: "inline", onsubmit: (ev) => {
      ev.preventDefault();
      location.hash = "#" + base + "/state" + qs({ time: toParam(time.value), start: start.value, end: end.value });
    } },
    h("label", { for: "state-time" }, "At time"), time,
    h("label", { for: "state-slider" }, "Last 24 hours"), slider,
    h("label", { for: "state-start" }, "From key"), start,
    h("label", { for: "state-end" }, "Before key"), end,
    h("button", { type: "submit" }, "Show"));
    const body = h("div", {});
    mount("State of " + t + (isNaN(at) ? " now" : " at " + fmtTime(at)), form, body);
    const load = async (after) => {
      const data = await api("GET", tablePath(ns, name, t) + "/state" + qs({ time: isNaN(at) ? "" : String(at),
        start: params.get("start") || "", end: params.get("end") || "", after: after || "", limit: "200" }));
      const rows = (data.entries || []).map((e) => [link(base + "/keys/" + enc(e.key) +
        qs({ time: isNaN(at) ? "" : String(at) }), e.key), jsonText(e.lsn), fmtBytes(e.size), jsonText(e.shard)]);
      const tbody = body.querySelector("tbody");
      if (tbody) rows.forEach((r) => tbody.append(h("tr", {}, r.map((c) => h("td", {}, c)))));
      else body.append(table("Keys and their versions", ["Key", "LSN", "Size", "Shard"], rows, "No keys."));
      const old = body.querySelector("button.more");
      if (old) old.remove();
      if (data.next) body.append(h("button", { type: "button", class: "more", onclick: () => load(data.next) },
        "More keys"));
    };
    body.append(part(async () => { await load(null); return h("span", {}); }));
  }

  function viewReversion(ns, rname) {
    crumbs([["ShardSets", "/"], ["Reversion " + ns + "/" + rname, route("ns", ns, "reversions", rname)]]);
    const box = h("div", {});
    mount("Reversion " + rname, box);
    const path = "/namespaces/" + enc(ns) + "/reversions/" + enc(rname);
    const draw = (r) => {
      const plan = r.plan || {};
      const spec = r.spec || {};
      const ref = spec.shardSetRef && spec.shardSetRef.name;
      const approve = r.canApprove ? h("button", { type: "button", id: "approve", class: "primary",
        onclick: async (ev) => {
          ev.target.disabled = true;
          status("Approving…");
          try {
            const after = await api("POST", path + "/approve", { digest: r.digest });
            status("Approved: the Reversion runs.");
            draw(after);
            poll();
          } catch (e) {
            ev.target.disabled = false;
            status("");
            alertBox(e.status === 409 ? "The plan changed since it was shown (its digest is no longer the " +
              "current one): review it again." : errorText(e));
            load();
          }
        } }, "Approve this plan") : null;
      box.replaceChildren(
        dl([["Phase", h("span", { id: "phase", class: "phase phase-" + String(r.phase).toLowerCase() },
          r.phase || "—")],
        ["ShardSet", ref ? link(route("ns", ns, "shardsets", ref), ns + "/" + ref) : "—"],
        ["Point in time", jsonText(spec.pointInTime)],
        ["Incident", incidentLink(ns, ref, spec.incident)],
        ["Tables", (spec.tables || []).join(", ") || "all"],
        ["Digest", h("code", { id: "digest", class: "digest" }, r.digest || "—")],
        ["Progress", h("span", { id: "progress" }, progressText(r.progress))]]),
        section("Plan", dl([["Restore", jsonText(plan.restore)], ["Create", jsonText(plan.create)],
          ["Delete", jsonText(plan.delete)], "keys" in plan ? ["Keys", jsonText(plan.keys)] : null,
          ["Bytes", fmtBytes(plan.bytes)], ["Conflicts (left as they are)", jsonText(plan.conflicts)],
          plan.point ? ["Point", typeof plan.point === "object" ? "LSN " + jsonText(plan.point.lsn) + " at " +
            fmtTime(plan.point.time) : jsonText(plan.point)] : null])),
        section("Approval", r.phase === "AwaitingApproval"
          ? (approve ? h("div", {}, h("p", {}, "Approving writes this digest into the Reversion's spec.approve " +
            "(as kubectl chronoshard approve does); the plan then runs."), approve)
            : h("p", { id: "no-approve" }, "You may not approve this Reversion (Kubernetes RBAC: patch reversions)."))
          : h("p", {}, "Nothing to approve in phase " + (r.phase || "unknown") + ".")),
        section("Conditions", table("Conditions", ["Type", "Status", "Reason", "Message", "Since"],
          (r.conditions || []).map((c) => [c.type, c.status, c.reason || "", c.message || "",
            c.lastTransitionTime || ""]), "No conditions yet.")));
      return r;
    };
    let shown = null; // redraw only on a change: a redraw would take the keyboard focus off the Approve button
    const load = async () => {
      try {
        const r = await api("GET", path);
        const sig = JSON.stringify(r);
        if (sig !== shown) { shown = sig; draw(r); }
        return r;
      } catch (e) {
        shown = null;
        box.replaceChildren(h("p", { class: "error", role: "alert" }, errorText(e)));
        return null;
      }
    };
    // Planning and Running move on their own: refresh until the phase settles.
    const poll = () => {
      stopTimer();
      timer = setTimeout(async () => {
        const r = await load();
        if (r && (r.phase === "Planning" || r.phase === "Running" || r.phase === "AwaitingApproval")) poll();
      }, 2000);
    };
    load().then((r) => { if (r) poll(); });
  }

  // ---- start ---------------------------------------------------------------------------------------------------

  document.getElementById("signin-form").addEventListener("submit", signIn);
  document.getElementById("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", render);
  loadSession();
})();
