// The index: every unit in one table, sorted, filtered and paged in the browser.
"use strict";
(function () {
  const site = window.SITE, index = window.INDEX;
  document.querySelector("main").innerHTML = `
  <div class="controls">
    <input id="filter" type="search" placeholder="search key or label, e.g. down_proj:69 or German">
    <label>module <select id="module"><option value="">all modules</option></select></label>
    <label>dataset column <select id="dataset"></select></label>
    <label>rows per page <select id="pagesize"><option>50</option><option selected>100</option><option>500</option></select></label>
    <span id="count" class="muted"></span>
  </div>
  <div class="pager"><button id="prev">◀ previous</button><span id="page"></span><button id="next">next ▶</button></div>
  <table id="units"><thead></thead><tbody></tbody></table>
  <p class="legend" id="legend"></p>`;
  header("all " + index.rows.length + " units");
  const datasets = index.datasets;
  const short = datasets.map(d => site.languages[d] || d);
  const state = {sort: 3, desc: true, page: 0, filter: "", module: "", dataset: 0};
  // columns: [title, accessor (null: not sortable), numeric]
  const columns = [
    ["key", r => r[0], false], ["module", r => r[1], false], ["layer", r => r[2], true],
    ["firing freq", r => r[3], true], ["max " + site.score_name, r => r[4], true],
    [() => "mean " + site.score_name + " " + datasets[state.dataset], r => r[5][state.dataset], true],
    [() => "mean " + site.score_name + " per dataset: " + short.join(" "), null, false],
    ["label", r => r[6], false],
  ];
  const title = c => typeof c[0] === "function" ? c[0]() : c[0];
  const maxMean = datasets.map((d, i) => Math.max(1e-9, ...index.rows.map(r => r[5][i])));
  const modules = [...new Set(index.rows.map(r => r[1]))];
  const sel = document.getElementById("module");
  modules.forEach(m => { const o = document.createElement("option"); o.value = m; o.textContent = m; sel.appendChild(o); });
  const thead = document.querySelector("#units thead");
  const dsel = document.getElementById("dataset");
  datasets.forEach((d, i) => { const o = document.createElement("option"); o.value = i; o.textContent = d; dsel.appendChild(o); });
  dsel.addEventListener("change", e => { state.dataset = +e.target.value; render(); });
  thead.innerHTML = "<tr>" + columns.map((c, i) => "<th" + (c[1] ? ' class="sortable"' : "") + ' data-col="' + i + '"></th>').join("") + "</tr>";
  thead.querySelectorAll("th.sortable").forEach(th => th.addEventListener("click", () => {
    const col = +th.dataset.col;
    state.desc = state.sort === col ? !state.desc : columns[col][2];
    state.sort = col; state.page = 0; render();
  }));
  document.getElementById("filter").addEventListener("input", e => { state.filter = e.target.value.toLowerCase(); state.page = 0; render(); });
  sel.addEventListener("change", e => { state.module = e.target.value; state.page = 0; render(); });
  document.getElementById("pagesize").addEventListener("change", () => { state.page = 0; render(); });
  document.getElementById("prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); render(); });
  document.getElementById("next").addEventListener("click", () => { state.page += 1; render(); });
  document.getElementById("legend").textContent = "firing: " + site.score_name + " > " + site.threshold +
    ". Bars: mean " + site.score_name + " on each dataset (" + datasets.join(", ") + "), each scaled to that dataset's largest; hover for the value. Click a column to sort; click a key for its page.";

  function visible() {
    const f = state.filter;
    let rows = index.rows.filter(r => (!state.module || r[1] === state.module) &&
      (!f || r[0].toLowerCase().includes(f) || r[6].toLowerCase().includes(f)));
    const get = columns[state.sort][1], sign = state.desc ? -1 : 1;
    return rows.sort((a, b) => { const x = get(a), y = get(b); return x < y ? -sign : x > y ? sign : 0; });
  }
  function render() {
    const rows = visible();
    const size = +document.getElementById("pagesize").value;
    const pages = Math.max(1, Math.ceil(rows.length / size));
    state.page = Math.min(state.page, pages - 1);
    const shown = rows.slice(state.page * size, (state.page + 1) * size);
    document.getElementById("count").textContent = rows.length + " of " + index.rows.length + " units";
    document.getElementById("page").textContent = "page " + (state.page + 1) + " of " + pages;
    thead.querySelectorAll("th").forEach(th => {
      th.textContent = title(columns[+th.dataset.col]);
      th.classList.toggle("sorted-asc", +th.dataset.col === state.sort && !state.desc);
      th.classList.toggle("sorted-desc", +th.dataset.col === state.sort && state.desc);
    });
    document.querySelector("#units tbody").innerHTML = shown.map(r =>
      "<tr><td class=\"key\"><a href=\"" + unitHref(site.basis, r[0]) + "\">" + esc(r[0]) + "</a></td>" +
      "<td>" + esc(r[1]) + "</td><td class=\"num\">" + (r[2] === null ? "" : r[2]) + "</td>" +
      "<td class=\"num\">" + fmt(r[3]) + "</td><td class=\"num\">" + fmt(r[4], 2) + "</td>" +
      "<td class=\"num\">" + fmt(r[5][state.dataset]) + "</td><td class=\"spark\">" + r[5].map((v, i) =>
        "<span class=\"vbar\" title=\"" + esc(datasets[i]) + ": " + fmt(v) + "\" style=\"height:" + (1 + 17 * v / maxMean[i]).toFixed(1) + "px\"></span>").join("") + "</td>" +
      "<td class=\"label" + (r[6].startsWith("inactive") ? " inactive" : "") + "\">" + esc(r[6]) + "</td></tr>").join("");
  }
  render();
})();
