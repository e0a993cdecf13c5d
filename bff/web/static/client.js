// vluna-bff browser client: platform tokens and the billing API through the service.
//
// One file, no build step, no dependencies. Served by vluna-bff at /vluna/client.js:
//   ES module:  import { createClient } from "/vluna/client.js";
//   global:     <script src="/vluna/client.global.js"></script>  ->  window.VlunaBff.createClient(...)
// (the global build is this file with the `export` lines removed, wrapped in a function).
//
// What it does:
// - getToken(): GET /vluna/token once, cached; concurrent callers share one request;
// - renews ahead of expiry (renewAhead: a fraction of the token's life), in the background
//   while the current token is still good, or on a timer with autoRenew;
// - cookie sessions: sends credentials and the anti-forgery header (X-Vluna-CSRF: 1);
//   header sessions: getAuthToken() supplies the app's own token for Authorization: Bearer;
// - api(): calls /vluna/api/v1/... (the service's allowlisted proxy); a 401 is retried once
//   after renewal;
// - helpers: catalog, checkout, portal, wallet, billing state, invoices, subscriptions;
// - signOut(): DELETE /vluna/token (the service forgets the cached tokens) and drops its own;
//   a 503 (the service could not record it yet) or a network error is retried, after
//   Retry-After, up to signOutRetries times; token requests made meanwhile wait for it.

const VERSION = "1.0.0";

class VlunaBffError extends Error {
  constructor(message, { status = 0, code = "network_error", body = null, retryAfter = null } = {}) {
    super(message);
    this.name = "VlunaBffError";
    this.status = status; // HTTP status, 0 when the request never got an answer
    this.code = code; // the service's error code, e.g. "unauthenticated", "csrf_header_missing"
    this.body = body; // the parsed JSON body of the error answer, if any
    this.retryAfter = retryAfter; // seconds, from Retry-After (503 token_unavailable)
  }
}

