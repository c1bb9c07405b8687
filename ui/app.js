/*
 * The page for people (/ui): reads the debug endpoints of this origin only, draws the mesh with Cytoscape.js, and
 * fetches again what /debug/events says changed. Read-only. Everything it shows that a client or a user wrote (names,
 * a NACK's error text) is set as text, never as markup.
 */
'use strict';
(() => {
  const TYPES = ['CDS', 'EDS', 'LDS', 'RDS', 'SDS'];
  /** Past this many nodes the graph shows what Retries connect, and what the search finds. */
  const BIG = 400;
  const $ = (sel) => document.querySelector(sel);
  /** An element with attributes and children (strings become text nodes). */
  const el = (tag, attrs = {}, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) if (c !== undefined && c !== null && c !== false) e.append(c instanceof Node ? c : String(c));
    return e;
  };

  // `observed`: /debug/retries, what the sidecars counted per Retry and per Retry edge (null: not known yet).
  const state = { mesh: null, policies: [], routes: [], proxies: [], amp: { paths: [] }, observed: null, observedError: null, query: '', policy: null, proxy: null };
  /** What the tests read: the state, the graph, and counters of loads and renders. */
  const ui = (window.meshUi = { state, cy: null, loads: 0, renders: 0, firstRenderMs: null, observedLoads: 0 });

  /** A debug endpoint's JSON; a 429 (busy) is asked again up to `busyTries` times. */
  async function getJson(path, busyTries = 20) {
    for (let attempt = 0; ; attempt++) {
      const r = await fetch(path, { headers: { accept: 'application/json' } });
      // The debug server answers a few expensive requests at a time: wait and ask again.
      if (r.status === 429 && attempt < busyTries) {
        await new Promise((res) => setTimeout(res, 100 + attempt * 100));
        continue;
      }
      if (!r.ok) {
        // The debug endpoints say what is wrong (`{error}`): shown as it is, else the status.
        const error = await r.json().then((b) => b?.error, () => undefined);
        throw new Error(typeof error === 'string' ? error : `${path}: HTTP ${r.status}`);
      }
      return r.json();
    }
  }

  // ---------------------------------------------------------------- loading, live
  const loading = { mesh: null, proxies: null };
  const dirty = { mesh: false, proxies: false };
  /** Loads one kind; a request for it while it loads runs once more after. */
  function load(kind) {
    if (loading[kind]) {
      dirty[kind] = true;
      return loading[kind];
    }
    loading[kind] = (kind === 'mesh' ? loadMesh() : loadProxies())
      .then(() => setStatus(`live · updated ${new Date().toLocaleTimeString()}`))
      .catch((e) => setStatus(`cannot load: ${e.message}`, true))
      .finally(() => {
        loading[kind] = null;
        if (dirty[kind]) {
          dirty[kind] = false;
          load(kind);
        }
      });
    return loading[kind];
  }

  /** When the first load's steps happened (ms since navigation), for bench:ui. */
  const mark = (name) => (ui.marks[name] ??= Math.round(performance.now()));
  ui.marks = {};

  async function loadMesh() {
    mark('meshAsked');
    const [mesh, policies, amp] = await Promise.all([getJson('/debug/mesh'), getJson('/debug/policies'), getJson('/debug/amplification').catch(() => ({ paths: [] }))]);
    mark('meshIn');
    state.mesh = mesh;
    state.policies = policies.policies;
    // Routes of other controllers only (Gateway parents) are not the mesh's.
    state.routes = (policies.routes ?? []).filter((r) => r.parents.length);
    state.amp = amp;
    ui.loads++;
    renderGraph();
    renderPolicies();
  }

  async function loadProxies() {
    state.proxies = (await getJson('/debug/proxies')).proxies;
    ui.loads++;
    renderProxies();
    if (state.policy) renderPolicyDetail();
  }

  /** Whether a view shows proxies now: the proxies, or a policy's detail (the proxies it reaches). */
  const needProxies = () => !$('#view-proxies').hidden || (!$('#view-policies').hidden && state.policy !== null);
  let lastProxies = 0;
  let proxiesTimer = null;
  function throttledProxies() {
    if (proxiesTimer) return;
    const wait = Math.max(0, lastProxies + 500 - Date.now());
    proxiesTimer = setTimeout(() => {
      proxiesTimer = null;
      lastProxies = Date.now();
      load('proxies');
    }, wait);
  }

  // The sidecars' counters change without a mesh event: asked again every OBSERVED_EVERY_MS, one request at a time (the
  // next asked once the last is in), only while the page is visible and shows them (the mesh or the policies). The
  // debug port answers a few expensive requests at once: a busy answer (429) is not asked again, the next turn is.
  const OBSERVED_EVERY_MS = 5000;
  let observedTimer = null;
  let observing = null;
  const needObserved = () => !document.hidden && (shown('graph') || shown('policies'));
  function pollObserved() {
    clearTimeout(observedTimer);
    observedTimer = null;
    if (observing || !needObserved()) return;
    observing = loadObserved().finally(() => {
      observing = null;
      if (!observedTimer && needObserved()) observedTimer = setTimeout(pollObserved, OBSERVED_EVERY_MS);
    });
  }

  /** /debug/retries with the paths a Retry is in force on (each Retry edge's own numbers). */
  async function loadObserved() {
    try {
      state.observed = await getJson('/debug/retries?paths=retries', 0);
      state.observedError = null;
    } catch (e) {
      // What was shown stays (a busy port, a lost connection: the next turn asks again); the policy view says why.
      state.observedError = e.message;
    }
    const o = state.observed;
    ui.observedByPolicy = new Map((o?.policies ?? []).map((p) => [p.policy, p]));
    ui.observedByEdge = new Map((o?.paths ?? []).filter((p) => p.policy).map((p) => [`retry:${p.policy}>${p.destination}`, p]));
    ui.observedLoads++;
    renderObserved();
  }
  ui.observedByPolicy = new Map();
  ui.observedByEdge = new Map();
  document.addEventListener('visibilitychange', pollObserved);

  function setStatus(text, down = false) {
    const s = $('#status');
    s.textContent = text;
    s.classList.toggle('down', down);
  }

  function live() {
    const events = new EventSource('/debug/events');
    // On (re)connecting everything is fetched: what changed while the feed was down is not known.
    mark('script');
    events.addEventListener('hello', () => mark('hello'));
    // The counters once the mesh is drawn (they label its edges; the graph is not kept waiting for them).
    events.addEventListener('hello', () => Promise.all([load('mesh').then(pollObserved), load('proxies')]));
    events.addEventListener('mesh', () => load('mesh'));
    // The proxies (thousands, changing with every ACK) are fetched while a view shows them, at most twice a second.
    events.addEventListener('proxies', () => {
      if (needProxies()) throttledProxies();
      else stale.proxiesData = true;
    });
    events.onerror = () => setStatus('live feed lost; reconnecting…', true);
  }

  // ---------------------------------------------------------------- the graph
  const svcId = (k) => `svc:${k}`;
  const idId = (k) => `id:${k}`;
  const retryLabel = (p) => {
    const rp = p.retryPolicy;
    if (!rp) return p.state;
    return `${rp.num_retries ?? 1} × ${rp.retry_on ?? ''} · ${p.state}`;
  };

  // ---------------------------------------------------------------- observed
  /** The window the graph and the policies table show; the policy's detail shows them all. */
  const WINDOW = '5m';
  const WINDOWS = { '1m': 'last 1 min', '5m': 'last 5 min', total: 'since' };
  const pct = (x) => (x === null || x === undefined ? '–' : x > 0 && x < 0.01 ? '<1%' : `${Math.round(x * 100)}%`);
  /**
   * What the retries of a Retry (or of one of its edges) did over the window, in two parts (the retries; the requests
   * beside the predicted worst attempts per request): none when not known (the server does not read the sidecars'
   * counters, or the Retry is not in force), "no reports" when no proxy of its source identity reports them.
   */
  function observedParts(policyKey, edgeId) {
    const pol = ui.observedByPolicy.get(policyKey);
    if (!pol) return [];
    const n = (edgeId ? ui.observedByEdge.get(edgeId)?.windows : pol.windows)?.[WINDOW];
    if (!n?.requests) return [pol.proxiesReporting ? 'no requests' : 'no reports'];
    return [
      `retry rate ${pct(n.retryRate)} · ${n.retries ? `${pct(n.retrySuccessRate)} succeed` : 'no retries'} · ${n.retriesRefused} refused`,
      `${n.retriesExhausted} ran out · ${n.attemptsPerRequest} attempts/request (predicted ≤ ${pol.predictedAttemptsPerRequest})${pol.proxiesReporting ? '' : ' · no proxy reports now'}`,
    ];
  }
  const observedText = (policyKey) => observedParts(policyKey).join(' · ');
  /** A Retry edge's label: the policy, and under it what its sidecars counted (short lines: a wide label leaves the picture). */
  const edgeLabel = (d) => [d.base, ...observedParts(d.policy, d.id).map((l, i) => (i === 0 ? `${WINDOWS[WINDOW]}: ${l}` : l))].join('\n');

  /** New numbers: the edges' labels, the policies' column and the open policy's numbers, changed in place. */
  function renderObserved() {
    const set = (e, label) => e.data('label') !== label && e.data('label', label);
    if (ui.cy) ui.cy.batch(() => ui.cy.edges('[kind="retry"]').forEach((e) => set(e, edgeLabel(e.data()))));
    for (const td of document.querySelectorAll('#policies td.observed')) {
      const text = observedText(td.parentElement.dataset.key);
      if (td.textContent !== text) td.textContent = text;
    }
    if (state.policy) renderPolicyObserved();
  }

  /** A Retry with a RetryAmplification warning lies on a call path over the mesh's bound: wrong, so red. */
  const overBound = (p) => (p.warnings ?? []).some((w) => w.condition === 'RetryAmplification');
  /** The mesh's bound (`--max-retry-amplification`), as its RetryAmplification warnings state it; none: no path is over. */
  function amplificationBound() {
    let bound = Infinity;
    for (const p of state.policies) for (const w of p.warnings ?? []) if (w.condition === 'RetryAmplification') bound = Math.min(bound, Number(/bound of (\d+)/.exec(w.message)?.[1] ?? Infinity));
    return bound;
  }
  /** At most `n` names, then how many more. */
  const some = (names, n = 5) => (names.length <= n ? names.join(', ') : `${names.slice(0, n).join(', ')} and ${names.length - n} more`);

  function graphElements() {
    const nodes = new Map();
    const edges = [];
    const node = (id, data) => (nodes.has(id) ? nodes.get(id) : nodes.set(id, { data: { id, ...data } }).get(id));
    // Services and identities are both written namespace/name, as the CLI (--from NS/SA --to NS/SVC) and /debug write them.
    for (const s of state.mesh.services) node(svcId(`${s.namespace}/${s.name}`), { label: `${s.namespace}/${s.name}`, kind: 'service', key: `${s.namespace}/${s.name}` });
    for (const i of state.mesh.identities) node(idId(i), { label: i, kind: 'identity', key: i });
    // Served by: a service to the identities of the pods behind its endpoints.
    const backed = new Set();
    for (const [identity, refs] of Object.entries(state.mesh.backing ?? {})) {
      node(idId(identity), { label: identity, kind: 'identity', key: identity });
      for (const svc of new Set(refs.map((r) => r.service))) {
        backed.add(svc);
        edges.push({ data: { id: `backs:${svc}>${identity}`, source: svcId(svc), target: idId(identity), kind: 'backs' } });
      }
    }
    // A service whose endpoints are no pod the mesh knows (an EndpointSlice without its Pods, as deploy/demo's
    // loopback backends) is served by those endpoints: drawn as such, and said why no identity is.
    const why = { endpointsOnly: [], noEndpoints: [], idle: state.mesh.identities.filter((i) => !state.mesh.backing?.[i]) };
    for (const s of state.mesh.services) {
      const key = `${s.namespace}/${s.name}`;
      if (backed.has(key)) continue;
      const eps = [...new Set(s.ports.flatMap((p) => p.endpoints.map((e) => `${e.ip}:${e.port}`)))];
      if (!eps.length) {
        why.noEndpoints.push(key);
        continue;
      }
      why.endpointsOnly.push(`${key} (${some(eps, 2)})`);
      node(`ep:${key}`, { label: eps.length <= 2 ? eps.join(', ') : `${eps.length} endpoints`, kind: 'endpoints', key: `${key} endpoints` });
      edges.push({ data: { id: `backs:${key}>endpoints`, source: svcId(key), target: `ep:${key}`, kind: 'backs' } });
    }
    ui.servedBy = why;
    // Each Retry: from its source identity to each destination (those it won when accepted, else those it names).
    const hops = new Map();
    state.amp.paths.forEach((path, rank) => {
      for (const h of path.hops) {
        const id = `retry:${h.retry}>${h.to}`;
        const seen = hops.get(id);
        if (!seen || seen.attempts < path.attempts) hops.set(id, { attempts: path.attempts, saturated: Boolean(path.saturated), hop: h.attempts, worst: rank === 0 && path.attempts > 1 });
      }
    });
    for (const p of state.policies) {
      const source = p.source ?? p.declared?.source;
      if (!source) continue;
      const dests = p.state === 'Accepted' ? p.appliesTo : p.declared?.destinations ?? [];
      for (const d of dests) {
        node(idId(source), { label: source, kind: 'identity', key: source });
        node(svcId(d), { label: d, kind: 'service', key: d, missing: true });
        const id = `retry:${p.namespace}/${p.name}>${d}`;
        const amp = hops.get(id);
        const inForce = p.state === 'Accepted' && p.enabled !== false;
        // Red is for what is wrong (not in force, over the amplification bound); the worst path is marked by a halo.
        const status = !inForce ? 'notinforce' : overBound(p) ? 'inforce over' : 'inforce';
        const onPath = amp ? `  (×${amp.hop}; ${amp.worst ? 'worst path' : 'path'}: ${amp.saturated ? '≥' : ''}${amp.attempts} attempts)` : '';
        const data = { id, source: idId(source), target: svcId(d), kind: 'retry', policy: `${p.namespace}/${p.name}`, state: p.state, base: `${retryLabel(p)}${onPath}` };
        data.label = edgeLabel(data);
        edges.push({
          data,
          classes: [status, amp ? (amp.worst ? 'amp worst' : 'amp') : ''].join(' '),
        });
      }
    }
    // A big mesh is drawn as what its Retries connect (and what the search finds, with its neighbours): thousands of
    // nodes at once are neither readable nor quick to draw. The others are counted under the graph.
    if (nodes.size <= BIG) {
      ui.omitted = 0;
      return [...nodes.values(), ...edges];
    }
    const keep = new Set();
    for (const e of edges) if (e.data.kind === 'retry') keep.add(e.data.source).add(e.data.target);
    const q = state.query;
    if (q.length >= 2) {
      for (const n of nodes.values()) if (n.data.label.toLowerCase().includes(q) || n.data.key.toLowerCase().includes(q)) keep.add(n.data.id);
      for (const e of edges) if (keep.has(e.data.source) || keep.has(e.data.target)) keep.add(e.data.source).add(e.data.target);
    }
    ui.omitted = nodes.size - keep.size;
    return [...[...nodes.values()].filter((n) => keep.has(n.data.id)), ...edges.filter((e) => keep.has(e.data.source) && keep.has(e.data.target))];
  }

  const STYLE = [
    // Labels too small to read are not drawn (a mesh of thousands zoomed out to fit): search, then zoom, to read them.
    { selector: 'node', style: { label: 'data(label)', 'min-zoomed-font-size': 7, 'font-size': 11, color: '#111827', 'text-valign': 'bottom', 'text-margin-y': 4, 'text-wrap': 'ellipsis', 'text-max-width': 160, 'border-width': 2 } },
    { selector: 'node[kind="service"]', style: { shape: 'round-rectangle', width: 34, height: 22, 'background-color': '#dbeafe', 'border-color': '#1d4ed8' } },
    { selector: 'node[kind="identity"]', style: { shape: 'ellipse', width: 24, height: 24, 'background-color': '#fef3c7', 'border-color': '#92400e' } },
    { selector: 'node[?missing]', style: { 'border-style': 'dashed', 'background-color': '#f3f4f6' } },
    { selector: 'node[kind="endpoints"]', style: { shape: 'rectangle', width: 16, height: 16, 'background-color': '#f3f4f6', 'border-color': '#6b7280', color: '#374151', 'font-size': 10 } },
    { selector: 'edge', style: { 'curve-style': 'bezier', 'target-arrow-shape': 'triangle', width: 1.5, 'arrow-scale': 0.9 } },
    { selector: 'edge[kind="backs"]', style: { 'line-style': 'dashed', 'line-color': '#6b7280', 'target-arrow-color': '#6b7280', width: 1 } },
    { selector: 'edge[kind="retry"]', style: { label: 'data(label)', 'text-wrap': 'wrap', 'min-zoomed-font-size': 7, 'text-margin-y': -8, 'font-size': 10, color: '#14532d', 'text-background-color': '#ffffff', 'text-background-opacity': 0.9, 'text-background-padding': 2, 'line-color': '#166534', 'target-arrow-color': '#166534', width: 3 } },
    { selector: 'edge.notinforce', style: { 'line-style': 'dashed', 'line-color': '#991b1b', 'target-arrow-color': '#991b1b', color: '#991b1b' } },
    { selector: 'edge.over', style: { 'line-color': '#991b1b', 'target-arrow-color': '#991b1b', color: '#991b1b' } },
    // The call paths listed above the graph: wider; the worst one also haloed (its colour stays what its state says).
    { selector: 'edge.amp', style: { width: 5 } },
    { selector: 'edge.worst', style: { width: 6, 'font-weight': 'bold', 'underlay-color': '#2563eb', 'underlay-opacity': 0.3, 'underlay-padding': 6 } },
    // A big mesh: cheaper edges (drawn straight; "served by" as haystack lines, without arrows).
    { selector: 'edge.big', style: { 'curve-style': 'straight' } },
    { selector: 'edge.big[kind="backs"]', style: { 'curve-style': 'haystack', 'haystack-radius': 0, 'line-style': 'solid', 'line-color': '#9ca3af' } },
    { selector: '.match', style: { 'border-color': '#7c3aed', 'border-width': 5 } },
    { selector: '.faded', style: { opacity: 0.2 } },
    { selector: ':selected', style: { 'border-color': '#7c3aed', 'border-width': 5, 'line-color': '#7c3aed', 'target-arrow-color': '#7c3aed' } },
  ];

  function renderGraph() {
    const started = performance.now();
    const elements = graphElements();
    const big = elements.length > 1000;
    if (big) for (const e of elements) if (e.data.source) e.classes = `${e.classes ?? ''} big`;
    const built = performance.now();
    const nodeIds = elements.filter((e) => !e.data.source).map((e) => e.data.id).sort().join('\n');
    if (!ui.cy) {
      ui.cy = cytoscape({ container: $('#graph'), elements, style: STYLE, minZoom: 0.05, maxZoom: 3, hideEdgesOnViewport: elements.length > 2000, textureOnViewport: elements.length > 2000, pixelRatio: 1 });
      ui.cy.on('tap', 'edge[kind="retry"]', (ev) => openPolicy(ev.target.data('policy')));
      ui.cy.on('tap', 'node', (ev) => {
        $('#search').value = ev.target.data('key');
        search(ev.target.data('key'));
      });
      layout(elements);
    } else {
      // Positions kept where the nodes are the same, so that a live change does not move the picture.
      const positions = new Map(ui.cy.nodes().map((n) => [n.id(), { ...n.position() }]));
      ui.cy.batch(() => {
        ui.cy.elements().remove();
        ui.cy.add(elements);
      });
      if (nodeIds === ui.nodeIds) ui.cy.nodes().forEach((n) => positions.has(n.id()) && n.position(positions.get(n.id())));
      else layout(elements);
    }
    ui.nodeIds = nodeIds;
    $('#omitted').textContent = ui.omitted
      ? `Drawn: the services and identities that Retries connect${state.query ? ', and what the search finds' : ''}. ${ui.omitted} more without a Retry are not drawn: search to draw one.`
      : '';
    renderServedBy();
    renderPaths();
    applySearch();
    ui.renders++;
    if (ui.firstRenderMs === null) {
      // Drawn: the frame after the graph was made (Cytoscape paints on animation frames).
      requestAnimationFrame(() => requestAnimationFrame(() => mark('drawn')));
      ui.firstRenderMs = performance.now() - started;
      ui.firstRenderParts = { elementsMs: built - started, cytoscapeMs: performance.now() - built };
    }
  }

  function layout(elements) {
    const n = elements.filter((e) => !e.data.source).length;
    // A layered picture while it is readable; a grid beyond (a force layout of thousands of nodes takes seconds).
    const opts = n <= 300 ? { name: 'breadthfirst', directed: true, spacingFactor: 1.6, padding: 20 } : { name: 'grid', avoidOverlap: false, nodeDimensionsIncludeLabels: false, condense: true, padding: 10 };
    ui.cy.layout({ ...opts, animate: false }).run();
  }

  /** Why a service has no `served by` identity, or an identity serves nothing: said under the graph. */
  function renderServedBy() {
    const { endpointsOnly, noEndpoints, idle } = ui.servedBy;
    const lines = [];
    if (endpointsOnly.length)
      lines.push(
        `Served by endpoints, identity unknown: ${some(endpointsOnly)}. Their endpoints are no pod the mesh knows (an EndpointSlice without its Pods, as deploy/demo's loopback backends), so the grey square shows the endpoints, not an identity.`,
      );
    if (noEndpoints.length) lines.push(`No ready endpoints: ${some(noEndpoints)}.`);
    if (idle.length) {
      const [it, its] = idle.length === 1 ? ['it', 'its'] : ['them', 'their'];
      lines.push(`Serving no service: ${some(idle)} (no pod behind a service's endpoints is known to run as ${it}; a Retry from ${it} still applies to ${its} proxies).`);
    }
    $('#servedby').replaceChildren(...lines.map((l) => el('span', { class: 'note' }, l)));
  }

  function renderPaths() {
    const box = $('#paths');
    box.replaceChildren();
    const paths = state.amp.paths.filter((p) => p.attempts > 1).slice(0, 5);
    if (!paths.length) return box.append(el('p', {}, 'No call path of Retries in force multiplies attempts.'));
    const bound = amplificationBound();
    box.append(
      el('h2', { class: 'visually-hidden' }, 'Worst call paths'),
      el(
        'ol',
        {},
        paths.map((p, i) =>
          el(
            'li',
            { class: `${i === 0 ? 'worst' : ''} ${p.attempts > bound ? 'over' : ''}`.trim(), 'data-attempts': p.attempts },
            i === 0 ? el('span', { class: 'mark' }, 'worst path') : '',
            `${p.saturated ? '≥' : ''}${p.attempts} attempts (${p.latency}${p.cycle ? ', comes back' : ''})${p.attempts > bound ? `, over the mesh's bound of ${bound}` : ''}: `,
            p.hops.map((h, j) => `${j === 0 ? h.from : ''} → ${h.to} (×${h.attempts})`).join(''),
          ),
        ),
      ),
    );
  }

  // ---------------------------------------------------------------- policies
  const badge = (text) => el('span', { class: `badge ${text}` }, text);

  function problemsOf(p) {
    const items = [
      ...(p.problems ?? []).map((x) => el('li', {}, el('span', { class: 'field' }, x.field), `: ${x.message}`)),
      ...(p.warnings ?? []).map((w) => el('li', {}, el('span', { class: 'field' }, w.condition), `: ${w.message}`)),
    ];
    if (!items.length && p.state !== 'Accepted' && p.reason) items.push(el('li', {}, p.reason));
    return items.length ? el('ul', { class: 'problems' }, items) : '';
  }

  /** Whether a view is shown: a hidden one is drawn when it is (`selectTab`), not on every change. */
  const shown = (name) => !$(`#view-${name}`).hidden;
  const stale = { policies: true, proxies: true, proxiesData: false };

  function renderPolicies() {
    $('#count-policies').textContent = `(${state.policies.length + state.routes.length})`;
    stale.policies = !shown('policies');
    if (stale.policies) return;
    const rows = state.policies.map((p) => {
      const key = `${p.namespace}/${p.name}`;
      const rp = p.retryPolicy;
      return el(
        'tr',
        { tabindex: 0, 'data-key': key, class: state.policy === key ? 'selected' : '', onclick: () => openPolicy(key), onkeydown: (e) => e.key === 'Enter' && openPolicy(key) },
        el('td', {}, key),
        el('td', {}, badge(p.state)),
        el('td', {}, `${p.source ?? p.declared?.source ?? '?'} → ${(p.state === 'Accepted' ? p.appliesTo : p.declared?.destinations ?? []).join(', ')}`),
        el('td', {}, rp ? `${rp.num_retries ?? 1} × ${rp.retry_on}` : ''),
        el('td', { class: 'observed' }, observedText(key)),
        el('td', {}, problemsOf(p)),
      );
    });
    $('#policies tbody').replaceChildren(...rows);
    // The Gateway API mesh routes: each Service parent with its two conditions, and where the rules apply (producer:
    // every caller; a namespace: its callers only).
    $('#routes').hidden = state.routes.length === 0;
    $('#routes tbody').replaceChildren(
      ...state.routes.map((r) =>
        el(
          'tr',
          { 'data-key': `${r.kind} ${r.namespace}/${r.name}` },
          el('td', {}, `${r.kind} ${r.namespace}/${r.name}`),
          el('td', {}, ...r.parents.map((p) => el('div', { class: 'parent' }, `${p.parentRef.namespace ?? r.namespace}/${p.parentRef.name}${p.parentRef.port ? `:${p.parentRef.port}` : ''} `, ...p.conditions.map((c) => el('span', { class: `badge ${c.status === 'True' ? 'Accepted' : 'Invalid'}`, title: c.message }, c.status === 'True' ? c.type : `${c.type}: ${c.reason}`))))),
          el('td', {}, r.attached.map((a) => `${a.port} (${a.audience === 'producer' ? 'every caller' : `callers in ${a.audience}`})`).join(', ')),
          el('td', {}, r.problems.length || r.parents.some((p) => p.conditions.some((c) => c.status !== 'True')) ? el('ul', { class: 'problems' }, [...r.problems.map((x) => el('li', {}, el('span', { class: 'field' }, x.field), `: ${x.message}`)), ...r.parents.flatMap((p) => p.conditions.filter((c) => c.status !== 'True').map((c) => el('li', {}, el('span', { class: 'field' }, c.type), `: ${c.message}`)))]) : ''),
        ),
      ),
    );
    applySearch();
    if (state.policy) renderPolicyDetail();
  }

  /** Opens a Retry's detail, and gives it an address (`#policies/<ns>/<name>`). */
  function openPolicy(key) {
    showPolicy(key);
    remember();
  }

  function showPolicy(key) {
    state.policy = key;
    selectTab('policies');
    renderPolicies();
    $('#policy-detail').focus();
  }

  function renderPolicyDetail() {
    const box = $('#policy-detail');
    const p = state.policies.find((x) => `${x.namespace}/${x.name}` === state.policy);
    if (!p) {
      // An address of a Retry that is not (or no longer) in the mesh: said once the mesh is in.
      box.hidden = !state.mesh;
      box.replaceChildren(el('h2', {}, `Retry ${state.policy}`), el('p', {}, `No Retry ${state.policy} in the mesh (deleted, or a mistyped address). The Policies view lists them all.`));
      return;
    }
    const reached = state.proxies.filter((x) => `${x.namespace}/${x.serviceAccount}` === p.source);
    box.replaceChildren(
      el('h2', {}, `Retry ${state.policy} `, badge(p.state)),
      el('p', {}, p.reason ?? ''),
      problemsOf(p),
      el('h3', {}, 'Envoy retry_policy it produced'),
      el('pre', { class: 'retry-policy' }, p.retryPolicy ? JSON.stringify(p.retryPolicy, null, 2) : 'none (not in force)'),
      el('h3', {}, 'What its retries did (its sidecars\' counters)'),
      el('div', { class: 'observed' }),
      el('h3', {}, `Proxies it reaches (${reached.length} connected, identity ${p.source ?? '?'})`),
      reached.length ? el('ul', { class: 'reached' }, reached.map((x) => el('li', {}, `${x.nodeId} (${x.kind}, ${x.stream})`))) : el('p', {}, 'none connected'),
    );
    renderPolicyObserved();
    box.hidden = false;
    box.setAttribute('tabindex', '-1');
  }

  /** The open Retry's numbers: each window, and each destination over the window when it has more than one. */
  function renderPolicyObserved() {
    const box = $('#policy-detail .observed');
    if (!box) return;
    const pol = ui.observedByPolicy.get(state.policy);
    const said = (text) => box.replaceChildren(el('p', {}, text));
    if (!state.observed) return said(state.observedError ? `Not known: ${state.observedError}` : 'loading…');
    if (!pol) return said('Nothing: it is not in force. Its sidecars\' counters are summed for it once it is.');
    const stale = state.observedError ? el('p', { class: 'nack' }, `As of ${new Date(state.observed.at).toLocaleTimeString()}: ${state.observedError}`) : '';
    const who = pol.proxiesReporting
      ? `${pol.proxiesReporting} ${pol.proxiesReporting === 1 ? 'proxy' : 'proxies'} of ${pol.source} reporting`
      : `No reports: no proxy of ${pol.source} sends its counters now (a sidecar sends them over the metrics service of its ADS connection, as the injected bootstrap says).`;
    const row = (label, n) =>
      el(
        'tr',
        {},
        el('th', { scope: 'row' }, label),
        [n.requests, n.retries, n.retriesSucceeded, n.retriesExhausted, n.retriesRefused, pct(n.retryRate), n.attemptsPerRequest ?? '–', `≤ ${pol.predictedAttemptsPerRequest}`].map((v) => el('td', {}, v)),
      );
    const since = pol.since ? `since ${new Date(pol.since).toLocaleString()}` : 'since it applies';
    const rows = Object.entries(WINDOWS).map(([w, label]) => row(w === 'total' ? since : label, pol.windows[w]));
    if (pol.destinations.length > 1)
      for (const d of pol.destinations) {
        const path = ui.observedByEdge.get(`retry:${pol.policy}>${d}`);
        if (path) rows.push(row(`→ ${d}, ${WINDOWS[WINDOW]}`, path.windows[WINDOW]));
      }
    const head = ['', 'Requests', 'Retries', 'Succeeded', 'Ran out', 'Refused', 'Retry rate', 'Attempts/request', 'Predicted worst'];
    box.replaceChildren(
      el('p', {}, who),
      stale,
      el('table', { class: 'numbers' }, el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col' }, h)))), el('tbody', {}, rows)),
      el('p', { class: 'legend' }, 'Requests: first tries. Succeeded: retries whose attempt then succeeded. Ran out: requests that used up their retries. Refused: retries the retry budget or circuit breaker refused. Predicted worst: 1 + numRetries attempts on this hop.'),
    );
  }

  // ---------------------------------------------------------------- proxies
  function renderProxies() {
    $('#count-proxies').textContent = `(${state.proxies.length})`;
    stale.proxies = !shown('proxies');
    if (stale.proxies) return;
    // None connected: say how to connect one instead of an empty table.
    $('#proxies').hidden = state.proxies.length === 0;
    $('#proxies-empty').hidden = state.proxies.length > 0;
    const rows = state.proxies.map((x) => {
      const types = x.types ?? {};
      const nacks = TYPES.filter((t) => types[t]?.state === 'NACKED').map((t) => `${t}: ${types[t].lastNack?.error ?? ''}`);
      return el(
        'tr',
        { tabindex: 0, 'data-key': x.nodeId, class: `${nacks.length ? 'nacked' : ''} ${state.proxy === x.nodeId ? 'selected' : ''}`, onclick: () => openProxy(x.nodeId), onkeydown: (e) => e.key === 'Enter' && openProxy(x.nodeId) },
        el('td', {}, x.nodeId),
        el('td', {}, `${x.namespace}/${x.serviceAccount}`),
        el('td', {}, x.podName ?? ''),
        el('td', {}, x.kind),
        el('td', {}, x.stream),
        el('td', {}, TYPES.filter((t) => types[t]).map((t) => el('span', { class: `badge ${types[t].state}`, title: `${t} ${types[t].state}: sent ${types[t].sent ?? '-'}, ACKed ${types[t].acked ?? '-'}` }, `${t} ${types[t].state}`))),
        el('td', { class: 'nack' }, nacks.join('\n')),
      );
    });
    $('#proxies tbody').replaceChildren(...rows);
    applySearch();
  }

  /** Opens a proxy's config dump, and gives it an address (`#proxies/<node id>`). */
  function openProxy(nodeId) {
    showProxy(nodeId);
    remember();
  }

  async function showProxy(nodeId) {
    state.proxy = nodeId;
    selectTab('proxies');
    renderProxies();
    const box = $('#proxy-detail');
    box.hidden = false;
    box.replaceChildren(el('h2', {}, `Config dump of ${nodeId}`), el('p', {}, 'loading…'));
    try {
      const dump = await getJson(`/debug/config_dump?proxy=${encodeURIComponent(nodeId)}`);
      if (state.proxy !== nodeId) return;
      // Folded by type, each resource folded too; its JSON is written only when it is opened.
      const sections = dump.configs.map((c) => {
        const type = c['@type'].split('.').pop().replace('ConfigDump', '');
        const entries = Object.values(c)
          .filter(Array.isArray)
          .flat()
          .map((e) => {
            const r = e.cluster ?? e.endpoint_config ?? e.active_state?.listener ?? e.route_config ?? e.secret ?? e;
            const name = r.name ?? r.cluster_name ?? e.name ?? '?';
            const d = el('details', {}, el('summary', {}, name));
            d.addEventListener('toggle', () => d.open && d.childElementCount === 1 && d.append(el('pre', {}, JSON.stringify(r, null, 2))), { once: false });
            return d;
          });
        return el('details', { class: 'dump-section' }, el('summary', {}, `${type} (${entries.length})`), entries);
      });
      box.replaceChildren(el('h2', {}, `Config dump of ${nodeId}`), el('p', {}, 'As Envoy prints /config_dump; private keys redacted.'), ...sections);
    } catch (e) {
      box.replaceChildren(el('h2', {}, `Config dump of ${nodeId}`), el('p', { class: 'nack' }, e.message));
    }
    box.setAttribute('tabindex', '-1');
  }

  // ---------------------------------------------------------------- search, tabs, keys
  let redraw = null;
  function search(q) {
    state.query = q.trim().toLowerCase();
    applySearch();
    // A big mesh draws what the search finds: drawn again once the typing pauses.
    if (ui.omitted || (state.mesh && ui.cy && ui.cy.nodes().length > BIG / 2)) {
      clearTimeout(redraw);
      redraw = setTimeout(() => state.mesh && renderGraph(), 250);
    }
  }

  function applySearch() {
    const q = state.query;
    for (const tr of document.querySelectorAll('#policies tbody tr, #routes tbody tr, #proxies tbody tr')) tr.hidden = Boolean(q) && !tr.textContent.toLowerCase().includes(q);
    const cy = ui.cy;
    if (!cy) return;
    cy.batch(() => {
      cy.elements().removeClass('match faded');
      if (!q) return;
      const hits = cy.nodes().filter((n) => String(n.data('label')).toLowerCase().includes(q) || String(n.data('key')).toLowerCase().includes(q));
      const near = hits.closedNeighborhood();
      cy.elements().not(near).addClass('faded');
      hits.addClass('match');
    });
  }

  const TABS = ['graph', 'policies', 'proxies'];
  function selectTab(name) {
    for (const t of TABS) {
      const on = t === name;
      const tab = $(`#tab-${t}`);
      tab.setAttribute('aria-selected', String(on));
      tab.tabIndex = on ? 0 : -1;
      $(`#view-${t}`).hidden = !on;
    }
    if (name === 'graph' && ui.cy) ui.cy.resize();
    if (name === 'policies' && stale.policies) renderPolicies();
    if (name === 'proxies' && stale.proxies) renderProxies();
    if (stale.proxiesData && needProxies()) {
      stale.proxiesData = false;
      load('proxies');
    }
    // Back to a view that shows the counters: asked again (the polling stops while none does).
    if (state.mesh && !observedTimer && !observing) pollObserved();
  }

  // ---------------------------------------------------------------- addresses
  // Each view and each opened Retry or proxy has an address: #mesh, #policies, #policies/<ns>/<name>, #proxies,
  // #proxies/<node id>. What a user opens is pushed to the history (the back button goes back); an address typed,
  // shared or reached by the back button is shown (hashchange).
  const VIEW_NAMES = { graph: 'mesh', policies: 'policies', proxies: 'proxies' };
  const encodeItem = (item) => item.split('/').map(encodeURIComponent).join('/');

  /** The address of what is shown now. */
  function hashOf() {
    const view = TABS.find(shown) ?? 'graph';
    const item = view === 'policies' ? state.policy : view === 'proxies' ? state.proxy : null;
    return `#${VIEW_NAMES[view]}${item ? `/${encodeItem(item)}` : ''}`;
  }

  function titled() {
    const view = TABS.find(shown) ?? 'graph';
    const item = view === 'policies' ? state.policy : view === 'proxies' ? state.proxy : null;
    document.title = `mesh-xds · ${$(`#tab-${view}`).firstChild.textContent.trim()}${item ? ` · ${item}` : ''}`;
  }

  /** What the user just opened becomes a step of the history. */
  function remember() {
    const h = hashOf();
    if ((window.location.hash || '#mesh') !== h) window.history.pushState(null, '', h);
    titled();
  }

  function closeDetails() {
    for (const d of document.querySelectorAll('.detail')) d.hidden = true;
    state.policy = state.proxy = null;
    for (const tr of document.querySelectorAll('tbody tr.selected')) tr.classList.remove('selected');
  }

  /** Shows what the address names (an unknown one: the mesh). */
  function route() {
    const h = window.location.hash.replace(/^#/, '');
    const cut = h.indexOf('/');
    const name = cut < 0 ? h : h.slice(0, cut);
    let item = cut < 0 ? '' : h.slice(cut + 1);
    try {
      item = decodeURIComponent(item);
    } catch {
      item = '';
    }
    const view = Object.keys(VIEW_NAMES).find((v) => VIEW_NAMES[v] === name) ?? 'graph';
    if (view === 'policies' && item) {
      if (state.policy !== item || !shown('policies')) showPolicy(item);
    } else if (view === 'proxies' && item) {
      if (state.proxy !== item || !shown('proxies')) showProxy(item);
    } else {
      closeDetails();
      selectTab(view);
    }
    titled();
  }
  window.addEventListener('hashchange', route);

  for (const t of TABS) {
    const tab = $(`#tab-${t}`);
    tab.addEventListener('click', () => {
      selectTab(t);
      remember();
    });
    tab.addEventListener('keydown', (e) => {
      const i = TABS.indexOf(t);
      const next = e.key === 'ArrowRight' ? TABS[(i + 1) % TABS.length] : e.key === 'ArrowLeft' ? TABS[(i + TABS.length - 1) % TABS.length] : null;
      if (!next) return;
      selectTab(next);
      remember();
      $(`#tab-${next}`).focus();
    });
  }
  $('#search').addEventListener('input', (e) => search(e.target.value));
  document.addEventListener('keydown', (e) => {
    if (e.key === '/' && document.activeElement !== $('#search')) {
      e.preventDefault();
      $('#search').focus();
    } else if (e.key === 'Escape') {
      $('#search').value = '';
      search('');
      closeDetails();
      remember();
    }
  });

  route();
  live();
})();
