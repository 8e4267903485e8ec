/* evcharge operator console: load the state once, then follow /api/events.
 *
 * The page keeps one object per point (from /api/console), one Leaflet marker
 * per point and renders one page of the sorted, filtered table. Every event
 * message carries the changed point's new row, so applying it replaces that
 * point's object, restyles its marker and rewrites its table row if shown.
 * EventSource reconnects by itself and sends Last-Event-ID, so the server
 * resumes without a gap. window.evConsole exposes figures for tests.
 */
(function () {
  "use strict";

  var STATES = ["disponivel", "reservado", "carregando", "indisponivel", "offline"];
  var COLOURS = {
    disponivel: "#1a9850", reservado: "#e6a800", carregando: "#2166ac",
    indisponivel: "#d73027", offline: "#8c8c8c"
  };
  var PAGE = 100;
  var SVG_LIMIT = 2000; // above it markers are drawn on a canvas
  var LATEST = 50;

  var points = new Map();
  var markers = new Map();
  var sessions = [];
  var seq = 0;
  var sortKey = "id", sortDir = 1, page = 0, filter = "";
  var order = [];
  var map = null, renderer = null, layer = null;
  var source = null, reloading = false;
  var stats = window.evConsole = {
    applied: 0, latencies: [], log: [], loadedAt: 0, drawnAt: 0, points: 0, errors: [], loads: 0,
    markerState: function (id) { var m = markers.get(id); return m ? m.evState : null; },
    markerCount: function () { return markers.size; }
  };

  function $(id) { return document.getElementById(id); }
  function text(tag, value, cls) {
    var el = document.createElement(tag);
    el.textContent = value == null ? "" : String(value);
    if (cls) el.className = cls;
    return el;
  }
  function ago(iso) {
    if (!iso) return "-";
    var s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }
  function api(path, options) {
    return fetch(path, Object.assign({ credentials: "same-origin" }, options || {}))
      .then(function (r) {
        if (!r.ok) return r.json().catch(function () { return {}; }).then(function (b) {
          throw new Error((b && (b.detail || b.error)) || ("HTTP " + r.status));
        });
        return r.json();
      });
  }

  // --- map ----------------------------------------------------------------------

  function initMap(tiles, count) {
    renderer = count > SVG_LIMIT ? L.canvas({ padding: 0.2 }) : L.svg();
    map = L.map("map", { renderer: renderer, preferCanvas: count > SVG_LIMIT, zoomControl: true });
    if (tiles) {
      L.tileLayer(tiles, { maxZoom: 19, attribution: "map tiles" }).addTo(map);
    }
    map.setView([0, 0], 2);
    // one layer for every marker and one click handler for all of them
    layer = L.featureGroup();
    layer.on("click", function (e) {
      var id = e.layer.evId;
      if (points.has(id)) L.popup().setLatLng(e.layer.getLatLng()).setContent(popup(points.get(id))).openOn(map);
    });
    var legend = $("legend");
    STATES.forEach(function (s) {
      var item = document.createElement("span");
      var dot = document.createElement("i");
      dot.style.background = COLOURS[s];
      item.appendChild(dot);
      item.appendChild(document.createTextNode(s));
      legend.appendChild(item);
    });
  }

  function markerStyle(p) {
    var colour = COLOURS[p.estado] || COLOURS.offline;
    return { radius: 7, color: p.fora_de_servico ? "#000" : colour, weight: p.fora_de_servico ? 3 : 1,
             fillColor: colour, fillOpacity: 0.85 };
  }

  function placeMarker(p) {
    var m = markers.get(p.id);
    if (!m) {
      m = L.circleMarker([p.latitude, p.longitude], Object.assign({ renderer: renderer }, markerStyle(p)));
      m.evId = p.id;
      layer.addLayer(m);
      markers.set(p.id, m);
    } else {
      m.setLatLng([p.latitude, p.longitude]);
      m.setStyle(markerStyle(p));
    }
    tagMarker(m, p);
  }

  function tagMarker(m, p) {
    m.evState = p.estado + (p.fora_de_servico ? " out-of-service" : "");
    var el = m.getElement && m.getElement(); // SVG markers only, once on the map
    if (el) {
      el.setAttribute("class", "leaflet-interactive marker st-" + p.estado + (p.fora_de_servico ? " oos" : ""));
      el.setAttribute("data-point", p.id);
    }
  }

  function popup(p) {
    var box = document.createElement("div");
    box.appendChild(text("b", p.id));
    box.appendChild(text("div", p.estado + (p.fora_de_servico ? " (out of service: " + (p.reason || "") + ")" : "")));
    box.appendChild(text("div", "queue " + p.queue_size + (p.vehicle_id ? ", charging " + p.vehicle_id : "")));
    return box;
  }

  function fitMap() {
    var ll = [];
    points.forEach(function (p) { ll.push([p.latitude, p.longitude]); });
    if (ll.length) map.fitBounds(L.latLngBounds(ll).pad(0.1), { maxZoom: 14 });
  }

  // --- table --------------------------------------------------------------------

  function sortValue(p, key) {
    var v = p[key];
    if (key === "queue") return (v || []).join(",");
    if (key === "estado") return STATES.indexOf(v);
    if (typeof v === "boolean") return v ? 1 : 0;
    return v == null ? "" : v;
  }

  function matches(p) {
    if (!filter) return true;
    return p.id.toLowerCase().indexOf(filter) >= 0 || p.estado.indexOf(filter) >= 0 ||
      (p.vehicle_id || "").toLowerCase().indexOf(filter) >= 0 ||
      (p.queue || []).join(" ").toLowerCase().indexOf(filter) >= 0;
  }

  function resort() {
    order = [];
    points.forEach(function (p) { if (matches(p)) order.push(p); });
    order.sort(function (a, b) {
      var x = sortValue(a, sortKey), y = sortValue(b, sortKey);
      if (x < y) return -sortDir;
      if (x > y) return sortDir;
      return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
    });
    order = order.map(function (p) { return p.id; });
    var pages = Math.max(1, Math.ceil(order.length / PAGE));
    page = Math.min(page, pages - 1);
    $("page").textContent = (page + 1) + "/" + pages;
    document.querySelectorAll("#points th").forEach(function (th) {
      th.classList.toggle("sorted-asc", th.dataset.key === sortKey && sortDir === 1);
      th.classList.toggle("sorted-desc", th.dataset.key === sortKey && sortDir === -1);
    });
    renderTable();
  }

  function renderTable() {
    var body = document.querySelector("#points tbody");
    var rows = document.createDocumentFragment();
    order.slice(page * PAGE, page * PAGE + PAGE).forEach(function (id) {
      rows.appendChild(row(points.get(id)));
    });
    body.replaceChildren(rows);
  }

  function row(p) {
    var tr = document.createElement("tr");
    tr.dataset.point = p.id;
    fillRow(tr, p);
    return tr;
  }

  function tariffText(p) {
    // the point's OCPI tariff in force now (VAT included), or its flat price
    var t = p.tarifa;
    if (!t) return p.preco_kwh == null ? "" : Number(p.preco_kwh).toFixed(2) + "/kWh";
    var parts = [];
    if (t.flat) parts.push(Number(t.flat).toFixed(2) + " start");
    if (t.energy_kwh) parts.push(Number(t.energy_kwh).toFixed(2) + "/kWh");
    if (t.per_minute) parts.push(Number(t.per_minute).toFixed(2) + "/min");
    if (t.parking_per_minute) parts.push(Number(t.parking_per_minute).toFixed(2) + "/min parked");
    return t.id + ": " + (parts.join(" + ") || "free") +
      (t.valid_until ? " until " + String(t.valid_until).slice(11, 16) : "");
  }

  function fillRow(tr, p) {
    var state = text("span", p.estado, "st st-" + p.estado);
    var cells = [
      text("td", p.id),
      document.createElement("td"),
      text("td", p.queue_size, "num"),
      text("td", (p.queue || []).join(", ")),
      text("td", p.vehicle_id || ""),
      text("td", ago(p.last_heard), "muted"),
      document.createElement("td"),
      text("td", tariffText(p), "muted")
    ];
    cells[1].className = "estado";
    cells[1].appendChild(state);
    var box = document.createElement("input");
    box.type = "checkbox";
    box.className = "oos";
    box.checked = !!p.fora_de_servico;
    box.title = p.fora_de_servico ? "out of service: " + (p.reason || "") + " (untick to put back)" : "take out of service";
    box.setAttribute("aria-label", "out of service " + p.id);
    box.addEventListener("change", function () { toggle(p.id, box); });
    cells[6].appendChild(box);
    if (p.fora_de_servico && p.reason) cells[6].appendChild(text("span", " " + p.reason, "muted"));
    tr.replaceChildren.apply(tr, cells);
    tr.className = "estado-" + p.estado + (p.fora_de_servico ? " oos" : "");
  }

  function toggle(id, box) {
    var available = !box.checked;
    var reason = $("reason").value.trim() || "maintenance";
    box.disabled = true;
    api("/api/points/" + encodeURIComponent(id) + "/availability", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ available: available, reason: available ? "" : reason })
    }).catch(function (err) {
      box.checked = !available;
      stats.errors.push(String(err.message || err));
      alert("Could not change " + id + ": " + (err.message || err));
    }).finally(function () { box.disabled = false; });
  }

  function updateRow(p) {
    var tr = document.querySelector('#points tr[data-point="' + CSS.escape(p.id) + '"]');
    if (tr) {
      fillRow(tr, p);
      if (tr.animate) tr.animate([{ background: "#fff3bf" }, { background: "transparent" }], 900);
    }
  }

  // --- sessions, figures, events ------------------------------------------------

  function renderSessions() {
    var body = document.querySelector("#sessions tbody");
    var rows = document.createDocumentFragment();
    sessions.forEach(function (s) {
      var tr = document.createElement("tr");
      tr.dataset.session = s.session_id;
      [text("td", s.session_id), text("td", s.vehicle_id), text("td", s.point_id),
       text("td", ago(s.started_at), "muted"), text("td", Number(s.energy_kwh).toFixed(3), "num"),
       text("td", s.potencia_kw == null ? "" : (s.aguardando_energia ? "paused" : Number(s.potencia_kw).toFixed(1)),
         s.aguardando_energia ? "num paused" : "num"),
       text("td", s.cost == null ? "" : Number(s.cost).toFixed(2), "num")]
        .forEach(function (td) { tr.appendChild(td); });
      rows.appendChild(tr);
    });
    body.replaceChildren(rows);
  }

  // --- sites: allocated and drawn power against the limit ---------------------------

  function renderSites(list) {
    var box = $("sites");
    var items = document.createDocumentFragment();
    (list || []).forEach(function (site) {
      var div = document.createElement("div");
      div.className = "site";
      div.dataset.site = site.name;
      var limit = site.limit_kw > 0 ? site.limit_kw : 1;
      var head = document.createElement("div");
      head.className = "site-head";
      head.appendChild(text("b", site.name));
      head.appendChild(text("span", Number(site.allocated_kw).toFixed(1) + " kW allocated" +
        (site.drawn_kw == null ? "" : ", " + Number(site.drawn_kw).toFixed(1) + " drawn") +
        " / " + site.limit_kw + " kW limit", "num"));
      var bar = document.createElement("div");
      bar.className = "site-bar";
      bar.title = "allocated (light) and drawn (dark) against the limit (full width)";
      var alloc = document.createElement("div");
      alloc.className = "alloc";
      alloc.style.width = Math.min(100, 100 * site.allocated_kw / limit) + "%";
      bar.appendChild(alloc);
      if (site.drawn_kw != null) {
        var drawn = document.createElement("div");
        drawn.className = "drawn";
        drawn.style.width = Math.min(100, 100 * site.drawn_kw / limit) + "%";
        bar.appendChild(drawn);
      }
      div.appendChild(head);
      div.appendChild(bar);
      div.appendChild(text("div", site.sessions.map(function (x) {
        return x.point_id + " " + (x.kw > 0 ? Number(x.kw).toFixed(1) + " kW" : "paused");
      }).join(" \u00b7 "), "site-sessions"));
      items.appendChild(div);
    });
    box.replaceChildren(items);
  }

  var sitesTimer = null;

  function pollSites() {
    if (sitesTimer) clearInterval(sitesTimer);
    sitesTimer = setInterval(function () {
      api("/api/sites").then(renderSites).catch(function () {});
      api("/api/sessions?active=true").then(function (list) { sessions = list; renderSessions(); })
        .catch(function () {});
    }, 2000);
  }

  var online = 0, outOfService = 0;

  function count(p, sign) {
    if (!p) return;
    if (p.online) online += sign;
    if (p.fora_de_servico) outOfService += sign;
  }

  function renderFigures(st) {
    if (st) {
      $("f-kwh").textContent = st.today.energy_kwh.toFixed(3);
      $("f-revenue").textContent = st.today.revenue.toFixed(2);
      $("f-active").textContent = st.sessions_active;
    }
    $("f-points").textContent = points.size;
    $("f-online").textContent = online;
    $("f-oos").textContent = outOfService;
    $("f-seq").textContent = seq;
  }

  function addEvents(evs) {
    var list = $("events");
    var items = document.createDocumentFragment();
    evs.slice(-LATEST).reverse().forEach(function (ev) {
      items.appendChild(text("li", "#" + ev.seq + " " + new Date(ev.ts * 1000).toISOString().slice(11, 23) +
        " " + ev.topic + " " + Object.keys(ev.data).slice(0, 4).map(function (k) {
          return k + "=" + JSON.stringify(ev.data[k]);
        }).join(" ")));
    });
    list.insertBefore(items, list.firstChild);
    while (list.children.length > LATEST) list.removeChild(list.lastChild);
  }

  // --- loading and following ----------------------------------------------------

  function load(first) {
    var t0 = performance.now();
    return api("/api/console").then(function (view) {
      performance.mark("ev-state-fetched");
      if (first) initMap(view.tiles, view.points.length);
      points.clear();
      view.points.forEach(function (p) { points.set(p.id, p); placeMarker(p); });
      markers.forEach(function (m, id) { if (!points.has(id)) { layer.removeLayer(m); markers.delete(id); } });
      if (first) { // drawn once, at its final view, with every marker in it
        fitMap();
        layer.addTo(map);
        markers.forEach(function (m, id) { tagMarker(m, points.get(id)); });
      }
      sessions = view.sessions;
      seq = view.seq;
      $("events").replaceChildren();
      addEvents(view.latest.slice().reverse());
      online = outOfService = 0;
      points.forEach(function (p) { count(p, 1); });
      performance.mark("ev-markers-placed");
      resort();
      performance.mark("ev-table-drawn");
      renderSessions();
      renderSites(view.sites);
      pollSites();
      renderFigures(view.stats);
      stats.points = points.size;
      stats.loadedAt = performance.now();
      stats.loadMs = stats.loadedAt - t0;
      stats.loads += 1;
      // the frame after this one has painted everything: "drawn", in ms since navigation
      requestAnimationFrame(function () {
        requestAnimationFrame(function () { stats.drawnAt = performance.now(); });
      });
      follow();
    });
  }

  // Messages are parsed as they arrive and drawn once per animation frame: a burst
  // of events costs one layout, and the newest row of a point wins.
  var pending = [], scheduled = false;

  function follow() {
    if (source) source.close();
    source = new EventSource("/api/events?since=" + seq);
    source.onopen = function () { $("f-link").classList.remove("down"); };
    source.onerror = function () { $("f-link").classList.add("down"); };
    source.onmessage = function (msg) {
      if (!msg.data) return;
      pending.push(JSON.parse(msg.data));
      schedule();
    };
    source.addEventListener("sessions", function (msg) {
      sessions = JSON.parse(msg.data).sessions;
      renderSessions();
    });
  }

  function schedule() {
    if (scheduled) return;
    scheduled = true;
    if (document.hidden) setTimeout(draw, 250); else requestAnimationFrame(draw);
  }

  function draw() {
    scheduled = false;
    var began = performance.now();
    var batch = pending;
    pending = [];
    var changed = new Map(), added = false, st = null, applied = [];
    for (var i = 0; i < batch.length; i++) {
      var ev = batch[i];
      if (ev.seq <= seq) continue;
      if (!ev.point && ev.data && (ev.data.point_id || ev.data.id)) {
        reload(); // resumed from history without the console's view: take a fresh state
        return;
      }
      seq = ev.seq;
      if (ev.point) {
        if (!points.has(ev.point.id)) added = true;
        count(points.get(ev.point.id), -1);
        count(ev.point, 1);
        points.set(ev.point.id, ev.point);
        changed.set(ev.point.id, ev.point);
      }
      if (ev.sessions) sessions = ev.sessions;
      if (ev.stats) st = ev.stats;
      applied.push(ev);
    }
    if (!applied.length) return;
    changed.forEach(function (p) { placeMarker(p); if (!added) updateRow(p); });
    if (added) resort();
    if (applied.some(function (ev) { return ev.sessions; })) renderSessions();
    addEvents(applied);
    renderFigures(st);
    // figures for tests and benchmarks: bus event (its publication) -> DOM updated
    var now = Date.now() / 1000, spent = performance.now() - began;
    stats.applied = seq;
    applied.forEach(function (ev) {
      var latency = now - ev.ts;
      stats.latencies.push(latency);
      stats.log.push({ seq: ev.seq, topic: ev.topic, point: ev.point ? ev.point.id : null,
                       estado: ev.point ? ev.point.estado : null, latency: latency,
                       drawMs: spent, batch: applied.length });
    });
    if (stats.latencies.length > 100000) stats.latencies.splice(0, 50000);
    if (stats.log.length > 4000) stats.log.splice(0, 2000);
  }

  function reload() {
    if (reloading) return;
    reloading = true;
    if (source) source.close();
    setTimeout(function () { load(false).finally(function () { reloading = false; }); }, 200);
  }

  // --- controls -----------------------------------------------------------------

  document.querySelectorAll("#points th").forEach(function (th) {
    th.addEventListener("click", function () {
      if (sortKey === th.dataset.key) sortDir = -sortDir; else { sortKey = th.dataset.key; sortDir = 1; }
      resort();
    });
  });
  $("filter").addEventListener("input", function (e) { filter = e.target.value.trim().toLowerCase(); page = 0; resort(); });
  $("prev").addEventListener("click", function () { page = Math.max(0, page - 1); resort(); });
  $("next").addEventListener("click", function () { page += 1; resort(); });
  setInterval(function () { // keep "last heard" and "since" fresh
    document.querySelectorAll("#points tbody tr").forEach(function (tr) {
      var p = points.get(tr.dataset.point);
      if (p) tr.children[5].textContent = ago(p.last_heard);
    });
  }, 5000);

  load(true).catch(function (err) {
    stats.errors.push(String(err.message || err));
    document.body.insertBefore(text("p", "Cannot load the console: " + (err.message || err)), document.body.firstChild);
  });
})();
