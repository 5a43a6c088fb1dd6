// Connectopus web UI: polls the node's API once a second and draws the mesh as SVG.
// The token (from `connectopus token`) is kept in localStorage and sent as a Bearer header;
// a link may carry it as #token=... once, which is moved into storage and off the address bar.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const POLL_MS = 1000;
const LOD_NODES = 150; // beyond this, labels only for this node, its neighbours and matches
const state = { page: 'graph', graph: null, shape: '', pos: [], prev: null, rates: new Map(),
  view: { x: 0, y: 0, k: 1 }, find: '', failures: 0, target: null };

// The node whose Node and Config pages are shown: this one, or another through this one's
// proxy (/api/v1/nodes/<name>/...), which forwards the token to that node.
function viewPath(view) {
  return state.target ? '/api/v1/nodes/' + encodeURIComponent(state.target) + '/' + view : '/api/v1/' + view;
}

function $(id) { return document.getElementById(id); }
function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function html(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function token() { return localStorage.getItem('cx-token') || ''; }

function takeTokenFromUrl() {
  const m = location.hash.match(/token=([A-Za-z0-9._-]+)/);
  if (m) {
    localStorage.setItem('cx-token', m[1]);
    history.replaceState(null, '', location.pathname + '#/graph');
  }
}

async function api(path) {
  const headers = {};
  if (token()) headers.Authorization = 'Bearer ' + token();
  const r = await fetch(path, { headers, cache: 'no-store' });
  const body = await r.json().catch(() => ({ error: 'answer is not JSON' }));
  if (r.status === 401) { const e = new Error(body.error || 'unauthorized'); e.auth = true; throw e; }
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function showPage(page) {
  state.page = page;
  for (const p of ['graph', 'node', 'config', 'token']) $('page-' + p).hidden = p !== page;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === page);
  refresh();
}

function route() {
  const m = location.hash.match(/^#\/(graph|node|config|token)/);
  showPage(m ? m[1] : 'graph');
}

function authFailed(error) {
  $('auth-message').textContent = 'The node refused the request: ' + error.message;
  $('auth-message').className = 'error';
  if (state.page !== 'token') location.hash = '#/token';
}

// ---- graph -------------------------------------------------------------------------------

// Radial tree layout: rings by hop count from this node; each node gets an angular sector
// in proportion to the size of its shortest-path subtree, and its children share it. Trees
// and chains come out straight, meshes stay readable, and it is O(nodes + edges), so a
// 1,000-node mesh lays out at once and stays put while counters change.
function layout(g) {
  const n = g.nodes.length, adj = Array.from({ length: n }, () => []);
  for (const e of g.edges) { adj[e.a].push(e.b); adj[e.b].push(e.a); }
  const hop = new Array(n).fill(-1), parent = new Array(n).fill(-1), order = [g.me];
  const children = Array.from({ length: n }, () => []);
  hop[g.me] = 0;
  for (let i = 0; i < order.length; i++) {
    const u = order[i];
    for (const v of adj[u]) if (hop[v] < 0) { hop[v] = hop[u] + 1; parent[v] = u; children[u].push(v); order.push(v); }
  }
  const size = new Array(n).fill(1);
  for (let i = order.length - 1; i > 0; i--) size[parent[order[i]]] += size[order[i]];
  const from = new Array(n).fill(0), span = new Array(n).fill(0), pos = new Array(n);
  span[g.me] = 2 * Math.PI;
  const perRing = new Map();
  for (const u of order) perRing.set(hop[u], (perRing.get(hop[u]) || 0) + 1);
  const step = n > LOD_NODES ? 90 : 160;
  const radius = r => Math.max(r * step, (perRing.get(r) || 0) * (n > LOD_NODES ? 7 : 40) / (2 * Math.PI));
  for (const u of order) {
    let start = from[u];
    const total = children[u].reduce((t, c) => t + size[c], 0);
    for (const c of children[u]) {
      span[c] = span[u] * size[c] / total;
      from[c] = start;
      start += span[c];
    }
    const angle = from[u] + span[u] / 2 + Math.PI;
    pos[u] = u === g.me ? [0, 0] : [radius(hop[u]) * Math.cos(angle), radius(hop[u]) * Math.sin(angle)];
  }
  // Nodes without a known path: an outer ring.
  const cut = [];
  for (let i = 0; i < n; i++) if (hop[i] < 0) cut.push(i);
  const outer = radius(perRing.size) + step;
  cut.forEach((v, i) => {
    const angle = (2 * Math.PI * i) / cut.length;
    pos[v] = [outer * Math.cos(angle), outer * Math.sin(angle)];
  });
  return { pos, hop };
}

function fmtRate(bps) {
  if (bps >= 1e6) return (bps / 1e6).toFixed(1) + ' MB/s';
  if (bps >= 1e3) return (bps / 1e3).toFixed(1) + ' kB/s';
  return bps.toFixed(0) + ' B/s';
}

function rates(g) {
  // Throughput of this node's links from the byte counters' change since the last poll.
  const out = new Map();
  const prev = state.prev;
  const dt = prev ? g.uptime_secs - prev.uptime_secs : 0;
  g.links.forEach((l, i) => {
    if (l.peer === null) return;
    const before = prev && prev.links[i] && prev.links[i].peer === l.peer ? prev.links[i] : null;
    const bps = before && dt > 0 ? ((l.bytes_in + l.bytes_out) - (before.bytes_in + before.bytes_out)) / dt : 0;
    out.set(l.peer, { link: l, bps: Math.max(0, bps) });
  });
  state.prev = g;
  return out;
}

function drawGraph(g) {
  const svg = $('graph');
  const shape = g.nodes.map(n => n.name).join(',') + '|' + g.edges.map(e => e.a + '-' + e.b).join(',');
  const mine = rates(g);
  const big = g.nodes.length > LOD_NODES;
  svg.classList.toggle('lod', big && state.view.k < 3);
  $('graph-summary').textContent = g.nodes.length + ' nodes, ' + g.edges.length + ' links, config version ' + g.config_version;
  if (shape !== state.shape) {
    state.shape = shape;
    state.layout = layout(g);
    svg.replaceChildren();
    const root = el('g', { id: 'viewport' });
    const edges = el('g', { id: 'edges' }), nodes = el('g', { id: 'nodes' });
    root.append(edges, nodes);
    svg.append(root);
    g.edges.forEach((e, i) => {
      const [x1, y1] = state.layout.pos[e.a], [x2, y2] = state.layout.pos[e.b];
      const ge = el('g', { class: 'edge', 'data-a': g.nodes[e.a].name, 'data-b': g.nodes[e.b].name, id: 'e' + i });
      ge.append(el('line', { x1, y1, x2, y2 }), el('title'), el('text', { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4 }));
      edges.append(ge);
    });
    g.nodes.forEach((node, i) => {
      const [x, y] = state.layout.pos[i];
      const r = i === g.me ? 11 : big ? 4 : 9;
      const gn = el('g', { class: 'node', 'data-name': node.name, transform: `translate(${x},${y})` });
      gn.append(el('circle', { r }), el('title', {}, node.name + ' [' + node.address + ']'),
        el('text', { class: 'label', y: -r - 5 }, node.name));
      gn.addEventListener('click', () => showDetails(node.name));
      nodes.append(gn);
    });
    fit();
  }
  // Live values: edge labels and node classes, without touching the layout.
  const nodeEls = document.querySelectorAll('#nodes .node');
  g.nodes.forEach((node, i) => {
    const e = nodeEls[i];
    e.classList.toggle('me', i === g.me);
    e.classList.toggle('near', state.layout.hop[i] === 1);
    e.classList.toggle('unreachable', node.cost === null);
    e.classList.toggle('hit', state.find !== '' && node.name.includes(state.find));
  });
  const edgeEls = document.querySelectorAll('#edges .edge');
  g.edges.forEach((e, i) => {
    const ge = edgeEls[i];
    const other = e.a === g.me ? e.b : e.b === g.me ? e.a : -1;
    const live = other >= 0 ? mine.get(other) : undefined;
    ge.classList.toggle('mine', live !== undefined);
    ge.classList.toggle('down', live !== undefined && live.link.state !== 'established');
    let text = 'cost ' + e.cost;
    if (live) {
      if (live.link.rtt_ms !== null) text += ' · ' + live.link.rtt_ms.toFixed(2) + ' ms';
      text += ' · ' + fmtRate(live.bps);
    }
    ge.querySelector('text').textContent = (!big || live) ? text : '';
    ge.querySelector('title').textContent = g.nodes[e.a].name + ' — ' + g.nodes[e.b].name + ': ' + text;
  });
  applyView();
}

function showDetails(name) {
  const g = state.graph;
  const i = g.nodes.findIndex(n => n.name === name);
  if (i < 0) return;
  const n = g.nodes[i], box = $('details');
  box.replaceChildren(html('h3', n.name), html('div', n.address),
    html('div', n.cost === null ? 'unreachable' : 'path cost ' + n.cost));
  const t = html('table');
  t.append(row(['neighbour', 'cost'], 'th'));
  for (const e of g.edges) if (e.a === i || e.b === i) t.append(row([g.nodes[e.a === i ? e.b : e.a].name, e.cost]));
  const open = html('button', 'node page');
  open.type = 'button';
  open.addEventListener('click', () => {
    state.target = i === g.me ? null : n.name;
    location.hash = '#/node';
  });
  box.append(t, open);
}

function applyView() {
  const v = state.view, root = $('viewport');
  if (root) root.setAttribute('transform', `translate(${v.x},${v.y}) scale(${v.k})`);
  if (state.graph) $('graph').classList.toggle('lod', state.graph.nodes.length > LOD_NODES && v.k < 3);
}

function fit() {
  const svg = $('graph'), pos = state.layout ? state.layout.pos : [];
  if (!pos.length) return;
  let [minX, minY, maxX, maxY] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const [x, y] of pos) { minX = Math.min(minX, x); minY = Math.min(minY, y); maxX = Math.max(maxX, x); maxY = Math.max(maxY, y); }
  const w = svg.clientWidth || 800, h = svg.clientHeight || 600, pad = 70;
  const k = Math.min(2, (w - 2 * pad) / Math.max(1, maxX - minX), (h - 2 * pad) / Math.max(1, maxY - minY));
  state.view = { k, x: w / 2 - k * (minX + maxX) / 2, y: h / 2 - k * (minY + maxY) / 2 };
  applyView();
}

function setUpPanZoom() {
  const svg = $('graph');
  svg.addEventListener('wheel', ev => {
    ev.preventDefault();
    const v = state.view, f = ev.deltaY < 0 ? 1.2 : 1 / 1.2;
    const r = svg.getBoundingClientRect(), mx = ev.clientX - r.left, my = ev.clientY - r.top;
    v.x = mx - (mx - v.x) * f; v.y = my - (my - v.y) * f; v.k *= f;
    applyView();
  }, { passive: false });
  let drag = null;
  svg.addEventListener('pointerdown', ev => { drag = [ev.clientX, ev.clientY, state.view.x, state.view.y]; });
  window.addEventListener('pointerup', () => { drag = null; });
  window.addEventListener('pointermove', ev => {
    if (!drag) return;
    state.view.x = drag[2] + ev.clientX - drag[0]; state.view.y = drag[3] + ev.clientY - drag[1];
    applyView();
  });
  $('fit').addEventListener('click', fit);
  window.addEventListener('resize', fit);
  $('find').addEventListener('input', ev => { state.find = ev.target.value.trim(); if (state.graph) drawGraph(state.graph); });
}

// ---- node, config, token pages ------------------------------------------------------------

function row(cells, tag) {
  const tr = html('tr');
  for (const c of cells) tr.append(html(tag || 'td', c === null || c === undefined ? '-' : String(c)));
  return tr;
}

function table(head, rows) {
  const t = html('table');
  t.append(row(head, 'th'));
  for (const r of rows) t.append(row(r));
  return t;
}

function drawNode(s) {
  const box = $('node');
  const back = html('button', 'back to this node');
  back.type = 'button';
  back.addEventListener('click', () => { state.target = null; refresh(); });
  const counters = Object.entries(s.counters).concat(Object.entries(s.drops).map(([k, v]) => ['drop ' + k, v]));
  box.replaceChildren(
    html('h2', s.name + ' [' + s.address + ']' + (state.target ? ' (through the mesh)' : '')),
    html('p', 'config version ' + s.config_version + ' · up ' + Math.round(s.uptime_secs) + ' s · domain ' + s.domain +
      ' · subnet ' + s.subnet + ' · dataplane ' + s.dataplane + (s.removed ? ' · NOT FORWARDING: ' + s.removed : '')),
    html('h3', 'Links'),
    table(['link', 'backend', 'kind', 'peer', 'state', 'rtt ms', 'cost', 'mtu', 'bytes in', 'bytes out'],
      s.links.map(l => [l.link, l.backend, l.kind, l.peer_name, l.state, l.rtt_ms === null ? null : l.rtt_ms.toFixed(2), l.cost, l.mtu, l.bytes_in, l.bytes_out])),
    html('h3', 'Routes'),
    table(['prefix', 'via', 'next hop', 'cost'], s.routes.map(r => [r.prefix, r.via, r.next_hop, r.cost])),
    html('h3', 'Counters'),
    table(['counter', 'value'], counters));
  if (state.target) box.prepend(back);
}

async function refresh() {
  try {
    if (state.page === 'graph') {
      state.graph = await api('/api/v1/graph');
      drawGraph(state.graph);
      $('served').textContent = state.graph.nodes[state.graph.me].name;
    } else if (state.page === 'node') {
      const s = await api(viewPath('status'));
      drawNode(s);
      $('served').textContent = s.name;
    } else if (state.page === 'config') {
      const c = await api(viewPath('config'));
      $('config').textContent = c.config.config;
      $('config-meta').textContent = 'The configuration ' + (state.target || 'this node') + ' runs, exactly as signed. Signature:';
      $('config-meta').append(html('pre', c.config.signature, 'config'));
    } else if (state.page === 'token') {
      const w = await api('/api/v1/whoami');
      $('whoami').textContent = w.local ? 'Local access (control socket): no token needed.'
        : 'Signed in as ' + w.key + ' until ' + new Date(w.expires_unix * 1000).toISOString();
    }
    state.failures = 0;
    $('live').textContent = 'live ' + new Date().toLocaleTimeString();
    $('live').classList.remove('stale');
  } catch (error) {
    state.failures++;
    $('live').textContent = error.message;
    $('live').classList.add('stale');
    if (error.auth) authFailed(error);
  }
}

function setUpToken() {
  $('token-text').value = token();
  $('token-save').addEventListener('click', () => {
    localStorage.setItem('cx-token', $('token-text').value.trim());
    $('auth-message').textContent = '';
    location.hash = '#/graph';
  });
  $('token-clear').addEventListener('click', () => {
    localStorage.removeItem('cx-token');
    $('token-text').value = '';
    refresh();
  });
}

takeTokenFromUrl();
setUpPanZoom();
setUpToken();
window.addEventListener('hashchange', route);
route();
setInterval(() => { if (state.page !== 'token' && state.page !== 'config') refresh(); }, POLL_MS);
