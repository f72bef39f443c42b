// The search page: plain DOM, no framework.  Everything shown comes from users' corpora, so text
// goes in through textContent / Node.append(string) only; links only when they are http(s).
"use strict";
(() => {
  const PAGE_SIZE = 10;
  const SIMILAR_K = 5;
  const SELECT_MAX_VALUES = 30;     // fields with more values get a text box with suggestions
  const RETRIES_503 = 3;            // "still loading" / "overloaded" answers are retried this often
  const RETRY_MAX_SECONDS = 5;
  const RESERVED = new Set(["q", "k", "offset", "min_score", "mode"]);  // API parameters, not fields
  const TITLE = document.title;
  const SIGNALS = { semantic: "meaning", keyword: "words", exact: "exact name" };  // why a result was found
  const MODES = { hybrid: "meaning + words", semantic: "meaning", keyword: "words" };

  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), input = $("q"), statusBox = $("status"), errorBox = $("error");
  const results = $("results"), heading = $("results-heading"), pager = $("pager");
  const prevButton = $("prev-page"), nextButton = $("next-page"), pageLabel = $("page-label");
  const filterControls = $("filter-controls"), modeSelect = $("mode");

  let maxOffset = 1000;     // SEARCH_MAX_OFFSET's default; /info's limits.max_offset when known
  let knownFields = null;   // field names from /info; null until known (then URL params are checked against it)
  let inFlight = null;      // AbortController of the running search
  let lastKey = null;       // query string of the last search that succeeded
  let focusResults = false; // move focus to the results after paging (keyboard users)

  // ---- small helpers ---------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function httpUrl(value) {
    if (typeof value !== "string" || !/^https?:\/\//i.test(value.trim())) return null;
    try {
      const url = new URL(value.trim());
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (_) {
      return null;
    }
  }

  function asText(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  const number = new Intl.NumberFormat();
  const ms = (value) => (typeof value === "number" ? `${value.toFixed(1)} ms` : "?");

  const sleep = (seconds, signal) => new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, seconds * 1000);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
  });

  async function getJSON(url, signal) {
    let response;
    for (let attempt = 0; ; attempt++) {
      try {
        response = await fetch(url, { signal, headers: { Accept: "application/json" } });
      } catch (err) {
        if (err.name === "AbortError") throw err;
        throw new Error("Could not reach the search API. Check the connection and try again.");
      }
      if (response.status !== 503 || attempt >= RETRIES_503) break;
      // the model is still loading (cold start) or too many searches are queued: wait as told
      const wait = Number.parseFloat(response.headers.get("Retry-After") || "1");
      await sleep(Math.min(Number.isFinite(wait) && wait > 0 ? wait : 1, RETRY_MAX_SECONDS), signal);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) { /* not JSON: reported below */ }
    if (!response.ok) {
      const apiMessage = body && body.error && typeof body.error.message === "string" ? body.error.message : null;
      const err = new Error(apiMessage || `The search API answered HTTP ${response.status}.`);
      err.requestId = body && typeof body.request_id === "string" ? body.request_id : null;
      throw err;
    }
    if (body === null) throw new Error("The search API answered with something that is not JSON.");
    return body;
  }

  // ---- state <-> URL ---------------------------------------------------------------------------

  function readState() {
    const params = new URLSearchParams(location.search);
    const offset = Number.parseInt(params.get("offset") || "0", 10);
    const state = {
      q: (params.get("q") || "").trim(),
      mode: params.get("mode") || "",
      offset: Number.isFinite(offset) ? Math.min(Math.max(offset, 0), maxOffset) : 0,
      filters: {},
    };
    for (const [name, value] of params) {
      if (RESERVED.has(name) || value === "" || name in state.filters) continue;
      if (knownFields && !knownFields.includes(name)) continue;  // e.g. utm_* from a shared link
      state.filters[name] = value;
    }
    return state;
  }

  function pageQuery(state) {
    const params = new URLSearchParams();
    if (state.q) params.set("q", state.q);
    for (const [name, value] of Object.entries(state.filters)) params.set(name, value);
    if (state.mode) params.set("mode", state.mode);
    if (state.offset > 0) params.set("offset", String(state.offset));
    return params.toString();
  }

  function apiQuery(state) {
    const params = new URLSearchParams({ q: state.q, k: String(PAGE_SIZE), offset: String(state.offset) });
    for (const [name, value] of Object.entries(state.filters)) params.append(name, value);
    if (state.mode) params.set("mode", state.mode);
    return params.toString();
  }

  function stateFromControls(offset) {
    const filters = {};
    for (const control of filterControls.querySelectorAll("[data-field]")) {
      const value = control.value.trim();
      if (value) filters[control.dataset.field] = value;
    }
    return { q: input.value.trim(), mode: modeSelect.value, offset, filters };
  }

  function showState(state) {
    input.value = state.q;
    modeSelect.value = [...modeSelect.options].some((o) => o.value === state.mode) ? state.mode : "";
    for (const control of filterControls.querySelectorAll("[data-field]")) {
      const value = state.filters[control.dataset.field] || "";
      if (control.tagName === "SELECT" && value && ![...control.options].some((o) => o.value === value)) {
        control.append(el("option", { value }, value));  // a shared link with a value not in the top list
      }
      control.value = value;
    }
  }

  function navigate(state) {
    const query = pageQuery(state);
    if (query === lastKey) return;  // same search already on screen
    if (query !== location.search.replace(/^\?/, "")) history.pushState(null, "", query ? `?${query}` : "./");
    run(state);
  }

  // ---- rendering -------------------------------------------------------------------------------

  function setStatus(text, loading) {
    statusBox.textContent = text;
    statusBox.classList.toggle("loading", Boolean(loading));
    results.setAttribute("aria-busy", loading ? "true" : "false");
  }

  function showError(err) {
    if (!err) {
      errorBox.hidden = true;
      errorBox.replaceChildren();
      return;
    }
    errorBox.replaceChildren(el("strong", null, "Error: "), err.message);
    if (err.requestId) errorBox.append(el("span", { class: "request-id" }, ` (request id ${err.requestId})`));
    errorBox.hidden = false;
  }

  function fieldList(fields) {
    const list = el("dl");
    for (const [name, value] of Object.entries(fields || {})) {
      const text = asText(value);
      if (!text) continue;
      const href = httpUrl(text);
      const shown = href ? el("a", { href, rel: "noopener noreferrer nofollow" }, text) : text;
      list.append(el("dt", null, name), el("dd", { "data-field": name }, shown));
    }
    return list.childElementCount ? list : null;
  }

  function similarPanel(hit, panel, button) {
    const expanded = button.getAttribute("aria-expanded") === "true";
    button.setAttribute("aria-expanded", String(!expanded));
    panel.hidden = expanded;
    if (expanded || panel.dataset.loaded) return;
    panel.dataset.loaded = "1";
    panel.replaceChildren(el("p", { class: "status loading", role: "status" }, "Finding similar items…"));
    getJSON(`items/${encodeURIComponent(hit.id)}/similar?k=${SIMILAR_K}`)
      .then((data) => {
        const items = Array.isArray(data.results) ? data.results : [];
        const list = el("ol");
        for (const item of items) {
          const link = el("a", { href: `?${new URLSearchParams({ q: item.title || item.id })}` }, item.title || item.id);
          list.append(el("li", { class: "similar-item" }, link, " ", el("span", { class: "item-id" }, `(${item.id})`),
            " ", el("span", { class: "score" }, `${Number(item.score).toFixed(3)}`)));
        }
        panel.replaceChildren(el("h4", null, `Similar to ${hit.title || hit.id}`),
          items.length ? list : el("p", null, "No similar items."));
      })
      .catch((err) => {
        delete panel.dataset.loaded;  // try again on the next click
        panel.replaceChildren(el("p", { class: "error", role: "alert" }, `Error: ${err.message}`));
      });
  }

  function descriptionPanel(hit, details) {
    if (!details.open || details.dataset.loaded) return;
    details.dataset.loaded = "1";
    const body = details.querySelector(".description");
    body.textContent = "Loading…";
    getJSON(`items/${encodeURIComponent(hit.id)}`)
      .then((item) => { body.textContent = asText(item.text) || "(no description)"; })
      .catch((err) => { delete details.dataset.loaded; body.textContent = `Error: ${err.message}`; });
  }

  function signals(list) {
    if (!Array.isArray(list) || !list.length) return null;
    const names = list.map((s) => SIGNALS[s] || asText(s));
    return el("span", { class: "signals", title: "what found this result" }, `found by ${names.join(" + ")}`);
  }

  function card(hit, rank) {
    const panelId = `similar-${rank}`;
    const button = el("button", { type: "button", class: "similar-button", "aria-expanded": "false",
      "aria-controls": panelId }, "Similar items");
    const panel = el("div", { id: panelId, class: "similar", hidden: true });
    const details = el("details", { class: "details" }, el("summary", null, "Description"),
      el("p", { class: "description" }));
    button.addEventListener("click", () => similarPanel(hit, panel, button));
    details.addEventListener("toggle", () => descriptionPanel(hit, details));
    return el("li", { class: "card", "data-id": hit.id },
      el("h3", { class: "title" }, hit.title || hit.id),
      el("div", { class: "meta" },
        el("span", { class: "rank" }, `#${rank}`),
        el("span", { class: "item-id" }, hit.id),
        el("span", { class: "score", title: "relevance to the query (higher is closer)" },
          `score ${Number(hit.score).toFixed(3)}`),
        signals(hit.signals)),
      fieldList(hit.fields),
      el("div", { class: "actions" }, button, details),
      panel);
  }

  function render(state, data) {
    const hits = Array.isArray(data.results) ? data.results : [];
    results.replaceChildren(...hits.map((hit, i) => card(hit, state.offset + i + 1)));
    const filtered = Object.keys(state.filters).length > 0;
    if (hits.length) {
      setStatus(`Results ${state.offset + 1}–${state.offset + hits.length} for “${state.q}”`);
    } else if (state.offset > 0) {
      setStatus(`No more results for “${state.q}”.`);
    } else {
      setStatus(`No results for “${state.q}”${filtered ? " with these filters: try clearing them." : "."}`);
    }
    const hasNext = hits.length === PAGE_SIZE && state.offset + PAGE_SIZE <= maxOffset;
    pager.hidden = state.offset === 0 && !hasNext;
    prevButton.disabled = state.offset === 0;
    nextButton.disabled = !hasNext;
    pageLabel.textContent = `Page ${Math.floor(state.offset / PAGE_SIZE) + 1}`;
    const t = data.timing_ms || {};
    const stages = Object.keys(t).filter((name) => name !== "total" && typeof t[name] === "number")
      .map((name) => `${name} ${ms(t[name])}`);
    $("timing").textContent = `Answered in ${ms(t.total)}${stages.length ? ` (${stages.join(", ")})` : ""}.`;
    if (typeof data.note === "string" && data.note) statusBox.append(el("span", { class: "note" }, ` (${data.note})`));
    if (data.index && typeof data.index.count === "number") {
      $("index-info").textContent = `Index ${asText(data.index.version)}: ${number.format(data.index.count)} items.`;
    }
    document.title = `${state.q} – ${TITLE}`;
    if (focusResults) heading.focus();
    focusResults = false;
  }

  function clearResults() {
    results.replaceChildren();
    pager.hidden = true;
    $("timing").textContent = "";
    setStatus(knownFields && knownFields.length ? "Type a query; the filters narrow it down." : "Type a query to search.");
    document.title = TITLE;
  }

  async function run(state) {
    if (inFlight) inFlight.abort();
    inFlight = null;
    showError(null);
    if (!state.q) {
      lastKey = pageQuery(state);
      clearResults();
      return;
    }
    const controller = new AbortController();
    inFlight = controller;
    lastKey = null;
    setStatus(`Searching for “${state.q}”…`, true);
    try {
      const data = await getJSON(`search?${apiQuery(state)}`, controller.signal);
      if (inFlight !== controller) return;
      render(state, data);
      lastKey = pageQuery(state);
    } catch (err) {
      if (err.name === "AbortError" || inFlight !== controller) return;
      results.replaceChildren();
      pager.hidden = true;
      setStatus("");
      showError(err);
    } finally {
      if (inFlight === controller) inFlight = null;
    }
  }

  // ---- filters from /info ----------------------------------------------------------------------

  function valueList(raw) {
    const out = [];
    for (const entry of Array.isArray(raw) ? raw : []) {
      const [value, count] = Array.isArray(entry) ? entry
        : entry && typeof entry === "object" ? [entry.value, entry.count] : [entry, undefined];
      if (value !== null && value !== undefined && String(value) !== "") out.push({ value: String(value), count });
    }
    return out;
  }

  function buildModes(modes) {
    const available = modes && Array.isArray(modes.available) ? modes.available.map(String) : [];
    if (available.length < 2) return;  // nothing to choose
    const byDefault = String(modes.default || "");
    modeSelect.replaceChildren(el("option", { value: "" }, MODES[byDefault] || byDefault || "default"));
    for (const mode of available) {
      if (mode !== byDefault) modeSelect.append(el("option", { value: mode }, MODES[mode] || mode));
    }
    $("mode-filter").hidden = false;
  }

  function buildFilters(info) {
    if (info && info.limits && Number.isInteger(info.limits.max_offset)) maxOffset = info.limits.max_offset;
    buildModes(info && info.modes);
    const index = (info && info.index) || {};
    const fields = (Array.isArray(index.fields) ? index.fields : []).map(String).filter((f) => !RESERVED.has(f));
    const values = index.filters && typeof index.filters === "object" ? index.filters : {};
    knownFields = fields;
    for (const name of fields) {
      const id = `filter-${fields.indexOf(name)}`;
      const options = valueList(values[name]);
      const label = el("label", { for: id }, name);
      const optionText = (o) => (typeof o.count === "number" ? `${o.value} (${number.format(o.count)})` : o.value);
      let control;
      if (options.length && options.length <= SELECT_MAX_VALUES) {
        control = el("select", { id, "data-field": name }, el("option", { value: "" }, `Any ${name}`));
        for (const o of options) control.append(el("option", { value: o.value }, optionText(o)));
      } else {
        const listId = `${id}-values`;
        control = el("input", { id, type: "text", "data-field": name, list: listId, placeholder: `Any ${name}`,
          autocomplete: "off", spellcheck: "false" });
        const datalist = el("datalist", { id: listId });
        for (const o of options) datalist.append(el("option", { value: o.value }, optionText(o)));
        filterControls.append(el("div", { class: "filter" }, label, control, datalist));
        control.addEventListener("change", () => navigate(stateFromControls(0)));
        continue;
      }
      control.addEventListener("change", () => navigate(stateFromControls(0)));
      filterControls.append(el("div", { class: "filter" }, label, control));
    }
    if (info && info.index && typeof info.index.count === "number") {
      const model = info.model && (info.model.name || info.model.source_model);
      $("index-info").textContent = `Index ${asText(info.index.version)}: ${number.format(info.index.count)} items` +
        (model ? `, model ${asText(model)}.` : ".");
    }
  }

  // ---- wiring ----------------------------------------------------------------------------------

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    navigate(stateFromControls(0));
  });
  modeSelect.addEventListener("change", () => navigate(stateFromControls(0)));
  $("clear-filters").addEventListener("click", () => {
    for (const control of filterControls.querySelectorAll("[data-field]")) control.value = "";
    modeSelect.value = "";
    navigate(stateFromControls(0));
  });
  prevButton.addEventListener("click", () => {
    focusResults = true;
    navigate({ ...readState(), offset: Math.max(readState().offset - PAGE_SIZE, 0) });
  });
  nextButton.addEventListener("click", () => {
    focusResults = true;
    navigate({ ...readState(), offset: readState().offset + PAGE_SIZE });
  });
  window.addEventListener("popstate", () => {
    const state = readState();
    showState(state);
    run(state);
  });
  document.addEventListener("keydown", (event) => {
    const typing = event.target.closest && event.target.closest("input, select, textarea, [contenteditable]");
    if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
      event.preventDefault();
      input.focus();
      input.select();
    }
  });

  getJSON("info")
    .then(buildFilters)
    .then(() => { document.documentElement.dataset.info = "loaded"; })
    .catch(() => { knownFields = null; document.documentElement.dataset.info = "unavailable"; })  // search still works
    .finally(() => {
      const state = readState();
      showState(state);
      run(state);
    });
})();
