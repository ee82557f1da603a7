// idlegate's live page: the HTTP API drawn (docs/src/reference/api.md).
// Plain JS, no framework, no build step, no outside fetch. Every value from the API goes into
// the page as text (textContent, attributes), never as markup.
'use strict';
(() => {
  const CAP = 500; // flow rows drawn at most: the soonest to expire
  const TIMELINE_MAX = 300; // events kept on the timeline
  const POLL_MS = 1000;
  const EXPIRIES = ['silent', 'reset', 'reset-on-next', 'ack-and-discard'];
  const $ = (id) => document.getElementById(id);
  const flowsEl = $('flows');
  const timelineEl = $('timeline');

  // key -> flow: {key, rule, protocol, remote, public, private, state, timeout, deadline
  // (performance.now() ms), idleAt (ms when it was last idle 0), touched (ms of the last news
  // of it), seq (arrival order), row, leaving (expired, fading out)}
  const flows = new Map();
  let arrival = 0;
  // key -> when its `expired` event came: a poll sent before that may still list it.
  const expiredAt = new Map();
  let drawn = []; // flows with a row, in order
  let layoutDue = true;

  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const keyOf = (f) => `${f.protocol} ${f.remote} ${f.public} ${f.private}`;
  const stateClass = (s) => 'st-' + String(s || 'new').toLowerCase().replace(/[^a-z0-9]+/g, '-');
  const secs = (s) => {
    if (!isFinite(s)) return '–';
    if (s >= 3600) return (s / 3600).toFixed(s % 3600 ? 1 : 0) + ' h';
    if (s >= 60) return (s / 60).toFixed(s % 60 ? 1 : 0) + ' min';
    return (s < 10 ? s.toFixed(1) : s.toFixed(0)) + ' s';
  };
  const clock = () => {
    const d = new Date();
    const p = (n, w = 2) => String(n).padStart(w, '0');
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  };

  // ---- the API ----
  async function api(method, path, body) {
    const init = { method, credentials: 'same-origin', headers: {} };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let data = null;
    try { data = await res.json(); } catch (_) { data = null; }
    if (res.status === 401) banner('Not authorised: this box has a token. Open /?token=TOKEN once (it sets a cookie), then this page.');
    return { ok: res.ok, status: res.status, data };
  }
  function banner(text) {
    const b = $('banner');
    b.textContent = text;
    b.hidden = !text;
  }
  function said(text, bad) {
    const s = $('action-status');
    s.textContent = text;
    s.classList.toggle('bad', !!bad);
  }

  // ---- flows ----
  function upsert(f, expiresIn, now, refreshed) {
    const key = keyOf(f);
    let flow = flows.get(key);
    if (!flow) {
      flow = { key, seq: arrival++, row: null };
      flows.set(key, flow);
      layoutDue = true;
    }
    flow.rule = f.rule;
    flow.protocol = f.protocol;
    flow.remote = f.remote;
    flow.public = f.public;
    flow.private = f.private;
    if (f.state) flow.state = f.state;
    if (isFinite(f.timeout_s) && f.timeout_s !== flow.timeout) {
      // A rule changed while the flow lives: its next packet runs it under the new timeout,
      // told by a `refreshed` event as much as by the poll.
      flow.timeout = f.timeout_s;
      if (flow.row) flow.row.ofEl.textContent = 'of ' + secs(flow.timeout);
    }
    const deadline = now + expiresIn * 1000;
    // A deadline moved later by more than a frame's worth is a refresh: flash the bar.
    if (flow.row && (refreshed || (flow.deadline !== undefined && deadline - flow.deadline > 400))) flash(flow);
    flow.deadline = deadline;
    flow.touched = now;
    if (isFinite(f.idle_for_s)) flow.idleAt = now - f.idle_for_s * 1000;
    return flow;
  }

  let pollTimer = 0;
  let truncated = '';
  let polling = false;
  // Reads the flows now (and every POLL_MS after): at start, after a reconnect, when lagged.
  async function pollFlows() {
    clearTimeout(pollTimer);
    if (polling) return;
    polling = true;
    try {
      const asked = performance.now();
      const r = await api('GET', '/api/flows');
      if (r.ok && r.data && Array.isArray(r.data.flows)) {
        const now = performance.now();
        const seen = new Set();
        for (const f of r.data.flows) {
          if (expiredAt.get(keyOf(f)) > asked) continue;
          seen.add(upsert(f, Number(f.expires_in_s), now, false).key);
        }
        for (const [key, at] of expiredAt) if (at < asked) expiredAt.delete(key);
        if (!r.data.truncated) {
          // Gone from the box without an event this page saw (an event missed, a reconnect);
          // a flow an event told of after the question was asked stays.
          for (const [key, flow] of flows) if (!seen.has(key) && !flow.leaving && flow.touched < asked) forget(flow, false);
        }
        const scale = Number(r.data.time_scale);
        $('scale').textContent = scale > 1 ? `time scale ${scale}: 1 min runs as ${secs(60 / scale)}` : '';
        $('scale').title = 'the timers below are the lab\'s, scaled; the rules table gives the configured value';
        truncated = r.data.truncated ? `the API listed ${r.data.flows.length} of ${r.data.count}` : '';
        layoutDue = true;
        if (r.status !== 401) banner('');
      }
    } catch (e) {
      // The box is away; the stream's status says so.
    }
    polling = false;
    pollTimer = setTimeout(pollFlows, POLL_MS);
  }

  function forget(flow, expired) {
    if (!flow.row) { flows.delete(flow.key); layoutDue = true; return; }
    if (expired) {
      flow.leaving = true;
      flow.row.classList.add('gone');
      setTimeout(() => { if (flows.get(flow.key) === flow) { flows.delete(flow.key); layoutDue = true; } }, 900);
    } else {
      flows.delete(flow.key);
      layoutDue = true;
    }
  }

  function flash(flow) {
    const fill = flow.row && flow.row.fill;
    if (fill && fill.animate) {
      fill.animate([{ filter: 'brightness(2.2)', boxShadow: '0 0 12px 2px #eaffff' }, { filter: 'none', boxShadow: 'none' }], { duration: 700, easing: 'ease-out' });
    }
  }

  function makeRow(flow) {
    const row = el('div', 'flow');
    row.setAttribute('role', 'listitem');
    row.dataset.key = flow.key;
    const rule = el('span', 'rule');
    const ends = el('span', 'ends');
    const remote = el('span', 'addr');
    const pub = el('span', 'addr pub');
    const priv = el('span', 'addr');
    ends.append(remote, el('span', 'arrow', '→'), pub, el('span', 'arrow', '→'), priv);
    const state = el('span', 'state');
    const bar = el('span', 'bar');
    const fill = el('span', 'fill');
    bar.append(fill);
    const left = el('span', 'left');
    const of = el('span', 'of');
    row.append(rule, ends, state, bar, left, of);
    Object.assign(row, { ruleEl: rule, remoteEl: remote, pubEl: pub, privEl: priv, stateEl: state, fill, leftEl: left, ofEl: of });
    flow.row = row;
    fillRow(flow);
    return row;
  }

  function fillRow(flow) {
    const row = flow.row;
    row.ruleEl.textContent = flow.rule;
    row.ruleEl.title = `rule ${flow.rule}, ${flow.protocol}`;
    row.remoteEl.textContent = flow.remote;
    row.remoteEl.title = 'remote';
    row.pubEl.textContent = flow.public;
    row.pubEl.title = 'public (the box)';
    row.privEl.textContent = flow.private;
    row.privEl.title = 'private (the member)';
    const st = flow.state || 'new';
    if (row.stateEl.textContent !== st) {
      row.stateEl.textContent = st;
      row.className = 'flow ' + stateClass(st) + (flow.leaving ? ' gone' : '');
      row.last = undefined;
    }
    row.ofEl.textContent = 'of ' + secs(flow.timeout);
  }

  // Which flows get a row: all of them up to CAP, else the CAP soonest to expire; drawn in
  // arrival order so that rows do not jump about.
  function layout() {
    layoutDue = false;
    let pick = [...flows.values()];
    const total = pick.length;
    if (total > CAP) {
      pick.sort((a, b) => a.deadline - b.deadline);
      pick = pick.slice(0, CAP);
    }
    pick.sort((a, b) => a.seq - b.seq);
    const keep = new Set(pick);
    for (const f of drawn) {
      if (!keep.has(f) && f.row) { f.row.remove(); f.row = null; }
    }
    let prev = null;
    for (const f of pick) {
      if (!f.row) makeRow(f); else fillRow(f);
      const want = prev ? prev.nextSibling : flowsEl.firstChild;
      if (want !== f.row) flowsEl.insertBefore(f.row, want);
      prev = f.row;
    }
    drawn = pick;
    $('flows-count').textContent = String(total);
    $('flows-count').title = truncated;
    $('flows-empty').hidden = total > 0;
    const more = $('flows-more');
    more.hidden = total <= CAP;
    more.textContent = total > CAP ? `${total - CAP} more flows not drawn (these are the ${CAP} soonest to expire)` : '';
    countPerRule();
  }

  function draw(now) {
    if (layoutDue) layout();
    for (const f of drawn) {
      const row = f.row;
      if (!row) continue;
      const left = Math.max(0, (f.deadline - now) / 1000);
      const frac = f.timeout > 0 ? Math.min(1, left / f.timeout) : 0;
      const q = Math.round(frac * 1000);
      if (q !== row.last) {
        row.last = q;
        row.fill.style.transform = `scaleX(${q / 1000})`;
        row.classList.toggle('soon', frac < 0.2);
      }
      const text = left.toFixed(1);
      if (text !== row.dataset.expiresIn) {
        row.dataset.expiresIn = text;
        row.leftEl.textContent = left > 0 ? text + ' s left' : (f.leaving ? 'expired' : 'expiring');
      }
    }
    flushTimeline();
    requestAnimationFrame(draw);
  }

  // ---- the timeline ----
  let pending = [];
  function addEvent(kind, text, detail, atMs) {
    pending.push({ kind, text, detail, atMs, time: clock() });
    if (pending.length > TIMELINE_MAX * 2) pending = pending.slice(-TIMELINE_MAX);
  }
  function flushTimeline() {
    if (!pending.length) return;
    const items = pending.slice(-TIMELINE_MAX);
    pending = [];
    const frag = document.createDocumentFragment();
    for (let i = items.length - 1; i >= 0; i--) {
      const e = items[i];
      const li = el('li', 'event event-' + e.kind);
      const t = el('time', null, e.time);
      if (isFinite(e.atMs)) t.title = `${(e.atMs / 1000).toFixed(3)} s after the gateway started`;
      const head = el('span', 'head');
      head.append(el('span', 'tag', e.kind), e.text);
      li.append(t, head);
      if (e.detail) li.append(el('span', 'text', e.detail));
      frag.append(li);
    }
    timelineEl.prepend(frag);
    while (timelineEl.childElementCount > TIMELINE_MAX) timelineEl.lastElementChild.remove();
  }
  for (const box of document.querySelectorAll('#timeline-filters input')) {
    box.addEventListener('change', () => timelineEl.classList.toggle('hide-' + box.dataset.kind, !box.checked));
  }
  const flowText = (d) => `${d.rule}  ${d.remote} → ${d.public} → ${d.private}`;

  // ---- the stream ----
  let events = 0;
  let stream = null;
  function status(text) {
    const s = $('stream-status');
    s.textContent = text;
    s.className = 'pill ' + text;
  }
  function on(name, handle) {
    stream.addEventListener(name, (m) => {
      events++;
      let d;
      try { d = JSON.parse(m.data); } catch (_) { return; }
      if (d && typeof d === 'object') handle(d);
    });
  }
  let connects = 0;
  function connect() {
    status(connects++ ? 'reconnecting' : 'connecting');
    stream = new EventSource('/api/events', { withCredentials: true });
    stream.onopen = () => { status('connected'); pollFlows(); if (connects > 1) loadRules(); };
    stream.onerror = () => {
      if (stream.readyState === EventSource.CLOSED) {
        // Refused (401, not a stream): EventSource gives up; we do not.
        status('reconnecting');
        stream.close();
        setTimeout(connect, 2000);
      } else {
        status('reconnecting');
      }
    };
    on('created', (d) => {
      const old = flows.get(keyOf(d));
      if (old && old.leaving) { flows.delete(old.key); layoutDue = true; }
      expiredAt.delete(keyOf(d));
      upsert(d, Number(d.timeout_s), performance.now(), false).state ||= 'new';
      // A new flow's first timer is its opening state's (a TCP handshake's, a UDP flow's
      // unanswered one), not yet the rule's idle timeout.
      const first = secs(Number(d.timeout_s));
      const what = d.protocol === 'tcp' ? `tcp, opening: ${first} to finish the handshake`
        : d.protocol === 'udp' ? `udp: ${first} until forgotten unless answered`
        : `${d.protocol}: ${first} on its first timer`;
      addEvent('created', what, flowText(d), d.at_ms);
    });
    on('refreshed', (d) => {
      const f = upsert(d, Number(d.timeout_s), performance.now(), true);
      f.idleAt = performance.now();
    });
    on('expired', (d) => {
      const f = flows.get(keyOf(d));
      expiredAt.set(keyOf(d), performance.now());
      if (f) {
        f.state = d.state || f.state;
        f.deadline = Math.min(f.deadline, performance.now()); // a forced expiry empties the bar
        forget(f, true);
      }
      const action = { silent: 'dropped silently', reset: 'RST to both ends', 'reset-on-next': 'RST at its next packet', 'ack-and-discard': 'data acknowledged and discarded' }[d.action] || d.action;
      addEvent('expired', `${d.cause === 'forced' ? 'forced' : 'after ' + secs(Number(d.idle_for_s)) + ' idle'}, ${action} (was ${d.state})`, flowText(d), d.at_ms);
    });
    on('sent', (d) => {
      const to = { inside: 'the member (inside)', outside: 'the remote (outside)' }[d.to] || d.to;
      addEvent('sent', `${String(d.segment).toUpperCase()} to ${to}`, flowText(d), d.at_ms);
    });
    on('rule-changed', (d) => {
      addEvent('rule-changed', `${d.rule}: idle timeout runs ${secs(Number(d.idle_timeout_s))}, expiry ${d.expiry}`, 'new flows now; existing flows from their next packet', d.at_ms);
      loadRules();
    });
    on('port-exhausted', (d) => {
      addEvent('port-exhausted', `no SNAT port left for ${d.member}`, `rule ${d.rule}, frontend ${d.frontend}`, d.at_ms);
    });
    on('table-full', (d) => {
      addEvent('table-full', `the flow table is full (${d.max_flows} flows)`, 'new flows are refused', d.at_ms);
    });
    on('lagged', (d) => {
      addEvent('lagged', `this page missed ${d.missed} events`, 'the flows were read again', d.at_ms);
      pollFlows();
    });
  }
  let lastCount = 0;
  setInterval(() => {
    $('rate').textContent = `${events - lastCount} events/s`;
    lastCount = events;
  }, 1000);

  // ---- counters ----
  const tiles = new Map();
  function tile(name, value, title) {
    let t = tiles.get(name);
    if (!t) {
      t = el('div', 'tile');
      t.valueEl = el('span', 'value');
      t.append(t.valueEl, el('span', 'name', name));
      $('counters').append(t);
      tiles.set(name, t);
    }
    const text = String(value);
    if (t.valueEl.textContent !== text) {
      if (t.valueEl.textContent && t.animate) t.animate([{ background: '#2b3b52' }, { background: 'transparent' }], 600);
      t.valueEl.textContent = text;
    }
    t.title = title || '';
  }
  const total = (v) => (typeof v === 'number' ? v : v && typeof v === 'object' ? Object.values(v).reduce((a, b) => a + total(b), 0) : 0);
  const listing = (v) => (v && typeof v === 'object' ? Object.entries(v).map(([k, n]) => `${k}: ${typeof n === 'object' ? JSON.stringify(n) : n}`).join('\n') : '');
  async function pollCounters() {
    try {
      const r = await api('GET', '/api/counters');
      if (r.ok && r.data) {
        const c = r.data;
        tile('live flows', total(c.flows));
        tile('forwarded', total(c.forwarded), listing(c.forwarded));
        tile('created', total(c.flows_created));
        tile('expired', total(c.flows_expired));
        tile('RSTs sent', total(c.resets_sent));
        if (c.acks_sent !== undefined) tile('ACKs sent', total(c.acks_sent));
        tile('dropped', total(c.drops) + total(c.device_drops), [listing(c.drops), listing(c.device_drops)].filter(Boolean).join('\n') || 'nothing dropped');
        if (c.events_dropped) tile('events lost', total(c.events_dropped), 'events the gateway could not hand the API in time');
        for (const s of Array.isArray(c.snat) ? c.snat : []) {
          const free = s.free;
          const used = s.in_use ?? s.lent;
          tile(`SNAT ${s.frontend}`, used === undefined ? '?' : `${used} / ${used + (s.held || 0) + (free || 0)}`, listing(s));
        }
      }
    } catch (_) { /* the stream's status says the box is away */ }
    setTimeout(pollCounters, POLL_MS);
  }

  // ---- rules ----
  function countPerRule() {
    const n = new Map();
    for (const f of flows.values()) n.set(f.rule, (n.get(f.rule) || 0) + 1);
    for (const cell of document.querySelectorAll('#rules td.n')) cell.textContent = String(n.get(cell.dataset.rule) || 0);
  }
  // name -> its table row; a reload updates the timers in place and keeps each row's form (and
  // the error it shows) as it is.
  const ruleRows = new Map();
  async function loadRules() {
    const r = await api('GET', '/api/rules').catch(() => null);
    if (!r || !r.ok || !r.data || !Array.isArray(r.data.rules)) return;
    const body = document.querySelector('#rules tbody');
    const rows = [];
    for (const rule of r.data.rules) {
      let tr = ruleRows.get(rule.name);
      if (!tr) {
        tr = el('tr');
        tr.dataset.rule = rule.name;
        const n = el('td', 'n', '0');
        n.dataset.rule = rule.name;
        const change = el('td', 'change');
        change.append(ruleForm(rule));
        const act = el('td');
        const btn = el('button', 'danger small', 'expire');
        btn.type = 'button';
        btn.dataset.expireRule = rule.name;
        btn.title = `expire every flow of ${rule.name} now, with its expiry action`;
        act.append(btn);
        tr.append(el('td', 'name'), n, el('td', 'timer'), el('td', 'expiry'), el('td', 'why'), change, act);
        ruleRows.set(rule.name, tr);
      }
      const [name, , timer, expiry, why] = tr.children;
      name.replaceChildren(el('strong', null, rule.name), el('span', 'kind', ` ${String(rule.kind || '').replace(/_/g, ' ')} · ${rule.protocol}`));
      timer.replaceChildren();
      expiry.replaceChildren();
      why.replaceChildren();
      if (rule.tcp) {
        timer.append(el('span', null, secs(Number(rule.tcp.idle_timeout_s))), el('span', 'runs', ` runs ${secs(Number(rule.tcp.runs_s))}`));
        expiry.append(el('span', 'x x-' + String(rule.tcp.expiry).replace(/[^a-z-]/g, ''), rule.tcp.expiry));
        if (rule.tcp.winner) why.append(el('span', 'winner', rule.tcp.winner + ': '));
        why.append(rule.tcp.reason || '');
      }
      if (rule.udp) {
        timer.append(el('div', 'udp', `UDP ${secs(Number(rule.udp.replied_s))} runs ${secs(Number(rule.udp.runs_s))}`));
        if (!rule.tcp) expiry.append(el('span', 'x', rule.udp.expiry));
        if (rule.udp.reason) why.append(el('div', 'udp', rule.udp.reason));
      }
      rows.push(tr);
    }
    const names = new Set(r.data.rules.map((rule) => rule.name));
    for (const name of [...ruleRows.keys()]) if (!names.has(name)) ruleRows.delete(name);
    body.replaceChildren(...rows);
    countPerRule();
  }

  function ruleForm(rule) {
    const form = el('form', 'rule-form');
    form.dataset.ruleForm = rule.name;
    const idle = el('input');
    idle.name = 'idle_timeout';
    idle.placeholder = 'e.g. 10m';
    idle.size = 6;
    idle.setAttribute('aria-label', `idle timeout of ${rule.name}, as in the config`);
    const exp = el('select');
    exp.name = 'expiry';
    exp.setAttribute('aria-label', `expiry of ${rule.name}`);
    exp.append(new Option('expiry…', ''));
    for (const e of EXPIRIES) exp.append(new Option(e, e));
    const go = el('button', null, 'apply');
    go.type = 'submit';
    const err = el('span', 'form-error');
    err.setAttribute('role', 'alert');
    form.append(idle, exp, go, err);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = {};
      if (idle.value.trim()) body.idle_timeout = idle.value.trim();
      if (exp.value) body.expiry = exp.value;
      err.textContent = '';
      if (!Object.keys(body).length) { err.textContent = 'give an idle timeout (as in the config: 10m, 30s) or an expiry'; return; }
      const r = await api('POST', '/api/rules/' + encodeURIComponent(rule.name), body).catch((e) => ({ ok: false, data: { error: String(e) } }));
      if (r.ok) {
        // 202: sent to every worker, not confirmed by all in time; the message says so.
        said(`${rule.name}: idle timeout runs ${secs(Number(r.data.idle_timeout_s))}, expiry ${r.data.expiry}. ${r.data.applies || ''}${r.data.message ? ' ' + r.data.message : ''}`);
        idle.value = '';
        exp.value = '';
        loadRules();
      } else {
        err.textContent = (r.data && r.data.error) || `HTTP ${r.status}`;
      }
    });
    return form;
  }

  async function expire(body, what) {
    const r = await api('POST', '/api/expire', body).catch((e) => ({ ok: false, data: { error: String(e) } }));
    if (r.ok) said(`${what}: ${r.data.expired} flow${r.data.expired === 1 ? '' : 's'} expired`);
    else said(`${what}: ${(r.data && r.data.error) || 'HTTP ' + r.status}`, true);
  }
  $('expire-all').addEventListener('click', () => expire({ all: true }, 'expire all'));
  $('rules').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-expire-rule]');
    if (b) expire({ rule: b.dataset.expireRule }, `expire ${b.dataset.expireRule}`);
  });

  connect();
  pollFlows();
  pollCounters();
  loadRules();
  requestAnimationFrame(draw);
})();
