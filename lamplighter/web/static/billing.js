// "Plan & billing" in the web chat's sidebar: the person's plan and subscription, and the plans
// on sale. Buying goes through Stripe Checkout and paying what is due or changing the card
// through Stripe's customer portal (the page only asks the server for their URLs); changing or
// cancelling a subscription calls /api/billing. Text only, never HTML.
(function () {
  'use strict';

  const opener = document.getElementById('billing-open');
  const dialog = document.getElementById('billing-dialog');
  if (!opener || !dialog) return;
  const body = dialog.querySelector('[data-billing="body"]');
  const csrf = document.querySelector('meta[name="csrf-token"]').getAttribute('content');

  async function call(method, path, payload) {
    const response = await fetch(path, {
      method,
      credentials: 'same-origin',
      headers: method === 'GET' ? {} : { 'content-type': 'application/json', 'x-csrf-token': csrf },
      body: payload === undefined ? undefined : JSON.stringify(payload),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = data && data.error && data.error.message;
      throw new Error(message || `The server answered ${response.status}.`);
    }
    return data;
  }

  function money(amount, currency) {
    try {
      return new Intl.NumberFormat(undefined, { style: 'currency', currency: currency.toUpperCase() })
        .format(amount / 100);
    } catch (_) {
      return `${(amount / 100).toFixed(2)} ${currency.toUpperCase()}`;
    }
  }

  function el(tag, text, attributes) {
    const node = document.createElement(tag);
    if (text) node.textContent = text;
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    return node;
  }

  function button(label, testid, action, primary) {
    const node = el('button', label, { type: 'button', 'data-testid': testid });
    node.className = primary ? 'btn btn-primary' : 'btn btn-ghost';
    node.addEventListener('click', async () => {
      node.disabled = true;
      try {
        await action();
      } catch (error) {
        show(null, error.message);
      } finally {
        node.disabled = false;
      }
    });
    return node;
  }

  /** What the subscription is doing; `plan` is the plan the person is on now, which an unpaid
   *  subscription no longer gives them (they are back on their own plan, not always free). */
  function describe(sub, plan) {
    const until = sub.period_end ? new Date(sub.period_end).toLocaleDateString() : '';
    const words = {
      trialing: `on trial until ${until}`,
      active: sub.renews ? `renews on ${until}` : `until ${until}`,
      past_due: `payment failed: kept until ${new Date(sub.grace_until).toLocaleDateString()}`,
      suspended: `unpaid: you are on ${plan} until it is paid`,
      canceling: `cancelled: ends on ${until}`,
      incomplete: 'waiting for the first payment',
    };
    let text = `Subscription: ${sub.plan}, ${words[sub.status] || sub.status}.`;
    if (sub.pending_plan) text += ` Moves to ${sub.pending_plan} on ${until}.`;
    return text;
  }

  function show(info, problem) {
    if (info === null) {
      const note = el('p', problem, { role: 'alert', 'data-testid': 'billing-error' });
      note.className = 'dialog-text';
      body.prepend(note);
      return;
    }
    body.replaceChildren();
    body.append(el('p', `Your plan: ${info.plan}`, { 'data-testid': 'billing-plan' }));
    if (info.subscription) body.append(el('p', describe(info.subscription, info.plan), { 'data-testid': 'billing-status' }));
    if (info.team) {
      const seat = info.team.seat ? 'you hold a seat' : 'no seat for you';
      body.append(el('p', `Team ${info.team.name}: ${info.team.subscription ? info.team.subscription.plan : 'no plan'}, ${seat}.`));
    }
    const own = info.subscription;
    const list = el('ul', '', { class: 'billing-plans' });
    for (const plan of info.plans) {
      const item = el('li', '', { 'data-testid': 'billing-offer' });
      const price = plan.monthly_price
        ? `${money(plan.monthly_price, plan.currency)} a month`
        : `${money(plan.yearly_price, plan.currency)} a year`;
      item.append(el('span', `${plan.name}: ${price} `));
      const period = plan.monthly_price ? 'month' : 'year';
      if (own && own.provider === 'stripe' && ['trialing', 'active', 'past_due', 'canceling'].includes(own.status)) {
        if (plan.name !== own.plan) {
          item.append(button(`Switch to ${plan.name}`, 'billing-switch', async () => {
            await call('POST', '/api/billing/plan', { plan: plan.name });
            await reload();
          }));
        }
      } else if (!own && !(info.team && info.team.seat) && info.online) {
        item.append(button(`Upgrade to ${plan.name}`, 'billing-upgrade', async () => {
          const session = await call('POST', '/api/billing/checkout', { plan: plan.name, period });
          window.location.assign(session.url);
        }, true));
      }
      list.append(item);
    }
    if (info.plans.length) body.append(list);
    if (!info.online && !own) body.append(el('p', 'To change your plan, ask an admin.', { class: 'dialog-text' }));
    // Cancelled, a paid-up subscription runs to the end of its period; an unpaid one (suspended,
    // in its grace period, or never paid) ends at once, and Stripe stops asking for the money.
    const paidUp = own && ['active', 'trialing'].includes(own.status);
    const unpaid = own && ['incomplete', 'past_due', 'suspended'].includes(own.status);
    if (own && own.provider === 'stripe' && own.status !== 'ended') {
      // Stripe's customer portal: pay what is due, change the card, read the invoices.
      const label = unpaid ? 'Pay now' : 'Payment method and invoices';
      body.append(button(label, 'billing-portal', async () => {
        const portal = await call('POST', '/api/billing/portal', {});
        window.location.assign(portal.url);
      }, unpaid));
    }
    if (own && own.provider === 'stripe' && (paidUp || unpaid)) {
      const label = paidUp ? 'Cancel at the end of the period' : 'Cancel the subscription now';
      body.append(button(label, 'billing-cancel', async () => {
        await call('POST', '/api/billing/cancel', {});
        await reload();
      }));
    }
    if (own && own.provider === 'stripe' && own.status === 'canceling') {
      body.append(button('Keep my subscription', 'billing-resume', async () => {
        await call('POST', '/api/billing/resume', {});
        await reload();
      }));
    }
  }

  /** Reads and shows the person's billing again. The sidebar's plan and limits (app.js) are
   *  read again too, even when this read fails: after an action, or a webhook since the page
   *  opened, they would show the new plan's name with the old plan's limits. */
  async function reload() {
    try {
      show(await call('GET', '/api/billing'));
    } finally {
      document.dispatchEvent(new CustomEvent('lamplighter:billing-changed'));
    }
  }

  async function open(notice) {
    body.replaceChildren(el('p', 'Loading…', { class: 'dialog-text' }));
    if (!dialog.open) dialog.showModal();
    try {
      await reload();
      if (notice) body.prepend(el('p', notice, { class: 'dialog-text', 'data-testid': 'billing-notice' }));
    } catch (error) {
      show(null, error.message);
    }
  }

  opener.addEventListener('click', () => open());
  dialog.querySelector('[data-billing="close"]').addEventListener('click', () => dialog.close());
  const back = new URLSearchParams(window.location.search).get('billing');
  if (back === 'success') open('Thank you. Your plan changes as soon as Stripe confirms the payment.');
  else if (back === 'canceled') open('Checkout was cancelled; nothing was charged.');
  else if (back === 'portal') open('Back from Stripe: a payment or a new card shows here as soon as Stripe confirms it.');
})();
