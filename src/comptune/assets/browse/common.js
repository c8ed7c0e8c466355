// Helpers shared by the pages: escaping, number formats, loading a data script from disk
// (file:// pages cannot fetch JSON, but they can load a <script>).
"use strict";
function esc(s) {
  return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function fmt(x, digits) {
  if (x === null || x === undefined) return "–";
  if (x !== 0 && Math.abs(x) < 0.001) return x.toExponential(1);
  return x.toFixed(digits === undefined ? 3 : digits);
}
function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = src; s.onload = resolve;
    s.onerror = () => reject(new Error("could not load " + src));
    document.head.appendChild(s);
  });
}
function param(name) { return new URLSearchParams(window.location.search).get(name); }
function unitHref(basis, key) { return "unit.html?basis=" + encodeURIComponent(basis) + "&key=" + encodeURIComponent(key); }
function showError(msg) {
  const main = document.querySelector("main");
  main.innerHTML = '<p class="error">' + esc(msg) + "</p>";
}
function tokenText(id) {
  const t = window.VOCAB[id];
  return t === undefined ? "�" : t.replace(/\n/g, "⏎").replace(/\t/g, "⇥");
}
function header(title) {
  const site = window.SITE;
  document.title = title + " · " + site.title;
  document.querySelector("header").innerHTML =
    '<h1><a href="index.html">' + esc(site.title) + "</a></h1>" +
    '<span class="meta">' + esc(site.subtitle) + "</span>" +
    (site.edits.length ? '<span class="meta">edits: ' + site.edits.map(e =>
      '<a href="edit.html?id=' + e.id + '">' + esc(e.name) + "</a>").join(", ") + "</span>" : "");
}
