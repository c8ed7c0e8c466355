// One edit's page: what it scales, its held-out CE per dataset, base-vs-edited rollouts.
"use strict";
(async function () {
  const site = window.SITE, id = param("id");
  const entry = site.edits.find(e => String(e.id) === id);
  header(entry ? entry.name : "edit");
  if (!entry) return showError("no edit " + id + " in this site; go back to the index");
  try { await loadScript("data/edits/" + entry.id + ".js"); } catch (e) { return showError(e.message); }
  const ed = window.EDIT;
  const parts = ["<h2>" + esc(ed.name) + ' <span class="muted">' + esc(ed.method) + " · " + esc(ed.path) + "</span></h2>"];
  if (ed.scales.length) {
    parts.push('<h3>what it scales</h3><table id="scales"><tr><th>unit</th><th>scale s</th><th>label</th></tr>' + ed.scales.map(s =>
      '<tr><td class="key">' + (s.linked ? '<a href="' + unitHref(ed.basis, s.key) + '">' + esc(s.key) + "</a>" : esc(s.key)) +
      '</td><td class="num">' + fmt(s.scale, 3) + "</td><td>" + esc(s.label || "") + "</td></tr>").join("") + "</table>" +
      (ed.ci_threshold !== null && ed.ci_threshold !== undefined ? '<p class="muted">CI-gated: the scale applies only where the unit\'s CI exceeds ' + ed.ci_threshold + "</p>" : ""));
  } else {
    parts.push("<h3>what it changes</h3><p>" + esc(ed.summary) + "</p>");
  }
  parts.push('<h3>held-out cross-entropy</h3><table id="ce"><tr><th>dataset</th><th>base</th><th>edited</th><th>change</th></tr>' +
    ed.ce.map(r => "<tr><td>" + esc(r.dataset) + '</td><td class="num">' + fmt(r.base) + '</td><td class="num">' + fmt(r.edited) +
      '</td><td class="num">' + (r.change >= 0 ? "+" : "") + fmt(r.change) + "</td></tr>").join("") + "</table>" +
    '<p class="muted">' + esc(ed.ce_note) + "</p>");
  parts.push('<h3>rollouts (greedy)</h3><table id="rollouts"><tr><th>prompt</th><th>base</th><th>edited</th></tr>' + ed.rollouts.map(r =>
    '<tr><td class="continuation">' + esc(r.prompt) + '</td><td class="continuation">' + esc(r.base) + '</td><td class="continuation">' + esc(r.edited) + "</td></tr>").join("") + "</table>");
  document.querySelector("main").innerHTML = parts.join("");
})();
