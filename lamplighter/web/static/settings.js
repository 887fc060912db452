// The Settings page: custom instructions, password, the person's data (download, delete every chat, delete the
// account), API keys, training consent and the feedback bonus. It talks to /api/me/... with the
// session cookie and the page's CSRF token. Text only, never HTML.
(function () {
  'use strict';

  const meta = document.querySelector('meta[name="csrf-token"]');
  let csrf = meta.getAttribute('content');
  const $ = (selector) => document.querySelector(selector);
  const byTest = (id) => document.querySelector(`[data-testid="${id}"]`);
  const announcer = $('#announcer');

  class Refusal extends Error {
    constructor(message, status, param) {
      super(message);
      this.status = status;
      this.param = param;
    }
  }

  async function call(method, path, payload) {
    let response;
    try {
      response = await fetch(path, {
        method,
        credentials: 'same-origin',
        headers: method === 'GET' ? {} : { 'content-type': 'application/json', 'x-csrf-token': csrf },
        body: payload === undefined ? undefined : JSON.stringify(payload),
      });
    } catch (_) {
      throw new Refusal('Could not reach the server. Check your connection and try again.', 0, null);
    }
    if (response.status === 401) {
      // The session ended (elsewhere, or it expired): log in again and come back here.
      window.location.assign('/login?session=ended&next=%2Fsettings');
      throw new Refusal('Your session ended; log in again.', 401, null);
    }
    if (response.status === 204) return null;
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new Refusal(error.message || `The server answered ${response.status}.`, response.status, error.param);
    }
    return data;
  }

  function announce(text) {
    announcer.textContent = '';
    window.setTimeout(() => { announcer.textContent = text; }, 50);
  }

  function say(node, text) {
    node.textContent = text || '';
    node.hidden = !text;
  }

  function day(iso) {
    return iso ? new Date(iso).toLocaleDateString(undefined, { year: 'numeric', month: 'short', day: 'numeric' }) : '';
  }

  function number(n) {
    return Number(n).toLocaleString();
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text;
    return node;
  }

  async function busy(button, work) {
    button.disabled = true;
    try {
      return await work();
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------------------------------
  // The confirmation dialog: a title, a sentence, optionally the password, and the action.

  const dialog = $('#confirm-dialog');
  const confirmForm = $('#confirm-form');
  const confirmPassword = $('#confirm-password');
  const confirmError = byTest('confirm-error');
  let pending = null;
  let opener = null;

  function confirmThen({ title, text, ok, password, action }) {
    opener = document.activeElement;
    $('#settings-confirm-title').textContent = title;
    $('#settings-confirm-text').textContent = text;
    $('#confirm-ok').textContent = ok;
    $('#confirm-password-field').hidden = !password;
    confirmPassword.value = '';
    confirmPassword.required = !!password;
    say(confirmError, '');
    pending = { action, password };
    dialog.showModal();
    (password ? confirmPassword : $('#confirm-cancel')).focus();
  }

  function closeDialog() {
    pending = null;
    if (dialog.open) dialog.close();
  }

  dialog.addEventListener('close', () => {
    pending = null;
    if (opener && document.contains(opener)) opener.focus();
  });
  $('#confirm-cancel').addEventListener('click', closeDialog);
  confirmForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!pending) return;
    const { action, password } = pending;
    if (password && !confirmPassword.value) {
      say(confirmError, 'Enter your password to confirm.');
      confirmPassword.focus();
      return;
    }
    try {
      await busy($('#confirm-ok'), () => action(confirmPassword.value));
      closeDialog();
    } catch (error) {
      say(confirmError, error.message);
      if (password) confirmPassword.select();
    }
  });

  // ---------------------------------------------------------------------------------------
  // Custom instructions

  const instructions = $('#instructions-text');
  const instructionsCount = byTest('instructions-count');
  instructions.addEventListener('input', () => {
    instructionsCount.textContent = String(instructions.value.length);
    say(byTest('instructions-done'), '');
  });
  $('#instructions-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const error = byTest('instructions-error');
    say(error, '');
    instructions.removeAttribute('aria-invalid');
    try {
      const answer = await busy(byTest('instructions-save'), () => call('PUT', '/api/me/instructions', {
        text: instructions.value,
      }));
      instructions.value = answer.text;
      instructionsCount.textContent = String(answer.text.length);
      const text = answer.text ? 'Saved. Your next new chat begins with these instructions.' : 'Saved. New chats begin with no instructions.';
      say(byTest('instructions-done'), text);
      announce(text);
    } catch (refusal) {
      say(error, refusal.message);
      instructions.setAttribute('aria-invalid', 'true');
      instructions.focus();
    }
  });

  // ---------------------------------------------------------------------------------------
  // Password

  const passwordForm = $('#password-form');
  const fields = { current_password: $('#current-password'), new_password: $('#new-password') };
  passwordForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const error = byTest('password-error');
    const done = byTest('password-done');
    say(error, '');
    say(done, '');
    for (const input of Object.values(fields)) input.removeAttribute('aria-invalid');
    for (const [name, input] of Object.entries(fields)) {
      if (!input.value) {
        input.setAttribute('aria-invalid', 'true');
        say(error, name === 'current_password' ? 'Enter your current password.' : 'Choose a new password.');
        input.focus();
        return;
      }
    }
    try {
      const answer = await busy(byTest('password-submit'), () => call('POST', '/api/me/password', {
        current_password: fields.current_password.value,
        new_password: fields.new_password.value,
      }));
      csrf = answer.csrf_token; // a new session, with its own token
      meta.setAttribute('content', csrf);
      for (const input of Object.values(fields)) input.value = '';
      say(done, 'Password changed. Every other browser and device was logged out.');
      announce('Password changed.');
    } catch (refusal) {
      say(error, refusal.message);
      const input = fields[refusal.param];
      if (input) {
        input.setAttribute('aria-invalid', 'true');
        input.select();
        input.focus();
      }
    }
  });

  // ---------------------------------------------------------------------------------------
  // Your data

  byTest('delete-chats').addEventListener('click', () => confirmThen({
    title: 'Delete all chats?',
    text: 'This permanently deletes every conversation of yours, in the chat and through the API, with its ratings. It cannot be undone.',
    ok: 'Delete all chats',
    action: async () => {
      const answer = await call('DELETE', '/api/me/conversations');
      say(byTest('chats-error'), '');
      const n = answer.deleted;
      const text = n === 0 ? 'You had no chats to delete.' : `Deleted ${number(n)} ${n === 1 ? 'chat' : 'chats'}.`;
      say(byTest('chats-done'), text);
      announce(text);
    },
  }));

  byTest('delete-account').addEventListener('click', () => confirmThen({
    title: 'Delete your account?',
    text: 'Your account, every chat, rating and API key goes for good, and you are logged out. Enter your password to confirm.',
    ok: 'Delete account',
    password: true,
    action: async (password) => {
      await call('DELETE', '/api/me', { password });
      window.location.assign('/login');
    },
  }));

  // ---------------------------------------------------------------------------------------
  // API keys

  byTest('base-url').textContent = `${window.location.origin}/v1`;
  const keyList = byTest('key-list');
  const keysError = byTest('keys-error');

  function describeKey(key) {
    const parts = [`Created ${day(key.created_at)}`];
    parts.push(key.last_used_at ? `last used ${day(key.last_used_at)}` : 'never used');
    if (key.status === 'revoked') parts.push(`revoked ${day(key.revoked_at)}`);
    else if (key.status === 'expired') parts.push(`expired ${day(key.expires_at)}`);
    else if (key.expires_at) parts.push(`expires ${day(key.expires_at)}`);
    return parts.join(' · ');
  }

  function keyItem(key) {
    const item = el('li', 'key-item');
    item.dataset.testid = 'api-key';
    item.dataset.id = key.id;
    item.dataset.status = key.status;
    const main = el('div', 'key-main');
    const name = el('p', 'key-name', key.name || 'Unnamed key');
    name.append(' ');
    name.append(el('span', 'key-prefix', `${key.prefix}…`));
    if (key.status !== 'live') {
      const badge = el('span', 'plan-badge key-status', key.status);
      badge.dataset.testid = 'key-status';
      name.append(badge);
    }
    main.append(name, el('p', 'key-meta', describeKey(key)));
    item.append(main);
    if (key.status === 'live') {
      const revoke = el('button', 'btn btn-small btn-danger-outline', 'Revoke');
      revoke.type = 'button';
      revoke.dataset.testid = 'key-revoke';
      revoke.setAttribute('aria-label', `Revoke ${key.name || 'unnamed key'} (${key.prefix}…)`);
      revoke.addEventListener('click', () => confirmThen({
        title: 'Revoke this key?',
        text: `Programs using ${key.name || 'this key'} (${key.prefix}…) stop working at once. It cannot be undone.`,
        ok: 'Revoke',
        action: async () => {
          await call('DELETE', `/api/me/keys/${encodeURIComponent(key.id)}`);
          await loadKeys();
          announce('Key revoked.');
        },
      }));
      item.append(revoke);
    }
    return item;
  }

  async function loadKeys() {
    try {
      const answer = await call('GET', '/api/me/keys');
      keyList.replaceChildren(...answer.data.map(keyItem));
      byTest('keys-empty').hidden = answer.data.length > 0;
      keyList.dataset.loaded = 'true';
    } catch (error) {
      say(keysError, error.message);
    }
  }

  const secretBox = byTest('key-secret-box');
  const secret = byTest('key-secret');
  $('#key-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    say(keysError, '');
    const days = $('#key-expires').value;
    try {
      const made = await busy(byTest('key-create'), () => call('POST', '/api/me/keys', {
        name: $('#key-name').value,
        expires_days: days ? Number(days) : null,
      }));
      secret.value = made.secret;
      secretBox.hidden = false;
      $('#key-name').value = '';
      await loadKeys();
      secret.focus();
      secret.select();
      announce('Key created. Copy it now: it is shown only once.');
    } catch (error) {
      say(keysError, error.message);
    }
  });
  byTest('key-copy').addEventListener('click', async () => {
    secret.select();
    try {
      await navigator.clipboard.writeText(secret.value);
      announce('Copied.');
    } catch (_) {
      announce('Press Ctrl+C to copy the selected key.');
    }
  });

  // ---------------------------------------------------------------------------------------
  // Training consent, plan and feedback bonus

  const consent = byTest('settings-consent');
  function showConsent(state) {
    consent.checked = state.use_for_training;
    consent.disabled = false;
    const fallback = state.organisation_default ? 'on' : 'off';
    byTest('consent-note').textContent = state.chosen
      ? 'Your choice. Conversations of people who agree are cleaned of personal data and used to train the next model; turning it off removes yours from every later export.'
      : `You have not chosen: your organisation's default (${fallback}) applies.`;
  }
  consent.addEventListener('change', async () => {
    const wanted = consent.checked;
    consent.disabled = true;
    try {
      showConsent(await call('PUT', '/api/me/consent', { use_for_training: wanted }));
      announce(wanted ? 'Your chats may be used to improve the model.' : 'Your chats will not be used to train models.');
    } catch (error) {
      consent.checked = !wanted;
      consent.disabled = false;
      byTest('consent-note').textContent = error.message;
    }
  });

  function fact(list, term, value) {
    list.append(el('dt', '', term), el('dd', '', value));
  }

  async function loadStanding() {
    const standing = byTest('standing');
    try {
      const [me, chosen] = await Promise.all([call('GET', '/api/me'), call('GET', '/api/me/consent')]);
      showConsent(chosen);
      standing.replaceChildren();
      fact(standing, 'Plan', me.plan);
      const daily = me.limits.tokens_per_day;
      fact(standing, 'Tokens today', `${number(daily.remaining)} of ${number(daily.limit)} left`);
      const credits = me.credits;
      fact(standing, 'Feedback bonus', credits.bonus_daily_tokens > 0
        ? `+${number(credits.bonus_daily_tokens)} tokens a day`
        : 'none at the moment');
      fact(standing, 'Useful feedback',
        `${number(credits.granted)} earned a bonus (+${number(credits.tokens_per_feedback)} tokens a day for ${credits.days} days each, up to ${number(credits.cap)})`);
      if (credits.clawed_back) fact(standing, 'Taken back', `${number(credits.clawed_back)} found not to be useful later`);
      if (!chosen.use_for_training) fact(standing, 'Note', 'The bonus adds to your daily tokens only while your chats may be used to improve the model.');
    } catch (error) {
      byTest('consent-note').textContent = error.message;
    }
  }

  loadKeys();
  loadStanding();
}());
