// Lamplighter web chat. Plain ES2020, no dependencies, no build step.
//
// Safety rules this file keeps (the page runs under a strict Content-Security-Policy):
// - the only string ever assigned to innerHTML is an answer's `html`, which the server has
//   already rendered and sanitized; everything else (user text, titles, errors) is textContent;
// - no HTML is built from strings: elements come from document.createElement.
'use strict';

(() => {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content ?? '';
  const NARROW = window.matchMedia('(max-width: 719.98px)');
  // A touch screen as the main pointer (a phone, a tablet): its keyboard has no Shift+Enter, so
  // Enter starts a new line there and the Send button sends.
  const TOUCH = window.matchMedia('(pointer: coarse)');
  // The server answers a chat once a backend has taken it: a request still unanswered after
  // this long waits in its queue (the service is busy), and the page says so.
  const QUEUED_MS = 1500;
  const MODEL_KEY = 'lamplighter.model';
  // Drafts and unsent messages are kept per account: another person logging in on this browser
  // never sees them, and logging out removes them.
  const USER_ID = document.querySelector('meta[name="user-id"]')?.content ?? '';
  const DRAFT_PREFIX = `lamplighter.draft.${USER_ID}.`;
  const UNSENT_PREFIX = `lamplighter.unsent.${USER_ID}.`;

  // ---------------------------------------------------------------------------------------------
  // Small DOM helpers

  /** Create an element. attrs: class, text, testid, dataset, on<event>, booleans, plain attributes. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [key, value] of Object.entries(attrs)) {
        if (value == null || value === false) continue;
        if (key === 'class') el.className = value;
        else if (key === 'text') el.textContent = value;
        else if (key === 'testid') el.dataset.testid = value;
        else if (key === 'dataset') Object.assign(el.dataset, value);
        else if (key.startsWith('on') && typeof value === 'function') {
          el.addEventListener(key.slice(2), value);
        } else if (value === true) el.setAttribute(key, '');
        else el.setAttribute(key, String(value));
      }
    }
    for (const child of children.flat()) {
      if (child == null || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  // Icons: 24x24 stroked paths, drawn for this app.
  const ICONS = {
    menu: ['M4 6h16', 'M4 12h16', 'M4 18h16'],
    close: ['M18 6 6 18', 'M6 6l12 12'],
    new: ['M12 4H6a2 2 0 0 0-2 2v12a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2v-6',
      'M17.5 3.5a2.1 2.1 0 0 1 3 3L13 14l-4 1 1-4z'],
    search: [{ tag: 'circle', cx: 11, cy: 11, r: 7 }, 'M20 20l-3.5-3.5'],
    send: ['M12 19V5', 'M5.5 11.5 12 5l6.5 6.5'],
    stop: [{ tag: 'rect', x: 7, y: 7, width: 10, height: 10, rx: 1.5, fill: 'currentColor' }],
    edit: ['M16.5 3.5a2.1 2.1 0 0 1 3 3L8 18l-4 1 1-4z', 'M14.5 5.5l3 3'],
    regenerate: ['M20 11a8 8 0 0 0-14.3-4.9L4 8', 'M4 3.5V8h4.5',
      'M4 13a8 8 0 0 0 14.3 4.9L20 16', 'M20 20.5V16h-4.5'],
    copy: [{ tag: 'rect', x: 9, y: 9, width: 11, height: 11, rx: 2 },
      'M15 9V6a2 2 0 0 0-2-2H6a2 2 0 0 0-2 2v7a2 2 0 0 0 2 2h3'],
    check: ['M5 12.5l4.5 4.5L19 7.5'],
    up: ['M7 10.5V20', 'M7 10.5 11 3a2 2 0 0 1 3 2.2L13.2 9H18.5a2 2 0 0 1 2 2.4l-1.3 6.9A2 2 0 0 1 17.2 20H4.8a1 1 0 0 1-1-1v-7.5a1 1 0 0 1 1-1z'],
    down: ['M12 5v14', 'M5.5 12.5 12 19l6.5-6.5'],
    left: ['M14.5 6 8.5 12l6 6'],
    right: ['M9.5 6l6 6-6 6'],
    trash: ['M4 7h16', 'M9.5 7V4.5h5V7', 'M6.5 7l1 12.5a1 1 0 0 0 1 .9h7a1 1 0 0 0 1-.9l1-12.5', 'M10 11v6', 'M14 11v6'],
    logout: ['M9.5 20H6a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2h3.5', 'M15.5 16.5 20 12l-4.5-4.5', 'M20 12H9.5'],
    plan: [{ tag: 'rect', x: 3, y: 5, width: 18, height: 14, rx: 2 }, 'M3 10h18', 'M7 15h3'],
    devices: [{ tag: 'rect', x: 2, y: 4, width: 14, height: 10, rx: 1.5 }, 'M5 18h8',
      { tag: 'rect', x: 17, y: 9, width: 5, height: 11, rx: 1 }],
    improve: ['M12 20h8', 'M16.5 3.5a2.1 2.1 0 0 1 3 3L7 19l-4 1 1-4z'],
    call: ['M8 4H7a2 2 0 0 0-2 2v4l-2 2 2 2v4a2 2 0 0 0 2 2h1', 'M16 4h1a2 2 0 0 1 2 2v4l2 2-2 2v4a2 2 0 0 1-2 2h-1'],
    result: ['M9 10l-5 5 5 5', 'M20 4v7a4 4 0 0 1-4 4H4'],
    settings: [{ tag: 'circle', cx: 12, cy: 12, r: 3 },
      'M12 2.5v3', 'M12 18.5v3', 'M2.5 12h3', 'M18.5 12h3', 'M5.3 5.3l2.1 2.1', 'M16.6 16.6l2.1 2.1', 'M5.3 18.7l2.1-2.1', 'M16.6 7.4l2.1-2.1'],
    console: [{ tag: 'rect', x: 3, y: 4, width: 18, height: 16, rx: 2 }, 'M7 9l3 3-3 3', 'M12 15h5'],
  };

  function icon(name, extraClass) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('width', '18');
    svg.setAttribute('height', '18');
    svg.setAttribute('fill', 'none');
    svg.setAttribute('stroke', 'currentColor');
    svg.setAttribute('stroke-width', '2');
    svg.setAttribute('stroke-linecap', 'round');
    svg.setAttribute('stroke-linejoin', 'round');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    svg.setAttribute('class', extraClass ? `icon ${extraClass}` : 'icon');
    let parts = ICONS[name] || [];
    let parent = svg;
    if (name === 'thumbs-up' || name === 'thumbs-down') {
      parts = ICONS.up;
      if (name === 'thumbs-down') {
        parent = document.createElementNS(SVG_NS, 'g');
        parent.setAttribute('transform', 'rotate(180 12 12)');
        svg.append(parent);
      }
    }
    for (const part of parts) {
      let node;
      if (typeof part === 'string') {
        node = document.createElementNS(SVG_NS, 'path');
        node.setAttribute('d', part);
      } else {
        node = document.createElementNS(SVG_NS, part.tag);
        for (const [k, v] of Object.entries(part)) if (k !== 'tag') node.setAttribute(k, String(v));
      }
      parent.append(node);
    }
    return svg;
  }

  /** A small icon-only button with an accessible name and tooltip. */
  function iconButton(name, label, attrs = {}) {
    return h('button', { type: 'button', class: 'icon-btn', 'aria-label': label, title: label, ...attrs }, icon(name));
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ---------------------------------------------------------------------------------------------
  // Elements from chat.html

  const els = {
    app: document.getElementById('app'),
    sidebar: document.getElementById('sidebar'),
    scrim: document.getElementById('scrim'),
    menu: document.querySelector('[data-testid="menu"]'),
    newChat: document.querySelector('[data-testid="new-chat"]'),
    search: document.querySelector('[data-testid="search"]'),
    convList: document.getElementById('conv-list'),
    convEmpty: document.getElementById('conv-empty'),
    plan: document.querySelector('[data-testid="plan"]'),
    limits: document.querySelector('[data-testid="limits"]'),
    bonus: document.querySelector('[data-testid="feedback-bonus"]'),
    title: document.getElementById('topbar-title'),
    modelPicker: document.getElementById('model-picker'),
    modelSelect: document.getElementById('model-select'),
    modelName: document.getElementById('model-name'),
    banner: document.getElementById('error-banner'),
    bannerText: document.getElementById('error-text'),
    bannerClose: document.getElementById('error-close'),
    thread: document.getElementById('thread'),
    welcome: document.getElementById('welcome'),
    loading: document.getElementById('thread-loading'),
    messages: document.getElementById('messages'),
    scrollDown: document.getElementById('scroll-down'),
    form: document.getElementById('composer-form'),
    composer: document.querySelector('[data-testid="composer"]'),
    send: document.querySelector('[data-testid="send"]'),
    stop: document.querySelector('[data-testid="stop"]'),
    keys: document.getElementById('composer-keys'),
    elsewhere: document.getElementById('busy-elsewhere'),
    elsewhereText: document.getElementById('busy-elsewhere-text'),
    elsewhereGo: document.getElementById('busy-elsewhere-go'),
    tooLong: document.getElementById('too-long'),
    dialog: document.getElementById('confirm-delete'),
    dialogName: document.getElementById('confirm-name'),
    dialogStop: document.getElementById('confirm-stop'),
    announcer: document.getElementById('announcer'),
  };

  // ---------------------------------------------------------------------------------------------
  // State

  const state = {
    me: null,
    model: null,
    conversations: [], // summaries, newest first
    query: '',
    listToken: 0,
    limitsOut: null, // the limits that had run out when the sidebar was last drawn
    announced: null, // the last announcement: { text, at }
    moreCursor: null, // where the server's older chats start (its next_cursor); null: the sidebar shows them all
    conv: null, // the conversation shown (see newConv)
    loadToken: 0,
    streams: new Map(), // conversation -> the answer this page is writing in it (see startChat)
    warnings: new Map(), // answer id -> the server's warning about the message it answers (a pasted API key)
    editing: null, // id of the user message being edited
    ratingOpen: null, // id of the assistant message whose rating form is open
    ratingThanks: null, // id of the message that just got "Thanks for the feedback"
    notes: new Map(), // message id -> 'stopped' | 'lost' | 'interrupted' | 'error' (what this page saw happen)
    unsent: unsentMessages(), // conversation id ('' for a new chat) -> a message not sent (see keepUnsent)
    bannerKind: null, // 'connection' while the banner says the server cannot be reached, 'wait' while it counts down to a retry, else 'other'
    waitTimer: null, // the countdown's interval while bannerKind is 'wait'
    verdicts: new Map(), // regenerated answer id -> 'ask' | 'thanks' (see buildVerdict)
    improving: null, // id of the answer whose "Improve this answer" editor is open
    reveal: null, // { id, conv, timer } while a side-by-side's vote result is shown (see vote)
    renaming: null, // { id, draft } while a sidebar title is being edited
    stick: true, // keep the thread scrolled to the bottom while streaming
  };

  // ---------------------------------------------------------------------------------------------
  // API

  class ApiError extends Error {
    /** retryAfterMs: how long a refusal asks to wait (null: it does not say); requestsLeft: the
     *  plan's requests left this minute, from `x-ratelimit-remaining-requests` (null: not sent). */
    constructor(message, status, type, code, { retryAfterMs = null, requestsLeft = null, param = null } = {}) {
      super(message);
      this.status = status;
      this.type = type;
      this.code = code;
      this.param = param;
      this.retryAfterMs = retryAfterMs;
      this.requestsLeft = requestsLeft;
    }
  }

  /** How long a response asks to wait, in ms: `retry-after-ms`, else `retry-after` in seconds. */
  function retryAfterMs(headers) {
    const ms = Number(headers.get('retry-after-ms'));
    if (ms > 0) return ms;
    const s = Number(headers.get('retry-after'));
    return s > 0 ? s * 1000 : null;
  }

  /** Set once a request found the session ended: the page is on its way to the login page, and
   *  what is in the message box stays there, as the chat's draft, for when it comes back. */
  let sessionEnded = false;

  /** The session ended (it expired, or was logged out elsewhere): to the login page, which says
   *  so and, once logged in, comes back here. */
  function goToLogin() {
    sessionEnded = true;
    const params = new URLSearchParams({ session: 'ended' });
    const here = location.pathname;
    if (here !== '/') params.set('next', here);
    window.location.assign(`/login?${params}`);
  }

  async function errorFromResponse(res) {
    let message = '';
    let type = null;
    let code = null;
    let param = null;
    try {
      const body = await res.json();
      const err = body && body.error;
      if (err && typeof err === 'object') {
        message = typeof err.message === 'string' ? err.message : '';
        type = err.type ?? null;
        code = err.code ?? null;
        param = err.param ?? null;
      } else if (typeof err === 'string') {
        message = err;
      } else if (body && typeof body.detail === 'string') {
        message = body.detail;
      }
    } catch {
      // not JSON
    }
    if (!message) {
      if (res.status === 429) message = 'Too many requests. Please wait a moment and try again.';
      else if (res.status >= 500) message = `The server had a problem (HTTP ${res.status}). Please try again.`;
      else message = `Request failed (HTTP ${res.status}).`;
    }
    const left = res.headers.get('x-ratelimit-remaining-requests');
    return new ApiError(message, res.status, type, code, {
      retryAfterMs: retryAfterMs(res.headers),
      requestsLeft: left === null || left === '' || Number.isNaN(Number(left)) ? null : Number(left),
      param,
    });
  }

  function jsonHeaders() {
    return {
      Accept: 'application/json',
      'Content-Type': 'application/json',
      'X-CSRF-Token': csrfToken,
    };
  }

  async function api(method, url, body) {
    const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (method !== 'GET') {
      init.headers = jsonHeaders();
      if (body !== undefined) init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(url, init);
    } catch {
      throw new ApiError('Could not reach the server. Check your connection and try again.', 0, 'network_error', null);
    }
    clearConnectionError(); // the server answered: whatever it said, it can be reached again
    if (res.status === 401) {
      goToLogin();
      throw new ApiError('Your session has expired. Please log in again.', 401, 'authentication_error', null);
    }
    if (!res.ok) throw await errorFromResponse(res);
    if (res.status === 204) return null;
    const text = await res.text();
    return text ? JSON.parse(text) : null;
  }

  const convUrl = (id) => `/api/conversations/${encodeURIComponent(id)}`;
  const ratingUrl = (id) => `/api/messages/${encodeURIComponent(id)}/rating`;
  const verdictUrl = (id) => `/api/messages/${encodeURIComponent(id)}/verdict`;
  const correctionUrl = (id) => `/api/messages/${encodeURIComponent(id)}/correction`;
  const voteUrl = (id) => `/api/comparisons/${encodeURIComponent(id)}/vote`;

  // ---------------------------------------------------------------------------------------------
  // Error banner and announcements

  /** Show the banner. kind 'connection' is for "could not reach the server": it goes away by
   *  itself once a request gets an answer; any other banner stays until dismissed or replaced. */
  function showError(message, kind = 'other', detail = null) {
    stopWaiting();
    els.bannerText.replaceChildren(message);
    if (detail && detail !== message) els.bannerText.append(bannerDetail(detail));
    els.banner.hidden = false;
    state.bannerKind = kind;
    updateComposer();
  }

  function hideError() {
    stopWaiting();
    els.banner.hidden = true;
    els.bannerText.textContent = '';
    state.bannerKind = null;
    updateComposer();
  }

  function stopWaiting() {
    clearInterval(state.waitTimer);
    state.waitTimer = null;
  }

  /** A wait as a person reads it: "45 s", "12 min", "3 h 20 min". */
  function waitText(ms) {
    const seconds = Math.max(1, Math.ceil(ms / 1000));
    if (seconds < 90) return `${seconds} s`;
    const minutes = Math.round(seconds / 60);
    if (minutes < 90) return `${minutes} min`;
    const hours = Math.floor(minutes / 60);
    return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
  }

  /** The API's own wording, folded under the plain words (for a report, or the curious). */
  function bannerDetail(detail) {
    return h('details', { class: 'banner-detail', testid: 'error-detail' },
      h('summary', { text: 'Details' }), h('span', { text: detail }));
  }

  /** A refusal of the plan's limit on answers at a time: another answer (in another tab, or
   *  through the API) must end first, however long that takes. */
  const tooManyAtOnce = (err) => err.status === 429 && err.type === 'concurrent_requests';

  const number = (n) => Number(n).toLocaleString('en-US');

  /** A refusal in the words of someone chatting; the API's own wording names its buckets. */
  function refusalHeadline(err) {
    if (err.code === 'insufficient_quota') return 'You have used your plan’s tokens for today.';
    if (err.status === 429 && err.type === 'tokens') return 'You have used your plan’s tokens for this minute.';
    if (err.status === 429 && err.type === 'requests' && err.requestsLeft === 0) {
      return 'You have sent as many messages this minute as your plan allows.';
    }
    if (tooManyAtOnce(err)) {
      const limit = /limit is (\d+)/.exec(err.message);
      const some = limit ? `${limit[1]} ${limit[1] === '1' ? 'answer' : 'answers'}` : 'only so many answers';
      return `Another answer of yours is still being written (in another tab or app), and your plan writes ${some} at a time. Send again once it has finished.`;
    }
    if (err.status === 503 && err.code === 'overloaded') {
      return 'Too many people are chatting right now, and your message could not start in time.';
    }
    if (err.code === 'context_length_exceeded') {
      const sizes = /context length is (\d+) tokens\. However, your messages resulted in (\d+) tokens/.exec(err.message);
      const how = sizes ? ` It can read ${number(sizes[1])} tokens at a time, and this chat with your message comes to ${number(sizes[2])}.` : '';
      return `This chat is now too long for the model to read.${how} Start a new chat, or shorten your message.`;
    }
    if (err.status === 400 && err.param === 'content' && /at most/.test(err.message)) {
      const most = /at most (\d+) characters/.exec(err.message);
      return `Your message is too long to send${most ? `: a message can have at most ${number(most[1])} characters` : ''}. Shorten it, or send it in parts.`;
    }
    return err.message;
  }

  /**
   * A refusal that says when to come back: the banner counts down to that moment, then goes
   * away by itself and the sidebar's limits are read again. The banner is an alert, read out
   * when it appears: screen readers hear the wait once, not every second. Their copy of the
   * countdown is a timer, whose changes are not announced but which, read again later, gives
   * the wait left (the visible one is hidden from them, or they would read it twice).
   */
  function showWait(err) {
    hideError();
    const deadline = Date.now() + err.retryAfterMs;
    const lead = err.status === 429 ? 'You can send again in' : 'Try again in';
    const ticking = h('span', { 'aria-hidden': 'true', testid: 'wait' });
    const spoken = h('span', { class: 'sr-only', role: 'timer' });
    const headline = refusalHeadline(err);
    els.bannerText.replaceChildren(`${headline} `, ticking, spoken);
    if (headline !== err.message) els.bannerText.append(bannerDetail(err.message));
    els.banner.hidden = false;
    state.bannerKind = 'wait';
    updateComposer(); // no sending until the countdown ends: it would only be refused again
    const tick = () => {
      const left = deadline - Date.now(); // not a count of ticks: timers in a hidden tab slow down
      if (left > 0) {
        ticking.textContent = spoken.textContent = `${lead} ${waitText(left)}.`;
        return;
      }
      hideError();
      announce('You can send messages again');
      refreshMe();
    };
    tick();
    state.waitTimer = setInterval(tick, 1000);
  }

  /** A limit's countdown is on: a message sent now would only be refused again. */
  function waitingOutLimit() {
    return state.bannerKind === 'wait';
  }

  function clearConnectionError() {
    if (state.bannerKind === 'connection') hideError();
  }

  const isNetworkError = (err) => err instanceof ApiError && err.status === 0;

  /** What a failed answer says: the backend's own words (which name backends and quote their
   *  replies) go under "Details". */
  const ANSWER_FAILED = 'Something went wrong while generating the response.';

  /** A refusal of /api/chat, or a failure on the way: `answer` says it was an answer that was
   *  asked for, so a server's failure (500) reads as a failed answer. */
  function reportError(err, { answer = false } = {}) {
    if (err instanceof ApiError && err.status === 401) return; // already leaving for /login
    if (answer && err instanceof ApiError && err.status === 500) {
      showError(ANSWER_FAILED, 'other', err.message);
      return;
    }
    // Too many answers at a time: a countdown would mean nothing, the wait is for another answer.
    if (err instanceof ApiError && err.retryAfterMs && !tooManyAtOnce(err)) {
      showWait(err);
      return;
    }
    if (err instanceof ApiError) {
      showError(refusalHeadline(err), isNetworkError(err) ? 'connection' : 'other', err.message);
      return;
    }
    showError(err && err.message ? err.message : String(err));
  }

  function announce(text) {
    // The same words twice in a row (a wait ends and the limits come back) are read once.
    const last = state.announced;
    if (last && last.text === text && Date.now() - last.at < 2000) return;
    state.announced = { text, at: Date.now() };
    els.announcer.textContent = '';
    setTimeout(() => { els.announcer.textContent = text; }, 30);
  }

  // ---------------------------------------------------------------------------------------------
  // Conversation tree

  function newConv(data) {
    const conv = {
      id: data?.id ?? null,
      title: data?.title ?? '',
      currentLeafId: data?.current_leaf_id ?? null,
      msgs: new Map(),
      order: [],
      kidIndex: null,
      path: [],
      pending: null,
      loading: false,
      loadError: null, // why the conversation could not be loaded (then it has an id and nothing else)
      comparisons: new Map(), // id -> comparison JSON (side-by-sides, verdicts, corrections)
    };
    for (const m of data?.messages ?? []) addMsg(conv, m);
    mergeComparisons(conv, data?.comparisons);
    conv.path = initialPath(conv);
    return conv;
  }

  function addMsg(conv, m) {
    if (!conv.msgs.has(m.id)) {
      conv.order.push(m.id);
      conv.kidIndex = null;
    }
    const old = conv.msgs.get(m.id);
    if (old && (old.parent_id ?? null) !== (m.parent_id ?? null)) conv.kidIndex = null;
    conv.msgs.set(m.id, { ...m });
  }

  function childrenOf(conv, parentId) {
    if (!conv.kidIndex) {
      conv.kidIndex = new Map();
      for (const id of conv.order) {
        const key = conv.msgs.get(id).parent_id ?? '';
        if (!conv.kidIndex.has(key)) conv.kidIndex.set(key, []);
        conv.kidIndex.get(key).push(id);
      }
    }
    return conv.kidIndex.get(parentId ?? '') ?? [];
  }

  /** Ids from the root down to `id` (inclusive). */
  function pathTo(conv, id) {
    const path = [];
    const seen = new Set();
    let cur = id;
    while (cur && conv.msgs.has(cur) && !seen.has(cur)) {
      seen.add(cur);
      path.push(cur);
      cur = conv.msgs.get(cur).parent_id ?? null;
    }
    return path.reverse();
  }

  /** Ids below `id`, taking the newest child at each step (not including `id`). */
  function newestDescent(conv, id) {
    const path = [];
    const seen = new Set([id]);
    let cur = id;
    for (;;) {
      const kids = childrenOf(conv, cur);
      if (!kids.length) break;
      cur = kids[kids.length - 1];
      if (seen.has(cur)) break;
      seen.add(cur);
      path.push(cur);
    }
    return path;
  }

  function branchThrough(conv, id) {
    return pathTo(conv, id).concat(newestDescent(conv, id));
  }

  function initialPath(conv) {
    if (conv.currentLeafId && conv.msgs.has(conv.currentLeafId)) return branchThrough(conv, conv.currentLeafId);
    const roots = childrenOf(conv, null);
    if (!roots.length) return [];
    return branchThrough(conv, roots[roots.length - 1]);
  }

  const isShown = (conv) => state.conv === conv;
  const leafOf = (conv) => (conv.path.length ? conv.path[conv.path.length - 1] : null);

  // ---------------------------------------------------------------------------------------------
  // Answers being written: one at most per conversation, as many at a time as the plan allows.
  // Stop, Escape and the composer act on the shown chat's answer only; another chat's goes on.

  /** The answer this page is writing in `conv`, or null. */
  const streamOf = (conv) => (conv && state.streams.get(conv)) || null;

  /** The answers this page is writing, as the plan counts them: a side-by-side is two. */
  function streamSlots() {
    let slots = 0;
    for (const s of state.streams.values()) {
      const writing = [...s.tracks.values()].filter((t) => !t.done).length;
      slots += Math.max(1, writing);
    }
    return slots;
  }

  /** How many answers the plan writes at a time (one until the page knows). */
  function streamLimit() {
    const limit = state.me?.limits?.concurrent_streams?.limit;
    return typeof limit === 'number' && limit > 0 ? limit : 1;
  }

  /** Another chat's answer that takes the plan's last place, when `conv` has none of its own:
   *  a new one would be refused until that one ends. Null when one can be asked for. */
  function streamElsewhere(conv) {
    if (streamOf(conv) || streamSlots() < streamLimit()) return null;
    for (const s of state.streams.values()) if (s.conv !== conv) return s;
    return null;
  }

  /** Whether an answer can be asked for in `conv` now: none being written there, no limit's
   *  countdown on, and a place left on the plan. */
  const canAsk = (conv) => !!conv && !streamOf(conv) && !waitingOutLimit() && !streamElsewhere(conv);

  // ---------------------------------------------------------------------------------------------
  // Side-by-side pairs: two anonymous answers to one question, shown as columns until voted on

  function mergeComparisons(conv, list) {
    if (!Array.isArray(list)) return;
    for (const c of list) if (c && c.id) conv.comparisons.set(c.id, c);
  }

  /**
   * The side-by-side answer `id` belongs to, while it is shown as two columns: not voted on
   * yet, or its vote being revealed, or still streaming (before the server announced answer B).
   * Returns { c: comparison or null, aId, bId (null until B is announced) } or null.
   */
  function pairFor(conv, id) {
    for (const c of conv.comparisons.values()) {
      if (c.kind !== 'side_by_side' || (c.a_id !== id && c.b_id !== id)) continue;
      if (c.winner == null || (state.reveal && state.reveal.id === c.id)) return { c, aId: c.a_id, bId: c.b_id };
    }
    const s = streamOf(conv);
    const a = s && s.sideBySide ? s.tracks.get('a') : null;
    if (a && a.id === id) return { c: null, aId: id, bId: null };
    return null;
  }

  /** Whether the branch shown ends in a side-by-side waiting for its vote. */
  function needsVote(conv) {
    if (!conv || !conv.comparisons.size) return false;
    return conv.path.some((id) => {
      const pair = pairFor(conv, id);
      return !!(pair && pair.c && pair.c.winner == null);
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Rendering: thread

  /** The stream's track (one answer being written) for message `id`, while it is unfinished. */
  function streamTrack(conv, id) {
    const s = streamOf(conv);
    if (!s) return null;
    for (const t of s.tracks.values()) if (t.id === id && !t.done) return t;
    return null;
  }

  function isStreamingMsg(conv, id) {
    return !!streamTrack(conv, id);
  }

  /** Fill an answer body: sanitized HTML from the server, then any raw text that followed it. */
  function fillAnswerBody(body, html, tail) {
    if (html) {
      body.innerHTML = html; // sanitized by the server: the one place innerHTML is used
      enhanceAnswer(body);
    } else {
      body.replaceChildren();
    }
    if (tail) {
      const target = tailTarget(body);
      // Space the rendering kept (a code block's) is not doubled.
      const spaceOnly = !tail.trim();
      if (!(spaceOnly && /\s$/.test(target.textContent))) target.append(document.createTextNode(tail));
    }
  }

  // Elements streamed text most likely continues, and the ones that hold them.
  const CONTINUED = new Set(['P', 'LI', 'H1', 'H2', 'H3', 'H4', 'H5', 'H6', 'CODE', 'TD', 'TH']);
  const HOLDERS = new Set(['UL', 'OL', 'BLOCKQUOTE', 'DIV', 'PRE', 'TABLE', 'TBODY', 'TR']);

  /**
   * Where text streamed after the server's last rendering goes until the next one: at the end
   * of the last paragraph (list item, heading, code...), which it most likely continues. After
   * the block it would start a line of its own, and a word split between two deltas ("The
   * ethe" + "real") would show broken in two.
   */
  function tailTarget(body) {
    let at = body;
    for (let last = lastNode(at); last && last.nodeType === Node.ELEMENT_NODE; last = lastNode(at)) {
      if (CONTINUED.has(last.tagName)) return last;
      if (!HOLDERS.has(last.tagName)) break;
      at = last;
    }
    return at;
  }

  /** An element's last child that is not only whitespace (the HTML's line breaks), or null. */
  function lastNode(el) {
    let node = el.lastChild;
    while (node && node.nodeType === Node.TEXT_NODE && !node.textContent.trim()) node = node.previousSibling;
    return node;
  }

  function enhanceAnswer(root) {
    for (const pre of root.querySelectorAll('pre')) {
      if (pre.parentElement && pre.parentElement.classList.contains('code-block')) continue;
      const code = pre.querySelector('code');
      let lang = '';
      for (const cls of (code || pre).classList) {
        if (cls.startsWith('language-')) lang = cls.slice('language-'.length);
        else if (cls.startsWith('lang-')) lang = cls.slice('lang-'.length);
      }
      const label = h('span', { class: 'copy-label', text: 'Copy' });
      const button = h('button', { type: 'button', class: 'copy-code', testid: 'copy-code', title: 'Copy code' },
        icon('copy'), label);
      button.addEventListener('click', async () => {
        const ok = await copyText((code || pre).textContent);
        label.textContent = ok ? 'Copied' : 'Copy failed';
        button.classList.toggle('copied', ok);
        clearTimeout(button._timer);
        button._timer = setTimeout(() => {
          label.textContent = 'Copy';
          button.classList.remove('copied');
        }, 2000);
      });
      const block = h('div', { class: 'code-block' },
        h('div', { class: 'code-head' }, h('span', { class: 'code-lang', text: lang }), button));
      pre.replaceWith(block);
      block.append(pre);
    }
    for (const a of root.querySelectorAll('a[href]')) {
      const href = a.getAttribute('href') || '';
      if (!href.startsWith('#')) {
        a.target = '_blank';
        a.rel = 'noopener noreferrer nofollow';
      }
    }
  }

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // Clipboard API missing (plain http) or refused: fall back to a hidden textarea.
      const area = h('textarea', { class: 'clipboard-helper', readonly: true, 'aria-hidden': 'true', tabindex: '-1' });
      area.value = text;
      document.body.append(area);
      area.select();
      let ok = false;
      try {
        ok = document.execCommand('copy');
      } catch {
        ok = false;
      }
      area.remove();
      return ok;
    }
  }

  const NOTE_TEXT = { stopped: 'Stopped', lost: 'Connection lost', interrupted: 'Interrupted', error: ANSWER_FAILED };
  // What a screen reader hears when an answer ends with one of those notes: the note is shown
  // where the answer is, but the focus stays in the message box, so it must be said.
  const NOTE_SPOKEN = {
    stopped: 'Answer stopped',
    lost: 'Connection lost. The answer so far is kept; Retry is available.',
    interrupted: 'The server stopped the answer. The answer so far is kept; Retry is available.',
    error: ANSWER_FAILED,
  };
  // How the server stores an answer it cut off itself: at a shutdown's deadline ('shutdown'), or
  // found unfinished after a crash ('interrupted'). One the person stopped is 'cancelled'.
  const CUT_BY_SERVER = new Set(['shutdown', 'interrupted']);
  const SHUTTING_DOWN = 'server_shutting_down';

  function noteKindFor(m, streaming) {
    if (streaming) return null;
    const seen = state.notes.get(m.id);
    if (seen) return seen;
    if (m.status === 'cut') return CUT_BY_SERVER.has(m.finish_reason) ? 'interrupted' : 'stopped';
    if (m.status === 'error') return 'error';
    return null;
  }

  function buildNote(conv, kind, detail, onRetry) {
    const row = h('div', { class: `msg-status msg-status-${kind}` },
      h('span', { class: 'message-note', testid: 'message-note', text: NOTE_TEXT[kind] }));
    if (onRetry) {
      row.append(asks(h('button', {
        type: 'button', class: 'btn btn-small', testid: 'retry', onclick: onRetry,
      }, icon('regenerate'), 'Retry'), conv));
    }
    if (detail) {
      // The server's own words (they may name backends and quote their replies), folded away.
      row.append(h('details', { class: 'note-detail', testid: 'note-detail' },
        h('summary', { text: 'Details' }), h('span', { text: detail })));
    }
    return row;
  }

  /**
   * A control that asks for an answer (Retry, Regenerate, an edit's Send): disabled while none
   * can be asked for in its chat (see canAsk), and kept so as that changes (a limit's countdown
   * ends, another chat's answer finishes) without drawing the thread again. `own`: whether it
   * is disabled for a reason of its own (an empty edit).
   */
  function asks(button, conv, own = () => false) {
    button.dataset.asks = 'true';
    button._asks = { conv, own };
    button.disabled = own() || !canAsk(conv);
    return button;
  }

  function syncAsks() {
    for (const b of els.messages.querySelectorAll('[data-asks]')) {
      if (b._asks) b.disabled = b._asks.own() || !canAsk(b._asks.conv);
    }
  }

  function buildBranchNav(conv, m) {
    const siblings = childrenOf(conv, m.parent_id ?? null);
    if (siblings.length < 2) return null;
    const index = siblings.indexOf(m.id);
    const busy = !!streamOf(conv);
    return h('div', { class: 'branch-nav', role: 'group', 'aria-label': 'Versions' },
      h('button', {
        type: 'button', class: 'icon-btn icon-btn-sm', testid: 'branch-prev', 'aria-label': 'Previous version',
        title: 'Previous version', disabled: busy || index <= 0,
        onclick: () => switchBranch(conv, siblings[index - 1], 'branch-prev'),
      }, icon('left')),
      h('span', { class: 'branch-label', testid: 'branch-label', text: `${index + 1} / ${siblings.length}` }),
      h('button', {
        type: 'button', class: 'icon-btn icon-btn-sm', testid: 'branch-next', 'aria-label': 'Next version',
        title: 'Next version', disabled: busy || index >= siblings.length - 1,
        onclick: () => switchBranch(conv, siblings[index + 1], 'branch-next'),
      }, icon('right')));
  }

  // Tool use, in a conversation an API client had: an answer's calls and the tools' results.

  /** The calls answer `m` made (OpenAI's tool_calls), or none. */
  function toolCallsOf(m) {
    return m && Array.isArray(m.tool_calls) ? m.tool_calls.filter((c) => c && typeof c === 'object') : [];
  }

  /** The name of the function a call calls, or null. */
  function callName(call) {
    const name = call.function?.name;
    return typeof name === 'string' && name ? name : null;
  }

  /** The name of the function whose call tool message `m` answers, from the answers above it. */
  function calledName(conv, m) {
    if (!m.tool_call_id) return null;
    const above = pathTo(conv, m.id).reverse().slice(1);
    for (const id of above) {
      const call = toolCallsOf(conv.msgs.get(id)).find((c) => c.id === m.tool_call_id);
      if (call) return callName(call);
    }
    return null;
  }

  /** Arguments or a result as sent, pretty-printed when it is a JSON object or array. */
  function prettyJson(text) {
    if (text == null) return '';
    if (typeof text !== 'string') return JSON.stringify(text, null, 2);
    try {
      const value = JSON.parse(text);
      if (value !== null && typeof value === 'object') return JSON.stringify(value, null, 2);
    } catch {
      // Not JSON: shown as sent.
    }
    return text;
  }

  const TOOL_LEAD = { call: ['Called', 'Tool call'], result: ['Result of', 'Tool result'] };

  /**
   * A folded monospace block under a one-line summary ("Called get_weather", "Result of
   * get_weather"; "Tool call", "Tool result" when the function has no name we know): a call's
   * arguments (kind 'call') or a tool's result ('result').
   */
  function buildToolBlock(kind, name, text, testid) {
    const [named, unnamed] = TOOL_LEAD[kind];
    return h('details', { class: `tool-block tool-${kind}`, testid: `tool-${kind}`, 'aria-label': name ? `${named} ${name}` : unnamed },
      h('summary', { class: 'tool-summary' },
        icon(kind), name ? [`${named} `, h('code', { class: 'tool-name', text: name })] : unnamed, icon('right', 'tool-chevron')),
      h('pre', { class: 'tool-code', testid, dir: 'auto' }, h('code', { text: prettyJson(text) })));
  }

  function buildToolCalls(calls) {
    return h('div', { class: 'tool-calls' },
      calls.map((c) => buildToolBlock('call', callName(c), c.function?.arguments, 'tool-arguments')));
  }

  function buildMessage(conv, m) {
    const track = streamTrack(conv, m.id);
    const streaming = !!track;
    // An answer still being written that this page is not streaming (the page was reloaded
    // mid-answer, or another tab asked): shown as being written until a re-read settles it.
    const elsewhere = !streaming && m.role === 'assistant' && m.status === 'in_progress';
    const status = streaming ? 'in_progress' : (m.status || 'complete');
    const pair = m.role === 'assistant' ? pairFor(conv, m.id) : null;
    const byPerson = m.role === 'assistant' && m.author === 'person';
    const toolName = m.role === 'tool' ? calledName(conv, m) : null;
    let label = m.role === 'user' ? 'You said' : m.role === 'assistant' ? 'Lamplighter said' : 'System instructions';
    if (m.role === 'tool') label = toolName ? `Result of ${toolName}` : 'Tool result';
    else if (pair) label = m.id === pair.aId ? 'Answer A' : 'Answer B';
    else if (byPerson) label = 'Your improved answer';
    const article = h('article', {
      class: `msg msg-${m.role}${byPerson ? ' msg-by-person' : ''}`, testid: 'message', 'data-role': m.role, 'data-id': m.id,
      'data-status': status, 'data-author': m.author || null, 'aria-busy': streaming || elsewhere ? 'true' : null, 'aria-label': label,
    });

    if (m.role === 'system') {
      const body = h('div', { class: 'message-body plain', testid: 'message-body', dir: 'auto', text: m.content });
      article.append(h('details', { class: 'system-prompt' }, h('summary', { text: 'System instructions' }), body));
      return article;
    }

    const content = h('div', { class: 'msg-content' });
    article.append(content);

    if (m.role === 'tool') {
      // A tool's result, sent by the API client: read, never rated, regenerated or edited.
      content.append(buildToolBlock('result', toolName, m.content, 'tool-output'));
      const nav = buildBranchNav(conv, m);
      if (nav) content.append(h('div', { class: 'msg-actions' }, nav));
      return article;
    }

    if (m.role === 'user' && state.editing === m.id) {
      content.append(buildEditor(conv, m));
      return article;
    }
    if (m.role === 'assistant' && state.improving === m.id && !pair && !streaming) {
      content.append(buildImprover(conv, m));
      return article;
    }

    if (byPerson) {
      content.append(h('p', { class: 'msg-author', testid: 'author-label' }, icon('improve'), 'Your improved answer'));
    }
    if (m.role === 'assistant' && state.warnings.has(m.id)) content.append(buildWarning(state.warnings.get(m.id)));
    const body = h('div', { class: 'message-body', testid: 'message-body', dir: 'auto' });
    if (m.role === 'assistant') {
      if (streaming) {
        fillAnswerBody(body, track.html, track.tail);
        track.bodyEl = body;
      } else if (m._partial) {
        fillAnswerBody(body, m._partial.html, m._partial.tail);
      } else if (m.html != null) {
        fillAnswerBody(body, m.html, '');
      } else {
        body.classList.add('plain');
        body.textContent = m.content || '';
      }
    } else {
      body.classList.add('plain');
      body.textContent = m.content || '';
    }
    // An answer that only called tools has no text: its calls stand in for the empty bubble.
    const calls = streaming ? [] : toolCallsOf(m);
    if (!calls.length || m.content) content.append(body);
    if (calls.length) content.append(buildToolCalls(calls));

    const noteKind = noteKindFor(m, streaming);
    // An answer that did not finish offers Retry, which regenerates it: the Regenerate action
    // would do the same, so it is left out.
    const retries = m.role === 'assistant' && !pair && (noteKind === 'lost' || noteKind === 'interrupted' || noteKind === 'error');
    if (noteKind) {
      const retry = retries ? () => startChat({ conv, parentId: m.parent_id ?? null, content: null, kind: 'regenerate' }) : null;
      content.append(buildNote(conv, noteKind, m._errorMessage || null, retry));
    } else if (elsewhere) {
      content.append(h('div', { class: 'msg-status msg-status-info', testid: 'still-writing', text: 'Still being written…' }));
    } else if (!streaming && m.role === 'assistant' && m.finish_reason === 'length') {
      content.append(h('div', { class: 'msg-status msg-status-info', text: 'The answer reached its length limit.' }));
    }
    // One side of a side-by-side: no actions until the vote (the pair shows the vote buttons).
    if (pair) return article;

    const actions = h('div', { class: 'msg-actions' });
    const nav = buildBranchNav(conv, m);
    if (nav) actions.append(nav);
    const busy = !!streamOf(conv);

    if (m.role === 'user') {
      actions.append(iconButton('copy', 'Copy message', {
        testid: 'copy-message', onclick: (e) => flashCopied(e.currentTarget, m.content || ''),
      }));
      actions.append(iconButton('edit', 'Edit message', {
        testid: 'edit', disabled: busy,
        onclick: () => {
          state.editing = m.id;
          state.ratingOpen = null;
          rerenderMessage(conv, m.id, 'edit-input');
        },
      }));
    } else if (elsewhere) {
      // Nothing to rate, regenerate or improve until it is finished.
    } else if (m.role === 'assistant' && noteKind === 'error') {
      // A failed answer has nothing worth rating or improving: Retry (in its note) is the way on.
      if (answerText(m)) {
        actions.append(iconButton('copy', 'Copy answer', {
          testid: 'copy-message', onclick: (e) => flashCopied(e.currentTarget, answerText(m)),
        }));
      }
    } else if (m.role === 'assistant' && !streaming && byPerson) {
      // The person's own rewrite: nothing to rate, regenerate or improve.
      actions.append(iconButton('copy', 'Copy answer', {
        testid: 'copy-message', onclick: (e) => flashCopied(e.currentTarget, answerText(m)),
      }));
    } else if (m.role === 'assistant' && !streaming) {
      const rated = m.rating ? m.rating.rating : 0;
      // Nothing to copy from an answer that only called tools.
      if (!calls.length || m.content) {
        actions.append(iconButton('copy', 'Copy answer', {
          testid: 'copy-message', onclick: (e) => flashCopied(e.currentTarget, answerText(m)),
        }));
      }
      actions.append(
        iconButton('thumbs-up', 'Good answer', {
          testid: 'thumbs-up', class: 'icon-btn thumb', 'aria-pressed': rated === 1 ? 'true' : 'false',
          onclick: () => rate(conv, m.id, 1),
        }),
        iconButton('thumbs-down', 'Bad answer', {
          testid: 'thumbs-down', class: 'icon-btn thumb', 'aria-pressed': rated === -1 ? 'true' : 'false',
          onclick: () => rate(conv, m.id, -1),
        }),
      );
      // An answer in a tool round trip (it called tools, or answers a tool's result) was made
      // with tools the API client offered; the page offers none, so it cannot make it again,
      // and a rewrite could not call them either.
      const withTools = calls.length > 0 || conv.msgs.get(m.parent_id)?.role === 'tool';
      if (!withTools) {
        if (!retries) {
          actions.append(asks(iconButton('regenerate', 'Regenerate answer', {
            testid: 'regenerate',
            onclick: () => startChat({ conv, parentId: m.parent_id ?? null, content: null, kind: 'regenerate' }),
          }), conv));
        }
        actions.append(
          iconButton('improve', 'Improve this answer', {
            testid: 'improve', disabled: busy,
            onclick: () => {
              state.improving = m.id;
              state.ratingOpen = null;
              rerenderMessage(conv, m.id, 'improve-input');
            },
          }),
        );
      }
      if (m.model) actions.append(h('span', { class: 'msg-model', text: m.model }));
    }
    if (actions.childNodes.length) content.append(actions);

    if (m.role === 'assistant' && !streaming && !elsewhere) {
      if (state.verdicts.has(m.id)) content.append(buildVerdict(conv, m));
      if (state.ratingOpen === m.id && m.rating) content.append(buildRatingForm(conv, m));
      else if (state.ratingThanks === m.id) content.append(h('p', { class: 'rating-thanks', text: 'Thanks for your feedback!' }));
    }
    return article;
  }

  /** The server's warning about a question, in the words shown: a headline when it is about an
   *  API key (the person's own must be rotated; another account's was revoked), then its own. */
  function warningText(warning) {
    return /API key/.test(warning) ? ['Your message contains a live API key.', warning] : [warning];
  }

  /** Above the answer: what the server warned about the question (a pasted API key). */
  function buildWarning(warning) {
    const [first, ...rest] = warningText(warning);
    return h('div', { class: 'msg-warning', testid: 'message-warning' },
      h('strong', { text: first }), rest.length ? ` ${rest.join(' ')}` : null);
  }

  // "Is this better than the previous answer?" under a regenerated answer, when the server asks.
  function buildVerdict(conv, m) {
    if (state.verdicts.get(m.id) === 'thanks') {
      return h('p', { class: 'verdict-thanks', testid: 'verdict-thanks', text: 'Thanks, noted.' });
    }
    const titleId = `verdict-${m.id}`;
    const choices = [['better', 'Better'], ['worse', 'Worse'], ['same', 'About the same']];
    const buttons = [];
    const send = async (verdict) => {
      for (const b of buttons) b.disabled = true;
      try {
        await api('PUT', verdictUrl(m.id), { verdict });
      } catch (err) {
        for (const b of buttons) b.disabled = false;
        reportError(err);
        return;
      }
      state.verdicts.set(m.id, 'thanks');
      rerenderMessage(conv, m.id);
      refocus(); // the button pressed became "Thanks, noted."
      announce('Thanks, noted');
      refreshMe();
      setTimeout(() => {
        if (state.verdicts.get(m.id) !== 'thanks') return;
        state.verdicts.delete(m.id);
        if (isShown(conv)) rerenderMessage(conv, m.id);
      }, 4000);
    };
    const row = h('div', { class: 'verdict', testid: 'verdict', role: 'group', 'aria-labelledby': titleId },
      h('span', { class: 'verdict-question', id: titleId, text: 'Is this better than the previous answer?' }));
    choices.forEach(([value, text], index) => {
      if (index) row.append(h('span', { class: 'verdict-sep', 'aria-hidden': 'true', text: '·' }));
      const button = h('button', {
        type: 'button', class: 'verdict-btn', testid: `verdict-${value}`, onclick: () => send(value),
      }, text);
      buttons.push(button);
      row.append(button);
    });
    row.append(iconButton('close', 'Dismiss', {
      testid: 'verdict-dismiss', class: 'icon-btn icon-btn-sm verdict-dismiss',
      onclick: () => {
        state.verdicts.delete(m.id);
        rerenderMessage(conv, m.id, 'improve');
      },
    }));
    return row;
  }

  // "Improve this answer": the person's rewrite, saved as a sibling answer and shown from now on.
  function buildImprover(conv, m) {
    const titleId = `improve-${m.id}`;
    const original = m.content || '';
    const area = h('textarea', {
      class: 'improve-input', testid: 'improve-input', dir: 'auto', rows: '4', 'aria-labelledby': titleId, spellcheck: 'true',
    });
    area.value = original;
    const save = h('button', { type: 'submit', class: 'btn btn-primary btn-small', testid: 'improve-save', disabled: true }, 'Save');
    const cancel = h('button', { type: 'button', class: 'btn btn-ghost btn-small', testid: 'improve-cancel' }, 'Cancel');
    const form = h('form', { class: 'editor improver', testid: 'improver' },
      h('p', { class: 'improver-title', id: titleId, text: 'Improve this answer' }),
      area,
      h('p', { class: 'improver-hint', text: 'Write it as it should have been (Markdown works). It is kept next to the original and shown from now on. Ctrl+Enter saves.' }),
      h('div', { class: 'editor-actions' }, cancel, save));
    const changed = () => !!area.value.trim() && area.value.trim() !== original.trim();
    const doCancel = () => {
      state.improving = null;
      rerenderMessage(conv, m.id, 'improve');
    };
    const doSave = async () => {
      if (!changed() || streamOf(conv) || save.dataset.busy) return;
      save.dataset.busy = 'true';
      save.disabled = true;
      save.textContent = 'Saving…';
      let saved;
      try {
        saved = await api('POST', correctionUrl(m.id), { content: area.value });
      } catch (err) {
        delete save.dataset.busy;
        save.disabled = !changed();
        save.textContent = 'Save';
        reportError(err);
        return;
      }
      state.improving = null;
      if (saved && saved.message && saved.message.id) {
        addMsg(conv, saved.message);
        if (saved.comparison) mergeComparisons(conv, [saved.comparison]);
        conv.path = branchThrough(conv, saved.message.id);
        conv.currentLeafId = leafOf(conv);
      }
      if (isShown(conv)) {
        const scrollTop = els.thread.scrollTop;
        renderThread();
        els.thread.scrollTop = scrollTop;
        const shown = saved && saved.message
          ? els.messages.querySelector(`[data-testid="message"][data-id="${CSS.escape(saved.message.id)}"] [data-testid="branch-prev"]`)
          : null;
        if (shown) shown.focus();
      }
      announce('Your improved answer is saved');
      refreshMe();
    };
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      doSave();
    });
    cancel.addEventListener('click', doCancel);
    area.addEventListener('input', () => {
      autogrow(area, 480);
      save.disabled = !changed() || !!streamOf(conv);
    });
    area.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && !e.isComposing) {
        e.preventDefault();
        doSave();
      } else if (e.key === 'Escape') {
        e.preventDefault();
        doCancel();
      }
    });
    return form;
  }

  const VOTES = [['a', 'A is better'], ['b', 'B is better'], ['tie', 'Tie'], ['both_bad', 'Both are bad']];
  const NOT_COUNTED = {
    identity_leaked: 'an answer named the model that wrote it',
    answer_cut_or_failed: 'an answer was cut off or failed',
  };
  // How long the revealed models stay on screen before the pair folds into one thread.
  const REVEAL_MS = 3500;

  /** The two answers of a side-by-side as columns, with the vote under them. */
  function buildPair(conv, pair) {
    const c = pair.c;
    const revealed = !!(c && c.winner != null);
    const writing = !pair.bId || isStreamingMsg(conv, pair.aId) || isStreamingMsg(conv, pair.bId);
    const picked = revealed && (c.winner === 'a' || c.winner === 'b') ? c.winner : null;
    const section = h('section', {
      class: `pair${revealed ? ' pair-revealed' : ''}`, testid: 'pair', 'data-comparison-id': c ? c.id : null,
      'aria-label': 'Two answers to compare',
    });
    section.append(h('p', {
      class: 'pair-title', text: revealed ? 'Thanks for comparing. Here is who wrote what:' : 'Two answers: which one is better?',
    }));
    const cols = h('div', { class: 'pair-cols' });
    for (const slot of ['a', 'b']) {
      const id = slot === 'a' ? pair.aId : pair.bId;
      const m = id ? conv.msgs.get(id) : null;
      const col = h('div', {
        class: `pair-col${picked === slot ? ' pair-col-picked' : ''}`, testid: 'pair-column', 'data-slot': slot,
      });
      const head = h('div', { class: 'pair-label' }, h('span', { text: `Answer ${slot.toUpperCase()}` }));
      if (picked === slot) head.append(h('span', { class: 'pair-pick', text: 'Your pick' }));
      col.append(head);
      if (m) {
        col.append(buildMessage(conv, m));
      } else {
        col.append(h('article', {
          class: 'msg msg-assistant pending', testid: 'message', 'data-role': 'assistant', 'data-id': '',
          'data-status': 'in_progress', 'aria-busy': 'true', 'aria-label': 'Answer B',
        }, h('div', { class: 'msg-content' }, h('div', { class: 'message-body', testid: 'message-body', dir: 'auto' }))));
      }
      if (revealed) {
        const model = slot === 'a' ? c.a_model : c.b_model;
        col.append(h('p', { class: 'pair-model', testid: 'pair-model' }, 'Written by ', h('strong', { text: model ? variantName(model) : 'unknown' })));
      }
      cols.append(col);
    }
    section.append(cols);

    const foot = h('div', { class: 'pair-foot' });
    if (revealed) {
      const why = NOT_COUNTED[c.discarded] || (c.discarded ? 'it could not be checked' : '');
      const verdict = { a: 'You picked A.', b: 'You picked B.', tie: 'You called it a tie.', both_bad: 'You found both bad.' }[c.winner] || '';
      foot.append(
        h('p', {
          class: 'pair-result', testid: 'pair-result',
          text: c.counted ? `${verdict} Your vote counts, thank you.` : `${verdict} This vote won't count: ${why}.`,
        }),
        h('button', {
          type: 'button', class: 'btn btn-small', testid: 'pair-continue', onclick: () => collapsePair(conv, c.id, true),
        }, 'Continue'));
    } else if (writing || !c) {
      foot.append(h('p', { class: 'pair-hint', text: 'You can vote once both answers are written.' }));
    } else {
      // Kept in view while either answer is read (see .pair-foot-vote): on a phone, A is
      // screens above B and the vote.
      foot.classList.add('pair-foot-vote');
      foot.append(h('p', { class: 'pair-vote-question', id: `vote-${c.id}`, text: 'Which answer is better, A or B?' }));
      const group = h('div', { class: 'pair-vote', role: 'group', 'aria-labelledby': `vote-${c.id}` });
      for (const [winner, text] of VOTES) {
        group.append(h('button', {
          type: 'button', class: `btn btn-small vote-btn vote-${winner}`, testid: `vote-${winner}`,
          onclick: (e) => vote(conv, c, winner, e.currentTarget),
        }, text));
      }
      foot.append(group);
    }
    section.append(foot);
    return section;
  }

  /** A side-by-side's model as people read it: "smollm2-135m-instruct@t=1" (how the server
   *  names a model at a temperature) is "smollm2-135m-instruct, temperature 1". */
  function variantName(variant) {
    const at = /^(.+)@t=([0-9.]+)$/.exec(String(variant));
    return at ? `${at[1]}, temperature ${at[2]}` : String(variant);
  }

  async function vote(conv, c, winner, button) {
    const group = button.closest('.pair-vote');
    const buttons = group ? [...group.querySelectorAll('button')] : [button];
    for (const b of buttons) b.disabled = true;
    let result;
    try {
      result = await api('PUT', voteUrl(c.id), { winner });
    } catch (err) {
      for (const b of buttons) b.disabled = false;
      reportError(err);
      if (err instanceof ApiError && err.status === 409 && conv.id) refreshTree(conv); // voted elsewhere
      return;
    }
    conv.comparisons.set(result.id, result);
    // The models are known now; the stored messages say which (refreshTree reads them).
    for (const [id, variant] of [[result.a_id, result.a_model], [result.b_id, result.b_model]]) {
      const m = conv.msgs.get(id);
      if (m && !m.model && variant) m.model = String(variant).split('@')[0];
    }
    if (state.reveal) clearTimeout(state.reveal.timer);
    state.reveal = { id: result.id, conv, timer: setTimeout(() => collapsePair(conv, result.id, false), REVEAL_MS) };
    if (isShown(conv)) {
      const scrollTop = els.thread.scrollTop;
      renderThread();
      els.thread.scrollTop = scrollTop;
      const next = els.messages.querySelector('[data-testid="pair-continue"]');
      if (next) next.focus({ preventScroll: true });
    }
    const named = (variant) => (variant ? variantName(variant) : 'unknown');
    announce(`Answer A was ${named(result.a_model)}; answer B was ${named(result.b_model)}.`);
    refreshMe();
  }

  /** Leaving the page's conversation: a vote being revealed is done (the server has it). */
  function endReveal() {
    if (!state.reveal) return;
    clearTimeout(state.reveal.timer);
    state.reveal = null;
  }

  /** Fold a voted side-by-side into the thread: the chosen answer shown, the other a sibling. */
  function collapsePair(conv, id, focusComposer) {
    if (!state.reveal || state.reveal.id !== id) return;
    clearTimeout(state.reveal.timer);
    state.reveal = null;
    const c = conv.comparisons.get(id);
    if (!c) return;
    const shown = c.winner === 'b' ? c.b_id : c.a_id; // the server shows A for a tie or both bad
    const hadFocus = els.messages.contains(document.activeElement);
    if (conv.path.includes(c.a_id) || conv.path.includes(c.b_id)) {
      conv.path = branchThrough(conv, shown);
      conv.currentLeafId = leafOf(conv);
    }
    if (isShown(conv) && !streamOf(conv)) {
      const scrollTop = els.thread.scrollTop;
      renderThread();
      els.thread.scrollTop = scrollTop;
      if (focusComposer || hadFocus) refocus();
    }
    if (conv.id) refreshTree(conv);
  }

  /** Re-read a conversation's messages and comparisons, keeping the branch shown. */
  async function refreshTree(conv) {
    let data;
    try {
      data = await api('GET', convUrl(conv.id));
    } catch {
      return;
    }
    if (streamOf(conv)) return;
    for (const sm of data.messages || []) {
      const local = conv.msgs.get(sm.id);
      if (local && (local._partial || local._errorMessage)) continue; // keep what this page saw
      addMsg(conv, sm);
    }
    mergeComparisons(conv, data.comparisons);
    const leaf = leafOf(conv);
    conv.path = leaf && conv.msgs.has(leaf) ? branchThrough(conv, leaf) : initialPath(conv);
    if (isShown(conv) && !state.editing && !state.ratingOpen && !state.improving && !state.reveal) {
      const scrollTop = els.thread.scrollTop;
      renderThread();
      els.thread.scrollTop = scrollTop;
    }
  }

  function answerText(m) {
    if (m.content) return m.content;
    if (m._partial) return m._partial.tail || '';
    return '';
  }

  async function flashCopied(button, text) {
    const ok = await copyText(text);
    button.classList.toggle('copied', ok);
    button.replaceChildren(icon(ok ? 'check' : 'copy'));
    const label = ok ? 'Copied' : 'Copy failed';
    button.setAttribute('title', label);
    announce(label);
    setTimeout(() => {
      button.classList.remove('copied');
      button.replaceChildren(icon('copy'));
      button.setAttribute('title', button.getAttribute('aria-label') || 'Copy');
    }, 1600);
  }

  function buildPending(conv) {
    const p = conv.pending;
    const nodes = [];
    if (p.content != null) {
      nodes.push(h('article', {
        class: 'msg msg-user pending', testid: 'message', 'data-role': 'user', 'data-id': '',
        'data-status': p.lost ? 'complete' : 'in_progress',
      }, h('div', { class: 'msg-content' }, h('div', { class: 'message-body plain', testid: 'message-body', dir: 'auto', text: p.content }))));
    }
    const content = h('div', { class: 'msg-content' }, h('div', { class: 'message-body', testid: 'message-body', dir: 'auto' }));
    if (p.lost) {
      content.append(buildNote(conv, 'lost', null, () => startChat({
        conv, parentId: p.parentId, content: p.content, kind: p.kind,
      })));
    } else if (p.queued) {
      content.append(h('div', {
        class: 'msg-status msg-status-info', testid: 'queue-note', role: 'status',
        text: 'Waiting for a free place: many people are chatting right now. Your message is in the queue.',
      }));
    }
    nodes.push(h('article', {
      class: 'msg msg-assistant pending', testid: 'message', 'data-role': 'assistant', 'data-id': '',
      'data-status': p.lost ? 'cut' : 'in_progress', 'aria-busy': p.lost ? null : 'true',
    }, content));
    return nodes;
  }

  function buildEditor(conv, m) {
    const area = h('textarea', {
      class: 'edit-input', testid: 'edit-input', dir: 'auto', rows: '1', 'aria-label': 'Edit message', enterkeyhint: TOUCH.matches ? 'enter' : 'send',
    });
    area.value = m.content || '';
    const save = asks(h('button', { type: 'submit', class: 'btn btn-primary btn-small', testid: 'edit-save' }, 'Send'), conv, () => !area.value.trim() || !!tooLong(area.value));
    const cancel = h('button', { type: 'button', class: 'btn btn-ghost btn-small', testid: 'edit-cancel' }, 'Cancel');
    const form = h('form', { class: 'editor' }, area, h('div', { class: 'editor-actions' }, cancel, save));
    const doCancel = () => {
      state.editing = null;
      rerenderMessage(conv, m.id, 'edit');
    };
    const doSave = () => {
      const text = area.value;
      if (!text.trim() || tooLong(text) || !canAsk(conv)) return;
      state.editing = null;
      startChat({ conv, parentId: m.parent_id ?? null, content: text, kind: 'edit' });
    };
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      doSave();
    });
    cancel.addEventListener('click', doCancel);
    area.addEventListener('input', () => {
      autogrow(area, 320);
      save.disabled = !area.value.trim() || !!tooLong(area.value) || !canAsk(conv);
    });
    area.addEventListener('keydown', (e) => {
      if (sendsOnEnter(e)) {
        e.preventDefault();
        doSave();
      } else if (e.key === 'Escape') {
        e.preventDefault();
        doCancel();
      }
    });
    return form;
  }

  function buildRatingForm(conv, m) {
    const rating = m.rating;
    // A thumbs-up says what was good, a thumbs-down what was wrong: each has its own reasons.
    const sets = (state.me && state.me.rating_reasons) || {};
    const own = rating.rating === 1 ? sets.up : sets.down;
    const reasons = Array.isArray(own) ? own : [];
    const chosen = new Set(rating.reasons || []);
    const formId = `rating-${m.id}`;
    const boxes = reasons.map((r) => h('label', { class: 'reason-chip' },
      h('input', { type: 'checkbox', testid: 'rating-reason', value: r.id, name: 'reason', checked: chosen.has(r.id) }),
      h('span', { text: r.label })));
    const comment = h('textarea', {
      class: 'rating-comment', testid: 'rating-comment', dir: 'auto', rows: '2', id: `${formId}-comment`,
      placeholder: 'Anything else? (optional)', maxlength: '2000',
    });
    comment.value = rating.comment || '';
    const close = iconButton('close', 'Close feedback form', { class: 'icon-btn icon-btn-sm rating-close' });
    const form = h('form', { class: 'rating-form', testid: 'rating-form', 'aria-labelledby': `${formId}-title` },
      h('div', { class: 'rating-head' },
        h('p', { class: 'rating-title', id: `${formId}-title`, text: rating.rating === 1 ? 'What did you like about this answer?' : 'What was wrong with this answer?' }),
        close),
      boxes.length ? h('div', { class: 'reasons', role: 'group', 'aria-label': 'Reasons' }, boxes) : null,
      h('label', { class: 'sr-only', for: `${formId}-comment`, text: 'Comment' }),
      comment,
      h('div', { class: 'rating-actions' },
        h('button', { type: 'submit', class: 'btn btn-primary btn-small', testid: 'rating-save' }, 'Submit')));
    close.addEventListener('click', () => {
      state.ratingOpen = null;
      rerenderMessage(conv, m.id, m.rating && m.rating.rating === -1 ? 'thumbs-down' : 'thumbs-up');
    });
    form.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        e.preventDefault();
        close.click();
      }
    });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const picked = [...form.querySelectorAll('input[type="checkbox"]:checked')].map((b) => b.value);
      const text = comment.value.trim();
      const submit = form.querySelector('[data-testid="rating-save"]');
      submit.disabled = true;
      try {
        const saved = await api('PUT', ratingUrl(m.id), { rating: rating.rating, reasons: picked, comment: text || null });
        const msg = conv.msgs.get(m.id);
        if (msg) msg.rating = normaliseRating(saved, { rating: rating.rating, reasons: picked, comment: text || null });
        state.ratingOpen = null;
        state.ratingThanks = m.id;
        rerenderMessage(conv, m.id, rating.rating === 1 ? 'thumbs-up' : 'thumbs-down');
        announce('Thanks for your feedback');
        setTimeout(() => {
          if (state.ratingThanks === m.id) {
            state.ratingThanks = null;
            if (isShown(conv)) rerenderMessage(conv, m.id);
          }
        }, 3000);
      } catch (err) {
        submit.disabled = false;
        reportError(err);
      }
    });
    return form;
  }

  function normaliseRating(saved, fallback) {
    if (saved && typeof saved === 'object' && (saved.rating === 1 || saved.rating === -1)) {
      return { rating: saved.rating, reasons: saved.reasons || [], comment: saved.comment ?? null };
    }
    return fallback;
  }

  async function rate(conv, id, value) {
    const m = conv.msgs.get(id);
    if (!m) return;
    const focusId = value === 1 ? 'thumbs-up' : 'thumbs-down';
    const before = m.rating || null;
    try {
      if (before && before.rating === value) {
        await api('DELETE', ratingUrl(id));
        m.rating = null;
        if (state.ratingOpen === id) state.ratingOpen = null;
      } else {
        const body = { rating: value, reasons: [], comment: null };
        const saved = await api('PUT', ratingUrl(id), body);
        m.rating = normaliseRating(saved, body);
        state.ratingOpen = id;
        state.ratingThanks = null;
        refreshMe(); // a rating may earn a feedback bonus
      }
    } catch (err) {
      reportError(err);
    }
    if (!isShown(conv)) return;
    rerenderMessage(conv, id, focusId);
    if (state.ratingOpen === id) revealRatingForm(id);
  }

  /** Bring a just-opened feedback form into view and put the focus in its first field (Escape
   *  or its × closes it and returns the focus to the thumb). */
  function revealRatingForm(id) {
    const el = els.messages.querySelector(`[data-testid="message"][data-id="${CSS.escape(id)}"]`);
    const form = el && el.querySelector('[data-testid="rating-form"]');
    if (!form) return;
    form.scrollIntoView({ block: 'nearest' });
    const first = form.querySelector('input, textarea');
    if (first) first.focus({ preventScroll: true });
  }

  /** Replace one message's element in place, keeping focus on the control with `focusTestId`. */
  function rerenderMessage(conv, id, focusTestId) {
    if (!isShown(conv)) return;
    const old = els.messages.querySelector(`[data-testid="message"][data-id="${CSS.escape(id)}"]`);
    const m = conv.msgs.get(id);
    if (!old || !m) {
      renderThread();
      return;
    }
    const fresh = buildMessage(conv, m);
    old.replaceWith(fresh);
    if (focusTestId) {
      const target = fresh.querySelector(`[data-testid="${focusTestId}"]`);
      if (target && !target.disabled) {
        target.focus();
        if (target instanceof HTMLTextAreaElement) {
          autogrow(target, 320);
          target.setSelectionRange(target.value.length, target.value.length);
        }
      }
    }
  }

  function renderThread() {
    const conv = state.conv;
    if (!conv) return;
    const nodes = [];
    for (const id of conv.path) {
      const m = conv.msgs.get(id);
      if (!m) continue;
      const pair = m.role === 'assistant' ? pairFor(conv, id) : null;
      nodes.push(pair ? buildPair(conv, pair) : buildMessage(conv, m));
    }
    if (conv.pending) nodes.push(...buildPending(conv));
    if (conv.loadError) nodes.push(buildLoadFailed(conv));
    els.messages.replaceChildren(...nodes);
    els.loading.hidden = !conv.loading;
    els.welcome.hidden = conv.loading || nodes.length > 0;
    els.app.classList.toggle('is-empty', !conv.loading && nodes.length === 0);
    renderTitle();
    updateComposer();
    updateScrollButton();
  }

  function renderTitle() {
    const conv = state.conv;
    if (conv && conv.loadError && !conv.title) {
      // Not loaded: the sidebar may know its title (it may also arrive after the failure).
      const summary = state.conversations.find((c) => c.id === conv.id);
      if (summary && summary.title) conv.title = summary.title;
    }
    let title = 'New chat';
    if (conv && conv.id) title = conv.title || (conv.loadError ? 'Chat not loaded' : 'Untitled chat');
    els.title.textContent = conv && conv.loading ? '' : title;
    document.title = conv && conv.id && conv.title ? `${conv.title} · Lamplighter` : 'Lamplighter';
  }

  /** In place of the thread of a conversation that could not be loaded. */
  function buildLoadFailed(conv) {
    return h('section', { class: 'load-failed', testid: 'load-failed', 'aria-labelledby': 'load-failed-title' },
      h('div', { role: 'alert' },
        h('p', { class: 'load-failed-title', id: 'load-failed-title', text: `Couldn't load this chat` }),
        h('p', { class: 'load-failed-detail', text: conv.loadError })),
      h('button', {
        type: 'button', class: 'btn btn-small', testid: 'load-retry', onclick: () => retryLoad(conv),
      }, icon('regenerate'), 'Retry'));
  }

  // ---------------------------------------------------------------------------------------------
  // Scrolling

  function nearBottom() {
    const t = els.thread;
    return t.scrollHeight - t.scrollTop - t.clientHeight < 80;
  }

  function scrollToBottom(force) {
    if (force) state.stick = true;
    if (!state.stick) return;
    els.thread.scrollTop = els.thread.scrollHeight;
    updateScrollButton();
  }

  /** Whether the thread is scrolled to its very end. */
  function atBottom() {
    const t = els.thread;
    return t.scrollHeight - t.scrollTop - t.clientHeight <= 2;
  }

  /** ↓ shows while the page does not follow the answer and the end is out of sight. */
  function updateScrollButton() {
    els.scrollDown.hidden = state.stick ? nearBottom() : atBottom();
  }

  /**
   * Following the answer as it is written ends with any scroll up by the person, however small
   * (a wheel's notch, a key, the scrollbar), and starts again at the very end or with ↓. The
   * page's own scrolling only ever goes down, and a thread that got shorter (an answer drawn
   * again) keeps the scroll at its end: neither reads as the person's.
   */
  let lastScrollTop = 0;
  // When a wheel last turned up: until its scroll has begun, the thread is still at its end, and
  // a scroll event there (an answer drawn again, a line shorter) must not start following again:
  // the next word would pull the thread down and cancel the person's scroll.
  let wheeledUpAt = -Infinity;
  const WHEEL_SETTLE_MS = 1000;
  function followScroll() {
    const t = els.thread;
    const top = t.scrollTop;
    if (top < lastScrollTop - 1 && !atBottom()) state.stick = false;
    else if (atBottom() && performance.now() - wheeledUpAt > WHEEL_SETTLE_MS) state.stick = true;
    lastScrollTop = top;
    updateScrollButton();
  }

  // ---------------------------------------------------------------------------------------------
  // Branches

  async function switchBranch(conv, id, focusTestId) {
    if (streamOf(conv) || !conv.msgs.has(id)) return;
    conv.path = branchThrough(conv, id);
    conv.currentLeafId = leafOf(conv);
    state.editing = null;
    state.ratingOpen = null;
    state.improving = null;
    const scrollTop = els.thread.scrollTop;
    renderThread();
    els.thread.scrollTop = scrollTop;
    const el = els.messages.querySelector(`[data-testid="message"][data-id="${CSS.escape(id)}"]`);
    if (el) {
      let target = el.querySelector(`[data-testid="${focusTestId}"]`);
      if (!target || target.disabled) {
        target = el.querySelector(`[data-testid="${focusTestId === 'branch-next' ? 'branch-prev' : 'branch-next'}"]`);
      }
      if (target && !target.disabled) target.focus();
    }
    if (conv.id && conv.currentLeafId) {
      try {
        await api('PATCH', convUrl(conv.id), { current_leaf_id: conv.currentLeafId });
      } catch (err) {
        reportError(err);
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Streaming

  /** Parse a text/event-stream body into {event, data} objects. */
  async function* sseEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    const boundary = /\r\n\r\n|\n\n|\r\r/;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let match;
        while ((match = boundary.exec(buffer))) {
          const block = buffer.slice(0, match.index);
          buffer = buffer.slice(match.index + match[0].length);
          const event = parseSseBlock(block);
          if (event) yield event;
        }
      }
    } finally {
      try {
        reader.releaseLock();
      } catch {
        // already released
      }
    }
  }

  function parseSseBlock(block) {
    let event = 'message';
    const data = [];
    for (const line of block.split(/\r\n|\r|\n/)) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (!data.length) return null;
    return { event, data: data.join('\n') };
  }

  /** Stop in place of Send while the shown chat's answer is written (another chat's has its
   *  own Stop, in that chat). */
  function renderStreamControls(on) {
    document.body.dataset.streaming = on ? 'true' : 'false';
    if (els.stop.hidden === !on) return;
    const stopHadFocus = document.activeElement === els.stop;
    const sendHadFocus = document.activeElement === els.send;
    els.stop.hidden = !on;
    els.send.hidden = on;
    if (!on && stopHadFocus) els.composer.focus();
    if (on && sendHadFocus) refocus(els.send); // Send hides while the answer is written
  }

  /**
   * Put the focus somewhere sensible when the control that had it went away (hidden, or taken
   * by a re-render): the message box, or on a phone, where that would open the keyboard, the
   * chat's title. Nothing changes while the focus is on something else still there.
   */
  function refocus(gone) {
    const active = document.activeElement;
    if (active && active !== document.body && active !== gone && active.isConnected) return;
    if (!NARROW.matches && !els.composer.disabled) els.composer.focus();
    else els.title.focus({ preventScroll: true });
  }

  function updateComposer() {
    const conv = state.conv;
    const mine = !!streamOf(conv);
    // A side-by-side waiting for its vote: the next message would continue one of two answers
    // nobody has chosen yet, so the composer asks for the vote first.
    const vote = !mine && !!conv && !conv.loading && needsVote(conv);
    // A conversation that did not load: a message now would have no parent to go under, and the
    // server would file it as a new first message, beside the whole history, without its context.
    const unloaded = !!conv && !!conv.loadError;
    // Another chat's answer takes the plan's last place: the server would refuse this one.
    const elsewhere = conv && !vote && !unloaded ? streamElsewhere(conv) : null;
    const long = tooLong(els.composer.value);
    const blocked = mine || !conv || conv.loading || vote || unloaded || waitingOutLimit() || !!elsewhere || !!long;
    els.composer.disabled = vote || unloaded;
    els.composer.placeholder = vote ? 'Pick the better answer to continue'
      : unloaded ? 'Load this chat to continue' : 'Message Lamplighter';
    els.form.classList.toggle('is-waiting', vote || unloaded);
    els.app.classList.toggle('is-voting', vote); // ↓ moves aside from the vote bar
    els.send.disabled = blocked || !els.composer.value.trim();
    renderStreamControls(mine);
    renderElsewhere(elsewhere);
    renderTooLong(long);
    syncAsks();
  }

  /** Say that another chat's answer is still being written (and where), or nothing. */
  function renderElsewhere(s) {
    els.elsewhere.hidden = !s;
    els.elsewhere._stream = s;
    const text = s
      ? `An answer is still being written in ${s.conv.title ? `“${s.conv.title}”` : 'another chat'}. You can send once it has finished.`
      : '';
    if (els.elsewhereText.textContent !== text) els.elsewhereText.textContent = text; // read out once
  }

  /** Show the chat that writes the answer holding the plan's place (to wait there, or stop it). */
  function goToStream() {
    const s = els.elsewhere._stream;
    if (!s || !state.streams.has(s.conv)) return;
    if (s.conv.id) {
      openConversation(s.conv.id, { push: true });
    } else {
      // A new chat whose first answer has not started: it has no address of its own yet.
      if (location.pathname !== '/') history.pushState({}, '', '/');
      leaveConversation();
      showStreaming(s.conv);
    }
    els.stop.focus();
  }

  // The longest message the server takes (/api/chat's own limit, given by the page), in
  // characters as it counts them: code points, not JavaScript's UTF-16 units.
  const MAX_CHARS = Number(document.querySelector('meta[name="max-message-chars"]')?.content) || Infinity;

  /** A message's length in characters when it is over the limit, else 0. */
  function tooLong(text) {
    if (text.length <= MAX_CHARS) return 0; // never fewer UTF-16 units than characters
    const chars = [...text].length;
    return chars > MAX_CHARS ? chars : 0;
  }

  function renderTooLong(chars) {
    els.tooLong.hidden = !chars;
    const text = chars
      ? `Too long to send: ${chars.toLocaleString('en-US')} characters, and a message can have at most ${MAX_CHARS.toLocaleString('en-US')}.`
      : '';
    if (els.tooLong.textContent !== text) els.tooLong.textContent = text;
  }

  /**
   * Ask for an answer. kind: 'new' (a new user message under parentId), 'edit' (a new user message
   * that is a sibling of an earlier one: parentId is that message's parent), 'regenerate'
   * (content null: a new answer under the user message parentId).
   */
  async function startChat({ conv, parentId, content, kind }) {
    if (!canAsk(conv)) return; // one being written here, a limit's countdown, or the plan's places taken
    hideError();
    if (state.reveal && state.reveal.conv === conv) collapsePair(conv, state.reveal.id, false);
    const request = { conversation_id: conv.id, parent_id: parentId ?? null, content: content ?? null, model: state.model || null };
    const s = {
      conv, kind, request, controller: new AbortController(),
      // One track per answer being written: 'a' (the answer, or side-by-side answer A) and,
      // in a side-by-side, 'b'. Each: { id, html, tail, bodyEl, done, error }.
      tracks: new Map(),
      sideBySide: false,
      gotStart: false, stopped: false, error: null,
      prevPath: conv.path.slice(),
    };
    state.streams.set(conv, s);
    state.editing = null;
    state.ratingOpen = null;
    state.improving = null;
    state.unsent.delete(conv.id || ''); // this message takes the place of one that was not sent
    conv.path = parentId ? pathTo(conv, parentId) : [];
    conv.pending = {
      content: content ?? null, parentId: parentId ?? null, kind, lost: false,
      siblingsBefore: childrenOf(conv, parentId ?? null).length,
    };
    updateComposer();
    if (isShown(conv)) {
      renderThread();
      scrollToBottom(true);
      refocus(); // Regenerate, or the edit's Save, went with the re-render
    }

    let outcome = 'lost';
    let httpError = null;
    const mainDone = () => !!(s.tracks.get('a') && s.tracks.get('a').done);
    const queued = setTimeout(() => {
      if (conv.pending && !conv.pending.lost) {
        conv.pending.queued = true;
        if (isShown(conv)) renderThread();
      }
    }, QUEUED_MS);
    try {
      let res;
      try {
        res = await fetch('/api/chat', {
          method: 'POST',
          credentials: 'same-origin',
          headers: { ...jsonHeaders(), Accept: 'text/event-stream' },
          body: JSON.stringify(request),
          signal: s.controller.signal,
        });
      } finally {
        clearTimeout(queued);
      }
      if (!res.ok) {
        httpError = res.status === 401 ? null : await errorFromResponse(res);
        if (res.status === 401) {
          // Kept as the chat's draft: after logging in again the page comes back to it.
          if (kind === 'new' && content) giveBack(conv, content);
          goToLogin();
        }
        outcome = 'http-error';
      } else if (!(res.headers.get('content-type') || '').includes('text/event-stream')) {
        // A JSON answer where a stream was expected: treat an {error} body as an error.
        httpError = await errorFromResponse(res);
        outcome = 'http-error';
      } else {
        for await (const ev of sseEvents(res)) {
          handleEvent(s, ev);
        }
        outcome = mainDone() ? 'done' : s.error ? 'error' : 'lost';
      }
    } catch (err) {
      outcome = mainDone() ? 'done' : s.stopped ? 'stopped' : s.error ? 'error' : 'lost';
      if (outcome === 'lost' && !(err instanceof TypeError) && err && err.name !== 'AbortError') {
        console.error(err); // a bug in this page, not the network
      }
    }
    finishStream(s, outcome, httpError);
  }

  function parseData(ev) {
    try {
      return JSON.parse(ev.data);
    } catch {
      return null;
    }
  }

  /** The track an event is about: its `slot` in a side-by-side, else the one answer. */
  const trackFor = (s, data) => s.tracks.get(data.slot === 'b' ? 'b' : 'a') || null;

  function newTrack(m) {
    const content = m.content || '';
    // Usually empty; if the answer already has text, later deltas continue it.
    const html = content && typeof m.html === 'string' ? m.html : '';
    return { id: m.id, html, tail: content && !html ? content : '', bodyEl: null, done: false, error: null, interrupted: false };
  }

  /** Re-render the thread during a stream (the pair's layout changed), keeping the scroll. */
  function rerenderStreaming(conv) {
    if (!isShown(conv)) return;
    const scrollTop = els.thread.scrollTop;
    renderThread();
    if (state.stick) scrollToBottom();
    else els.thread.scrollTop = scrollTop;
  }

  function handleEvent(s, ev) {
    const data = parseData(ev);
    if (!data) return;
    const conv = s.conv;
    switch (ev.event) {
      case 'start': {
        const wasNew = !conv.id;
        if (data.conversation_id) conv.id = data.conversation_id;
        // Typed while the first message waited for the server: the new chat's draft now.
        if (wasNew && conv.id && isShown(conv)) moveDraft('', conv.id);
        if (typeof data.title === 'string' && data.title) conv.title = data.title;
        // A new chat's custom instructions, stored as its first message (a system message).
        if (data.system_message) addMsg(conv, data.system_message);
        if (data.user_message) addMsg(conv, data.user_message);
        if (!data.message) break;
        addMsg(conv, data.message);
        const m = conv.msgs.get(data.message.id);
        m.content = m.content || '';
        if (typeof data.warning === 'string' && data.warning) {
          // Something in the question the person must know about: a live API key, say.
          state.warnings.set(m.id, data.warning);
          announce(warningText(data.warning).join(' '));
        }
        s.tracks.set('a', newTrack(m));
        s.sideBySide = data.side_by_side === true;
        s.gotStart = true;
        conv.pending = null;
        conv.path = pathTo(conv, m.id);
        conv.currentLeafId = m.id;
        touchConversation(conv, wasNew);
        if (isShown(conv)) {
          if (wasNew) history.pushState({}, '', `/c/${encodeURIComponent(conv.id)}`);
          renderThread();
          scrollToBottom();
          highlightCurrent();
        }
        break;
      }
      case 'pair': {
        // Answer B of a side-by-side, and the comparison to vote on.
        if (!data.message || !data.message.id) break;
        addMsg(conv, data.message);
        const m = conv.msgs.get(data.message.id);
        m.content = m.content || '';
        s.tracks.set('b', newTrack(m));
        if (data.comparison) mergeComparisons(conv, [data.comparison]);
        rerenderStreaming(conv);
        break;
      }
      case 'pair_error': {
        // No answer B this time (a limit, an overload): answer A stands alone.
        s.sideBySide = false;
        rerenderStreaming(conv);
        break;
      }
      case 'delta': {
        const text = typeof data.text === 'string' ? data.text : '';
        const t = trackFor(s, data);
        if (!text || !t) break;
        const m = conv.msgs.get(t.id);
        if (m) m.content = (m.content || '') + text;
        t.tail += text;
        if (t.bodyEl && t.bodyEl.isConnected) {
          tailTarget(t.bodyEl).append(document.createTextNode(text));
          scrollToBottom();
        }
        break;
      }
      case 'html': {
        const t = trackFor(s, data);
        if (typeof data.html !== 'string' || !t) break;
        t.html = data.html;
        // The rendering covers the text so far but trims its trailing space ("lorem " is
        // <p>lorem</p>): kept as the tail, the next word does not run into the last one.
        const m = conv.msgs.get(t.id);
        t.tail = m ? (/\s+$/.exec(m.content || '') || [''])[0] : '';
        if (t.bodyEl && t.bodyEl.isConnected) {
          fillAnswerBody(t.bodyEl, t.html, t.tail);
          scrollToBottom();
        }
        break;
      }
      case 'done': {
        let t = trackFor(s, data);
        if (data.message && data.message.id) {
          const prev = conv.msgs.get(data.message.id);
          addMsg(conv, { rating: prev ? prev.rating : null, author: prev ? prev.author : null, ...data.message });
          if (!t) {
            t = newTrack(data.message);
            s.tracks.set(data.slot === 'b' ? 'b' : 'a', t);
          }
          if (data.ask_verdict === true) state.verdicts.set(data.message.id, 'ask');
        }
        if (t) t.done = true;
        if (data.slot && t) {
          // One side of a pair is written: show it finished while the other goes on.
          state.notes.delete(t.id);
          rerenderMessage(conv, t.id);
        }
        break;
      }
      case 'error': {
        const err = data.error || data;
        const t = trackFor(s, data);
        if (err && err.code === SHUTTING_DOWN) {
          // The server is stopping and cut the answer off: not a failure of the answer, and not
          // the person's Stop. What arrived stays, with Retry (another server answers it).
          if (t) t.interrupted = true;
          break;
        }
        const message = (err && typeof err.message === 'string' && err.message) || 'The answer could not be completed.';
        if (t) t.error = { message };
        if (data.slot !== 'b') s.error = { message };
        break;
      }
      default:
        break;
    }
    // How many answers are being written (a side-by-side is two) and the title may have changed.
    if (ev.event !== 'delta' && ev.event !== 'html') updateComposer();
  }

  /** Keep what arrived of an answer that did not finish, and say why. */
  function settleTrack(conv, t, outcome) {
    const m = conv.msgs.get(t.id);
    if (!m) return;
    if (t.done) {
      state.notes.delete(m.id);
      if (m.status === 'error') state.notes.set(m.id, 'error');
      else if (m.status === 'cut' && (t.interrupted || CUT_BY_SERVER.has(m.finish_reason))) state.notes.set(m.id, 'interrupted');
      return;
    }
    m._partial = { html: t.html, tail: t.tail };
    if (t.error || outcome === 'error') {
      m.status = 'error';
      m._errorMessage = (t.error || {}).message || 'The answer could not be completed.';
      state.notes.set(m.id, 'error');
    } else if (outcome === 'stopped') {
      m.status = 'cut';
      state.notes.set(m.id, 'stopped');
    } else if (t.interrupted) {
      m.status = 'cut';
      state.notes.set(m.id, 'interrupted');
    } else {
      m.status = 'cut';
      state.notes.set(m.id, 'lost');
    }
  }

  /** A message the server did not take goes back where it was typed: the message box, or, for
   *  a chat no longer shown, that chat's draft (unless it has another). */
  function giveBack(conv, text) {
    if (isShown(conv)) {
      if (!els.composer.value) setComposer(text);
    } else if (safeStorageGet(draftKey(conv)) === null) {
      safeStorageSet(draftKey(conv), text);
    }
  }

  function finishStream(s, outcome, httpError) {
    const conv = s.conv;
    const main = s.tracks.get('a');
    const m = main ? conv.msgs.get(main.id) : null;
    const composerHadFocus = document.activeElement === els.composer;
    if (state.streams.get(conv) === s) state.streams.delete(conv);

    if (outcome === 'http-error') {
      conv.pending = null;
      if (httpError) reportError(httpError, { answer: true });
      conv.path = s.prevPath.filter((id) => conv.msgs.has(id));
      if (s.kind === 'new' && s.request.content) giveBack(conv, s.request.content);
    } else if (!m) {
      // Ended before `start`: nothing of the answer is known.
      if (outcome === 'stopped') {
        conv.pending = null;
        conv.path = s.prevPath.filter((id) => conv.msgs.has(id));
        if (s.kind === 'new' && s.request.content) giveBack(conv, s.request.content);
        announce(NOTE_SPOKEN.stopped);
      } else if (outcome === 'error') {
        conv.pending = null;
        conv.path = s.prevPath.filter((id) => conv.msgs.has(id));
        showError(ANSWER_FAILED, 'other', s.error.message);
      } else if (conv.pending) {
        conv.pending.lost = true;
        keepUnsent(conv);
        announce('Connection lost before the answer began; Retry is available.');
      }
    } else {
      for (const t of s.tracks.values()) settleTrack(conv, t, t === main ? outcome : (s.stopped ? 'stopped' : 'lost'));
      // A failure is said once, in the answer (with its details and Retry), not in a banner too.
      const note = state.notes.get(m.id);
      if (note) announce(NOTE_SPOKEN[note]);
      else if (outcome === 'done') announce(s.tracks.size > 1 ? 'Both answers are complete' : 'Answer complete');
    }

    updateComposer(); // here Send again; in another chat, one may be sent now
    if (isShown(conv)) {
      renderThread();
      scrollToBottom();
      if (composerHadFocus && needsVote(conv)) {
        const first = els.messages.querySelector('[data-testid="vote-a"]');
        if (first) first.focus();
      }
    }

    if (m && outcome !== 'lost' && isShown(conv) && leafOf(conv) === m.id && conv.id) {
      // Remember the branch shown (the server does this too; this makes it certain).
      api('PATCH', convUrl(conv.id), { current_leaf_id: m.id }).catch(() => {});
    }
    const unfinished = [...s.tracks.values()].some((t) => !t.done);
    if (outcome === 'stopped' || (outcome === 'lost' && !m) || outcome === 'error' || (m && unfinished)) {
      if (conv.id) syncConversation(conv, 4);
    }
    refreshMe();
    refreshConversations();
    if (outcome === 'stopped' && !conv.id) setTimeout(refreshConversations, 1200);
  }

  /** Re-read a conversation from the server after a stop or failure (ids, stored status). */
  async function syncConversation(conv, tries) {
    for (let attempt = 0; attempt < tries; attempt++) {
      await sleep(attempt === 0 ? 400 : 900 * attempt);
      if (streamOf(conv)) return;
      let data;
      try {
        data = await api('GET', convUrl(conv.id));
      } catch {
        return;
      }
      if (streamOf(conv)) return;
      let unsettled = false;
      const seenLeaf = leafOf(conv);
      for (const sm of data.messages || []) {
        const local = conv.msgs.get(sm.id);
        if (local && local._partial && sm.status === 'in_progress') {
          unsettled = true; // the server has not written the cut answer yet
          continue;
        }
        if (local && local._errorMessage && sm.status === 'error') sm._errorMessage = local._errorMessage;
        addMsg(conv, sm);
      }
      mergeComparisons(conv, data.comparisons);
      if (typeof data.title === 'string') conv.title = data.title;
      if (conv.pending && conv.pending.lost) {
        // The server did store the exchange after all: show it instead of the placeholder.
        const under = childrenOf(conv, conv.pending.parentId);
        if (under.length > conv.pending.siblingsBefore) {
          conv.pending = null;
          state.unsent.delete(conv.id);
          conv.path = branchThrough(conv, under[under.length - 1]);
        }
      } else if (seenLeaf && conv.msgs.has(seenLeaf)) {
        conv.path = branchThrough(conv, seenLeaf);
      } else {
        conv.path = initialPath(conv);
      }
      if (isShown(conv) && !state.editing && !state.ratingOpen && !state.improving) renderThread();
      if (!unsettled) return;
    }
  }

  // Waits between re-reads of a conversation whose answer is being written elsewhere: soon at
  // first, then less often; after about three minutes the page stops asking.
  const SETTLE_WAITS_MS = [1000, 2000, 3000, 5000, 8000, 13000, 20000, 30000, 30000, 30000, 30000];

  function writtenElsewhere(conv) {
    return conv.order.filter((id) => {
      const m = conv.msgs.get(id);
      return m.role === 'assistant' && m.status === 'in_progress' && !isStreamingMsg(conv, id);
    });
  }

  /** Re-read a conversation just opened with answers still being written (not by this page)
   *  until they settle, the person leaves the chat or starts an answer here, or it gives up. */
  async function followUnsettled(conv) {
    if (conv.following) return; // already
    conv.following = true;
    try {
      await settleUnsettled(conv);
    } finally {
      conv.following = false;
    }
  }

  async function settleUnsettled(conv) {
    for (const wait of SETTLE_WAITS_MS) {
      await sleep(wait);
      const unsettled = writtenElsewhere(conv);
      const mine = () => !!streamOf(conv);
      if (!isShown(conv) || !unsettled.length || mine()) return;
      let data;
      try {
        data = await api('GET', convUrl(conv.id));
      } catch {
        continue; // the banner says so; the next try may reach it
      }
      if (!isShown(conv) || mine()) return;
      const known = conv.order.length;
      const seenLeaf = leafOf(conv);
      for (const sm of data.messages || []) addMsg(conv, sm);
      mergeComparisons(conv, data.comparisons);
      if (seenLeaf && conv.msgs.has(seenLeaf)) conv.path = branchThrough(conv, seenLeaf);
      const atBottom = nearBottom();
      if (conv.order.length !== known && !state.editing && !state.ratingOpen && !state.improving) renderThread();
      else for (const id of unsettled) rerenderMessage(conv, id);
      if (atBottom) scrollToBottom(true);
      if (!writtenElsewhere(conv).length) {
        announce('The answer is finished');
        updateComposer();
        return;
      }
    }
  }

  /**
   * A message whose request failed before the server said it had it (`conv.pending.lost`) exists
   * only in this browser: keep it per conversation, so that leaving the chat and coming back, or
   * reloading the page, shows it again, with its Retry, instead of losing what the person wrote.
   */
  function keepUnsent(conv) {
    const p = conv.pending;
    if (!p || p.content == null) return; // a regeneration: nothing was written to keep
    state.unsent.set(conv.id || '', {
      content: p.content, parentId: p.parentId, kind: p.kind, siblingsBefore: p.siblingsBefore,
    });
  }

  /** Unsent messages by conversation id, kept in localStorage: a Map's get, set and delete. */
  function unsentMessages() {
    const key = (id) => `${UNSENT_PREFIX}${id}`;
    return {
      get: (id) => {
        try {
          return JSON.parse(safeStorageGet(key(id))) ?? undefined;
        } catch {
          return undefined; // damaged
        }
      },
      set: (id, message) => safeStorageSet(key(id), JSON.stringify(message)),
      delete: (id) => safeStorageRemove(key(id)),
    };
  }

  /** Show a conversation's unsent message again (conv was just built from the server's copy). */
  function restoreUnsent(conv) {
    const key = conv.id || '';
    const u = state.unsent.get(key);
    if (!u) return;
    if (u.parentId !== null && !conv.msgs.has(u.parentId)) {
      // What it answered is gone (deleted elsewhere): give the text back rather than drop it.
      state.unsent.delete(key);
      if (!els.composer.value) setComposer(u.content);
      return;
    }
    const later = childrenOf(conv, u.parentId).slice(u.siblingsBefore);
    if (later.some((id) => conv.msgs.get(id).content === u.content)) {
      state.unsent.delete(key); // the server stored it after all: the tree shows it
      return;
    }
    conv.pending = { ...u, lost: true };
    conv.path = u.parentId ? pathTo(conv, u.parentId) : [];
  }

  /** End answer `s` (the shown chat's, for Stop and Escape): the server stores it as cut. */
  function stopStreaming(s) {
    if (!s) return;
    s.stopped = true;
    const track = s.tracks.get('a');
    if (track && !s.sideBySide) {
      // Hanging up alone would leave the answer going for a while, for a page that comes back
      // to it (a reload): Stop says so. A side-by-side ends when its page hangs up.
      fetch(`/api/messages/${encodeURIComponent(track.id)}/stop`, {
        method: 'POST', credentials: 'same-origin', headers: jsonHeaders(), keepalive: true,
      }).catch(() => {});
    }
    s.controller.abort();
  }

  // ---------------------------------------------------------------------------------------------
  // Sidebar

  function touchConversation(conv, isNew) {
    const now = new Date().toISOString();
    const idx = state.conversations.findIndex((c) => c.id === conv.id);
    let summary;
    if (idx >= 0) {
      summary = state.conversations.splice(idx, 1)[0];
      summary.updated_at = now;
      if (conv.title) summary.title = conv.title;
    } else {
      summary = { id: conv.id, title: conv.title, created_at: now, updated_at: now };
    }
    if (idx >= 0 || isNew || !state.query) state.conversations.unshift(summary);
    renderSidebar();
  }

  function dayGroup(iso) {
    const t = Date.parse(iso || '');
    if (Number.isNaN(t)) return 'Older';
    const startOfToday = new Date();
    startOfToday.setHours(0, 0, 0, 0);
    const day = 86400000;
    if (t >= startOfToday.getTime()) return 'Today';
    if (t >= startOfToday.getTime() - day) return 'Yesterday';
    if (t >= startOfToday.getTime() - 7 * day) return 'Previous 7 days';
    if (t >= startOfToday.getTime() - 30 * day) return 'Previous 30 days';
    return 'Older';
  }

  /** Which sidebar control has the focus, to put it back on the same one after a re-render. */
  function sidebarFocus() {
    const el = document.activeElement;
    if (!el || !els.convList.contains(el)) return null;
    const li = el.closest('[data-testid="conversation-item"]');
    if (!li) return null;
    return { id: li.dataset.id, testid: el.dataset.testid || null, link: el.classList.contains('conv-link') };
  }

  function restoreSidebarFocus(kept) {
    if (!kept || (document.activeElement && document.activeElement !== document.body)) return;
    const li = els.convList.querySelector(`[data-testid="conversation-item"][data-id="${CSS.escape(kept.id)}"]`);
    if (!li) return;
    // The same control if it is still there; the rename field, once renaming ends, gives way to
    // the Rename button it came from.
    const target = (kept.link && li.querySelector('.conv-link'))
      || (kept.testid && li.querySelector(`[data-testid="${CSS.escape(kept.testid)}"]`))
      || (kept.testid === 'rename-input' && li.querySelector('[data-testid="rename"]'));
    if (target) target.focus({ preventScroll: true });
  }

  function renderSidebar() {
    const kept = sidebarFocus();
    const items = [];
    let lastGroup = null;
    for (const c of state.conversations) {
      const group = state.query ? 'Results' : dayGroup(c.updated_at || c.created_at);
      if (group !== lastGroup) {
        items.push(h('li', { class: 'conv-group', role: 'presentation', text: group }));
        lastGroup = group;
      }
      items.push(buildConvItem(c));
    }
    if (state.moreCursor && state.conversations.length) {
      const more = h('button', { type: 'button', class: 'btn btn-ghost btn-block show-more', testid: 'show-more-chats', text: 'Show more' });
      more.addEventListener('click', () => showMoreConversations(more));
      items.push(h('li', { class: 'conv-more' }, more));
    }
    els.convList.replaceChildren(...items);
    restoreSidebarFocus(kept);
    if (!state.conversations.length) {
      els.convEmpty.textContent = state.query ? 'No chats match your search.' : 'Your chats will appear here.';
      els.convEmpty.hidden = false;
    } else {
      els.convEmpty.hidden = true;
    }
    const input = els.convList.querySelector('[data-testid="rename-input"]');
    if (input && document.activeElement !== input) {
      input.focus();
      if (!state.renaming.touched) input.select();
    }
  }

  function buildConvItem(c) {
    const current = state.conv && state.conv.id === c.id;
    const title = c.title || 'Untitled chat';
    const li = h('li', {
      class: 'conv-item', testid: 'conversation-item', 'data-id': c.id, 'aria-current': current ? 'page' : null,
    });
    if (state.renaming && state.renaming.id === c.id) {
      li.classList.add('renaming');
      const input = h('input', {
        type: 'text', class: 'rename-input', testid: 'rename-input', dir: 'auto', 'aria-label': 'Chat title', maxlength: '200',
      });
      input.value = state.renaming.draft;
      let finished = false;
      const finish = (save) => {
        if (finished) return;
        finished = true;
        const value = input.value.trim();
        state.renaming = null;
        if (save && value && value !== (c.title || '')) renameConversation(c.id, value);
        else renderSidebar();
        const again = els.convList.querySelector(`[data-id="${CSS.escape(c.id)}"] [data-testid="rename"]`);
        if (again) again.focus();
      };
      input.addEventListener('input', () => {
        if (state.renaming) {
          state.renaming.draft = input.value;
          state.renaming.touched = true;
        }
      });
      input.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' && !e.isComposing) {
          e.preventDefault();
          finish(true);
        } else if (e.key === 'Escape') {
          e.preventDefault();
          e.stopPropagation();
          finish(false);
        }
      });
      input.addEventListener('blur', () => {
        // Leaving the field saves, as in most editors; a re-render (which also blurs) does not.
        setTimeout(() => {
          if (!finished && input.isConnected && document.activeElement !== input) finish(true);
        }, 0);
      });
      li.append(input);
      return li;
    }
    const link = h('a', { class: 'conv-link', href: `/c/${encodeURIComponent(c.id)}`, title },
      h('span', { class: 'conversation-title', testid: 'conversation-title', dir: 'auto', text: title }));
    link.addEventListener('click', (e) => {
      if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      e.preventDefault();
      if (!(state.conv && state.conv.id === c.id)) openConversation(c.id, { push: true });
      const folded = els.app.classList.contains('nav-open');
      closeSidebar();
      if (folded) refocus(link); // the link went behind the menu button with the sidebar
    });
    // Named after the chat: a screen reader's list of buttons is not a hundred "Rename"s.
    const actions = h('div', { class: 'conv-actions' },
      iconButton('edit', `Rename ${title}`, {
        testid: 'rename', class: 'icon-btn icon-btn-sm', title: 'Rename',
        onclick: () => {
          state.renaming = { id: c.id, draft: c.title || '', touched: false };
          renderSidebar();
        },
      }),
      iconButton('trash', `Delete ${title}`, {
        testid: 'delete', class: 'icon-btn icon-btn-sm danger', title: 'Delete',
        onclick: () => confirmDelete(c),
      }));
    li.append(link, actions);
    return li;
  }

  function highlightCurrent() {
    const id = state.conv && state.conv.id;
    for (const li of els.convList.querySelectorAll('[data-testid="conversation-item"]')) {
      if (id && li.dataset.id === id) li.setAttribute('aria-current', 'page');
      else li.removeAttribute('aria-current');
    }
  }

  // The sidebar lists chats a page at a time; "Show more" asks for the next page, the one after
  // the last chat of the page before (its cursor), so a chat that moved to the top meanwhile
  // shifts nothing: none is skipped or comes twice.
  const CHATS_PAGE = 100;
  const MAX_CHATS_PAGE = 500; // the server's largest page

  function conversationsUrl(cursor, limit) {
    const params = new URLSearchParams({ limit: String(limit) });
    if (cursor) params.set('cursor', cursor);
    if (state.query) params.set('q', state.query);
    return `/api/conversations?${params}`;
  }

  async function refreshConversations() {
    const token = ++state.listToken;
    // As many as are shown already: a refresh does not fold pages that "Show more" opened.
    const limit = Math.min(MAX_CHATS_PAGE, Math.max(CHATS_PAGE, state.conversations.length));
    try {
      const data = await api('GET', conversationsUrl(null, limit));
      if (token !== state.listToken) return;
      state.conversations = Array.isArray(data && data.data) ? data.data : [];
      state.moreCursor = (data && data.next_cursor) || null;
      renderSidebar();
      if (state.conv && state.conv.loadError) renderTitle();
    } catch (err) {
      if (token === state.listToken) reportError(err);
    }
  }

  async function showMoreConversations(button) {
    const token = state.listToken;
    button.disabled = true;
    try {
      const data = await api('GET', conversationsUrl(state.moreCursor, CHATS_PAGE));
      if (token !== state.listToken) return;
      // A chat comes again only if answered meanwhile by a server whose clock runs behind.
      const known = new Set(state.conversations.map((c) => c.id));
      const added = (Array.isArray(data && data.data) ? data.data : []).filter((c) => !known.has(c.id));
      state.conversations.push(...added);
      state.moreCursor = (data && data.next_cursor) || null;
      renderSidebar();
      // Keyboard users go on from where they were: the first chat that just appeared.
      const first = added[0] && els.convList.querySelector(`[data-id="${CSS.escape(added[0].id)}"] .conv-link`);
      if (first) first.focus();
      announce(`${added.length} more ${added.length === 1 ? 'chat' : 'chats'}`);
    } catch (err) {
      button.disabled = false;
      reportError(err);
    }
  }

  async function renameConversation(id, title) {
    const summary = state.conversations.find((c) => c.id === id);
    const before = summary ? summary.title : null;
    if (summary) summary.title = title;
    if (state.conv && state.conv.id === id) {
      state.conv.title = title;
      renderTitle();
    }
    renderSidebar();
    try {
      const saved = await api('PATCH', convUrl(id), { title });
      if (saved && typeof saved.title === 'string') {
        if (summary) summary.title = saved.title;
        if (state.conv && state.conv.id === id) {
          state.conv.title = saved.title;
          renderTitle();
        }
        renderSidebar();
      }
    } catch (err) {
      if (summary) summary.title = before;
      if (state.conv && state.conv.id === id) {
        state.conv.title = before || '';
        renderTitle();
      }
      renderSidebar();
      reportError(err);
    }
  }

  function confirmDelete(c) {
    const name = c.title || 'this chat';
    els.dialogName.textContent = name;
    els.dialogStop.textContent = /[.!?…]$/.test(name) ? '' : '.'; // "…part 1." takes no second
    els.dialog.returnValue = '';
    els.dialog._target = c.id;
    els.dialog.showModal();
    const cancel = els.dialog.querySelector('[value="cancel"]');
    if (cancel) cancel.focus();
  }

  async function deleteConversation(id) {
    try {
      await api('DELETE', convUrl(id));
    } catch (err) {
      reportError(err);
      return;
    }
    state.conversations = state.conversations.filter((c) => c.id !== id);
    state.unsent.delete(id);
    safeStorageRemove(`${DRAFT_PREFIX}${id}`);
    if (state.renaming && state.renaming.id === id) state.renaming = null;
    renderSidebar();
    for (const s of state.streams.values()) if (s.conv.id === id) stopStreaming(s);
    if (state.conv && state.conv.id === id) {
      showNewChat({ push: true });
    }
    announce('Chat deleted');
  }

  // ---------------------------------------------------------------------------------------------
  // Account: plan, limits, models

  function compact(n) {
    if (typeof n !== 'number' || !Number.isFinite(n)) return '—';
    const abs = Math.abs(n);
    const fmt = (x) => String(Math.round(x * 10) / 10);
    if (abs >= 1e9) return `${fmt(n / 1e9)}B`;
    if (abs >= 1e6) return `${fmt(n / 1e6)}M`;
    if (abs >= 1e4) return `${fmt(n / 1e3)}K`;
    return n.toLocaleString('en-US');
  }

  function renderAccount() {
    const me = state.me;
    if (!me) return;
    if (typeof me.plan === 'string') els.plan.textContent = me.plan;
    const limits = me.limits || {};
    const parts = [];
    const details = [];
    const rpm = limits.requests_per_minute;
    if (rpm && typeof rpm.limit === 'number') {
      parts.push(`${compact(rpm.remaining ?? rpm.limit)} of ${compact(rpm.limit)} request${rpm.limit === 1 ? '' : 's'} left this minute`);
      details.push(`Requests: ${compact(rpm.remaining ?? rpm.limit)} of ${compact(rpm.limit)} left this minute`);
    }
    const tpm = limits.tokens_per_minute;
    if (tpm && typeof tpm.limit === 'number') {
      details.push(`Tokens: ${compact(tpm.remaining ?? tpm.limit)} of ${compact(tpm.limit)} left this minute`);
    }
    const tpd = limits.tokens_per_day;
    if (tpd && typeof tpd.limit === 'number') {
      parts.push(`${compact(tpd.remaining ?? tpd.limit)} tokens left today`);
      details.push(`Tokens: ${compact(tpd.remaining ?? tpd.limit)} of ${compact(tpd.limit)} left today`);
    }
    const cs = limits.concurrent_streams;
    if (cs && typeof cs.limit === 'number') details.push(`Up to ${cs.limit} answer${cs.limit === 1 ? '' : 's'} at a time`);
    els.limits.textContent = parts.join(' · ');
    els.limits.title = details.join('\n');
    announceLimits([
      [rpm, 'You have no requests left this minute.'],
      [tpm, 'You have no tokens left this minute.'],
      [tpd, 'You have no tokens left today.'],
    ]);
    renderBonus(me.credits);
    updateComposer(); // how many answers the plan writes at a time is known now

    const models = Array.isArray(me.models) ? me.models : [];
    const stored = safeStorageGet(MODEL_KEY);
    let chosen = state.model;
    if (!chosen || !models.includes(chosen)) chosen = stored && models.includes(stored) ? stored : (me.default_model || models[0] || null);
    state.model = chosen;
    if (models.length > 1) {
      const current = [...els.modelSelect.options].map((o) => o.value).join('\n');
      if (current !== models.join('\n')) {
        els.modelSelect.replaceChildren(...models.map((name) => h('option', { value: name, text: name })));
      }
      els.modelSelect.value = chosen;
      els.modelPicker.hidden = false;
      els.modelName.hidden = true;
    } else {
      els.modelPicker.hidden = true;
      els.modelName.textContent = chosen || '';
      els.modelName.title = chosen ? `Model: ${chosen}` : '';
      els.modelName.hidden = !chosen;
    }
  }

  /** The limits line is read again after every answer, so it is not a live region: screen
   *  readers hear only a limit running out, and its coming back. */
  function announceLimits(limits) {
    const out = limits.filter(([l]) => l && l.remaining === 0).map(([, said]) => said);
    const before = state.limitsOut;
    state.limitsOut = out;
    if (!before) return; // the page just opened: nothing changed
    const reached = out.filter((said) => !before.includes(said));
    if (reached.length) announce(reached.join(' '));
    else if (before.length && !out.length) announce('You can send messages again');
  }

  // Useful feedback earns extra daily tokens (see docs/flywheel.md): shown once there are some.
  function renderBonus(credits) {
    if (!els.bonus) return;
    const bonus = credits && typeof credits.bonus_daily_tokens === 'number' ? credits.bonus_daily_tokens : 0;
    els.bonus.hidden = !(bonus > 0);
    if (!(bonus > 0)) return;
    const each = typeof credits.tokens_per_feedback === 'number' ? credits.tokens_per_feedback.toLocaleString('en-US') : 'extra';
    const days = typeof credits.days === 'number' ? credits.days : null;
    const cap = typeof credits.cap === 'number' ? credits.cap.toLocaleString('en-US') : null;
    els.bonus.textContent = `Feedback bonus: +${bonus.toLocaleString('en-US')} tokens/day`;
    els.bonus.title = [
      `Useful feedback earns extra tokens: each rating, vote or improved answer adds ${each} tokens a day`
        + `${days ? ` for ${days} day${days === 1 ? '' : 's'}` : ''}${cap ? `, up to ${cap} in all` : ''}.`,
      'Feedback given without reading, or the same on everything, earns nothing.',
    ].join('\n');
  }

  function safeStorageGet(key) {
    try {
      return window.localStorage.getItem(key);
    } catch {
      return null;
    }
  }

  function safeStorageSet(key, value) {
    try {
      window.localStorage.setItem(key, value);
    } catch {
      // storage disabled or full
    }
  }

  function safeStorageRemove(key) {
    try {
      window.localStorage.removeItem(key);
    } catch {
      // storage disabled
    }
  }

  // Training consent: the person's own choice, shown and changed in the sidebar.
  const consentBox = document.getElementById('consent');

  async function loadConsent() {
    if (!consentBox) return;
    try {
      const consent = await api('GET', '/api/me/consent');
      consentBox.checked = Boolean(consent.use_for_training);
      consentBox.disabled = false;
    } catch (err) {
      reportError(err);
    }
  }

  if (consentBox) {
    consentBox.addEventListener('change', async () => {
      const wanted = consentBox.checked;
      consentBox.disabled = true;
      try {
        const consent = await api('PUT', '/api/me/consent', { use_for_training: wanted });
        consentBox.checked = Boolean(consent.use_for_training);
        announce(consent.use_for_training ? 'Your chats may be used to improve the model' : 'Your chats will not be used to improve the model');
      } catch (err) {
        consentBox.checked = !wanted;
        reportError(err);
      } finally {
        consentBox.disabled = false;
      }
    });
  }

  async function refreshMe() {
    try {
      state.me = await api('GET', '/api/me');
      renderAccount();
    } catch (err) {
      reportError(err);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Navigation

  /** What belongs to the chat shown goes when another is shown: its editors, a vote's reveal. */
  function leaveConversation() {
    state.loadToken++;
    state.editing = null;
    state.ratingOpen = null;
    state.improving = null;
    endReveal();
  }

  /** Show a chat this page is writing an answer in, as it is: there is nothing to load. */
  function showStreaming(conv) {
    state.conv = conv;
    showDraft(conv);
    renderThread();
    highlightCurrent();
    scrollToBottom(true);
  }

  function showNewChat({ push = false, replace = false } = {}) {
    if (push && location.pathname !== '/') history.pushState({}, '', '/');
    if (replace) history.replaceState({}, '', '/');
    leaveConversation();
    state.conv = newConv(null);
    showDraft(state.conv);
    restoreUnsent(state.conv);
    renderThread();
    highlightCurrent();
    if (!NARROW.matches) els.composer.focus();
  }

  async function openConversation(id, { push = false, keepFocus = false } = {}) {
    if (push) history.pushState({}, '', `/c/${encodeURIComponent(id)}`);
    leaveConversation();
    const token = state.loadToken;
    const streaming = [...state.streams.keys()].find((conv) => conv.id === id);
    if (streaming) {
      showStreaming(streaming);
      return;
    }
    const placeholder = newConv({ id });
    placeholder.loading = true;
    state.conv = placeholder;
    showDraft(placeholder);
    renderThread();
    highlightCurrent();
    try {
      const data = await api('GET', convUrl(id));
      if (token !== state.loadToken) return;
      const conv = newConv(data);
      restoreUnsent(conv);
      state.conv = conv;
      followModel(conv);
      renderThread();
      highlightCurrent();
      scrollToBottom(true);
      if (writtenElsewhere(conv).length) followUnsettled(conv);
      // The Retry button that had the focus is gone: give it to the message box.
      if (keepFocus && focusLost() && !NARROW.matches) els.composer.focus();
    } catch (err) {
      if (token !== state.loadToken) return;
      if (err instanceof ApiError && (err.status === 404 || err.status === 422 || err.status === 400)) {
        showError('That chat does not exist or was deleted.');
        showNewChat({ replace: true });
      } else {
        // Keep the failure in view with a way to try again; never show it as an empty chat,
        // which would invite a message with no history under it.
        const refocus = keepFocus || focusLost();
        placeholder.loading = false;
        placeholder.loadError = err && err.message ? err.message : String(err);
        renderThread();
        const retry = els.messages.querySelector('[data-testid="load-retry"]');
        if (refocus && retry) retry.focus();
      }
    }
  }

  /** The model picker follows the chat shown: the model of the last answer on its branch, when
   *  the plan still offers it (a follow-up is then answered by the same model). */
  function followModel(conv) {
    for (let i = conv.path.length - 1; i >= 0; i--) {
      const m = conv.msgs.get(conv.path[i]);
      if (!m || m.role !== 'assistant' || !m.model) continue;
      const offered = Array.isArray(state.me?.models) ? state.me.models : null;
      if (offered && !offered.includes(m.model)) return;
      state.model = m.model; // not remembered as the person's choice: a new chat keeps it, a reload forgets it
      if (offered && !els.modelPicker.hidden) els.modelSelect.value = m.model;
      return;
    }
  }

  /**
   * Catch up with what another tab or app did in the chat shown (a question asked, an answer
   * written): re-read it, and when the server has messages this page has not seen, show the
   * branch the server shows (its current_leaf_id). True when it did. A page in the middle of
   * something of its own (an answer, an unsent message, an editor) is left alone. Asked again
   * while it reads (a tab's focus and visibility change together), it answers the same read.
   */
  function catchUp(conv) {
    if (!conv) return Promise.resolve(false);
    if (!conv.catching) conv.catching = readAgain(conv).finally(() => { conv.catching = null; });
    return conv.catching;
  }

  async function readAgain(conv) {
    if (!conv || !conv.id || conv.loading || conv.loadError || conv.pending || streamOf(conv)) return false;
    let data;
    try {
      data = await api('GET', convUrl(conv.id));
    } catch {
      return false; // the send, or the next look, will say what is wrong
    }
    if (!isShown(conv) || conv.pending || streamOf(conv)) return false;
    if (!(data.messages || []).some((sm) => !conv.msgs.has(sm.id))) return false;
    for (const sm of data.messages) {
      const local = conv.msgs.get(sm.id);
      if (local && (local._partial || local._errorMessage)) continue; // keep what this page saw
      addMsg(conv, sm);
    }
    mergeComparisons(conv, data.comparisons);
    if (typeof data.title === 'string' && data.title) conv.title = data.title;
    const leaf = conv.msgs.has(data.current_leaf_id) ? data.current_leaf_id : leafOf(conv);
    conv.path = leaf ? branchThrough(conv, leaf) : initialPath(conv);
    conv.currentLeafId = leafOf(conv);
    followModel(conv);
    if (!state.editing && !state.ratingOpen && !state.improving && !state.reveal) {
      renderThread();
      scrollToBottom(true);
    }
    if (writtenElsewhere(conv).length) followUnsettled(conv);
    refreshConversations();
    return true;
  }

  /** Whether the focus is nowhere in particular, or in a message box that is about to be disabled. */
  function focusLost() {
    const active = document.activeElement;
    return !active || active === document.body || active === els.composer;
  }

  function retryLoad(conv) {
    if (state.conv !== conv || !conv.loadError) return;
    const keepFocus = els.messages.contains(document.activeElement) || focusLost();
    openConversation(conv.id, { keepFocus });
  }

  function route() {
    const match = location.pathname.match(/^\/c\/([^/]+)\/?$/);
    if (match) {
      let id = match[1];
      try {
        id = decodeURIComponent(id);
      } catch {
        // keep raw
      }
      if (!(state.conv && state.conv.id === id && !state.conv.loading && !state.conv.loadError)) openConversation(id);
    } else {
      showNewChat();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Sidebar on narrow screens

  function openSidebar() {
    els.app.classList.add('nav-open');
    els.scrim.hidden = false;
    els.menu.setAttribute('aria-expanded', 'true');
    els.menu.setAttribute('aria-label', 'Close sidebar');
    setTimeout(() => {
      if (els.app.classList.contains('nav-open') && !els.sidebar.contains(document.activeElement)) els.newChat.focus();
    }, 50);
  }

  function closeSidebar(returnFocus) {
    if (!els.app.classList.contains('nav-open')) return;
    els.app.classList.remove('nav-open');
    els.scrim.hidden = true;
    els.menu.setAttribute('aria-expanded', 'false');
    els.menu.setAttribute('aria-label', 'Open sidebar');
    if (returnFocus) els.menu.focus();
  }

  // ---------------------------------------------------------------------------------------------
  // Composer

  function autogrow(area, max) {
    area.style.height = 'auto';
    area.style.height = `${Math.min(area.scrollHeight + 2, max)}px`;
    area.classList.toggle('is-scrolling', area.scrollHeight + 2 > max);
  }

  // Drafts: what is typed in the message box is kept per chat in this browser, so that opening
  // another chat, or reloading the page, does not lose it. Written on every input: a draft is a
  // few kB at most, and a timer would risk writing it under the next chat's name.
  const draftKey = (conv) => `${DRAFT_PREFIX}${conv.id || ''}`;

  function saveDraft() {
    const conv = state.conv;
    if (!conv) return;
    const text = els.composer.value;
    if (text.trim()) safeStorageSet(draftKey(conv), text);
    else safeStorageRemove(draftKey(conv));
  }

  /** Put a chat's draft (or nothing) in the message box; for the chat just shown. */
  function showDraft(conv) {
    els.composer.value = safeStorageGet(draftKey(conv)) ?? '';
    autogrow(els.composer, 200);
    updateComposer();
  }

  /** Put text in the message box, as if typed: it is the shown chat's draft too. */
  function setComposer(text) {
    els.composer.value = text;
    autogrow(els.composer, 200);
    updateComposer();
    saveDraft();
  }

  function moveDraft(fromId, toId) {
    const text = safeStorageGet(`${DRAFT_PREFIX}${fromId}`);
    if (text === null) return;
    safeStorageSet(`${DRAFT_PREFIX}${toId}`, text);
    safeStorageRemove(`${DRAFT_PREFIX}${fromId}`);
  }

  /** Remove drafts and unsent messages: this account's (``mine``, at logout) or, when the page
   *  starts, any other account's left in this browser (their session ended without a logout). */
  function forgetDrafts({ mine = true } = {}) {
    try {
      const keys = Array.from({ length: window.localStorage.length }, (_, i) => window.localStorage.key(i));
      for (const key of keys) {
        if (!key || !/^lamplighter[.](draft|unsent)[.]/.test(key)) continue;
        const ours = key.startsWith(DRAFT_PREFIX) || key.startsWith(UNSENT_PREFIX);
        if (ours === mine) window.localStorage.removeItem(key);
      }
    } catch {
      // storage disabled
    }
  }

  /**
   * Whether a key sends the message. Enter does, Shift+Enter starts a new line; on a touch
   * screen, whose keyboard has no Shift+Enter, Enter starts a new line and the Send button
   * sends (so does Ctrl or Cmd+Enter, from a keyboard plugged into a tablet).
   */
  function sendsOnEnter(e) {
    if (e.key !== 'Enter' || e.shiftKey || e.isComposing) return false;
    return e.ctrlKey || e.metaKey || !TOUCH.matches;
  }

  /** The keyboard's Enter key, and the hint under the message box, say what Enter does. */
  function describeKeys() {
    els.composer.setAttribute('enterkeyhint', TOUCH.matches ? 'enter' : 'send');
    if (els.keys) {
      els.keys.textContent = TOUCH.matches ? 'Enter for a new line · the arrow button sends.'
        : 'Enter to send · Shift+Enter for a new line · Esc to stop.';
    }
  }

  // Said when a message was held back because the chat had gone on elsewhere.
  const MOVED_ON = 'This chat was continued in another tab or app, so it now shows the latest messages. '
    + 'Your message was not sent: it is still in the message box, to send from here.';

  async function sendFromComposer() {
    const text = els.composer.value;
    const conv = state.conv;
    if (state.reveal && state.reveal.conv === conv) collapsePair(conv, state.reveal.id, false);
    if (!text.trim() || !conv || conv.loading || conv.loadError || needsVote(conv)) return;
    if (!canAsk(conv) || tooLong(text) || conv.checking) return;
    if (conv.id && !conv.pending) {
      // Another tab may have gone on in this chat: sending under the last message shown here
      // would fork it silently, the other tab's exchange hidden on a branch of its own.
      conv.checking = true;
      let moved;
      try {
        moved = await catchUp(conv);
      } finally {
        conv.checking = false;
      }
      if (moved) {
        showError(MOVED_ON);
        return;
      }
      // The re-read found the session ended: the message is not sent, and emptying the message
      // box would delete its draft, which the chat shows again once the person has logged in.
      if (sessionEnded) return;
      if (!isShown(conv) || els.composer.value !== text || !canAsk(conv) || needsVote(conv)) return;
    }
    const parentId = conv.pending ? conv.pending.parentId : leafOf(conv);
    setComposer('');
    startChat({ conv, parentId, content: text, kind: 'new' });
  }

  // ---------------------------------------------------------------------------------------------
  // Wiring

  function addIcons() {
    for (const el of document.querySelectorAll('[data-icon]')) {
      el.prepend(icon(el.dataset.icon));
    }
  }

  function wire() {
    addIcons();
    document.body.dataset.streaming = 'false';

    els.form.addEventListener('submit', (e) => {
      e.preventDefault();
      sendFromComposer();
    });
    els.composer.addEventListener('keydown', (e) => {
      if (sendsOnEnter(e) && e.keyCode !== 229) {
        e.preventDefault();
        sendFromComposer();
      }
    });
    describeKeys();
    TOUCH.addEventListener('change', describeKeys);
    els.composer.addEventListener('input', () => {
      autogrow(els.composer, 200);
      updateComposer();
      saveDraft();
    });
    // A draft is this account's: leaving the account leaves none behind in this browser.
    for (const form of document.querySelectorAll('.logout-form')) form.addEventListener('submit', () => forgetDrafts());
    els.stop.addEventListener('click', () => stopStreaming(streamOf(state.conv)));
    els.elsewhereGo.addEventListener('click', () => goToStream());

    els.bannerClose.addEventListener('click', () => {
      hideError();
      els.composer.focus();
    });

    els.newChat.addEventListener('click', () => {
      closeSidebar();
      showNewChat({ push: true });
      els.composer.focus();
    });
    document.querySelector('[data-nav="new"]').addEventListener('click', (e) => {
      if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      e.preventDefault();
      closeSidebar();
      showNewChat({ push: true });
    });

    let searchTimer = null;
    els.search.addEventListener('input', () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => {
        const q = els.search.value.trim();
        if (q === state.query) return;
        state.query = q;
        refreshConversations();
      }, 250);
    });

    els.menu.addEventListener('click', () => {
      if (els.app.classList.contains('nav-open')) closeSidebar(true);
      else openSidebar();
    });
    els.scrim.addEventListener('click', () => closeSidebar(true));
    document.querySelector('[data-action="close-sidebar"]').addEventListener('click', () => closeSidebar(true));
    NARROW.addEventListener('change', () => {
      if (!NARROW.matches) closeSidebar();
    });

    els.modelSelect.addEventListener('change', () => {
      state.model = els.modelSelect.value;
      safeStorageSet(MODEL_KEY, state.model);
    });

    els.thread.addEventListener('scroll', followScroll, { passive: true });
    // A wheel turned up says so before the scroll it causes: the next word must not pull back.
    els.thread.addEventListener('wheel', (e) => {
      if (e.deltaY < 0 && els.thread.scrollTop > 0) {
        state.stick = false;
        wheeledUpAt = performance.now();
      }
    }, { passive: true });
    els.scrollDown.addEventListener('click', () => {
      els.thread.scrollTo({ top: els.thread.scrollHeight, behavior: 'smooth' });
      state.stick = true;
    });
    window.addEventListener('resize', () => updateScrollButton());

    els.dialog.addEventListener('click', (e) => {
      const button = e.target.closest('button[value]');
      if (button) els.dialog.close(button.value);
      else if (e.target === els.dialog) {
        // a click on the backdrop
        const r = els.dialog.getBoundingClientRect();
        if (e.clientX < r.left || e.clientX > r.right || e.clientY < r.top || e.clientY > r.bottom) els.dialog.close('cancel');
      }
    });
    els.dialog.addEventListener('close', () => {
      const id = els.dialog._target;
      els.dialog._target = null;
      if (els.dialog.returnValue === 'delete' && id) deleteConversation(id);
    });

    document.addEventListener('keydown', (e) => {
      if (e.key !== 'Escape' || e.defaultPrevented) return;
      if (els.dialog.open) return;
      if (els.app.classList.contains('nav-open') && NARROW.matches) {
        closeSidebar(true);
        return;
      }
      // Escape stops the answer of the chat on screen, never one written out of sight.
      const s = streamOf(state.conv);
      if (!s) return;
      const t = e.target;
      const typing = t instanceof HTMLElement && (t.matches('input, select, textarea') || t.isContentEditable);
      if (typing && t !== els.composer) return;
      e.preventDefault();
      stopStreaming(s);
    });

    window.addEventListener('popstate', () => route());
    // Back to this tab: the chat may have gone on in another one meanwhile.
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') catchUp(state.conv);
    });
    window.addEventListener('focus', () => catchUp(state.conv));
    // Plan & billing (billing.js) read the plan again, perhaps after changing it: so do the
    // sidebar's plan and limits, or they would name the new plan with the old one's limits.
    document.addEventListener('lamplighter:billing-changed', () => refreshMe());
    // Back online: a chat that could not be loaded tries again by itself.
    window.addEventListener('online', () => {
      if (state.conv && state.conv.loadError) retryLoad(state.conv);
    });
  }

  forgetDrafts({ mine: false });
  wire();
  route();
  refreshMe();
  loadConsent();
  refreshConversations();
})();
