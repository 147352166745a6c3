/* segedge browser client (served by the edge at /segedge.js; no dependencies, no build step).
 * - subscribes to /user/segments/stream (Server-Sent Events), or polls /user/segments with ETag
 *   where EventSource is missing;
 * - on a change, re-fetches every [data-seg-slot] element from /user/slots/<name> and swaps it in
 *   place, then dispatches a "segedge:change" DOM event with the new segments;
 * - segedge.track(type, props) posts an event to the edge's beacon (sendBeacon where available).
 */
(function (w, d) {
  "use strict";
  var state = { segments: null, version: -1, ruleset: -1 };
  var seq = 0;

  function refreshSlots() {
    var els = d.querySelectorAll("[data-seg-slot]");
    Array.prototype.forEach.call(els, function (el) {
      var name = el.getAttribute("data-seg-slot");
      if (!el.hasAttribute("data-seg-default")) el.setAttribute("data-seg-default", el.innerHTML);
      fetch("/user/slots/" + encodeURIComponent(name), { credentials: "same-origin" }).then(function (r) {
        if (r.status === 204) { el.innerHTML = el.getAttribute("data-seg-default"); return; }
        if (r.ok) return r.text().then(function (html) { el.innerHTML = html; });
      }).catch(function () {});
    });
  }

  function apply(msg) {
    if (msg.version === state.version && msg.ruleset === state.ruleset && state.segments !== null) return;
    var first = state.segments === null;
    state.segments = msg.segments || [];
    state.version = msg.version;
    state.ruleset = msg.ruleset; // a new ruleset may change the slots' variants for the same segments
    if (!first) refreshSlots();
    d.dispatchEvent(new CustomEvent("segedge:change", { detail: { segments: state.segments, ruleset: msg.ruleset, version: msg.version } }));
  }

  function poll() {
    var etag = null;
    function tick() {
      var h = etag ? { "If-None-Match": etag } : {};
      fetch("/user/segments", { credentials: "same-origin", headers: h }).then(function (r) {
        if (r.status === 200) { etag = r.headers.get("ETag"); return r.json().then(apply); }
      }).catch(function () {}).then(function () { setTimeout(tick, 5000); });
    }
    tick();
  }

  function stream() {
    if (!w.EventSource) return poll();
    var es = new EventSource("/user/segments/stream");
    es.addEventListener("segments", function (e) {
      try { apply(JSON.parse(e.data)); } catch (err) {}
    });
    // EventSource reconnects by itself and sends Last-Event-ID, so no change is missed.
  }

  function track(type, props) {
    var ev = [{ event_id: Date.now().toString(36) + "-" + (seq++) + "-" + Math.random().toString(36).slice(2), type: type, props: props || {} }];
    var body = JSON.stringify(ev);
    if (navigator.sendBeacon && navigator.sendBeacon("/v1/events", new Blob([body], { type: "application/json" }))) return;
    fetch("/v1/events", { method: "POST", credentials: "same-origin", keepalive: true, headers: { "Content-Type": "application/json" }, body: body });
  }

  w.segedge = { track: track, segments: function () { return state.segments; }, refresh: refreshSlots };
  if (d.readyState === "loading") d.addEventListener("DOMContentLoaded", stream); else stream();
})(window, document);
