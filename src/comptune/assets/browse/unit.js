// One unit's page: profile, density, examples, token lists, write vector, dose response, neighbours.
"use strict";
(async function () {
  const site = window.SITE, basis = param("basis") || site.basis, key = param("key");
  header(key || "unit");
  const module = key ? key.slice(0, key.lastIndexOf(":")) : null;
  const file = (site.unit_files[basis] || {})[module];
  if (!file) return showError("no unit " + key + " in the " + basis + " basis of this site; go back to the index");
  try { await loadScript(file); } catch (e) { return showError(e.message); }
  const u = (window.UNITS || {})[basis + "/" + module] && window.UNITS[basis + "/" + module][key];
  if (!u) return showError("no unit " + key + " in " + file);
  const score = basis === site.basis ? site.score_name : "activation";
  const rel = u.activation_max !== undefined ? " (relative to its largest here, " + fmt(u.activation_max) + ")" : "";
  const sections = [];
  sections.push("<h2>" + esc(key) + ' <span class="muted">' + esc(basis) + " basis · " + esc(module) + "</span></h2>" +
    '<p><b>label:</b> <span class="label" id="label">' + esc(u.label) + "</span></p>" +
    (u.autointerp ? '<p><b>LLM label:</b> <span id="autointerp">' + esc(u.autointerp.label) + '</span> <span class="muted">(' +
      esc(u.autointerp.model) + ")</span></p>" : "") +
    '<p class="muted" id="evidence">evidence: ' + esc(u.evidence.rule || "") + " · languages of the " + u.evidence.n_examples + " top examples: " +
    esc(Object.entries(u.evidence.example_languages || {}).map(([l, s]) => l + " " + Math.round(100 * s) + " %").join(", ") || "none") +
    " · mean " + esc(score) + " by language: " + esc(Object.entries(u.evidence.profile).map(([l, v]) => l + " " + fmt(v)).join(", ")) + "</p>");
  // profile
  const maxMean = Math.max(1e-9, ...Object.values(u.profile).map(p => p.mean));
  sections.push('<div class="grid"><div class="card"><h3>where it fires' + esc(rel) + '</h3><table id="profile"><tr><th>dataset</th><th>language</th><th>mean ' +
    esc(score) + "</th><th>firing freq</th><th>max</th></tr>" + Object.entries(u.profile).map(([d, p]) =>
      "<tr><td>" + esc(d) + "</td><td>" + esc(site.languages[d] || "") + '</td><td class="barcell"><span class="bar" style="width:' +
      (60 * p.mean / maxMean).toFixed(1) + 'px"></span>' + fmt(p.mean) + '</td><td class="num">' + fmt(p.freq) +
      '</td><td class="num">' + fmt(p.max, 2) + "</td></tr>").join("") + "</table>" +
    '<p class="muted">firing: ' + esc(score) + " > " + site.threshold + " · overall firing freq " + fmt(u.freq) + "</p></div>" +
    '<div class="card"><h3>' + esc(score) + " density over all positions (log scale)</h3>" + histogram(u.hist) + "</div></div>");
  // examples
  sections.push("<h2>top activating examples per dataset</h2><p class=\"legend\">each token shaded by " + esc(score) +
    " at that token; the outlined token is the example's top position; one example per block</p>" +
    '<div class="grid">' + Object.entries(u.examples).map(([d, exs]) => '<div class="card"><h3>' + esc(d) + "</h3>" +
      exs.map(ex => '<div class="example"><span class="score">' + fmt(ex.score, 2) + "</span>" + ex.ids.map((id, i) =>
        '<span class="tok' + (i === ex.at ? " top" : "") + '" style="background: rgba(240, 138, 36, ' + Math.min(1, ex.scores[i]).toFixed(2) +
        ')" title="' + esc(score) + " " + ex.scores[i] + '">' + esc(tokenText(id)) + "</span>").join("") + "</div>").join("") + "</div>").join("") + "</div>");
  // token statistics and write vector
  const tokList = (rows, val) => rows && rows.length ? '<div class="tokens">' + rows.map(r => '<span class="t" title="' + esc(val(r)) + '">' +
    esc(r.token.replace(/\n/g, "⏎")) + "</span>").join("") + "</div>" : '<p class="muted">none</p>';
  sections.push('<div class="grid"><div class="card"><h3>input tokens (PMI where it fires)</h3>' + tokList(u.input_pmi, r => "PMI " + r.pmi + ", seen " + r.count + "×") +
    "<h3>next tokens (PMI where it fires)</h3>" + tokList(u.output_pmi, r => "PMI " + r.pmi + ", seen " + r.count + "×") + "</div>" +
    '<div class="card"><h3>write vector: promotes</h3>' + (u.write ? tokList(u.write.promoted, r => "logit +" + r.logit) +
      "<h3>write vector: suppresses</h3>" + tokList(u.write.suppressed, r => "logit −" + r.logit) :
      '<p class="muted">this module\'s output does not reach the unembedding directly (attention scores)</p>') + "</div></div>");
  // dose response
  if (u.scan) sections.push('<h2>dose response</h2><div class="card" id="dose">' + doseCurve(u.scan) + "</div>");
  // neighbours and edits
  sections.push('<div class="grid"><div class="card"><h3>fires on the same tokens (same matrix, Jaccard)</h3>' +
    (u.cofiring.length ? "<ul>" + u.cofiring.map(c => '<li><a href="' + unitHref(basis, c.key) + '">' + esc(c.key) + "</a> " + fmt(c.jaccard) + "</li>").join("") + "</ul>"
      : '<p class="muted">none</p>') + "</div>" +
    '<div class="card"><h3>edits that scale it</h3>' + editsOf(basis, key) + "</div></div>");
  document.querySelector("main").innerHTML = sections.join("");

  function histogram(counts) {
    const w = 340, h = 120, n = counts.length, bw = w / n, top = Math.log10(1 + Math.max(...counts));
    return '<svg width="' + (w + 40) + '" height="' + (h + 28) + '">' + counts.map((c, i) => {
      const bh = top > 0 ? h * Math.log10(1 + c) / top : 0;
      return '<rect x="' + (30 + i * bw).toFixed(1) + '" y="' + (h - bh).toFixed(1) + '" width="' + (bw - 1).toFixed(1) + '" height="' + bh.toFixed(1) +
        '" fill="#f08a24"><title>' + (i / n).toFixed(2) + "–" + ((i + 1) / n).toFixed(2) + ": " + c + " positions</title></rect>";
    }).join("") + '<text x="30" y="' + (h + 14) + '">0</text><text x="' + (30 + w - 8) + '" y="' + (h + 14) + '">1</text>' +
      '<text x="' + (30 + w / 2 - 20) + '" y="' + (h + 26) + '">' + esc(score) + "</text></svg>";
  }
  function doseCurve(scan) {
    const pts = scan.curve.filter(p => p.gain !== null);
    const w = 420, h = 220, pad = 40;
    const xmax = Math.max(scan.bound * 2, ...pts.map(p => p.damage)), ymax = Math.max(0.1, ...pts.map(p => p.gain));
    const ymin = Math.min(0, ...pts.map(p => p.gain)), xmin = Math.min(0, ...pts.map(p => p.damage));
    const X = x => pad + (w - pad - 10) * (x - xmin) / (xmax - xmin), Y = y => h - pad + 10 - (h - pad) * (y - ymin) / (ymax - ymin);
    return "<p>hand-set scale s on this unit alone: " + esc(scan.target) + " gain (y) against " + esc(scan.reference) +
      " damage (x), nats. Best within the " + scan.bound + "-nat bound: <b>+" + fmt(scan.best_gain, 2) + "</b> at s = " + fmt(scan.best_s, 2) + ".</p>" +
      '<svg width="' + w + '" height="' + (h + 20) + '"><line x1="' + X(scan.bound) + '" x2="' + X(scan.bound) + '" y1="10" y2="' + (h - pad + 10) +
      '" stroke="#b3261e" stroke-dasharray="4 3"/><line x1="' + pad + '" x2="' + (w - 10) + '" y1="' + Y(0) + '" y2="' + Y(0) + '" stroke="#9aa5b1"/>' +
      pts.map(p => '<circle cx="' + X(p.damage).toFixed(1) + '" cy="' + Y(p.gain).toFixed(1) + '" r="4" fill="' + (p.s < 1 ? "#0b63b6" : "#f08a24") +
        '"><title>s = ' + p.s + ": gain " + fmt(p.gain) + ", damage " + fmt(p.damage) + "</title></circle>").join("") +
      '<text x="' + (w / 2 - 60) + '" y="' + (h + 14) + '">damage on ' + esc(scan.reference) + " (nats)</text>" +
      '<text x="2" y="12">gain on ' + esc(scan.target) + "</text></svg><p class=\"legend\">blue: s &lt; 1 (suppress, invert); orange: s &gt; 1 (amplify); dashed: the damage bound</p>";
  }
  function editsOf(basis, key) {
    const hits = site.edits.filter(e => e.basis === basis && e.keys.includes(key));
    return hits.length ? "<ul>" + hits.map(e => '<li><a href="edit.html?id=' + e.id + '">' + esc(e.name) + "</a></li>").join("") + "</ul>"
      : '<p class="muted">none of this site\'s edits</p>';
  }
})();