function createClient(options = {}) {
  const o = {
    baseUrl: "", // the service's origin; "" = the page's own origin
    scopes: null, // e.g. ["checkout", "portal"]; null: the service's default scopes
    renewAhead: 0.25, // renew once less than this fraction of the token's life is left
    expiryMarginSec: 5, // a token this close to expiry is treated as expired (never handed out)
    renewRetryMs: 2000, // when a renewal hands back the same token, ask again after this long
    signOutRetries: 4, // sign-out retries after a 503 or a network error (then it throws)
    signOutRetryMaxMs: 30000, // longest wait between two sign-out attempts
    autoRenew: false, // keep the token fresh on a timer (for pages that show or hold it)
    credentials: "include", // send the session cookie (cross-origin too, if CORS allows it)
    csrfHeader: "X-Vluna-CSRF",
    csrfValue: "1",
    getAuthToken: null, // async () => "<your app's JWT>": sent as Authorization: Bearer
    apiPrefix: "/vluna/api/v1",
    fetch: null, // a fetch implementation (tests); default: globalThis.fetch
    now: () => Date.now(),
    ...options,
  };
  if (!(o.renewAhead > 0 && o.renewAhead < 1)) throw new RangeError("renewAhead must be between 0 and 1");
  const doFetch = o.fetch || ((...args) => globalThis.fetch(...args));
  const base = String(o.baseUrl || "").replace(/\/+$/, "");

  let token = null; // { ...answer, receivedAt, expiresAtMs, lifetimeMs }
  let inflight = null; // the one renewal under way
  let nextAttemptAt = 0; // no background renewal before this time (after an unchanged answer)
  let timer = null;
  let autoRenew = Boolean(o.autoRenew);
  let generation = 0; // bumped by signOut: answers of older requests are dropped
  let signingOut = null; // the sign-out under way: token requests wait until it is done
  const listeners = { token: new Set(), error: new Set(), signout: new Set() };

  function emit(kind, value) {
    for (const fn of listeners[kind]) {
      try {
        fn(value);
      } catch (err) {
        console.error("VlunaBff listener failed", err);
      }
    }
  }

  async function authHeaders() {
    const h = { [o.csrfHeader]: o.csrfValue };
    if (o.getAuthToken) {
      const t = await o.getAuthToken();
      if (t) h.Authorization = `Bearer ${t}`;
    }
    return h;
  }

  async function errorFrom(res) {
    let body = null;
    try {
      body = await res.json();
    } catch (_) {
      body = null;
    }
    const ra = Number.parseInt(res.headers.get("Retry-After") || "", 10);
    const code = (body && (body.error || body.code)) || `http_${res.status}`;
    const message = (body && body.message) || `${res.status} ${res.statusText}`;
    return new VlunaBffError(message, {
      status: res.status,
      code,
      body,
      retryAfter: Number.isFinite(ra) ? ra : null,
    });
  }

  function remainingMs(t = token) {
    return t ? t.expiresAtMs - o.now() : -Infinity;
  }
  function usable(t = token) {
    return t !== null && remainingMs(t) > o.expiryMarginSec * 1000;
  }
  function due(t = token) {
    return t === null || remainingMs(t) < t.lifetimeMs * o.renewAhead;
  }

  function schedule() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    if (!autoRenew || token === null) return;
    const renewAt = token.expiresAtMs - token.lifetimeMs * o.renewAhead;
    const at = Math.max(renewAt, nextAttemptAt, o.now() + 250);
    timer = setTimeout(() => {
      timer = null;
      renew().catch(() => schedule());
    }, Math.min(at - o.now(), 2 ** 31 - 1));
  }

  // After a failed renewal (service or network down): no background attempt before this.
  function backOff(retryAfterSec) {
    nextAttemptAt = o.now() + Math.max(o.renewRetryMs, (retryAfterSec || 0) * 1000);
  }

  async function fetchToken() {
    const gen = generation;
    const q = o.scopes && o.scopes.length ? `?scopes=${encodeURIComponent(o.scopes.join(","))}` : "";
    let res;
    try {
      res = await doFetch(`${base}/vluna/token${q}`, {
        method: "GET",
        headers: await authHeaders(),
        credentials: o.credentials,
        cache: "no-store",
      });
    } catch (err) {
      backOff(null);
      throw new VlunaBffError(`token request failed: ${err && err.message}`, { code: "network_error" });
    }
    if (!res.ok) {
      const err = await errorFrom(res);
      if (res.status === 401 && gen === generation) {
        token = null;
        schedule();
        emit("signout", err);
      } else {
        backOff(err.retryAfter);
      }
      throw err;
    }
    const answer = await res.json();
    if (gen !== generation) throw new VlunaBffError("signed out meanwhile", { code: "signed_out" });
    const now = o.now();
    // expires_in is what is left, measured by the service: immune to this device's clock skew.
    const expiresAtMs = now + answer.expires_in * 1000;
    const previous = token;
    const same = previous !== null && previous.access_token === answer.access_token;
    // The token's whole life, as the service states it (lifetime_sec); from an older service
    // without it, the longest expires_in seen is the best estimate.
    const lifetimeMs =
      answer.lifetime_sec > 0
        ? answer.lifetime_sec * 1000
        : Math.max(answer.expires_in * 1000, previous ? previous.lifetimeMs : 0);
    token = { ...answer, receivedAt: now, expiresAtMs, lifetimeMs };
    // The service renews in the background past its own refresh point and meanwhile hands out
    // the token it has: ask again a little later rather than at once.
    nextAttemptAt = same || due(token) ? now + o.renewRetryMs : 0;
    schedule();
    if (!same) emit("token", token);
    return token;
  }

  // Single flight: whoever asks while a renewal is under way gets that renewal's answer.
  function renew() {
    if (inflight === null) {
      // A token asked for while a sign-out is being retried would be the one being signed out.
      const p = (signingOut ? signingOut.catch(() => {}).then(fetchToken) : fetchToken()).finally(() => {
        if (inflight === p) inflight = null;
      });
      inflight = p;
    }
    return inflight;
  }

  async function getToken({ force = false } = {}) {
    if (force || !usable()) {
      const t = await renew();
      return t;
    }
    if (due() && inflight === null && o.now() >= nextAttemptAt) {
      // Still good: hand it out now and renew behind the caller's back.
      renew().catch((err) => emit("error", err));
    }
    return token;
  }

  async function api(path, { method = "GET", query = null, body = undefined, headers = {} } = {}) {
    if (!path.startsWith("/")) path = `/${path}`;
    let url = `${base}${o.apiPrefix}${path}`;
    if (query) {
      const qs = new URLSearchParams(
        Object.entries(query).filter(([, v]) => v !== undefined && v !== null),
      ).toString();
      if (qs) url += `?${qs}`;
    }
    const send = async () => {
      const h = { Accept: "application/json", ...(await authHeaders()), ...headers };
      if (body !== undefined) h["Content-Type"] = "application/json";
      try {
        return await doFetch(url, {
          method,
          headers: h,
          credentials: o.credentials,
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (err) {
        throw new VlunaBffError(`${method} ${path} failed: ${err && err.message}`, { code: "network_error" });
      }
    };
    let res = await send();
    if (res.status === 401) {
      // Renew (which also re-reads the app's own token via getAuthToken), then retry once.
      await getToken({ force: true });
      res = await send();
    }
    if (!res.ok) throw await errorFrom(res);
    if (res.status === 204) return null;
    const json = await res.json();
    // Vluna envelopes ({ok, code, data, meta}) are unwrapped; anything else is returned as is.
    return json && typeof json === "object" && "ok" in json && "data" in json ? json.data : json;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // One DELETE after another until the service confirms: a 204 means no replica hands the
  // token out again; a 503 means it could not promise that yet (e.g. its Redis is away).
  async function signOutAttempts() {
    for (let attempt = 0; ; attempt += 1) {
      let err;
      try {
        const res = await doFetch(`${base}/vluna/token`, {
          method: "DELETE",
          headers: await authHeaders(),
          credentials: o.credentials,
        });
        if (res.ok || res.status === 401) return;
        err = await errorFrom(res);
        if (res.status !== 503) throw err;
      } catch (caught) {
        if (caught instanceof VlunaBffError && caught.status !== 503) throw caught;
        err =
          caught instanceof VlunaBffError
            ? caught
            : new VlunaBffError(`sign-out failed: ${caught && caught.message}`, { code: "network_error" });
      }
      if (attempt >= o.signOutRetries) throw err;
      const waitMs = err.retryAfter !== null ? err.retryAfter * 1000 : 1000 * 2 ** attempt;
      await sleep(Math.min(o.signOutRetryMaxMs, Math.max(250, waitMs)));
    }
  }

  async function signOut() {
    generation += 1;
    token = null;
    inflight = null;
    nextAttemptAt = 0;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    const p = signOutAttempts();
    signingOut = p;
    try {
      await p;
    } finally {
      if (signingOut === p) signingOut = null;
      emit("signout", null);
    }
  }

  function on(kind, fn) {
    if (!listeners[kind]) throw new TypeError(`unknown event ${kind}; use token, error or signout`);
    listeners[kind].add(fn);
    return () => listeners[kind].delete(fn);
  }

  const here = () => (globalThis.location ? globalThis.location.href : undefined);

  return {
    version: VERSION,
    getToken,
    renew: () => renew(),
    get token() {
      return token;
    },
    expiresIn() {
      return token ? Math.max(0, Math.floor(remainingMs() / 1000)) : 0;
    },
    startAutoRenew() {
      autoRenew = true;
      schedule();
    },
    stopAutoRenew() {
      autoRenew = false;
      schedule();
    },
    on,
    api,
    signOut,
    catalog: {
      products: (query) => api("/catalog/products", { query }),
      prices: (query) => api("/catalog/prices", { query }),
    },
    checkout: {
      // items: [{ catalog_price_id, quantity }]; return_url: where the hosted page sends the buyer back.
      create: ({ items, return_url = here(), ...rest }) =>
        api("/checkouts", { method: "POST", body: { items, return_url, ...rest } }),
      get: (checkoutId) => api(`/checkouts/${encodeURIComponent(checkoutId)}`),
      // A checkout session (POST /checkout/sessions): every Vluna server has it, the open-source
      // one too (which has no /checkouts). Answers { checkout_url, ... }.
      session: ({ items, success_url = here(), cancel_url = here(), ...rest }) =>
        api("/checkout/sessions", { method: "POST", body: { items, success_url, cancel_url, ...rest } }),
    },
    portal: {
      create: ({ return_url = here(), ...rest } = {}) =>
        api("/portal/sessions", { method: "POST", body: { return_url, ...rest } }),
    },
    wallet: { balance: () => api("/wallet/balance") },
    billing: { state: () => api("/billing-state") },
    invoices: { list: (query) => api("/invoices", { query }) },
    subscriptions: { list: (query) => api("/subscriptions", { query }) },
  };
}

const VlunaBff = { createClient, VlunaBffError, version: VERSION };
globalThis.VlunaBff = VlunaBff;

export { createClient, VlunaBffError, VERSION }; // esm-only
export default VlunaBff; // esm-only
