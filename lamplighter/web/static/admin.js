// Lamplighter operator console. Plain ES2020, no dependencies, no build step.
//
// Safety rules this file keeps (the page runs under a strict Content-Security-Policy):
// - nothing is ever assigned to innerHTML: every element comes from document.createElement or
//   createElementNS, and all data goes in through textContent or attributes;
// - no inline styles in markup: sizes and positions are set through the CSSOM (element.style).
'use strict';

(() => {
  const root = document.getElementById('admin');
  if (!root) return;

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content ?? '';
  const section = root.dataset.section || 'dashboard';
  const me = root.dataset.me || '';
  const HOUR = 3600;

  // ---------------------------------------------------------------------------------------------
  // Small DOM helpers

  /** Create an element. attrs: class, text, testid, dataset, on<event>, booleans, plain attributes. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    for (const child of children.flat()) {
      if (child == null || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  /** Create an SVG element (same attrs as h). */
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    for (const child of children.flat()) {
      if (child == null || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function setAttrs(el, attrs) {
    if (!attrs) return;
    for (const [key, value] of Object.entries(attrs)) {
      if (value == null || value === false) continue;
      if (key === 'class') el.setAttribute('class', value);
      else if (key === 'text') el.textContent = value;
      else if (key === 'testid') el.setAttribute('data-testid', value);
      else if (key === 'dataset') for (const [k, v] of Object.entries(value)) el.dataset[k] = v;
      else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
      else if (value === true) el.setAttribute(key, '');
      else el.setAttribute(key, String(value));
    }
  }

  const $ = (id) => document.getElementById(id);
  const clear = (el) => { while (el.firstChild) el.firstChild.remove(); return el; };
  const sum = (values) => values.reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);

  let announceTimer = 0;
  function announce(text) {
    const el = $('announcer');
    if (!el) return;
    el.textContent = '';
    clearTimeout(announceTimer);
    announceTimer = setTimeout(() => { el.textContent = text; }, 30);
  }

  // ---------------------------------------------------------------------------------------------
  // Number and time formatting

  const trimZero = (text) => text.replace(/\.0+$/, '');

  /** 950, 1.2k, 34k, 3.4M, 1.2B. */
  function fmtCompact(n) {
    if (!isNum(n)) return '—';
    const sign = n < 0 ? '-' : '';
    const a = Math.abs(n);
    for (const [div, suffix] of [[1e12, 'T'], [1e9, 'B'], [1e6, 'M'], [1e3, 'k']]) {
      if (a >= div * 0.9995) {
        const v = a / div;
        return sign + (v >= 99.95 ? String(Math.round(v)) : trimZero(v.toFixed(1))) + suffix;
      }
    }
    if (Number.isInteger(a)) return sign + String(a);
    return sign + trimZero(a.toFixed(a < 10 ? 2 : a < 100 ? 1 : 0));
  }

  /** The exact number, with separators (for tooltips). */
  const fmtExact = (n) => (isNum(n) ? n.toLocaleString() : '—');

  /** 4.2 ms, 320 ms, 1.4 s, 12 s. */
  function fmtSeconds(sec) {
    if (!isNum(sec)) return '—';
    const ms = sec * 1000;
    if (ms === 0) return '0 ms';
    if (ms < 10) return `${trimZero(ms.toFixed(1))} ms`;
    if (Math.round(ms) < 1000) return `${Math.round(ms)} ms`;
    if (sec < 9.95) return `${sec.toFixed(1)} s`;
    return `${Math.round(sec)} s`;
  }

  /** Durations in a plan: 10 s, 1.5 s, 5 min, 1 h. */
  function fmtDuration(sec) {
    if (!isNum(sec)) return '—';
    if (sec >= 3600 && sec % 3600 === 0) return `${sec / 3600} h`;
    if (sec >= 60 && sec % 60 === 0) return `${sec / 60} min`;
    return `${trimZero(String(Math.round(sec * 100) / 100))} s`;
  }

  /** 73%, 5.2%, <0.1%. */
  function fmtPercent(f) {
    if (!isNum(f)) return '—';
    const p = f * 100;
    if (p === 0) return '0%';
    if (p > 0 && p < 0.05) return '<0.1%';
    if (p < 9.95 && Math.abs(p - Math.round(p)) >= 0.05) return `${p.toFixed(1)}%`;
    return `${Math.round(p)}%`;
  }

  /** 0.04/s, 1.4/s, 12/s, 1.2k/s. */
  function fmtRate(v) {
    if (!isNum(v)) return '—';
    if (v === 0) return '0/s';
    if (v < 0.095) return `${v.toFixed(2)}/s`;
    if (v < 9.95) return `${v.toFixed(1)}/s`;
    return `${fmtCompact(Math.round(v))}/s`;
  }

  const fmtCount = (v) => (isNum(v) ? fmtCompact(v) : '—');

  /** A limit: compact when that is exact (400k, 10M), else in full (4,096). */
  function fmtLimit(n) {
    if (!isNum(n)) return '—';
    const compact = fmtCompact(n);
    const m = /^(-?[\d.]+)([kMBT]?)$/.exec(compact);
    const scale = { '': 1, k: 1e3, M: 1e6, B: 1e9, T: 1e12 };
    if (m && Math.abs(Number(m[1]) * scale[m[2]] - n) < 1e-9) return compact;
    return n.toLocaleString();
  }

  const clockFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
  const hmFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
  const dateFmt = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short', year: 'numeric' });
  const dayFmt = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short', timeZone: 'UTC' });
  const weekdayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'short', timeZone: 'UTC' });
  const dateTimeFmt = new Intl.DateTimeFormat(undefined, {
    day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit', hourCycle: 'h23',
  });

  const fmtClock = (unix) => clockFmt.format(new Date(unix * 1000));
  const fmtHM = (unix) => hmFmt.format(new Date(unix * 1000));

  function parseDate(iso) {
    if (!iso) return null;
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? null : d;
  }
  const fmtDate = (iso) => { const d = parseDate(iso); return d ? dateFmt.format(d) : '—'; };
  const fmtDateTime = (iso) => { const d = parseDate(iso); return d ? dateTimeFmt.format(d) : '—'; };
  /** A YYYY-MM-DD day as "3 Mar". */
  function fmtDay(day) {
    const d = parseDate(`${day}T00:00:00Z`);
    return d ? dayFmt.format(d) : String(day);
  }
  function fmtWeekday(day) {
    const d = parseDate(`${day}T00:00:00Z`);
    return d ? weekdayFmt.format(d) : String(day);
  }
  /** "just now", "5 min ago", "3 h ago", "2 days ago", then a date. */
  function fmtAgo(iso) {
    const d = parseDate(iso);
    if (!d) return '—';
    const secs = (Date.now() - d.getTime()) / 1000;
    if (secs < 0) return fmtDateTime(iso);
    if (secs < 60) return 'just now';
    if (secs < HOUR) return `${Math.floor(secs / 60)} min ago`;
    if (secs < 86400) return `${Math.floor(secs / HOUR)} h ago`;
    if (secs < 86400 * 30) { const n = Math.floor(secs / 86400); return `${n} day${n === 1 ? '' : 's'} ago`; }
    return fmtDate(iso);
  }

  // ---------------------------------------------------------------------------------------------
  // API

  class ApiError extends Error {
    constructor(message, status, type, param, code) {
      super(message);
      this.status = status;
      this.type = type;
      this.param = param;
      this.code = code;
    }
  }

  async function errorFromResponse(res) {
    let message = '';
    let type = null;
    let param = null;
    let code = null;
    try {
      const body = await res.json();
      const err = body && body.error;
      if (err && typeof err === 'object') {
        message = typeof err.message === 'string' ? err.message : '';
        type = err.type ?? null;
        param = err.param ?? null;
        code = err.code ?? null;
      } else if (typeof err === 'string') {
        message = err;
      } else if (body && typeof body.detail === 'string') {
        message = body.detail;
      }
    } catch {
      // not JSON
    }
    if (!message) {
      if (res.status === 404) message = 'Not found (HTTP 404).';
      else if (res.status === 429) message = 'Too many requests. Please wait a moment and try again.';
      else if (res.status >= 500) message = `The server had a problem (HTTP ${res.status}). Please try again.`;
      else message = `Request failed (HTTP ${res.status}).`;
    }
    return new ApiError(message, res.status, type, param, code);
  }

  async function api(method, url, body) {
    const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (method !== 'GET') {
      init.headers = { Accept: 'application/json', 'Content-Type': 'application/json', 'X-CSRF-Token': csrfToken };
      if (body !== undefined) init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(url, init);
    } catch {
      throw new ApiError('Could not reach the server. Check your connection and try again.', 0, 'network_error');
    }
    if (res.status === 401) {
      window.location.assign('/login');
      throw new ApiError('Your session has expired. Please log in again.', 401, 'authentication_error');
    }
    if (!res.ok) throw await errorFromResponse(res);
    if (res.status === 204) return null;
    const text = await res.text();
    if (!text) return null;
    try {
      return JSON.parse(text);
    } catch {
      throw new ApiError('The server sent an answer this page cannot read.', res.status, 'invalid_response');
    }
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------------------------------------
  // Error banner

  const banner = $('admin-error');
  const bannerText = $('admin-error-text');
  let bannerSource = null;

  function showError(err, source = 'action') {
    if (err instanceof ApiError && err.status === 401) return; // already leaving for /login
    const message = err && err.message ? err.message : String(err);
    bannerText.textContent = message;
    bannerSource = source;
    banner.hidden = false;
  }

  /** Hide the banner (only when it shows an error from `source`, if one is given). */
  function hideError(source) {
    if (source && bannerSource !== source) return;
    banner.hidden = true;
    bannerText.textContent = '';
    bannerSource = null;
  }

  $('admin-error-close').addEventListener('click', () => hideError());

  // ---------------------------------------------------------------------------------------------
  // In-page confirmation (with optional fields), instead of window.confirm

  const dialog = $('confirm-dialog');
  let dialogDone = null;

  /**
   * Ask before doing something. fields: [{name, label, testid, type, required, placeholder, min, max,
   * maxlength, hint}].
   * Resolves to an object of the field values, or null when cancelled.
   */
  function ask({ title, text, ok = 'OK', danger = true, fields = [] }) {
    if (dialogDone) dialogDone(null);
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text || '';
    $('confirm-text').hidden = !text;
    const okBtn = $('confirm-ok');
    okBtn.textContent = ok;
    okBtn.className = danger ? 'btn btn-danger' : 'btn btn-primary';
    const errorEl = $('confirm-error');
    errorEl.hidden = true;
    const box = clear($('confirm-fields'));
    const inputs = [];
    for (const f of fields) {
      const id = `confirm-field-${f.name}`;
      const input = h('input', {
        id, name: f.name, type: f.type || 'text', testid: f.testid, placeholder: f.placeholder,
        min: f.min, max: f.max, step: f.type === 'number' ? '1' : null, required: !!f.required, autocomplete: 'off',
        inputmode: f.type === 'number' ? 'numeric' : null, maxlength: f.type === 'number' ? null : (f.maxlength ?? 500),
      });
      inputs.push([f, input]);
      box.append(h('div', { class: 'field' },
        h('label', { for: id, text: f.required ? f.label : `${f.label} (optional)` }),
        input,
        f.hint ? h('p', { class: 'field-hint', text: f.hint }) : null));
    }
    return new Promise((resolve) => {
      dialogDone = (value) => {
        dialogDone = null;
        if (dialog.open) dialog.close();
        resolve(value);
      };
      dialog.showModal();
      (inputs[0]?.[1] ?? $('confirm-cancel')).focus();
    });
  }

  function dialogValues() {
    const values = {};
    const errorEl = $('confirm-error');
    for (const input of $('confirm-fields').querySelectorAll('input')) {
      const value = input.value.trim();
      input.removeAttribute('aria-invalid');
      if (input.required && !value) {
        input.setAttribute('aria-invalid', 'true');
        errorEl.textContent = `${input.labels?.[0]?.textContent || input.name} is required.`;
        errorEl.hidden = false;
        input.focus();
        return null;
      }
      if (input.type === 'number' && value) {
        const n = Number(value);
        const min = input.min === '' ? -Infinity : Number(input.min);
        const max = input.max === '' ? Infinity : Number(input.max);
        if (!Number.isInteger(n) || n < min || n > max) {
          input.setAttribute('aria-invalid', 'true');
          const range = input.max === '' ? `of at least ${input.min}` : `from ${input.min} to ${input.max}`;
          errorEl.textContent = `${input.labels?.[0]?.textContent || input.name} must be a whole number ${range}.`;
          errorEl.hidden = false;
          input.focus();
          return null;
        }
        values[input.name] = n;
      } else if (input.type === 'number') {
        values[input.name] = null;
      } else {
        values[input.name] = value;
      }
    }
    return values;
  }

  $('confirm-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const values = dialogValues();
    if (values && dialogDone) dialogDone(values);
  });
  $('confirm-cancel').addEventListener('click', () => dialogDone && dialogDone(null));
  $('confirm-fields').addEventListener('input', (event) => {
    $('confirm-error').hidden = true;
    event.target.removeAttribute?.('aria-invalid');
  });
  dialog.addEventListener('cancel', (event) => {
    event.preventDefault();
    if (dialogDone) dialogDone(null);
  });
  dialog.addEventListener('click', (event) => {
    // A click on the backdrop (the dialog box itself, outside the form) cancels.
    if (event.target === dialog && dialogDone) dialogDone(null);
  });

  // ---------------------------------------------------------------------------------------------
  // Colours: a stable palette slot per name within a family (plans, backends, reasons)

  const PALETTE = 8;
  const colourMaps = new Map();
  function colour(family, name) {
    let map = colourMaps.get(family);
    if (!map) { map = new Map(); colourMaps.set(family, map); }
    if (!map.has(name)) map.set(name, map.size % PALETTE);
    return `c${map.get(name)}`;
  }
  /** Assign colours to a batch of names in sorted order, so the first page load is stable. */
  function seedColours(family, names) {
    for (const name of [...names].sort()) colour(family, name);
  }

  // ---------------------------------------------------------------------------------------------
  // Charts (SVG, drawn here)

  function niceStep(range, count) {
    const raw = range / Math.max(1, count);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const norm = raw / mag;
    const step = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10;
    return step * mag;
  }

  /** The y axis: a top a little over the data, and 3 to 5 round ticks. */
  function yAxis(dataMax, { fixedMax, minMax, integer }) {
    let max = fixedMax ?? Math.max(isNum(dataMax) ? dataMax : 0, minMax ?? 0);
    if (!(max > 0)) max = integer ? 4 : 1;
    let step = niceStep(max, 4);
    if (integer) step = Math.max(1, Math.ceil(step));
    const top = fixedMax ?? Math.max(step, Math.ceil(max / step - 1e-9) * step);
    const ticks = [];
    for (let v = 0; v <= top + step * 1e-6; v += step) ticks.push(Math.round(v / step) * step);
    return { top, ticks };
  }

  function textWidth(text) {
    return text.length * 6.6;
  }

  /**
   * A time-series chart over [t0, t1].
   * spec: {times, t0, t1, interval, series: [{id, label, colour, dashed, values}], stacked, area,
   *        format (values), tickFormat, fixedMax, minMax, integer, legend (ul), legendValue(series)}
   */
  function timeChart(container, spec) {
    const width = Math.max(220, Math.floor(container.clientWidth || 600));
    const height = Math.max(120, Math.floor(container.clientHeight || 180));
    const { times, t0, t1, series } = spec;
    const format = spec.format || fmtCompact;
    const tickFormat = spec.tickFormat || format;
    const gap = (spec.interval || 5) * 2.5;
    const n = times.length;

    // Stacked layers: base and top per point.
    let layers = null;
    if (spec.stacked) {
      const base = new Array(n).fill(0);
      layers = series.map((ser) => {
        const lo = base.slice();
        for (let i = 0; i < n; i++) base[i] += isNum(ser.values[i]) ? ser.values[i] : 0;
        return { lo, hi: base.slice() };
      });
    }
    let dataMax = 0;
    let hasData = false;
    if (layers && layers.length) {
      const totals = layers[layers.length - 1].hi;
      for (const v of totals) dataMax = Math.max(dataMax, v);
      hasData = n > 0;
    } else {
      for (const ser of series) {
        for (const v of ser.values) if (isNum(v)) { hasData = true; dataMax = Math.max(dataMax, v); }
      }
    }
    const { top, ticks } = yAxis(dataMax, spec);

    const left = Math.ceil(Math.max(...ticks.map((t) => textWidth(tickFormat(t))), 12)) + 10;
    const x0 = left;
    const x1 = width - 12;
    const y0 = 10;
    const y1 = height - 24;
    const span = Math.max(1, t1 - t0);
    const xOf = (t) => x0 + ((t - t0) / span) * (x1 - x0);
    const yOf = (v) => y1 - (Math.min(v, top) / top) * (y1 - y0);
    const r1 = (v) => Math.round(v * 10) / 10;

    const svg = s('svg', {
      width, height, viewBox: `0 0 ${width} ${height}`, class: 'chart-svg', 'aria-hidden': 'true', focusable: 'false',
    });

    // Horizontal grid and y labels.
    const grid = s('g', { class: 'grid' });
    for (const tick of ticks) {
      const y = r1(yOf(tick)) + 0.5;
      grid.append(s('line', { x1: x0, x2: x1, y1: y, y2: y, class: tick === 0 ? 'axis-line' : 'grid-line' }));
      grid.append(s('text', { x: x0 - 7, y: y + 4, class: 'tick', 'text-anchor': 'end' }, tickFormat(tick)));
    }
    // Time ticks on the clock: every 5, 10, 15, 20 or 30 minutes, whatever fits.
    const fits = Math.max(2, Math.floor((x1 - x0) / 64));
    const stepMin = [1, 2, 5, 10, 15, 20, 30, 60].find((m) => span / (m * 60) <= fits) || 60;
    const stepSec = stepMin * 60;
    for (let t = Math.ceil(t0 / stepSec) * stepSec; t <= t1; t += stepSec) {
      const x = r1(xOf(t)) + 0.5;
      grid.append(s('line', { x1: x, x2: x, y1: y1, y2: y1 + 4, class: 'axis-line' }));
      if (x > x0 + 14 && x < x1 - 14) {
        grid.append(s('line', { x1: x, x2: x, y1: y0, y2: y1, class: 'grid-line grid-v' }));
      }
      grid.append(s('text', { x, y: height - 6, class: 'tick', 'text-anchor': 'middle' }, fmtHM(t)));
    }
    svg.append(grid);

    // Runs of consecutive points (broken at gaps in time and, for lines, at missing values).
    const runsOf = (ok) => {
      const runs = [];
      let run = null;
      for (let i = 0; i < n; i++) {
        const broken = i > 0 && times[i] - times[i - 1] > gap;
        if (!ok(i) || broken) { if (run) runs.push(run); run = null; }
        if (ok(i)) { if (!run) run = []; run.push(i); }
      }
      if (run) runs.push(run);
      return runs;
    };

    const plot = s('g', { class: 'plot' });
    if (layers && spec.bars) {
      // Stacked bars, one per bin ending at times[i].
      const binPx = ((spec.interval || 60) / span) * (x1 - x0);
      const barW = Math.max(1, binPx - (binPx > 4 ? 1.5 : 0.5));
      series.forEach((ser, k) => {
        const { lo, hi } = layers[k];
        for (let i = 0; i < n; i++) {
          if (!(hi[i] > lo[i])) continue;
          const right = xOf(times[i]);
          const yTop = yOf(hi[i]);
          plot.append(s('rect', {
            x: r1(Math.max(x0, right - barW)), y: r1(yTop), width: r1(Math.min(barW, right - x0)),
            height: r1(Math.max(1, yOf(lo[i]) - yTop)), class: `bar ${ser.colour}`,
          }));
        }
      });
    } else if (layers) {
      series.forEach((ser, k) => {
        const { lo, hi } = layers[k];
        for (const run of runsOf(() => true)) {
          let d = '';
          run.forEach((i, j) => { d += `${j ? 'L' : 'M'}${r1(xOf(times[i]))} ${r1(yOf(hi[i]))}`; });
          let back = '';
          for (let j = run.length - 1; j >= 0; j--) back += `L${r1(xOf(times[run[j]]))} ${r1(yOf(lo[run[j]]))}`;
          if (run.length === 1) {
            const x = r1(xOf(times[run[0]]));
            d = `M${x - 1} ${r1(yOf(hi[run[0]]))}L${x + 1} ${r1(yOf(hi[run[0]]))}`;
            back = `L${x + 1} ${r1(yOf(lo[run[0]]))}L${x - 1} ${r1(yOf(lo[run[0]]))}`;
          }
          plot.append(s('path', { d: `${d}${back}Z`, class: `area stacked ${ser.colour}` }));
          plot.append(s('path', { d, class: `series ${ser.colour}` }));
        }
      });
    } else {
      for (const ser of series) {
        const ok = (i) => isNum(ser.values[i]);
        for (const run of runsOf(ok)) {
          let d = '';
          run.forEach((i, j) => { d += `${j ? 'L' : 'M'}${r1(xOf(times[i]))} ${r1(yOf(ser.values[i]))}`; });
          if (run.length === 1) d += 'l0.01 0';
          if (spec.area && run.length > 1) {
            const first = r1(xOf(times[run[0]]));
            const last = r1(xOf(times[run[run.length - 1]]));
            plot.append(s('path', { d: `${d}L${last} ${y1}L${first} ${y1}Z`, class: `area ${ser.colour}` }));
          }
          plot.append(s('path', { d, class: `series ${ser.colour}${ser.dashed ? ' dashed' : ''}` }));
        }
        // The latest value, marked.
        for (let i = n - 1; i >= 0; i--) {
          if (isNum(ser.values[i])) {
            if (times[i] >= t1 - gap * 2) {
              plot.append(s('circle', { cx: r1(xOf(times[i])), cy: r1(yOf(ser.values[i])), r: 2.75, class: `dot ${ser.colour}` }));
            }
            break;
          }
        }
      }
    }
    svg.append(plot);

    if (!hasData) {
      svg.append(s('text', { x: (x0 + x1) / 2, y: (y0 + y1) / 2 + 4, class: 'chart-empty', 'text-anchor': 'middle' },
        !n ? 'No data yet' : spec.emptyText || 'No traffic in the last hour'));
    }

    // Hover: a cursor line and a tooltip with every series' value at the nearest point.
    const cursor = s('line', { y1: y0, y2: y1, class: 'cursor', visibility: 'hidden' });
    svg.append(cursor);
    const hit = s('rect', { x: x0, y: 0, width: Math.max(0, x1 - x0), height: y1, class: 'hit' });
    svg.append(hit);

    const tip = h('div', { class: 'chart-tip', hidden: true, 'aria-hidden': 'true' });
    const nearest = (t) => {
      if (!n) return -1;
      let lo = 0;
      let hi = n - 1;
      while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (times[mid] < t) lo = mid; else hi = mid; }
      return Math.abs(times[lo] - t) <= Math.abs(times[hi] - t) ? lo : hi;
    };
    const showAt = (t) => {
      const i = nearest(t);
      if (i < 0 || Math.abs(times[i] - t) > Math.max(gap, span / 60)) { hideTip(); return; }
      const x = r1(xOf(times[i])) + 0.5;
      cursor.setAttribute('x1', x);
      cursor.setAttribute('x2', x);
      cursor.setAttribute('visibility', 'visible');
      clear(tip);
      tip.append(h('div', { class: 'tip-time', text: spec.tipTime ? spec.tipTime(times[i]) : fmtClock(times[i]) }));
      for (const ser of series) {
        const v = ser.values[i];
        tip.append(h('div', { class: 'tip-row' },
          h('span', { class: `swatch ${ser.colour}${ser.dashed ? ' dashed' : ''}` }),
          h('span', { class: 'tip-label', text: ser.label }),
          h('span', { class: 'tip-value', text: isNum(v) ? format(v) : spec.stacked ? format(0) : '—' })));
      }
      if (spec.stacked && series.length > 1) {
        tip.append(h('div', { class: 'tip-row tip-total' },
          h('span', { class: 'tip-label', text: 'Total' }),
          h('span', { class: 'tip-value', text: format(layers[layers.length - 1].hi[i]) })));
      }
      tip.hidden = false;
      const tipW = tip.offsetWidth;
      let left = x + 12;
      if (left + tipW > width - 4) left = Math.max(4, x - 12 - tipW);
      tip.style.left = `${left}px`;
      tip.style.top = `${y0}px`;
      container.dataset.hoverT = String(times[i]);
    };
    const hideTip = () => {
      cursor.setAttribute('visibility', 'hidden');
      tip.hidden = true;
      delete container.dataset.hoverT;
    };
    const tAt = (event) => {
      const rect = svg.getBoundingClientRect();
      const x = (event.clientX - rect.left) * (width / Math.max(1, rect.width));
      return t0 + ((x - x0) / Math.max(1, x1 - x0)) * span;
    };
    hit.addEventListener('pointermove', (event) => showAt(tAt(event)));
    hit.addEventListener('pointerdown', (event) => showAt(tAt(event)));
    hit.addEventListener('pointerleave', hideTip);

    const keepHover = container.dataset.hoverT;
    clear(container).append(svg, tip);
    if (keepHover) showAt(Number(keepHover));

    if (spec.legend) renderLegend(spec.legend, series, spec.legendValue);
  }

  /** Legend: swatch, name and (optionally) the latest value of each series. */
  function renderLegend(ul, series, valueOf) {
    clear(ul);
    for (const ser of series) {
      const value = valueOf ? valueOf(ser) : null;
      ul.append(h('li', { class: 'legend-item' },
        h('span', { class: `swatch ${ser.colour}${ser.dashed ? ' dashed' : ''}`, 'aria-hidden': 'true' }),
        h('span', { class: 'legend-label', text: ser.label }),
        value != null ? h('span', { class: 'legend-value', text: value }) : null));
    }
  }

  /**
   * A bar chart over categories (days). spec: {labels, titles, series: [{label, colour, values}],
   * format, legend}. Series stack.
   */
  function barChart(container, spec) {
    const width = Math.max(200, Math.floor(container.clientWidth || 400));
    const height = Math.max(100, Math.floor(container.clientHeight || 150));
    const { labels, series } = spec;
    const format = spec.format || fmtCompact;
    const n = labels.length;
    const totals = labels.map((_, i) => sum(series.map((ser) => ser.values[i])));
    const { top, ticks } = yAxis(Math.max(0, ...totals), { integer: true });
    const left = Math.ceil(Math.max(...ticks.map((t) => textWidth(format(t))), 12)) + 10;
    const x0 = left;
    const x1 = width - 6;
    const y0 = 8;
    const y1 = height - 22;
    const slot = (x1 - x0) / Math.max(1, n);
    const barW = Math.max(2, Math.min(36, slot * 0.68));
    const yOf = (v) => y1 - (v / top) * (y1 - y0);
    const r1 = (v) => Math.round(v * 10) / 10;

    const svg = s('svg', { width, height, viewBox: `0 0 ${width} ${height}`, class: 'chart-svg', focusable: 'false' });
    const grid = s('g', { class: 'grid' });
    for (const tick of ticks) {
      const y = r1(yOf(tick)) + 0.5;
      grid.append(s('line', { x1: x0, x2: x1, y1: y, y2: y, class: tick === 0 ? 'axis-line' : 'grid-line' }));
      grid.append(s('text', { x: x0 - 7, y: y + 4, class: 'tick', 'text-anchor': 'end' }, format(tick)));
    }
    const every = Math.max(1, Math.ceil(36 / slot));
    labels.forEach((label, i) => {
      if ((n - 1 - i) % every !== 0) return; // always label the latest bar
      grid.append(s('text', { x: r1(x0 + slot * (i + 0.5)), y: height - 6, class: 'tick', 'text-anchor': 'middle' }, label));
    });
    svg.append(grid);

    const bars = s('g', { class: 'plot' });
    labels.forEach((label, i) => {
      const x = r1(x0 + slot * (i + 0.5) - barW / 2);
      let base = 0;
      const group = s('g', { class: 'bar-group' });
      const tipText = [spec.titles ? spec.titles[i] : label];
      for (const ser of series) {
        const v = isNum(ser.values[i]) ? ser.values[i] : 0;
        tipText.push(`${ser.label}: ${fmtExact(v)}`);
        if (v > 0) {
          const yTop = yOf(base + v);
          const hgt = Math.max(1, yOf(base) - yTop);
          group.append(s('rect', { x, y: r1(yOf(base) - hgt), width: r1(barW), height: r1(hgt), class: `bar ${ser.colour}` }));
        }
        base += v;
      }
      // A full-height target for the native tooltip.
      group.append(s('rect', { x: r1(x0 + slot * i), y: y0, width: r1(slot), height: y1 - y0, class: 'bar-hit' },
        s('title', null, tipText.join('\n'))));
      bars.append(group);
    });
    svg.append(bars);
    if (!totals.some((t) => t > 0)) {
      svg.append(s('text', { x: (x0 + x1) / 2, y: (y0 + y1) / 2 + 4, class: 'chart-empty', 'text-anchor': 'middle' }, 'No usage'));
    }
    clear(container).append(svg);
    if (spec.legend) renderLegend(spec.legend, series, spec.legendValue);
  }

  /** A horizontal share bar: a track, a filled part, and the percentage. */
  function shareBar(fraction, colourClass = 'c0', text) {
    const f = isNum(fraction) ? Math.max(0, Math.min(1, fraction)) : 0;
    const fill = h('span', { class: `share-fill ${colourClass}` });
    fill.style.width = `${(f * 100).toFixed(2)}%`;
    return h('div', { class: 'share' },
      h('span', { class: 'share-track', 'aria-hidden': 'true' }, fill),
      h('span', { class: 'share-text', text: text ?? fmtPercent(f) }));
  }

  function badge(text, kind) {
    return h('span', { class: `badge badge-${kind || 'plain'}`, text });
  }

  /** A user's status; an active account that the abuse scores' temporary ban refuses reads
   * "temporarily banned", so the operator sees who is locked out without opening each user. */
  function statusBadge(u) {
    const status = u.status === 'active' && u.temporary_ban ? 'temporarily banned' : u.status;
    const kind = status === 'active' ? 'ok' : status === 'banned' ? 'bad' : 'warn';
    const title = u.temporary_ban ? `Temporarily banned until ${fmtDateTime(u.temporary_ban.until)}` : null;
    return h('span', { class: `badge badge-${kind}`, testid: 'user-status', text: status || 'unknown', title });
  }

  function emptyState(text, testid) {
    return h('p', { class: 'empty not-yet', testid, text });
  }

  /** Re-run fn when the element changes width (charts redraw to stay crisp). */
  function onResize(el, fn) {
    if (!('ResizeObserver' in window)) { window.addEventListener('resize', fn); return; }
    let lastWidth = el.clientWidth;
    let frame = 0;
    new ResizeObserver(() => {
      if (el.clientWidth === lastWidth) return;
      lastWidth = el.clientWidth;
      cancelAnimationFrame(frame);
      frame = requestAnimationFrame(fn);
    }).observe(el);
  }

  // ---------------------------------------------------------------------------------------------
  // Dashboard

  function initDashboard() {
    const POLL_MS = 3000;
    const state = { points: [], interval: 5, now: null, backends: [], totals: null, lastT: null, timer: 0, busy: false, loaded: false };
    const live = $('live');
    const liveLabel = $('live-label');
    const lastUpdate = $('last-update');
    const charts = {};
    for (const el of document.querySelectorAll('[data-chart]')) charts[el.dataset.chart] = el;

    function setLive(mode) {
      live.dataset.state = mode;
      liveLabel.textContent = { live: 'Live', stale: 'Reconnecting…', paused: 'Paused', connecting: 'Connecting…' }[mode];
    }

    function merge(data) {
      if (isNum(data.interval_s) && data.interval_s > 0) state.interval = data.interval_s;
      if (isNum(data.now)) state.now = data.now;
      if (Array.isArray(data.backends)) state.backends = data.backends;
      if (data.totals && typeof data.totals === 'object') state.totals = data.totals;
      const byT = new Map(state.points.map((p) => [p.t, p]));
      for (const p of Array.isArray(data.points) ? data.points : []) if (p && isNum(p.t)) byT.set(p.t, p);
      const points = [...byT.values()].sort((a, b) => a.t - b.t);
      const newest = points.length ? points[points.length - 1].t : null;
      const now = state.now ?? newest ?? Date.now() / 1000;
      state.now = Math.max(now, newest ?? now);
      state.points = points.filter((p) => p.t > state.now - HOUR);
      if (newest != null) state.lastT = Math.max(state.lastT ?? newest, newest);
    }

    const keysOf = (field) => {
      const keys = new Set();
      for (const p of state.points) if (p[field] && typeof p[field] === 'object') for (const k of Object.keys(p[field])) keys.add(k);
      return [...keys].sort();
    };
    const last = () => state.points[state.points.length - 1] || null;
    /** The latest point within the last minute for which pick() gives a number. */
    function recent(pick) {
      const pts = state.points;
      const latest = last();
      if (!latest) return null;
      for (let i = pts.length - 1; i >= 0 && pts[i].t >= latest.t - 60; i--) {
        const v = pick(pts[i]);
        if (isNum(v)) return { point: pts[i], value: v };
      }
      return null;
    }
    const lastNum = (ser) => {
      for (let i = ser.values.length - 1; i >= 0; i--) if (isNum(ser.values[i])) return ser.values[i];
      return null;
    };

    function setStat(key, text, note, title) {
      $(`stat-${key}`).textContent = text;
      $(`note-${key}`).textContent = note || '';
      if (title) $(`stat-${key}`).title = title; else $(`stat-${key}`).removeAttribute('title');
    }

    function render() {
      const pts = state.points;
      const times = pts.map((p) => p.t);
      const t1 = state.now ?? Date.now() / 1000;
      const base = { times, t0: t1 - HOUR, t1, interval: state.interval };
      const p = last();

      // Requests per second
      const reqSeries = [{ id: 'rps', label: 'Requests/s', colour: 'c0', values: pts.map((q) => q.requests_per_s) }];
      timeChart(charts.requests, {
        ...base, series: reqSeries, area: true, format: fmtRate, tickFormat: (v) => fmtCompact(v), minMax: 1,
        legend: $('legend-requests'), legendValue: (ser) => fmtRate(lastNum(ser)),
      });
      setStat('requests', fmtRate(p ? p.requests_per_s : null),
        p && isNum(p.active_streams) ? `${fmtCompact(p.active_streams)} streaming now` : '');

      // Tokens per second
      const tokSeries = [{ id: 'tps', label: 'Tokens/s', colour: 'c3', values: pts.map((q) => q.tokens_per_s ?? null) }];
      timeChart(charts.tokens, {
        ...base, series: tokSeries, area: true, format: fmtRate, tickFormat: (v) => fmtCompact(v), minMax: 10,
      });
      const tokensHour = sum(pts.map((q) => (isNum(q.tokens_per_s) ? q.tokens_per_s * state.interval : 0)));
      setStat('tokens', fmtRate(p ? p.tokens_per_s : null), pts.length ? `${fmtCompact(Math.round(tokensHour))} in the last hour` : '');

      // Time to first token, p50 and p99 per plan
      const plans = [...new Set([...keysOf('ttft_p50'), ...keysOf('ttft_p99')])].sort();
      seedColours('plan', plans);
      const ttftSeries = [];
      for (const plan of plans) {
        ttftSeries.push({ id: `${plan}-p50`, label: `${plan} p50`, colour: colour('plan', plan), values: pts.map((q) => q.ttft_p50?.[plan] ?? null) });
        ttftSeries.push({ id: `${plan}-p99`, label: `${plan} p99`, colour: colour('plan', plan), dashed: true, values: pts.map((q) => q.ttft_p99?.[plan] ?? null) });
      }
      timeChart(charts.ttft, {
        ...base, series: ttftSeries, format: fmtSeconds, minMax: 0.5,
        legend: $('legend-ttft'), legendValue: (ser) => fmtSeconds(lastNum(ser)),
      });
      const ttft = recent((q) => {
        const vals = Object.values(q.ttft_p50 || {}).filter(isNum);
        return vals.length ? Math.max(...vals) : null;
      });
      if (ttft) {
        const entries = Object.entries(ttft.point.ttft_p50 || {}).filter(([, v]) => isNum(v));
        const slowest = entries.reduce((a, b) => (b[1] > a[1] ? b : a))[0];
        setStat('ttft', fmtSeconds(ttft.value), `p50, slowest plan: ${slowest}`,
          `Median time to first token of the slowest plan (${slowest}) in the latest 5 s with traffic`);
      } else {
        setStat('ttft', '—', 'no recent requests');
      }

      // Queue depth per backend
      const backendNames = [...new Set([...keysOf('queue_depth'), ...keysOf('utilization'), ...state.backends.map((b) => b.name)])].sort();
      seedColours('backend', backendNames);
      const queueSeries = keysOf('queue_depth').map((b) => ({
        id: b, label: b, colour: colour('backend', b), values: pts.map((q) => q.queue_depth?.[b] ?? null),
      }));
      timeChart(charts.queue, {
        ...base, series: queueSeries, integer: true, format: (v) => fmtCompact(v),
        legend: $('legend-queue'), legendValue: (ser) => fmtCount(lastNum(ser)),
      });
      const queued = p ? sum(Object.values(p.queue_depth || {})) : null;
      setStat('queue', p ? fmtCompact(queued) : '—', p ? `waiting on ${Object.keys(p.queue_depth || {}).length} backend(s)` : '');

      // Refusals by reason (stacked)
      const reasons = keysOf('refusals');
      seedColours('reason', reasons);
      const refusalSeries = reasons.map((r) => ({
        id: r, label: r.replace(/_/g, ' '), colour: colour('reason', r), values: pts.map((q) => q.refusals?.[r] ?? 0),
      }));
      // Drawn per minute: 5 s buckets of small counts are too spiky to read.
      const BIN = 60;
      const binTimes = [];
      const binIndex = pts.map((q) => {
        const end = Math.ceil(q.t / BIN) * BIN;
        if (binTimes[binTimes.length - 1] !== end) binTimes.push(end);
        return binTimes.length - 1;
      });
      const binned = refusalSeries.map((ser) => {
        const values = new Array(binTimes.length).fill(0);
        ser.values.forEach((v, i) => { values[binIndex[i]] += isNum(v) ? v : 0; });
        return { ...ser, values };
      });
      timeChart(charts.refusals, {
        ...base, times: binTimes, interval: BIN, series: binned, stacked: true, bars: true, integer: true,
        format: (v) => fmtCompact(v), tipTime: (t) => `${fmtHM(t - BIN)}–${fmtHM(t)}`, emptyText: 'No refusals in the last hour',
        legend: $('legend-refusals'), legendValue: (ser) => fmtCompact(sum(ser.values)),
      });
      const refused = p ? sum(Object.values(p.refusals || {})) : null;
      const refusedHour = sum(pts.map((q) => sum(Object.values(q.refusals || {}))));
      setStat('refusals', p ? fmtCompact(refused) : '—', pts.length ? `${fmtCompact(refusedHour)} in the last hour` : '');

      // Utilisation per backend
      const utilSeries = keysOf('utilization').map((b) => ({
        id: b, label: b, colour: colour('backend', b), values: pts.map((q) => q.utilization?.[b] ?? null),
      }));
      timeChart(charts.utilization, {
        ...base, series: utilSeries, fixedMax: 1, format: fmtPercent, tickFormat: (v) => `${Math.round(v * 100)}%`,
        legend: $('legend-utilization'), legendValue: (ser) => fmtPercent(lastNum(ser)),
      });
      if (p && p.utilization && Object.keys(p.utilization).length) {
        const caps = new Map(state.backends.map((b) => [b.name, b.capacity]));
        const names = Object.keys(p.utilization).filter((b) => isNum(p.utilization[b]));
        const weights = names.map((b) => (isNum(caps.get(b)) && caps.get(b) > 0 ? caps.get(b) : 1));
        const total = sum(weights);
        const util = total ? sum(names.map((b, i) => p.utilization[b] * weights[i])) / total : null;
        setStat('utilization', fmtPercent(util), `of all slots, ${names.length} backend(s)`);
      } else {
        setStat('utilization', '—', '');
      }

      // Cache hit rate
      const cacheSeries = [{ id: 'cache', label: 'Hit rate', colour: 'c2', values: pts.map((q) => q.cache_hit_rate ?? null) }];
      timeChart(charts.cache, {
        ...base, series: cacheSeries, area: true, fixedMax: 1, format: fmtPercent, tickFormat: (v) => `${Math.round(v * 100)}%`,
        emptyText: 'No cache lookups in the last hour',
      });
      const cache = recent((q) => q.cache_hit_rate);
      setStat('cache', cache ? fmtPercent(cache.value) : '—', cache ? '' : 'no recent lookups');

      // Error rate
      const errSeries = [{ id: 'errors', label: 'Error rate', colour: 'c4', values: pts.map((q) => q.error_rate ?? null) }];
      timeChart(charts.errors, {
        ...base, series: errSeries, area: true, minMax: 0.05, format: fmtPercent, tickFormat: (v) => fmtPercent(v),
      });
      const errs = recent((q) => q.error_rate);
      setStat('errors', errs ? fmtPercent(errs.value) : '—', errs ? '' : 'no recent requests');

      // Totals
      const totals = state.totals || {};
      $('total-requests').textContent = fmtCount(totals.requests);
      $('total-requests').title = fmtExact(totals.requests);
      $('total-refusals').textContent = fmtCount(totals.refusals);
      $('total-refusals').title = fmtExact(totals.refusals);
      $('total-streams').textContent = fmtCount(isNum(totals.active_streams) ? totals.active_streams : p?.active_streams);
      const tokens = sum(pts.map((q) => (isNum(q.tokens_per_s) ? q.tokens_per_s * state.interval : 0)));
      $('total-tokens').textContent = pts.length ? fmtCompact(Math.round(tokens)) : '—';
      $('total-tokens').title = pts.length ? fmtExact(Math.round(tokens)) : '';

      renderBackends();
    }

    function renderBackends() {
      const body = clear($('backends-body'));
      const list = [...state.backends].sort((a, b) => String(a.name).localeCompare(String(b.name)));
      $('backends-empty').hidden = list.length > 0;
      for (const b of list) {
        const cap = isNum(b.capacity) ? b.capacity : 0;
        const used = isNum(b.in_use) ? b.in_use : 0;
        const models = Array.isArray(b.models) ? b.models : [];
        body.append(h('tr', { testid: 'backend-row', dataset: { backend: String(b.name) } },
          h('th', { scope: 'row', class: 'name-cell' },
            h('span', { class: `swatch ${colour('backend', String(b.name))}`, 'aria-hidden': 'true' }),
            h('span', { text: String(b.name) })),
          h('td', null, models.length ? h('span', { class: 'chips' }, models.map((m) => h('span', { class: 'chip', text: m }))) : h('span', { class: 'muted', text: 'none' })),
          h('td', null, b.ready ? badge('ready', 'ok') : badge('down', 'bad')),
          h('td', { class: 'use-cell' },
            h('span', { class: 'use-text', text: `${fmtCompact(used)} / ${fmtCompact(cap)}` }),
            shareBar(cap ? used / cap : 0, colour('backend', String(b.name)), isNum(b.utilization) ? fmtPercent(b.utilization) : fmtPercent(cap ? used / cap : 0))),
          h('td', { class: 'num', text: fmtCount(b.queued) })));
      }
    }

    function schedule(ms) {
      clearTimeout(state.timer);
      if (document.visibilityState === 'hidden') { setLive('paused'); return; }
      state.timer = setTimeout(poll, ms);
    }

    async function poll() {
      if (state.busy) return;
      state.busy = true;
      clearTimeout(state.timer);
      const url = state.lastT == null ? '/api/admin/stats' : `/api/admin/stats?since=${enc(state.lastT)}`;
      try {
        const data = await api('GET', url);
        merge(data || {});
        render();
        state.loaded = true;
        setLive('live');
        lastUpdate.textContent = `Updated ${fmtClock(state.now ?? Date.now() / 1000)}`;
        lastUpdate.dateTime = new Date((state.now ?? Date.now() / 1000) * 1000).toISOString();
        hideError('poll');
      } catch (err) {
        setLive('stale');
        showError(err, 'poll');
        if (!state.loaded) render();
      } finally {
        state.busy = false;
        schedule(POLL_MS);
      }
    }

    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') { setLive(state.loaded ? 'live' : 'connecting'); poll(); } else {
        clearTimeout(state.timer);
        setLive('paused');
      }
    });
    onResize($('chart-grid'), () => render());
    render();
    poll();
  }

  // ---------------------------------------------------------------------------------------------
  // Plans

  const PLAN_FIELDS = [
    { name: 'priority', label: 'Priority', kind: 'int', min: 0, max: 100, hint: 'Lower is served first (0–100).' },
    { name: 'requests_per_minute', label: 'Requests per minute', kind: 'int', min: 1 },
    { name: 'tokens_per_minute', label: 'Tokens per minute', kind: 'int', min: 1 },
    { name: 'tokens_per_day', label: 'Tokens per day', kind: 'int', min: 1 },
    { name: 'concurrent_streams', label: 'Concurrent streams', kind: 'int', min: 1 },
    { name: 'max_tokens', label: 'Max tokens per answer', kind: 'int', min: 1, hint: 'Larger requests are capped, not refused.' },
    { name: 'models', label: 'Models', kind: 'list', hint: 'Comma-separated. Empty allows every model.' },
    { name: 'queue_patience_s', label: 'Queue patience (seconds)', kind: 'float', min: 0, max: 3600, hint: 'How long a request may wait before a 503.' },
    { name: 'ttft_slo_s', label: 'TTFT SLO (seconds)', kind: 'float', above: 0, max: 3600, hint: 'The time to first token the plan promises.' },
    { name: 'cache_ttl_s', label: 'Cache TTL (seconds)', kind: 'float', min: 0, max: 86400, hint: '0 turns the response cache off.' },
  ];
  // A new plan starts from the server's defaults for a plan (lamplighter/traffic/plans.py).
  const NEW_PLAN = {
    priority: 2, requests_per_minute: 20, tokens_per_minute: 20000, tokens_per_day: 200000, concurrent_streams: 2,
    max_tokens: 1024, models: [], queue_patience_s: 10, ttft_slo_s: 5, cache_ttl_s: 300,
  };

  const parseModels = (text) => String(text).split(',').map((m) => m.trim()).filter(Boolean);
  const sortPlans = (plans) => [...plans].sort((a, b) => (a.priority - b.priority) || String(a.name).localeCompare(String(b.name)));

  async function fetchPlans() {
    const data = await api('GET', '/api/admin/plans');
    return sortPlans(Array.isArray(data?.data) ? data.data : []);
  }

  function initPlans() {
    const state = { plans: [], editing: null }; // editing: {name, isNew, original}
    const body = $('plans-body');
    const empty = $('plans-empty');
    const editor = $('plan-editor');
    const form = $('plan-form');
    const fieldsBox = $('plan-fields');
    const saved = $('plan-saved');
    const note = $('plan-note');
    const saveBtn = $('plan-save');

    function cellsFor(plan) {
      const models = Array.isArray(plan.models) ? plan.models : [];
      return [
        h('th', { scope: 'row', class: 'name-cell' }, h('span', { class: 'plan-name', text: plan.name })),
        h('td', { class: 'num', text: String(plan.priority ?? '—') }),
        h('td', { class: 'num', text: fmtLimit(plan.requests_per_minute), title: fmtExact(plan.requests_per_minute) }),
        h('td', { class: 'num', text: fmtLimit(plan.tokens_per_minute), title: fmtExact(plan.tokens_per_minute) }),
        h('td', { class: 'num', text: fmtLimit(plan.tokens_per_day), title: fmtExact(plan.tokens_per_day) }),
        h('td', { class: 'num', text: fmtLimit(plan.concurrent_streams) }),
        h('td', { class: 'num', text: fmtLimit(plan.max_tokens), title: fmtExact(plan.max_tokens) }),
        h('td', { class: 'models-cell' }, models.length
          ? h('span', { class: 'chips' }, models.map((m) => h('span', { class: 'chip', text: m })))
          : h('span', { class: 'muted', text: 'all' })),
        h('td', { class: 'num', text: fmtDuration(plan.queue_patience_s) }),
        h('td', { class: 'num', text: fmtSeconds(plan.ttft_slo_s) }),
        h('td', { class: 'num', text: plan.cache_ttl_s === 0 ? 'off' : fmtDuration(plan.cache_ttl_s) }),
        h('td', { class: 'actions-cell' },
          h('button', {
            type: 'button', class: 'btn btn-small', testid: 'plan-edit', 'aria-label': `Edit plan ${plan.name}`,
            onclick: () => openEditor(plan.name),
          }, 'Edit')),
      ];
    }

    function render(flashName) {
      clear(body);
      for (const plan of state.plans) {
        const row = h('tr', { testid: 'plan-row', dataset: { plan: plan.name } }, cellsFor(plan));
        if (state.editing && !state.editing.isNew && state.editing.name === plan.name) row.classList.add('selected');
        if (plan.name === flashName) row.classList.add('flash');
        body.append(row);
      }
      empty.hidden = state.plans.length > 0;
      empty.textContent = 'No plans yet.';
    }

    function buildFields() {
      clear(fieldsBox);
      const nameInput = h('input', {
        id: 'plan-field-name', name: 'name', type: 'text', testid: 'plan-name', autocomplete: 'off', spellcheck: 'false',
        maxlength: 64, required: true,
      });
      fieldsBox.append(h('div', { class: 'field field-name' },
        h('label', { for: 'plan-field-name', text: 'Name' }), nameInput,
        h('p', { class: 'field-error', id: 'plan-error-name', hidden: true })));
      for (const f of PLAN_FIELDS) {
        const id = `plan-field-${f.name}`;
        const attrs = { id, name: f.name, autocomplete: 'off', 'aria-describedby': `plan-hint-${f.name} plan-error-${f.name}` };
        if (f.kind === 'list') Object.assign(attrs, { type: 'text', spellcheck: 'false', placeholder: 'all models' });
        else Object.assign(attrs, {
          type: 'number', inputmode: f.kind === 'int' ? 'numeric' : 'decimal', step: f.kind === 'int' ? '1' : 'any',
          min: f.min ?? f.above, max: f.max, required: true,
        });
        fieldsBox.append(h('div', { class: `field${f.kind === 'list' ? ' field-wide' : ''}` },
          h('label', { for: id, text: f.label }),
          h('input', attrs),
          h('p', { class: 'field-hint', id: `plan-hint-${f.name}`, text: f.hint || '' }),
          h('p', { class: 'field-error', id: `plan-error-${f.name}`, hidden: true })));
      }
    }

    function fill(values) {
      for (const f of PLAN_FIELDS) {
        const input = form.elements.namedItem(f.name);
        const v = values[f.name];
        input.value = f.kind === 'list' ? (Array.isArray(v) ? v.join(', ') : '') : (isNum(v) ? String(v) : '');
      }
    }

    function clearErrors() {
      for (const el of form.querySelectorAll('.field-error')) { el.hidden = true; el.textContent = ''; }
      for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    }

    function fieldError(name, message) {
      const input = form.elements.namedItem(name);
      const el = $(`plan-error-${name}`);
      if (!input || !el) return false;
      input.setAttribute('aria-invalid', 'true');
      el.textContent = message;
      el.hidden = false;
      return true;
    }

    function openEditor(name) {
      const plan = state.plans.find((p) => p.name === name);
      if (!plan) return;
      state.editing = { name, isNew: false, original: plan };
      showEditor(`Edit plan “${name}”`);
      const nameInput = form.elements.namedItem('name');
      nameInput.value = name;
      nameInput.readOnly = true;
      fill(plan);
      saveBtn.textContent = 'Save changes';
      render();
      form.elements.namedItem('priority').focus({ preventScroll: true });
    }

    function openNew() {
      state.editing = { name: '', isNew: true, original: null };
      showEditor('New plan');
      const nameInput = form.elements.namedItem('name');
      nameInput.value = '';
      nameInput.readOnly = false;
      fill(NEW_PLAN);
      saveBtn.textContent = 'Create plan';
      render();
      nameInput.focus({ preventScroll: true });
    }

    function showEditor(title) {
      $('plan-form-title').textContent = title;
      clearErrors();
      saved.hidden = true;
      note.textContent = '';
      editor.hidden = false;
      editor.scrollIntoView({ block: 'nearest' });
    }

    /** Hide the editor and give keyboard focus back to what opened it (the plan's Edit button,
     * or "New plan"), rather than dropping it to <body> when the focused editor disappears. */
    function closeEditor() {
      const edited = state.editing;
      editor.hidden = true;
      state.editing = null;
      render();
      const row = edited && !edited.isNew
        ? [...body.querySelectorAll('tr[data-testid="plan-row"]')].find((tr) => tr.dataset.plan === edited.name)
        : null;
      const opener = row ? row.querySelector('[data-testid="plan-edit"]') : $('plan-new');
      opener?.focus();
    }

    /** Read and check the form: {values} or null (errors shown next to the fields). */
    function readForm() {
      clearErrors();
      const values = {};
      let firstBad = null;
      const bad = (name, message) => { fieldError(name, message); if (!firstBad) firstBad = name; };
      if (state.editing.isNew) {
        const name = form.elements.namedItem('name').value.trim();
        if (!name) bad('name', 'Give the plan a name.');
        else if (name.length > 64) bad('name', 'At most 64 characters.');
        else if (state.plans.some((p) => p.name === name)) bad('name', `A plan named “${name}” exists already; edit it instead.`);
        values.name = name;
      }
      for (const f of PLAN_FIELDS) {
        const raw = form.elements.namedItem(f.name).value.trim();
        if (f.kind === 'list') { values[f.name] = parseModels(raw); continue; }
        if (raw === '') { bad(f.name, 'Required.'); continue; }
        const n = Number(raw);
        if (!Number.isFinite(n)) { bad(f.name, 'Enter a number.'); continue; }
        if (f.kind === 'int' && !Number.isInteger(n)) { bad(f.name, 'Enter a whole number.'); continue; }
        if (f.min != null && n < f.min) { bad(f.name, `At least ${f.min}.`); continue; }
        if (f.above != null && n <= f.above) { bad(f.name, `More than ${f.above}.`); continue; }
        if (f.max != null && n > f.max) { bad(f.name, `At most ${fmtExact(f.max)}.`); continue; }
        values[f.name] = n;
      }
      if (firstBad) {
        form.elements.namedItem(firstBad).focus();
        return null;
      }
      return values;
    }

    function changesFrom(values, original) {
      const changes = {};
      for (const f of PLAN_FIELDS) {
        const v = values[f.name];
        if (f.kind === 'list') {
          const before = Array.isArray(original[f.name]) ? original[f.name] : [];
          if (v.join('\n') !== before.join('\n')) changes[f.name] = v;
        } else if (v !== original[f.name]) {
          changes[f.name] = v;
        }
      }
      return changes;
    }

    async function save(event) {
      event.preventDefault();
      if (!state.editing) return;
      const values = readForm();
      if (!values) return;
      const { isNew } = state.editing;
      const name = isNew ? values.name : state.editing.name;
      const body = {};
      if (isNew) { for (const f of PLAN_FIELDS) body[f.name] = values[f.name]; } else Object.assign(body, changesFrom(values, state.editing.original));
      if (!Object.keys(body).length) {
        note.textContent = 'Nothing changed.';
        return;
      }
      note.textContent = '';
      saveBtn.disabled = true;
      try {
        const plan = await api('PUT', `/api/admin/plans/${enc(name)}`, body);
        const updated = plan && typeof plan === 'object' && plan.name ? plan : { ...(state.editing.original || {}), ...body, name };
        state.plans = sortPlans([...state.plans.filter((p) => p.name !== updated.name), updated]);
        state.editing = { name: updated.name, isNew: false, original: updated };
        $('plan-form-title').textContent = `Edit plan “${updated.name}”`;
        const nameInput = form.elements.namedItem('name');
        nameInput.value = updated.name;
        nameInput.readOnly = true;
        saveBtn.textContent = 'Save changes';
        fill(updated);
        render(updated.name);
        hideError();
        saved.textContent = isNew ? `Created plan “${updated.name}”.` : `Saved “${updated.name}”.`;
        saved.hidden = false;
        announce(saved.textContent);
      } catch (err) {
        if (err instanceof ApiError && err.param && PLAN_FIELDS.some((f) => f.name === err.param)) fieldError(err.param, err.message);
        showError(err);
      } finally {
        saveBtn.disabled = false;
      }
    }

    buildFields();
    form.addEventListener('submit', save);
    form.addEventListener('input', () => { saved.hidden = true; note.textContent = ''; });
    $('plan-new').addEventListener('click', openNew);
    $('plan-close').addEventListener('click', closeEditor);
    $('plan-cancel').addEventListener('click', closeEditor);
    editor.addEventListener('keydown', (event) => { if (event.key === 'Escape') closeEditor(); });

    fetchPlans().then((plans) => {
      state.plans = plans;
      render();
    }).catch((err) => {
      empty.textContent = 'Could not load the plans.';
      showError(err);
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Users

  function initUsers() {
    const PAGE = 50;
    // notice: the last action's result on the open user ({email, text}), shown until another user opens.
    const state = { users: [], hasMore: false, selected: null, detail: null, plans: null, seq: 0, detailSeq: 0, query: '', notice: null };
    const search = $('user-search');
    const body = $('users-body');
    const empty = $('users-empty');
    const panel = $('user-detail');
    const more = $('users-more');
    const count = $('users-count');

    function userCells(u) {
      const email = String(u.email);
      return [
        h('td', { class: 'email-cell' },
          h('button', { type: 'button', class: 'link-btn', text: email, title: email, 'aria-label': `Open ${email}` }),
          u.is_admin ? badge('admin', 'info') : null,
          email === me ? badge('you', 'plain') : null),
        h('td', null, badge(String(u.plan ?? '—'), 'plan')),
        h('td', { title: u.disabled_reason || '' }, statusBadge(u)),
        h('td', { class: 'num', text: fmtCount(u.tokens_24h), title: fmtExact(u.tokens_24h) }),
        h('td', { class: 'num', text: fmtCount(u.requests_24h), title: fmtExact(u.requests_24h) }),
        h('td', { class: 'col-created', text: fmtDate(u.created_at) }),
      ];
    }

    function userRow(u) {
      const row = h('tr', { testid: 'user-row', class: 'clickable', dataset: { email: String(u.email) } }, userCells(u));
      if (u.email === state.selected) row.classList.add('selected');
      row.addEventListener('click', () => openUser(u.email));
      return row;
    }

    function render() {
      clear(body);
      for (const u of state.users) body.append(userRow(u));
      empty.hidden = state.users.length > 0;
      empty.textContent = state.query ? `No users match “${state.query}”.` : 'No users yet.';
      // Say how far the list goes, so older accounts are never silently cut off.
      const n = state.users.length;
      more.hidden = !state.hasMore;
      count.hidden = n === 0;
      count.textContent = state.hasMore ? `Showing the ${fmtExact(n)} newest; load more or search to find others.`
        : `All ${fmtExact(n)} shown.`;
    }

    function updateRow(user) {
      const i = state.users.findIndex((u) => u.email === user.email);
      if (i < 0) return;
      state.users[i] = { ...state.users[i], ...user };
      const old = [...body.querySelectorAll('tr[data-testid="user-row"]')].find((tr) => tr.dataset.email === user.email);
      if (old) {
        const row = userRow(state.users[i]);
        row.classList.add('flash');
        old.replaceWith(row);
      }
    }

    function markSelected() {
      for (const tr of body.querySelectorAll('tr[data-testid="user-row"]')) tr.classList.toggle('selected', tr.dataset.email === state.selected);
    }

    /** The first page of users matching q or, with `older`, the next page after those shown. */
    async function load(q, { older = false } = {}) {
      const seq = ++state.seq;
      state.query = q;
      const offset = older ? state.users.length : 0;
      const params = new URLSearchParams({ q, limit: String(PAGE), offset: String(offset) });
      more.disabled = true;
      try {
        const data = await api('GET', `/api/admin/users?${params}`);
        if (seq !== state.seq) return;
        const page = Array.isArray(data?.data) ? data.data : [];
        const known = new Set(older ? state.users.map((u) => u.email) : []);
        state.users = [...(older ? state.users : []), ...page.filter((u) => !known.has(u.email))];
        state.hasMore = Boolean(data?.has_more);
        render();
        hideError('search');
      } catch (err) {
        if (seq !== state.seq) return;
        empty.hidden = false;
        empty.textContent = 'Could not load the users.';
        showError(err, 'search');
      } finally {
        if (seq === state.seq) more.disabled = false;
      }
    }
    more.addEventListener('click', () => load(state.query, { older: true }));

    let debounce = 0;
    search.addEventListener('input', () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => load(search.value.trim()), 250);
    });
    search.addEventListener('keydown', (event) => {
      if (event.key === 'Enter') { clearTimeout(debounce); load(search.value.trim()); }
    });

    async function plans() {
      if (!state.plans) {
        try { state.plans = (await fetchPlans()).map((p) => p.name); } catch (err) { showError(err); return []; }
      }
      return state.plans;
    }

    async function openUser(email, { focus = true } = {}) {
      state.selected = email;
      if (state.notice?.email !== email) state.notice = null;
      markSelected();
      const seq = ++state.detailSeq;
      panel.hidden = false;
      panel.setAttribute('aria-busy', 'true');
      if (!state.detail || state.detail.user?.email !== email) {
        clear(panel).append(h('p', { class: 'empty', text: 'Loading…' }));
      }
      try {
        const [detail, planNames] = await Promise.all([api('GET', `/api/admin/users/${enc(email)}`), plans()]);
        if (seq !== state.detailSeq) return;
        state.detail = detail;
        renderDetail(detail, planNames);
        if (detail?.user) updateRow(detail.user);
        markSelected();
        if (focus) {
          panel.focus({ preventScroll: true });
          panel.scrollIntoView({ block: 'nearest' });
        }
      } catch (err) {
        if (seq !== state.detailSeq) return;
        clear(panel).append(h('p', { class: 'empty', text: 'Could not load this user.' }));
        showError(err);
      } finally {
        if (seq === state.detailSeq) panel.removeAttribute('aria-busy');
      }
    }

    function closeDetail() {
      panel.hidden = true;
      state.selected = null;
      state.detail = null;
      state.notice = null;
      markSelected();
    }

    /** Run an action on the open user, then refresh the panel and the row, which then shows what
     * was done (`done`: the text, or a function of the API's answer that gives it). */
    async function act(button, fn, done) {
      const email = state.selected;
      if (button) button.disabled = true;
      state.notice = null;
      try {
        const answer = await fn();
        hideError();
        const text = typeof done === 'function' ? done(answer) : done;
        if (text) {
          state.notice = { email, text };
          announce(text);
        }
      } catch (err) {
        showError(err);
      } finally {
        if (button) button.disabled = false;
        if (email && state.selected === email) await openUser(email, { focus: false });
        // The panel was redrawn: keep keyboard focus in it rather than on <body>.
        if (!panel.hidden && (!document.activeElement || document.activeElement === document.body)) {
          panel.focus({ preventScroll: true });
        }
      }
    }

    function renderDetail(detail, planNames) {
      const u = detail?.user || {};
      const email = String(u.email ?? state.selected);
      const keys = Array.isArray(detail?.keys) ? detail.keys : [];
      const usage = detail?.usage || {};
      const days = Array.isArray(usage.days) ? usage.days : [];
      clear(panel);

      // Head
      panel.append(h('div', { class: 'detail-head' },
        h('div', { class: 'detail-title' },
          h('h2', { class: 'card-title detail-email', text: email, testid: 'user-detail-email' }),
          h('div', { class: 'badges' }, statusBadge(u), badge(String(u.plan ?? '—'), 'plan'),
            u.is_admin ? badge('admin', 'info') : null, email === me ? badge('you', 'plain') : null)),
        h('button', {
          type: 'button', class: 'icon-btn close-btn', testid: 'user-detail-close', 'aria-label': 'Close details', title: 'Close',
          onclick: closeDetail,
        })));
      if (state.notice?.email === email) panel.append(h('p', { class: 'saved', testid: 'user-action-done', text: state.notice.text }));

      if (u.status && u.status !== 'active') {
        const until = u.status === 'suspended' ? (u.disabled_until ? `until ${fmtDateTime(u.disabled_until)}` : 'until restored') : '';
        panel.append(h('div', { class: `notice notice-${u.status === 'banned' ? 'bad' : 'warn'}`, testid: 'user-disabled' },
          h('strong', { text: u.status === 'banned' ? 'Banned' : 'Suspended' }),
          until ? ` ${until}` : '',
          u.disabled_reason ? h('span', { class: 'notice-reason', text: `Reason: ${u.disabled_reason}` }) : null));
      }
      const tban = u.temporary_ban;
      if (tban) {
        // The abuse scores' automatic ban (repeated violations), apart from an operator's.
        panel.append(h('div', { class: 'notice notice-warn', testid: 'user-temporary-ban' },
          h('strong', { text: 'Temporarily banned' }),
          ` until ${fmtDateTime(tban.until)}`,
          h('span', { class: 'notice-reason', text: `After repeated violations, most recently: ${String(tban.reason ?? '').replace(/_/g, ' ')}${tban.repeat > 1 ? ` (ban ${tban.repeat})` : ''}. Restore lifts it.` })));
      }

      panel.append(h('dl', { class: 'facts' },
        h('div', null, h('dt', { text: 'Joined' }), h('dd', { text: fmtDate(u.created_at), title: fmtDateTime(u.created_at) })),
        h('div', null, h('dt', { text: 'Tokens, 24 h' }), h('dd', { text: fmtCount(u.tokens_24h), title: fmtExact(u.tokens_24h) })),
        h('div', null, h('dt', { text: 'Requests, 24 h' }), h('dd', { text: fmtCount(u.requests_24h), title: fmtExact(u.requests_24h) })),
        h('div', null, h('dt', { text: 'Tokens, 14 days' }), h('dd', { text: fmtCount(usage.total_tokens), title: fmtExact(usage.total_tokens) }))));

      // Plan
      const names = [...planNames];
      if (u.plan && !names.includes(u.plan)) names.unshift(u.plan);
      const select = h('select', { id: 'user-plan', testid: 'user-plan', name: 'plan' },
        names.map((name) => h('option', { value: name, text: name, selected: name === u.plan })));
      const planSave = h('button', { type: 'submit', class: 'btn btn-primary btn-small', testid: 'user-plan-save', disabled: true }, 'Change plan');
      select.addEventListener('change', () => { planSave.disabled = select.value === u.plan; });
      const planForm = h('form', { class: 'inline-form' },
        h('label', { for: 'user-plan', class: 'inline-label', text: 'Plan' }), select, planSave);
      planForm.addEventListener('submit', (event) => {
        event.preventDefault();
        const plan = select.value;
        if (!plan || plan === u.plan) return;
        act(planSave, () => api('PUT', `/api/admin/users/${enc(email)}/plan`, { plan }), `Moved ${email} to ${plan}.`);
      });
      panel.append(h('section', { class: 'detail-section' }, planForm));

      // Access
      const actions = h('div', { class: 'detail-actions' });
      if (u.status === 'active' || !u.status) {
        actions.append(h('button', {
          type: 'button', class: 'btn btn-small', testid: 'user-suspend',
          onclick: async (event) => {
            const button = event.currentTarget;
            const values = await ask({
              title: `Suspend ${email}?`,
              text: 'They cannot use the chat or the API until the suspension ends or you restore them.',
              ok: 'Suspend',
              fields: [
                { name: 'reason', label: 'Reason', testid: 'suspend-reason', required: true, placeholder: 'Shown to the operators, not the user' },
                { name: 'days', label: 'Days', testid: 'suspend-days', type: 'number', min: 1, placeholder: 'until restored', hint: 'Leave empty to suspend until restored.' },
              ],
            });
            if (!values) return;
            act(button, () => api('POST', `/api/admin/users/${enc(email)}/suspend`, { reason: values.reason, days: values.days ?? null }), `Suspended ${email}.`);
          },
        }, 'Suspend'));
      }
      if (u.status !== 'banned') {
        actions.append(h('button', {
          type: 'button', class: 'btn btn-small btn-danger-outline', testid: 'user-ban',
          onclick: async (event) => {
            const button = event.currentTarget;
            const values = await ask({
              title: `Ban ${email}?`,
              text: 'Their sessions and API keys stop working until you restore the account.',
              ok: 'Ban',
              fields: [{ name: 'reason', label: 'Reason', testid: 'ban-reason', required: true }],
            });
            if (!values) return;
            act(button, () => api('POST', `/api/admin/users/${enc(email)}/ban`, { reason: values.reason }), `Banned ${email}.`);
          },
        }, 'Ban'));
      }
      if ((u.status && u.status !== 'active') || tban) {
        actions.append(h('button', {
          type: 'button', class: 'btn btn-small btn-primary', testid: 'user-restore',
          onclick: (event) => act(event.currentTarget, () => api('POST', `/api/admin/users/${enc(email)}/restore`),
            (answer) => (answer?.temporary_ban_lifted ? `Restored ${email}; temporary ban lifted.` : `Restored ${email}.`)),
        }, 'Restore'));
      }
      panel.append(h('section', { class: 'detail-section' }, h('h3', { class: 'section-title', text: 'Access' }), actions));

      // Usage chart
      const chart = h('div', { class: 'chart chart-small', testid: 'user-usage-chart', role: 'img', 'aria-label': 'Daily tokens, last 14 days' });
      const legend = h('ul', { class: 'legend' });
      panel.append(h('section', { class: 'detail-section' },
        h('div', { class: 'section-head' },
          h('h3', { class: 'section-title', text: 'Tokens per day' }),
          h('span', { class: 'section-note', text: `${fmtCount(usage.total_tokens)} in 14 days` })),
        chart, legend));
      const drawUsage = () => barChart(chart, {
        labels: days.map((d) => fmtDay(d.day)),
        titles: days.map((d) => `${fmtDay(d.day)} · ${fmtExact(d.requests)} requests`),
        series: [
          { label: 'Prompt', colour: 'c0', values: days.map((d) => d.prompt_tokens) },
          { label: 'Completion', colour: 'c1', values: days.map((d) => d.completion_tokens) },
        ],
        legend,
        legendValue: (ser) => fmtCompact(sum(ser.values)),
      });
      drawUsage();

      // API keys
      const keyRows = keys.map((k) => h('tr', { testid: 'key-row', dataset: { key: String(k.id) } },
        h('td', null, h('span', { class: 'key-name', text: k.name || '(unnamed)' }), h('code', { class: 'key-prefix', text: `${k.prefix ?? ''}…` })),
        h('td', { text: fmtDate(k.created_at), title: fmtDateTime(k.created_at) }),
        h('td', { text: k.last_used_at ? fmtAgo(k.last_used_at) : 'never', title: k.last_used_at ? fmtDateTime(k.last_used_at) : '' }),
        h('td', { class: 'actions-cell' }, k.revoked_at
          ? h('span', { class: 'badge badge-plain', title: fmtDateTime(k.revoked_at), text: 'revoked' })
          : h('button', {
            type: 'button', class: 'btn btn-small btn-danger-outline', testid: 'key-revoke', 'aria-label': `Revoke key ${k.name || k.prefix}`,
            onclick: async (event) => {
              const button = event.currentTarget;
              const values = await ask({
                title: `Revoke “${k.name || k.prefix}”?`,
                text: `Programs using ${k.prefix ?? 'this key'}… stop working at once. This cannot be undone.`,
                ok: 'Revoke',
              });
              if (!values) return;
              act(button, () => api('DELETE', `/api/admin/keys/${enc(k.id)}`), `Revoked key ${k.name || k.prefix}.`);
            },
          }, 'Revoke'))));
      panel.append(h('section', { class: 'detail-section' },
        h('div', { class: 'section-head' },
          h('h3', { class: 'section-title', text: 'API keys' }),
          h('span', { class: 'section-note', text: `${keys.filter((k) => !k.revoked_at).length} live` })),
        keys.length
          ? h('div', { class: 'table-wrap' }, h('table', { class: 'table table-compact', testid: 'user-keys' },
            h('thead', null, h('tr', null, h('th', { scope: 'col', text: 'Key' }), h('th', { scope: 'col', text: 'Created' }),
              h('th', { scope: 'col', text: 'Last used' }), h('th', { scope: 'col' }, h('span', { class: 'sr-only', text: 'State' })))),
            h('tbody', null, keyRows)))
          : h('p', { class: 'empty', text: 'No API keys.' })));
    }

    onResize(panel, () => {
      const chart = panel.querySelector('[data-testid="user-usage-chart"]');
      if (chart && state.detail) {
        const days = state.detail.usage?.days || [];
        barChart(chart, {
          labels: days.map((d) => fmtDay(d.day)),
          titles: days.map((d) => `${fmtDay(d.day)} · ${fmtExact(d.requests)} requests`),
          series: [
            { label: 'Prompt', colour: 'c0', values: days.map((d) => d.prompt_tokens) },
            { label: 'Completion', colour: 'c1', values: days.map((d) => d.completion_tokens) },
          ],
        });
      }
    });
    panel.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && !dialog.open) closeDetail();
    });

    const initial = new URLSearchParams(window.location.search).get('q') || '';
    if (initial) {
      search.value = initial;
      load(initial).then(() => {
        const hit = state.users.find((u) => String(u.email).toLowerCase() === initial.toLowerCase());
        if (hit) openUser(hit.email);
      });
    } else {
      load('');
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Usage

  function initUsage() {
    const period = $('usage-period');
    const byPlan = $('usage-by-plan');
    const top = $('usage-top-users');
    let seq = 0;
    const fromUrl = new URLSearchParams(window.location.search).get('hours');
    if (fromUrl && [...period.options].some((o) => o.value === fromUrl)) period.value = fromUrl;

    const tokensOf = (r) => (isNum(r.prompt_tokens) ? r.prompt_tokens : 0) + (isNum(r.completion_tokens) ? r.completion_tokens : 0);
    const numCell = (v, extra) => h('td', { class: extra ? `num ${extra}` : 'num', text: fmtCount(v), title: fmtExact(v) });

    function fill(table, rows) {
      const tbody = clear(table.tBodies[0]);
      tbody.append(...rows);
      table.parentElement.querySelector('.empty').hidden = rows.length > 0;
    }

    function render(data) {
      const plans = Array.isArray(data?.by_plan) ? [...data.by_plan] : [];
      const users = Array.isArray(data?.top_users) ? data.top_users : [];
      const allTokens = sum(plans.map(tokensOf));
      plans.sort((a, b) => tokensOf(b) - tokensOf(a));
      seedColours('plan', plans.map((p) => String(p.plan)));
      $('usage-requests').textContent = fmtCount(sum(plans.map((p) => p.requests)));
      $('usage-prompt').textContent = fmtCount(sum(plans.map((p) => p.prompt_tokens)));
      $('usage-completion').textContent = fmtCount(sum(plans.map((p) => p.completion_tokens)));
      $('usage-users').textContent = fmtCount(sum(plans.map((p) => p.users)));

      fill(byPlan, plans.map((p) => h('tr', { testid: 'usage-plan-row', dataset: { plan: String(p.plan) } },
        h('th', { scope: 'row', class: 'name-cell' },
          h('span', { class: `swatch ${colour('plan', String(p.plan))}`, 'aria-hidden': 'true' }), h('span', { text: String(p.plan) })),
        numCell(p.users), numCell(p.requests), numCell(p.prompt_tokens, 'col-detail'), numCell(p.completion_tokens, 'col-detail'), numCell(tokensOf(p)),
        h('td', { class: 'col-share' }, shareBar(allTokens ? tokensOf(p) / allTokens : 0, colour('plan', String(p.plan)))))));

      const userTotal = (u) => (isNum(u.total_tokens) ? u.total_tokens : tokensOf(u));
      const maxUser = Math.max(0, ...users.map(userTotal));
      const denominator = allTokens || maxUser;
      fill(top, users.map((u, i) => h('tr', { testid: 'usage-user-row', dataset: { email: String(u.email) } },
        h('td', { class: 'num muted', text: String(i + 1) }),
        h('th', { scope: 'row', class: 'email-cell' },
          h('a', { href: `/admin/users?q=${enc(String(u.email))}`, text: String(u.email), title: String(u.email) })),
        h('td', null, badge(String(u.plan ?? '—'), 'plan')),
        numCell(u.requests), numCell(u.prompt_tokens, 'col-detail'), numCell(u.completion_tokens, 'col-detail'), numCell(userTotal(u)),
        h('td', { class: 'col-share' }, shareBar(denominator ? userTotal(u) / denominator : 0, colour('plan', String(u.plan)))))));
    }

    async function load() {
      const my = ++seq;
      const hours = period.value;
      byPlan.closest('section').setAttribute('aria-busy', 'true');
      try {
        const data = await api('GET', `/api/admin/usage?hours=${enc(hours)}`);
        if (my !== seq) return;
        render(data);
        hideError();
      } catch (err) {
        if (my !== seq) return;
        showError(err);
      } finally {
        if (my === seq) byPlan.closest('section').removeAttribute('aria-busy');
      }
    }

    period.addEventListener('change', () => {
      const url = new URL(window.location.href);
      url.searchParams.set('hours', period.value);
      window.history.replaceState(null, '', url);
      load();
    });
    load();
  }

  // ---------------------------------------------------------------------------------------------
  // Flywheel

  const NOT_YET = 'Not collected yet';
  // Why credits were refused or clawed back, as the server names the reasons.
  const CREDIT_REASONS = {
    too_fast: 'too fast to have read the answer',
    flagged_for_abuse: 'flagged for abuse',
    same_on_everything: 'same rating on everything',
    low_trust: 'low trust',
  };
  const creditReason = (reason) => CREDIT_REASONS[reason] || String(reason).replace(/_/g, ' ');
  /** A score on the Elo scale: 1032. */
  const fmtScore = (v) => (isNum(v) ? String(Math.round(v)) : '—');
  /** A p-value to two significant digits: 0.42, 0.031, 0.0042; below 0.0001, "<0.0001". */
  const fmtP = (p) => (!isNum(p) ? '—' : p < 1e-4 ? '<0.0001' : String(Number(p.toPrecision(2))));
  /** A trust value or bucket edge: 0, 0.2, 0.67, 1. */
  const fmtTrust = (v) => (isNum(v) ? String(Math.round(v * 100) / 100) : '?');
  /** The first block of a user id, enough to tell voters apart. */
  const shortId = (id) => String(id ?? '').split('-')[0].slice(0, 8) || '?';

  function initFlywheel() {
    const bodies = {
      feedback: $('fly-feedback-body'),
      reasons: $('fly-reasons-body'),
      consent: $('fly-consent-body'),
      trust: $('fly-trust-body'),
      credits: $('fly-credits-body'),
      leaderboard: $('fly-leaderboard-body'),
      exports: $('fly-exports-body'),
    };
    const reviewButton = $('review-now');
    const reviewResult = $('review-result');
    let weekDays = [];
    let trustShown = null;

    function bigNumber(value, label, extraClass, testid) {
      return h('div', { class: `big${extraClass ? ` ${extraClass}` : ''}`, testid },
        h('span', { class: 'big-value', text: value }), h('span', { class: 'big-label', text: label }));
    }

    /** Bars for name → count, longest first. */
    function barList(entries, { colourFamily, format = fmtCompact, testid } = {}) {
      const total = sum(entries.map(([, v]) => v));
      const max = Math.max(0, ...entries.map(([, v]) => v));
      return h('ul', { class: 'bar-list', testid }, entries.map(([name, v], i) => {
        const fill = h('span', { class: `share-fill ${colourFamily ? colour(colourFamily, name) : `c${i % PALETTE}`}` });
        fill.style.width = `${max ? ((v / max) * 100).toFixed(2) : 0}%`;
        return h('li', { class: 'bar-item' },
          h('span', { class: 'bar-name', text: name }),
          h('span', { class: 'share-track', 'aria-hidden': 'true' }, fill),
          h('span', { class: 'bar-value', text: format(v), title: total ? fmtPercent(v / total) : '' }));
      }));
    }

    /** Small labelled figures (a <dl>): [[label, value, testid, title], ...]. */
    function facts(extraClass, items) {
      return h('dl', { class: `facts ${extraClass}` }, items.map(([label, value, testid, title]) =>
        h('div', { title }, h('dt', { text: label }), h('dd', { testid, text: value }))));
    }

    function drawWeek() {
      const chart = bodies.feedback.querySelector('.chart');
      if (!chart) return;
      barChart(chart, {
        labels: weekDays.map((d) => fmtWeekday(d.day)),
        titles: weekDays.map((d) => fmtDay(d.day)),
        series: [
          { label: 'Thumbs up', colour: 'c2', values: weekDays.map((d) => d.thumbs_up) },
          { label: 'Thumbs down', colour: 'c4', values: weekDays.map((d) => d.thumbs_down) },
        ],
        legend: bodies.feedback.querySelector('.legend'),
        legendValue: (ser) => `${fmtCompact(sum(ser.values))} this week`,
      });
    }

    function renderFeedback(fb) {
      const el = clear(bodies.feedback);
      const up = isNum(fb?.thumbs_up) ? fb.thumbs_up : 0;
      const down = isNum(fb?.thumbs_down) ? fb.thumbs_down : 0;
      weekDays = Array.isArray(fb?.last_7_days) ? fb.last_7_days : [];
      el.append(h('div', { class: 'bigs' },
        bigNumber(fmtCompact(up), 'thumbs up', 'good'),
        bigNumber(fmtCompact(down), 'thumbs down', 'bad'),
        bigNumber(up + down ? fmtPercent(up / (up + down)) : '—', 'positive')));
      if (weekDays.some((d) => d.thumbs_up || d.thumbs_down)) {
        el.append(h('div', { class: 'chart chart-small', role: 'img', 'aria-label': 'Ratings per day, last 7 days' }), h('ul', { class: 'legend' }));
        drawWeek();
      } else {
        el.append(h('p', { class: 'empty', text: 'No ratings in the last 7 days.' }));
      }
    }

    function renderReasons(byReason) {
      const el = clear(bodies.reasons);
      const entries = Object.entries(byReason && typeof byReason === 'object' ? byReason : {})
        .filter(([, v]) => isNum(v)).sort((a, b) => b[1] - a[1]);
      if (!entries.length) { el.append(emptyState('No reasons given yet')); return; }
      el.append(barList(entries.map(([k, v]) => [k.replace(/_/g, ' '), v]), { testid: 'flywheel-reason-list' }));
    }

    function renderConsent(rate) {
      const el = clear(bodies.consent);
      if (rate === null) { el.append(emptyState('No users yet')); return; }
      if (!isNum(rate)) { el.append(emptyState(NOT_YET)); return; }
      el.append(bigNumber(fmtPercent(rate), 'of users opted in', null, 'consent-rate'), shareBar(rate, 'c2', ''));
    }

    // Rater trust ---------------------------------------------------------------------------

    /** The trust histogram: one bar per bucket on a 0..1 axis, the minimum trust marked. */
    function drawTrust() {
      const chart = bodies.trust.querySelector('.trust-chart');
      if (!chart || !trustShown) return;
      const { buckets, min_trust: minTrust } = trustShown;
      const width = Math.max(220, Math.floor(chart.clientWidth || 360));
      const height = Math.max(110, Math.floor(chart.clientHeight || 150));
      const n = buckets.length;
      const { top, ticks } = yAxis(Math.max(0, ...buckets), { integer: true });
      const x0 = Math.ceil(Math.max(...ticks.map((t) => textWidth(fmtCompact(t))), 12)) + 10;
      const x1 = width - 10;
      const y0 = 26; // room above the bars for the threshold's label and the counts
      const y1 = height - 22;
      const r1 = (v) => Math.round(v * 10) / 10;
      const xOf = (trust) => x0 + trust * (x1 - x0);
      const yOf = (v) => y1 - (v / top) * (y1 - y0);

      const svg = s('svg', { width, height, viewBox: `0 0 ${width} ${height}`, class: 'chart-svg', focusable: 'false' });
      const grid = s('g', { class: 'grid' });
      for (const tick of ticks) {
        const y = r1(yOf(tick)) + 0.5;
        grid.append(s('line', { x1: x0, x2: x1, y1: y, y2: y, class: tick === 0 ? 'axis-line' : 'grid-line' }));
        grid.append(s('text', { x: x0 - 7, y: y + 4, class: 'tick', 'text-anchor': 'end' }, fmtCompact(tick)));
      }
      for (let i = 0; i <= n; i += 1) {
        grid.append(s('text', { x: r1(xOf(i / n)), y: height - 6, class: 'tick', 'text-anchor': 'middle' }, fmtTrust(i / n)));
      }
      svg.append(grid);

      const slot = (x1 - x0) / n;
      const gap = Math.min(6, slot * 0.12);
      const bars = s('g', { class: 'plot' });
      buckets.forEach((count, i) => {
        const lo = i / n;
        const hi = (i + 1) / n;
        const below = isNum(minTrust) && hi <= minTrust;
        const above = !isNum(minTrust) || lo >= minTrust;
        const tone = below ? 'c4' : above ? 'c2' : 'c1';
        const group = s('g', { class: 'bar-group', testid: 'trust-bar', 'data-count': count, 'data-low': lo, 'data-high': hi });
        if (count > 0) {
          const yTop = Math.min(yOf(count), y1 - 1);
          group.append(s('rect', { x: r1(xOf(lo) + gap), y: r1(yTop), width: r1(slot - 2 * gap), height: r1(y1 - yTop), class: `bar ${tone}` }));
        }
        if (count > 0) {
          group.append(s('text', { x: r1(xOf(lo) + slot / 2), y: r1(Math.min(yOf(count), y1) - 5), class: 'bar-count', 'text-anchor': 'middle' }, fmtCompact(count)));
        }
        group.append(s('rect', { x: r1(xOf(lo)), y: y0, width: r1(slot), height: y1 - y0, class: 'bar-hit' },
          s('title', null, `Trust ${fmtTrust(lo)}–${fmtTrust(hi)}: ${plural(count, 'rater')}`)));
        bars.append(group);
      });
      svg.append(bars);

      if (isNum(minTrust) && minTrust >= 0 && minTrust <= 1) {
        const x = r1(xOf(minTrust)) + 0.5;
        const rightSide = x < (x0 + x1) / 2 || x + 90 < x1;
        svg.append(s('g', { class: 'threshold', testid: 'trust-threshold', 'data-value': minTrust },
          s('line', { x1: x, x2: x, y1: 2, y2: y1, class: 'threshold-line' }),
          s('text', { x: rightSide ? x + 5 : x - 5, y: 10, class: 'threshold-label', 'text-anchor': rightSide ? 'start' : 'end' },
            `minimum ${fmtTrust(minTrust)}`)));
      }
      clear(chart).append(svg);
    }

    function renderTrust(trust) {
      const el = clear(bodies.trust);
      const buckets = Array.isArray(trust?.buckets) ? trust.buckets.map((b) => (isNum(b) ? b : 0)) : null;
      trustShown = null;
      if (!buckets || !buckets.length) { el.append(emptyState(NOT_YET)); return; }
      const minTrust = isNum(trust.min_trust) ? trust.min_trust : null;
      el.append(facts('trust-facts', [
        ['Raters', fmtCount(trust.raters), 'trust-raters', 'Everyone whose ratings or votes can be compared with other people’s'],
        ['Checked', fmtCount(trust.checked), 'trust-checked', 'Raters with enough labels that others also gave to be judged'],
        [minTrust == null ? 'Below minimum' : `Below ${fmtTrust(minTrust)}`, fmtCount(trust.below), 'trust-below',
          'Checked raters trusted less than the minimum: their feedback earns no credits'],
        ['Sock-puppet groups', fmtCount(trust.puppet_groups), 'trust-groups',
          'Accounts on one network that agree on nearly everything, counted as one rater'],
      ]));
      if (!sum(buckets)) {
        el.append(emptyState('No rater has been checked yet', 'trust-none-checked'));
      } else {
        trustShown = { buckets, min_trust: minTrust };
        const label = buckets.map((n, i) => `${fmtTrust(i / buckets.length)}–${fmtTrust((i + 1) / buckets.length)}: ${n}`).join(', ');
        el.append(h('div', { class: 'chart trust-chart', testid: 'trust-chart', role: 'img', 'aria-label': `Checked raters by trust: ${label}` }));
        drawTrust();
      }
      el.append(h('p', { class: 'section-note' },
        minTrust == null ? '' : `Checked raters trusted less than ${fmtTrust(minTrust)} earn no credits. `,
        isNum(trust.prior) ? `Raters not checked yet count at the prior trust, ${fmtTrust(trust.prior)}.` : ''));
    }

    function renderReview(report) {
      const clawed = Object.entries(report?.clawed_back && typeof report.clawed_back === 'object' ? report.clawed_back : {})
        .filter(([, n]) => isNum(n) && n > 0).sort((a, b) => b[1] - a[1]);
      const untrusted = Array.isArray(report?.untrusted) ? report.untrusted.length : 0;
      const total = sum(clawed.map(([, n]) => n));
      clear(reviewResult).append(
        h('p', { class: 'review-summary', testid: 'review-summary' },
          h('strong', { text: `Reviewed at ${fmtClock(Date.now() / 1000)}: ` }),
          `${plural(report?.raters ?? 0, 'rater')}, ${fmtExact(report?.checked ?? 0)} checked, `
          + `${fmtExact(untrusted)} untrusted, ${plural(report?.puppet_groups ?? 0, 'sock-puppet group')}.`),
        total
          ? h('ul', { class: 'bar-list review-clawed', testid: 'review-clawed' }, clawed.map(([reason, n]) =>
            h('li', { class: 'bar-item', dataset: { reason } },
              h('span', { class: 'bar-name', text: `Clawed back: ${creditReason(reason)}`, title: creditReason(reason) }),
              h('span', { class: 'bar-value', text: fmtExact(n), title: plural(n, 'credit') }))))
          : h('p', { class: 'review-none', testid: 'review-none', text: 'Nothing clawed back.' }));
      reviewResult.hidden = false;
      announce(total ? `Review done: ${plural(total, 'credit')} clawed back.` : 'Review done: nothing clawed back.');
    }

    async function reviewNow() {
      reviewButton.disabled = true;
      reviewButton.textContent = 'Reviewing…';
      try {
        renderReview(await api('POST', '/api/admin/credits/review'));
        await load(); // credits and trust have changed
      } catch (err) {
        showError(err);
      } finally {
        reviewButton.disabled = false;
        reviewButton.textContent = 'Review now';
      }
    }

    // Credits ------------------------------------------------------------------------------

    const CREDIT_KINDS = [
      { key: 'granted', label: 'granted', tone: 'good', colour: 'c2', note: (t) => `${fmtCompact(t)} tokens` },
      { key: 'refused', label: 'refused', tone: '', colour: 'c5', note: () => 'earned nothing' },
      { key: 'clawed_back', label: 'clawed back', tone: 'bad', colour: 'c4', note: (t) => `${fmtCompact(t)} tokens taken back` },
    ];

    function renderCredits(credits) {
      const el = clear(bodies.credits);
      if (!credits || typeof credits !== 'object') { el.append(emptyState(NOT_YET)); return; }
      const rows = CREDIT_KINDS.map((kind) => ({
        ...kind,
        count: isNum(credits[kind.key]?.count) ? credits[kind.key].count : 0,
        tokens: isNum(credits[kind.key]?.tokens) ? credits[kind.key].tokens : 0,
      }));
      const total = sum(rows.map((r) => r.count));
      if (!total) { el.append(emptyState('No feedback has earned credits yet', 'credits-empty')); return; }
      el.append(h('div', { class: 'bigs' }, rows.map((r) =>
        h('div', {
          class: `big${r.tone ? ` ${r.tone}` : ''}`, testid: `credits-${r.key.replace(/_/g, '-')}`,
          title: `${plural(r.count, 'piece')} of feedback, ${fmtExact(r.tokens)} tokens`,
        },
        h('span', { class: 'big-value', text: fmtCompact(r.count) }),
        h('span', { class: 'big-label' }, h('span', { class: `swatch ${r.colour}`, 'aria-hidden': 'true' }), r.label),
        h('span', { class: 'big-note', text: r.note(r.tokens) })))));
      const stack = h('div', { class: 'stack', 'aria-hidden': 'true' });
      for (const r of rows) {
        if (!r.count) continue;
        const part = h('span', { class: r.colour });
        part.style.width = `${((r.count / total) * 100).toFixed(2)}%`;
        stack.append(part);
      }
      el.append(stack, h('p', { class: 'section-note', text: 'Each piece of feedback is judged once, when it is given; a review can claw credits back later.' }));
    }

    // Leaderboard --------------------------------------------------------------------------

    /** One scale for every row's interval: round ticks around all the intervals and 1000. */
    function boardScale(models) {
      let lo = 1000;
      let hi = 1000;
      for (const m of models) {
        for (const v of [m.lower, m.upper, m.score]) if (isNum(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      }
      const step = niceStep(Math.max(hi - lo, 40), 5);
      const min = Math.floor(lo / step - 1e-9) * step;
      const max = Math.ceil(hi / step + 1e-9) * step;
      const ticks = [];
      for (let v = min; v <= max + step * 1e-6; v += step) ticks.push(Math.round(v / step) * step);
      const at = (v) => `${(((v - min) / (max - min)) * 100).toFixed(3)}%`;
      return { ticks, at, fraction: (v) => (v - min) / (max - min) };
    }

    function intervalBar(m, scale) {
      const has = isNum(m.lower) && isNum(m.upper);
      const text = has ? `95% interval ${fmtScore(m.lower)} to ${fmtScore(m.upper)}, score ${fmtScore(m.score)}` : 'No interval';
      const track = h('div', {
        class: 'interval', testid: 'leaderboard-interval', role: 'img', 'aria-label': text, title: text,
        dataset: has ? { lower: String(m.lower), upper: String(m.upper), score: String(m.score) } : null,
      });
      for (const tick of scale.ticks) {
        const line = h('span', { class: tick === 1000 ? 'interval-tick centre' : 'interval-tick' });
        line.style.left = scale.at(tick);
        track.append(line);
      }
      if (has) {
        const range = h('span', { class: 'interval-range' });
        range.style.left = scale.at(m.lower);
        range.style.width = `${((scale.fraction(m.upper) - scale.fraction(m.lower)) * 100).toFixed(3)}%`;
        track.append(range);
      }
      if (isNum(m.score)) {
        const point = h('span', { class: 'interval-point' });
        point.style.left = scale.at(m.score);
        track.append(point);
      }
      return track;
    }

    function intervalAxis(scale) {
      const axis = h('div', { class: 'interval-axis', 'aria-hidden': 'true' });
      for (const tick of scale.ticks) {
        const label = h('span', { text: String(tick) });
        label.style.left = scale.at(tick);
        axis.append(label);
      }
      return axis;
    }

    function suspiciousVoters(board) {
      const found = Array.isArray(board.suspicious_voters) ? board.suspicious_voters : [];
      const box = h('div', { class: 'detail-section suspicious', testid: 'suspicious-voters' },
        h('p', { class: 'suspicious-head' },
          h('span', { class: `badge badge-${found.length ? 'warn' : 'ok'}`, testid: 'suspicious-count', text: String(found.length) }),
          h('strong', { text: ` suspicious voter${found.length === 1 ? '' : 's'}` }),
          h('span', { class: 'suspicious-note', text: found.length
            ? ' — they agree with the board far less often than an honest voter would, so their votes are left out.'
            : ' — everyone with enough votes to check agrees with the board about as often as an honest voter would.' })));
      if (!found.length) return box;
      box.append(h('details', { class: 'suspicious-details' },
        h('summary', { text: found.length === 1 ? 'Show the voter' : `Show the ${found.length} voters` }),
        h('div', { class: 'table-wrap' }, h('table', { class: 'table table-compact' },
          h('thead', null, h('tr', null,
            h('th', { scope: 'col', text: 'Voter' }),
            h('th', { scope: 'col', class: 'num', text: 'Votes' }),
            h('th', { scope: 'col', class: 'num', text: 'Agreed with the board' }),
            h('th', { scope: 'col', class: 'num', text: 'An honest voter would' }),
            h('th', { scope: 'col', class: 'num', text: 'p-value' }))),
          h('tbody', null, found.map((v) => h('tr', { testid: 'suspicious-voter', dataset: { voter: String(v.voter) } },
            h('th', { scope: 'row' }, h('code', { class: 'voter-id', text: shortId(v.voter), title: String(v.voter) })),
            h('td', { class: 'num', text: fmtCount(v.votes), title: fmtExact(v.votes) }),
            h('td', { class: 'num', text: fmtPercent(v.agreement) }),
            h('td', { class: 'num', text: fmtPercent(v.expected) }),
            h('td', { class: 'num', text: fmtP(v.p_value), title: isNum(v.p_value) ? String(v.p_value) : '' }))))))));
      return box;
    }

    function wltTitle(m) {
      const n = (v) => (isNum(v) ? v : 0);
      return `${plural(n(m.wins), 'win')}, ${fmtExact(n(m.losses))} loss${n(m.losses) === 1 ? '' : 'es'}, `
        + `${plural(n(m.ties), 'tie')} (or both bad)`;
    }

    function renderLeaderboard(board, { rounds } = {}) {
      const el = clear(bodies.leaderboard);
      if (board === undefined) { el.append(emptyState(NOT_YET)); return; }
      const models = Array.isArray(board?.models) ? board.models.filter((m) => m && typeof m === 'object') : [];
      if (!models.length) { el.append(emptyState('Not enough votes yet', 'leaderboard-empty')); return; }
      const scale = boardScale(models);
      const left = isNum(board.votes) && isNum(board.counted) ? board.votes - board.counted : 0;
      const suspicious = Array.isArray(board.suspicious_voters) ? board.suspicious_voters.length : 0;
      // `voters` are those whose votes count, as `counted` are their votes.
      el.append(h('p', { class: 'section-note board-summary', testid: 'leaderboard-summary' },
        `${plural(board.counted ?? 0, 'vote')} from ${plural(board.voters ?? 0, 'voter')} counted`,
        left > 0 ? `; ${plural(left, 'vote')} from ${plural(suspicious, 'suspicious voter')} left out.` : '.'));
      el.append(h('div', { class: 'table-wrap' }, h('table', { class: 'table table-compact board-table', testid: 'leaderboard-table' },
        h('thead', null, h('tr', null,
          h('th', { scope: 'col', class: 'num', text: 'Rank', title: 'Models whose intervals overlap share a rank' }),
          h('th', { scope: 'col', text: 'Model' }),
          h('th', { scope: 'col', class: 'num', text: 'Score' }),
          h('th', { scope: 'col', class: 'interval-head' }, h('span', { text: '95% interval' }), intervalAxis(scale)),
          h('th', { scope: 'col', class: 'num', text: 'Interval' }),
          h('th', { scope: 'col', class: 'num', text: 'Votes' }),
          h('th', { scope: 'col', class: 'num', text: 'W / L / T', title: 'Wins, losses, and ties (with “both bad”)' }))),
        h('tbody', null, models.map((m) => h('tr', { testid: 'leaderboard-row', dataset: { model: String(m.model), rank: String(m.rank) } },
          h('td', { class: `num rank-cell${m.rank === 1 ? ' first' : ''}`, testid: 'leaderboard-rank', text: String(m.rank ?? '—') }),
          h('th', { scope: 'row', class: 'model-cell', testid: 'leaderboard-model', text: String(m.model), title: String(m.model) }),
          h('td', { class: 'num score-cell', testid: 'leaderboard-score', text: fmtScore(m.score), title: isNum(m.score) ? m.score.toFixed(1) : '' }),
          h('td', { class: 'interval-cell' }, intervalBar(m, scale)),
          h('td', { class: 'num interval-text', text: `${fmtScore(m.lower)}–${fmtScore(m.upper)}` }),
          h('td', { class: 'num', text: fmtCount(m.votes), title: fmtExact(m.votes) }),
          h('td', { class: 'num wlt', testid: 'leaderboard-wlt', text: `${fmtCount(m.wins)} / ${fmtCount(m.losses)} / ${fmtCount(m.ties)}`,
            title: wltTitle(m) })))))));
      el.append(suspiciousVoters(board));
      const foot = h('div', { class: 'board-foot' },
        h('p', { class: 'section-note', testid: 'leaderboard-rounds', text: rounds
          ? `Intervals from ${fmtExact(rounds)} bootstrap rounds.`
          : 'Intervals from a quick bootstrap.' }));
      if (!rounds) {
        foot.append(h('button', { type: 'button', class: 'btn btn-small', testid: 'leaderboard-refine', text: 'Recompute with 1,000 rounds', onclick: (event) => refine(event.currentTarget) }));
      }
      el.append(foot);
    }

    async function refine(button) {
      button.disabled = true;
      button.textContent = 'Recomputing…';
      try {
        const rounds = 1000;
        renderLeaderboard(await api('GET', `/api/admin/leaderboard?rounds=${rounds}`), { rounds });
        announce('Leaderboard recomputed.');
      } catch (err) {
        button.disabled = false;
        button.textContent = 'Recompute with 1,000 rounds';
        showError(err);
      }
    }

    // Exports ------------------------------------------------------------------------------

    function renderExports(exports) {
      const el = clear(bodies.exports);
      if (!Array.isArray(exports) || !exports.length) { el.append(emptyState(NOT_YET)); return; }
      el.append(h('div', { class: 'table-wrap' }, h('table', { class: 'table table-compact' },
        h('thead', null, h('tr', null, h('th', { scope: 'col', text: 'Export' }), h('th', { scope: 'col', text: 'Created' }),
          h('th', { scope: 'col', class: 'num', text: 'Rows' }), h('th', { scope: 'col', text: 'Content hash' }))),
        h('tbody', null, exports.map((x) => h('tr', { testid: 'export-row', title: String(x.out || '') },
          h('th', { scope: 'row' }, h('code', { text: `${x.kind}.${x.format}` }), x.since ? h('span', { class: 'muted', text: ' incremental' }) : null),
          h('td', { text: fmtDate(x.created_at), title: fmtDateTime(x.created_at) }),
          h('td', { class: 'num', text: fmtCount(x.rows), title: fmtExact(x.rows) }),
          h('td', null, h('code', { text: String(x.sha256 || '').slice(0, 12), title: String(x.sha256 || '') }))))))));
    }

    async function load() {
      try {
        const data = (await api('GET', '/api/admin/flywheel')) || {};
        renderFeedback(data.feedback);
        renderReasons(data.feedback?.by_reason);
        renderConsent(data.consent_rate);
        renderTrust(data.rater_trust);
        renderCredits(data.credits);
        renderLeaderboard(data.leaderboard);
        renderExports(data.exports);
        hideError();
      } catch (err) {
        trustShown = null;
        for (const el of Object.values(bodies)) clear(el).append(h('p', { class: 'empty', text: 'Could not load.' }));
        showError(err);
      }
    }

    onResize(bodies.feedback, drawWeek);
    onResize(bodies.trust, drawTrust);
    reviewButton.addEventListener('click', reviewNow);
    load();
  }

  // ---------------------------------------------------------------------------------------------
  // Review: the abuse review queue and the audit log. The count of open reports shows on the
  // nav link of every section.

  const REPORT_KINDS = {
    prompt_flood: 'Prompt flood',
    bot_timing: 'Bot-like timing',
    network_signups: 'Signups from one network',
    disposable_email: 'Disposable email',
  };
  const RESPONSE_BADGES = { throttle: 'warn', verify: 'info', suspend: 'bad' };
  const RESPONSE_NOTES = {
    throttle: 'slow these accounts down',
    verify: 'ask the account to prove it is a person',
    suspend: 'lock the accounts out',
  };
  const OPEN_COUNT_LIMIT = 1000;

  const kindLabel = (kind) => REPORT_KINDS[kind] || String(kind ?? 'unknown').replace(/_/g, ' ');
  const plural = (n, word) => `${fmtExact(n)} ${word}${n === 1 ? '' : 's'}`;
  const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1).trimEnd()}…` : text);
  const stampFmt = new Intl.DateTimeFormat(undefined, {
    day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23',
  });
  const fmtStamp = (iso) => { const d = parseDate(iso); return d ? stampFmt.format(d) : '—'; };

  function showReviewCount(n) {
    const badgeEl = $('nav-review-count');
    const label = $('nav-review-count-label');
    if (!badgeEl || !label) return;
    const text = n >= OPEN_COUNT_LIMIT ? `${fmtCompact(OPEN_COUNT_LIMIT)}+` : String(n);
    badgeEl.textContent = text;
    badgeEl.dataset.count = String(n);
    badgeEl.hidden = n === 0;
    badgeEl.title = n === 1 ? '1 open report' : `${text} open reports`;
    label.textContent = n ? ` (${badgeEl.title})` : '';
  }

  /** The number of open reports, on the Review link. It is a hint: failing quietly is fine. */
  async function refreshReviewCount() {
    if (!$('nav-review-count')) return;
    try {
      const data = await api('GET', `/api/admin/reports?status=open&limit=${OPEN_COUNT_LIMIT}`);
      showReviewCount(Array.isArray(data?.data) ? data.data.length : 0);
    } catch {
      // leave the badge as it was
    }
  }

  /** The accounts a report is about, as the server counts them: its subject's user or email,
   *  and the evidence's accounts. */
  function accountsOf(report) {
    const found = [];
    const [kind, ...rest] = String(report.subject ?? '').split(':');
    if (kind === 'user' || kind === 'email') found.push(rest.join(':'));
    const named = report.evidence?.accounts;
    if (Array.isArray(named)) found.push(...named.map(String));
    return [...new Set(found)];
  }

  function evidenceOf(report) {
    const ev = report.evidence;
    return ev && typeof ev === 'object' && !Array.isArray(ev) ? ev : {};
  }

  function scalarText(value) {
    if (value == null) return '—';
    if (typeof value === 'object') return JSON.stringify(value);
    return String(value);
  }

  /** One line: accounts, requests, timing, window, domain, and the sample prompt. */
  function evidenceSummary(report) {
    const ev = evidenceOf(report);
    const parts = [];
    if (Array.isArray(ev.accounts)) parts.push(plural(ev.accounts.length, 'account'));
    if (isNum(ev.requests)) parts.push(plural(ev.requests, 'request'));
    if (isNum(ev.mean_interval_s)) parts.push(`every ${fmtSeconds(ev.mean_interval_s)}`);
    if (isNum(ev.cv)) parts.push(`CV ${ev.cv}`);
    if (isNum(ev.window_s)) parts.push(`within ${fmtDuration(ev.window_s)}`);
    if (typeof ev.domain === 'string') parts.push(`@${ev.domain}`);
    const known = new Set(['accounts', 'requests', 'mean_interval_s', 'cv', 'window_s', 'domain', 'sample']);
    if (!parts.length) {
      for (const [key, value] of Object.entries(ev).filter(([k]) => !known.has(k)).slice(0, 3)) {
        parts.push(`${key.replace(/_/g, ' ')}: ${clip(scalarText(value), 30)}`);
      }
    }
    const sample = typeof ev.sample === 'string' && ev.sample.trim() ? ev.sample.trim() : null;
    return h('div', { class: 'ev-summary', testid: 'report-summary' },
      parts.length ? h('span', { class: 'ev-facts', text: parts.join(' · ') }) : null,
      sample ? h('q', { class: 'ev-sample', text: clip(sample, 70), title: sample }) : null,
      !parts.length && !sample ? h('span', { class: 'muted', text: 'no evidence' }) : null);
  }

  /** "prompt 3f2a…", "user 0190…", "network 198.51.100.0/24", an email. */
  function subjectView(subject) {
    const text = String(subject ?? '');
    const at = text.indexOf(':');
    if (at < 0) return h('code', { class: 'subject-value', text, title: text });
    const kind = text.slice(0, at);
    const value = text.slice(at + 1);
    const shown = kind === 'email'
      ? h('a', { class: 'subject-value', href: `/admin/users?q=${enc(value)}`, text: value, title: value })
      : h('code', { class: 'subject-value', text: value, title: text });
    return h('span', { class: 'subject' }, h('span', { class: 'subject-kind', text: kind }), shown);
  }

  function accountList(accounts) {
    return h('ol', { class: 'ev-accounts', testid: 'report-accounts' }, accounts.map((account) => {
      const text = String(account);
      return h('li', { testid: 'report-account', dataset: { account: text } }, text.includes('@')
        ? h('a', { href: `/admin/users?q=${enc(text)}`, text })
        : h('code', { text, title: 'User id' }));
    }));
  }

  const EVIDENCE_LABELS = {
    accounts: 'Accounts',
    requests: 'Requests',
    sample: 'Sample prompt',
    mean_interval_s: 'Mean interval',
    cv: 'Regularity (coefficient of variation)',
    window_s: 'Window',
    domain: 'Domain',
  };

  function evidenceValue(key, value) {
    if (key === 'accounts' && Array.isArray(value)) return accountList(value);
    if (key === 'sample' && typeof value === 'string') return h('blockquote', { class: 'ev-quote', text: value });
    if (key === 'mean_interval_s' && isNum(value)) return `${fmtSeconds(value)} (${value} s)`;
    if (key === 'window_s' && isNum(value)) return fmtDuration(value);
    if (key === 'cv' && isNum(value)) return `${value} (below 0.1 is machine-like)`;
    if (isNum(value)) return fmtExact(value);
    if (Array.isArray(value)) {
      return value.length
        ? h('ul', { class: 'ev-list' }, value.map((v) => h('li', null, h('code', { text: scalarText(v) }))))
        : h('span', { class: 'muted', text: 'none' });
    }
    if (value && typeof value === 'object') return h('code', { class: 'ev-json', text: JSON.stringify(value, null, 1) });
    return scalarText(value);
  }

  /** The whole report as a key/value list: what it is about, then every piece of evidence. */
  function evidenceList(report) {
    const ev = evidenceOf(report);
    const item = (label, ...value) => h('div', { class: 'ev-item' }, h('dt', { text: label }), h('dd', null, ...value));
    const accounts = Array.isArray(ev.accounts) ? ev.accounts.length : null;
    return h('dl', { class: 'evidence', testid: 'report-evidence' },
      item('Report', `#${report.id} · ${kindLabel(report.kind)}`),
      item('Subject', h('code', { text: String(report.subject ?? '—') })),
      item('Filed', fmtStamp(report.created_at)),
      item('Suggested response', `${report.response ?? '—'}${RESPONSE_NOTES[report.response] ? ` (${RESPONSE_NOTES[report.response]})` : ''}`),
      Object.entries(ev).map(([key, value]) => item(
        key === 'accounts' && accounts != null ? `${EVIDENCE_LABELS.accounts} (${accounts})` : EVIDENCE_LABELS[key] || key.replace(/_/g, ' '),
        evidenceValue(key, value))),
      report.status !== 'open' && report.resolution ? item('Resolution', report.resolution) : null,
      report.resolved_by ? item('Resolved by', report.resolved_by) : null);
  }

  function compactDetails(details) {
    const parts = [];
    for (const [key, value] of Object.entries(details)) {
      if (value == null) continue;
      if (Array.isArray(value)) parts.push(`${key}: ${value.length}`);
      else if (typeof value === 'object') parts.push(`${key}: ${JSON.stringify(value)}`);
      else parts.push(`${key}: ${value}`);
    }
    return parts.join(' · ');
  }

  function auditTarget(entry) {
    const target = String(entry.target ?? '');
    const action = String(entry.action ?? '');
    if (action.startsWith('report.')) return h('span', { text: `report #${target}` });
    if (action.startsWith('user.') && target.includes('@')) {
      return h('a', { href: `/admin/users?q=${enc(target)}`, text: target, title: target });
    }
    if (action.startsWith('plan.')) return h('span', { class: 'plan-name', text: target });
    return h('code', { class: 'target-code', text: target, title: target });
  }

  function auditRow(entry) {
    const details = entry.details && typeof entry.details === 'object' ? entry.details : {};
    const compact = compactDetails(details);
    return h('tr', { testid: 'audit-row', dataset: { id: String(entry.id), action: String(entry.action) } },
      h('td', { class: 'when-cell', testid: 'audit-when', text: fmtStamp(entry.at), title: fmtAgo(entry.at) }),
      h('td', { class: 'actor-cell', testid: 'audit-actor', text: String(entry.actor ?? '—'), title: String(entry.actor ?? '') }),
      h('td', null, h('code', { class: 'action-code', testid: 'audit-action', text: String(entry.action) })),
      h('td', { class: 'target-cell', testid: 'audit-target' }, auditTarget(entry)),
      h('td', { class: 'details-cell', testid: 'audit-details', title: Object.keys(details).length ? JSON.stringify(details, null, 1) : '' },
        compact ? h('span', { class: 'details-text', text: compact }) : h('span', { class: 'muted', text: '—' })));
  }

  function initReview() {
    const QUEUE_LIMIT = 200;
    const AUDIT_PAGE = 50;
    const state = {
      reports: [], seq: 0, expanded: new Set(), resolved: new Map(),
      audit: [], auditSeq: 0,
    };
    const select = $('review-status');
    const card = $('review-card');
    const body = $('review-body');
    const empty = $('review-empty');
    const sub = $('review-sub');
    const auditBody = $('audit-body');
    const auditEmpty = $('audit-empty');
    const more = $('audit-more');
    const auditEnd = $('audit-end');
    const COLUMNS = 6;

    const fromUrl = new URLSearchParams(window.location.search).get('status');
    if (fromUrl && [...select.options].some((o) => o.value === fromUrl)) select.value = fromUrl;

    function actionButtons(report) {
      const label = `report ${report.id}`;
      return h('div', { class: 'row-actions' },
        h('button', {
          type: 'button', class: 'btn btn-small', testid: 'report-dismiss', 'aria-label': `Dismiss ${label}`,
          onclick: (event) => resolve(report, 'dismiss', event.currentTarget),
        }, 'Dismiss'),
        h('button', {
          type: 'button', class: 'btn btn-small', testid: 'report-suspend', 'aria-label': `Suspend the accounts in ${label}`,
          onclick: (event) => resolve(report, 'suspend', event.currentTarget),
        }, 'Suspend'),
        h('button', {
          type: 'button', class: 'btn btn-small btn-danger-outline', testid: 'report-ban', 'aria-label': `Ban the accounts in ${label}`,
          onclick: (event) => resolve(report, 'ban', event.currentTarget),
        }, 'Ban'));
    }

    function outcome(report) {
      const kind = report.status === 'actioned' ? 'warn' : report.status === 'open' ? 'info' : 'plain';
      return h('div', { class: 'outcome' },
        h('span', { class: `badge badge-${kind}`, testid: 'report-status', text: String(report.status ?? 'unknown') }),
        report.resolution
          ? h('span', { class: 'resolution', testid: 'report-resolution', text: report.resolution, title: report.resolution })
          : null,
        report.resolved_by ? h('span', { class: 'resolved-by', text: `by ${report.resolved_by}`, title: report.resolved_by }) : null);
    }

    function detailRow(report) {
      return h('tr', { class: 'detail-row', id: `report-detail-${report.id}`, testid: 'report-detail', dataset: { id: String(report.id) } },
        h('td', { colspan: COLUMNS }, evidenceList(report)));
    }

    function reportRows(report) {
      const id = String(report.id);
      const expanded = state.expanded.has(id);
      const row = h('tr', {
        testid: 'report-row', class: `clickable report-row${expanded ? ' expanded' : ''}`,
        dataset: { id, status: String(report.status), kind: String(report.kind) },
      },
      h('th', { scope: 'row', class: 'kind-cell' },
        h('button', {
          type: 'button', class: 'link-btn toggle-btn', 'aria-expanded': String(expanded), 'aria-controls': `report-detail-${id}`,
          title: 'Show the evidence',
        }, h('span', { class: 'chevron', 'aria-hidden': 'true' }), h('span', { testid: 'report-kind', text: kindLabel(report.kind) }))),
      h('td', { class: 'subject-cell' }, subjectView(report.subject)),
      h('td', { testid: 'report-response', title: RESPONSE_NOTES[report.response] || '' },
        h('span', { class: `badge badge-${RESPONSE_BADGES[report.response] || 'plain'}`, text: String(report.response ?? '—') })),
      h('td', { class: 'when-cell', text: fmtAgo(report.created_at), title: fmtStamp(report.created_at) }),
      h('td', { class: 'ev-cell' }, evidenceSummary(report)),
      h('td', { class: 'decision-cell' }, report.status === 'open' ? actionButtons(report) : outcome(report)));
      row.addEventListener('click', (event) => {
        if (event.target.closest('a, input, select, button:not(.toggle-btn)')) return;
        toggle(report, row);
      });
      return expanded ? [row, detailRow(report)] : [row];
    }

    function toggle(report, row) {
      const id = String(report.id);
      const open = !state.expanded.has(id);
      const next = row.nextElementSibling;
      if (next && next.classList.contains('detail-row')) next.remove();
      if (open) {
        state.expanded.add(id);
        row.after(detailRow(report));
      } else {
        state.expanded.delete(id);
      }
      row.classList.toggle('expanded', open);
      row.querySelector('.toggle-btn').setAttribute('aria-expanded', String(open));
    }

    function render(flashId) {
      const status = select.value;
      clear(body);
      for (const report of state.reports) {
        const rows = reportRows(report);
        if (String(report.id) === flashId) rows[0].classList.add('flash');
        body.append(...rows);
      }
      empty.hidden = state.reports.length > 0;
      empty.textContent = {
        open: 'Nothing to review: the abuse watch has found nothing new.',
        actioned: 'No report has been acted on yet.',
        dismissed: 'No report has been dismissed yet.',
      }[status] || 'No reports.';
      const open = state.reports.filter((r) => r.status === 'open').length;
      const done = state.reports.length - open;
      const capped = state.reports.length >= QUEUE_LIMIT ? ` (the newest ${QUEUE_LIMIT})` : '';
      sub.textContent = status === 'open'
        ? `${fmtExact(open)} open${done ? ` · ${fmtExact(done)} resolved just now` : ''}${capped}, newest first`
        : `${fmtExact(state.reports.length)} ${status}${capped}, newest first`;
    }

    async function loadQueue(flashId) {
      const seq = ++state.seq;
      const status = select.value;
      card.setAttribute('aria-busy', 'true');
      try {
        const data = await api('GET', `/api/admin/reports?status=${enc(status)}&limit=${QUEUE_LIMIT}`);
        if (seq !== state.seq) return;
        let reports = Array.isArray(data?.data) ? data.data : [];
        if (status === 'open' && state.resolved.size) {
          // Reports resolved on this page stay in place, showing what was done, until the
          // filter changes or the page is reloaded.
          const byId = new Map(reports.map((r) => [String(r.id), r]));
          for (const [id, r] of state.resolved) if (!byId.has(id)) byId.set(id, r);
          reports = [...byId.values()].sort((a, b) => Number(b.id) - Number(a.id));
        }
        state.reports = reports;
        render(flashId);
        hideError('queue');
      } catch (err) {
        if (seq !== state.seq) return;
        state.reports = [];
        render();
        empty.textContent = 'Could not load the reports.';
        showError(err, 'queue');
      } finally {
        if (seq === state.seq) card.removeAttribute('aria-busy');
      }
    }

    const RESOLVE_TEXT = {
      dismiss: { title: 'Dismiss report', ok: 'Dismiss', danger: false },
      suspend: { title: 'Suspend', ok: 'Suspend', danger: true },
      ban: { title: 'Ban', ok: 'Ban', danger: true },
    };

    async function resolve(report, action, button) {
      const accounts = accountsOf(report).length;
      const them = accounts === 0 ? 'the accounts' : accounts === 1 ? 'the account' : `the ${fmtExact(accounts)} accounts`;
      const label = `report #${report.id} (${kindLabel(report.kind).toLowerCase()})`;
      const reason = {
        name: 'reason', label: 'Reason', testid: 'report-reason', required: true, maxlength: 300,
        placeholder: 'Kept in the audit log',
      };
      const text = {
        dismiss: `Nothing happens to ${them} it names; the report leaves the queue.`,
        suspend: `${accounts === 1 ? 'It' : 'They'} cannot use the chat or the API until the suspension ends or you restore ${accounts === 1 ? 'it' : 'them'}.`,
        ban: `Their sessions and API keys stop working until you restore ${accounts === 1 ? 'the account' : 'each account'}.`,
      }[action];
      const fields = action === 'suspend'
        ? [reason, {
          name: 'days', label: 'Days', testid: 'report-days', type: 'number', min: 1, max: 3650,
          placeholder: 'until restored', hint: 'Leave empty to suspend until restored.',
        }]
        : [reason];
      const values = await ask({
        title: action === 'dismiss' ? `Dismiss ${label}?` : `${RESOLVE_TEXT[action].title} ${them} in ${label}?`,
        text, ok: RESOLVE_TEXT[action].ok, danger: RESOLVE_TEXT[action].danger, fields,
      });
      if (!values) return;
      const buttons = button.closest('.row-actions')?.querySelectorAll('button') ?? [button];
      for (const b of buttons) b.disabled = true;
      const id = String(report.id);
      let flashId = null;
      try {
        const result = await api('POST', `/api/admin/reports/${enc(report.id)}/resolve`, {
          action, reason: values.reason, days: action === 'suspend' ? values.days ?? null : null,
        });
        const resolved = {
          ...report,
          status: result?.status ?? (action === 'dismiss' ? 'dismissed' : 'actioned'),
          resolution: result?.resolution ?? `${action}: ${values.reason}`,
          resolved_by: me,
        };
        if (select.value === 'open') state.resolved.set(id, resolved);
        flashId = id;
        hideError();
        announce(`Report ${id}: ${resolved.resolution}`);
      } catch (err) {
        showError(err);
        for (const b of buttons) b.disabled = false;
      }
      // Whatever happened (someone else may have resolved it first), show the queue as it is.
      await Promise.all([loadQueue(flashId), loadAudit(), refreshReviewCount()]);
      const row = [...body.querySelectorAll('tr[data-testid="report-row"]')].find((tr) => tr.dataset.id === id);
      if (row && !dialog.open) row.querySelector('.toggle-btn')?.focus({ preventScroll: true });
    }

    function renderAuditState(gotFullPage) {
      auditEmpty.hidden = state.audit.length > 0;
      auditEmpty.textContent = 'No admin actions yet.';
      more.hidden = !gotFullPage;
      auditEnd.hidden = gotFullPage || state.audit.length === 0;
    }

    async function loadAudit(older = false) {
      const seq = ++state.auditSeq;
      const params = new URLSearchParams({ limit: String(AUDIT_PAGE) });
      const ids = state.audit.map((e) => Number(e.id)).filter(Number.isFinite);
      if (older && ids.length) params.set('before', String(Math.min(...ids)));
      more.disabled = true;
      try {
        const data = await api('GET', `/api/admin/audit?${params}`);
        if (seq !== state.auditSeq) return;
        const entries = Array.isArray(data?.data) ? data.data : [];
        if (older) {
          const seen = new Set(state.audit.map((e) => String(e.id)));
          const fresh = entries.filter((e) => !seen.has(String(e.id)));
          state.audit.push(...fresh);
          auditBody.append(...fresh.map(auditRow));
        } else {
          state.audit = entries;
          clear(auditBody).append(...entries.map(auditRow));
        }
        renderAuditState(entries.length >= AUDIT_PAGE);
        hideError('audit');
      } catch (err) {
        if (seq !== state.auditSeq) return;
        if (!state.audit.length) { auditEmpty.hidden = false; auditEmpty.textContent = 'Could not load the audit log.'; }
        showError(err, 'audit');
      } finally {
        if (seq === state.auditSeq) more.disabled = false;
      }
    }

    select.addEventListener('change', () => {
      const url = new URL(window.location.href);
      if (select.value === 'open') url.searchParams.delete('status'); else url.searchParams.set('status', select.value);
      window.history.replaceState(null, '', url);
      state.resolved.clear();
      state.expanded.clear();
      loadQueue();
    });
    more.addEventListener('click', () => loadAudit(true));

    loadQueue();
    loadAudit();
  }

  // ---------------------------------------------------------------------------------------------

  const init = {
    dashboard: initDashboard, plans: initPlans, users: initUsers, usage: initUsage, review: initReview, flywheel: initFlywheel,
  }[section];
  if (init) init();
  refreshReviewCount();
})();
