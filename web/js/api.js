// The station's JSON API: requests with the operator token, and its errors.

import { $ } from './util.js';
import { markStale, connectEvents } from './live.js';

export const API = '/api/v1';
export const TOKEN_KEY = 'flashrack.token';
let token = sessionStorage.getItem(TOKEN_KEY) || '';
let tokenRequest = null;

/** The operator token entered so far ('' if none). */
export const getToken = () => token;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Shows the token form once; resolves when a token has been entered. */
export function askToken(rejected) {
  if (tokenRequest) return tokenRequest;
  const form = $('auth-form');
  $('auth-note').textContent = rejected
    ? 'The token was not accepted. Enter the operator token again.'
    : 'This station needs the operator token for this.';
  form.hidden = false;
  $('auth-token').value = '';
  $('auth-token').focus();
  tokenRequest = new Promise((resolve) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      const value = $('auth-token').value.trim();
      if (!value) return;
      setToken(value);
      form.hidden = true;
      tokenRequest = null;
      resolve();
      connectEvents();
      refreshLinks();
    };
  });
  return tokenRequest;
}

export function setToken(value) {
  token = value;
  sessionStorage.setItem(TOKEN_KEY, value);
}

export async function errorFrom(status, bodyText) {
  try {
    const body = JSON.parse(bodyText);
    if (body && body.error) return new ApiError(status, body.error.code, body.error.message);
  } catch (_) { /* not JSON */ }
  return new ApiError(status, 'http', `the station answered ${status}`);
}

/** fetch() with the token; on a 401 asks for the token and tries again. */
export async function api(method, path, body) {
  let rejected = false;
  for (;;) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(API + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (_) {
      markStale();
      throw new ApiError(0, 'network', 'the station cannot be reached');
    }
    if (response.status === 401) {
      await askToken(rejected);
      rejected = true;
      continue;
    }
    const text = await response.text();
    if (!response.ok) throw await errorFrom(response.status, text);
    return text ? JSON.parse(text) : null;
  }
}

/** Adds ?token= for what the browser fetches by itself (links, EventSource). */
export function withToken(url) {
  if (!token) return url;
  return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
}

export function refreshLinks() {
  for (const link of document.querySelectorAll('a[data-href]')) link.href = withToken(link.dataset.href);
}
