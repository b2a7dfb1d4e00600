// Test OpenID Provider for portcullis integration tests (oidc-provider 9.x).
// Usage: node op.mjs [port]   (env: PORT, HOST, ISSUER, AUTO_APPROVE_MS, CIBA_INTERVAL,
//        SLOW_DOWN, SLOW_DOWN_BELOW_MS, DEFAULT_RESOURCE, RESOURCE_SCOPES, RAR_TYPES,
//        ACCESS_TOKEN_TTL, OP_STORE_SIZE)
// Test-only hooks: GET /pending, POST /approve/<auth_req_id|latest>[?details=<authorization_details
//   JSON the user approved instead of the ones asked>], POST /deny/<auth_req_id|latest>,
//   POST /test/token (mint a user access token, see mintToken), GET /test/stats (request counts),
//   POST /test/rotate (new signing keys; the previous ones stay published until the next rotation),
//   POST /test/sign {header, payload} (sign any JOSE header with the OP's current RS256 key, so
//   a hostile header can be tested apart from a bad signature)
// PARENT_PID: exit when that process is gone (tests share one OP per test binary).
import http from 'node:http';
import crypto from 'node:crypto';
import Provider, { errors } from 'oidc-provider';
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';
import LRU from 'oidc-provider/lib/helpers/lru.js';
import * as jose from 'jose';

const env = process.env;
const PORT = Number(process.argv[2] || env.PORT || 4444);
const HOST = env.HOST || '127.0.0.1';
const ISSUER = env.ISSUER || `http://127.0.0.1:${PORT}`;
const AUTO_APPROVE_MS = env.AUTO_APPROVE_MS ? Number(env.AUTO_APPROVE_MS) : -1; // <0: manual
const CIBA_INTERVAL = Number(env.CIBA_INTERVAL || 1); // seconds, added to /backchannel response
const SLOW_DOWN = env.SLOW_DOWN === '1'; // answer slow_down to polls faster than SLOW_DOWN_BELOW_MS
const SLOW_DOWN_BELOW_MS = Number(env.SLOW_DOWN_BELOW_MS || CIBA_INTERVAL * 1000);
const DEFAULT_RESOURCE = env.DEFAULT_RESOURCE || 'https://api.portcullis.test';
const RESOURCE_SCOPES = env.RESOURCE_SCOPES || 'invoices:read invoices:pay admin:delete_all';
const RAR_TYPES = (env.RAR_TYPES || 'payment_initiation,tool_call').split(',');
const ACCESS_TOKEN_TTL = Number(env.ACCESS_TOKEN_TTL || 600); // seconds, for every access token

const CIBA = 'urn:openid:params:grant-type:ciba';
const TE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const TV = 'urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token';
const AT_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const TV_TYPE = 'http://auth0.com/oauth/token-type/federated-connection-access-token';

const USERS = {
  alice: { email: 'alice@example.test', roles: ['finance', 'admin'], dept: 'finance' },
  bob: { email: 'bob@example.test', roles: ['viewer'], dept: 'finance' },
};

// Fresh signing keys on every start: one RS256, one ES256. Kids get a random suffix
// ("rs256-1a2b3c"), so a restart (or POST /test/rotate) looks like a key rotation to the gateway.
const mkKey = (type, opts, alg) => ({
  ...crypto.generateKeyPairSync(type, opts).privateKey.export({ format: 'jwk' }),
  alg, use: 'sig', kid: `${alg.toLowerCase()}-${crypto.randomBytes(3).toString('hex')}`,
});
const newKeys = () => [mkKey('rsa', { modulusLength: 2048 }, 'RS256'), mkKey('ec', { namedCurve: 'P-256' }, 'ES256')];
let signing = newKeys(); // signs (first key of each alg)
let retired = []; // still published, after a rotation
const publicSet = () => jose.createLocalJWKSet({
  keys: [...signing, ...retired].map(({ d, p, q, dp, dq, qi, ...pub }) => pub),
});
let ownJwks = publicSet();

// Static clients; secret = "<id>-secret", auth = client_secret_basic (oidc-provider default).
const client = (id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials', CIBA, TE, TV, 'refresh_token'],
  response_types: [],
  redirect_uris: [],
  backchannel_token_delivery_mode: 'poll',
  authorization_details_types: RAR_TYPES, // without this RAR is rejected for the client
});

// Any absolute URL is accepted as a resource; "es256" anywhere in it => ES256-signed tokens.
const resourceInfo = (resource) => ({
  scope: RESOURCE_SCOPES,
  audience: resource,
  accessTokenTTL: ACCESS_TOKEN_TTL,
  accessTokenFormat: 'jwt',
  jwt: { sign: { alg: resource.includes('es256') ? 'ES256' : 'RS256' } },
});

const pending = new Map(); // auth_req_id -> what the approving human would see
const customClaims = new Map(); // gty marker -> { set, unset } applied by the jwt customizer
const stats = { jwks: 0, token: 0 }; // requests served, for tests that count fetches

// The library's dev adapter keeps 1000 records (LRU); load tests holding thousands of pending
// CIBA requests raise it with OP_STORE_SIZE.
const storeSize = Number(env.OP_STORE_SIZE || 0);
const bigStore = storeSize > 0 ? new LRU({ maxSize: storeSize }) : undefined;

const newProvider = () => new Provider(ISSUER, {
  ...(bigStore && { adapter: (model) => new MemoryAdapter(model, bigStore, 15) }),
  clients: [client('agent-1'), client('agent-2'), client('portcullis')],
  jwks: { keys: [...signing, ...retired] },
  findAccount: async (ctx, sub) => USERS[sub] && {
    accountId: sub,
    claims: async () => ({ sub, email: USERS[sub].email }),
  },
  extraTokenClaims: async (ctx, token) => ({
    azp: token.clientId,
    ...(token.accountId && USERS[token.accountId] && {
      roles: USERS[token.accountId].roles, dept: USERS[token.accountId].dept,
    }),
    ...(token.act && { act: token.act }),
  }),
  // Refresh tokens (CIBA with offline_access) rotate on every use, as Auth0 and most
  // third-party providers do; reusing a rotated one is refused.
  rotateRefreshToken: () => true,
  ttl: { // explicit values also silence oidc-provider's "default ttl" notices
    AccessToken: ACCESS_TOKEN_TTL, ClientCredentials: ACCESS_TOKEN_TTL, RefreshToken: 86400, IdToken: 3600, Grant: 3600,
    BackchannelAuthenticationRequest: (ctx) => Math.min(600, Number(ctx?.oidc?.params?.requested_expiry) || 600),
  },
  formats: {
    customizers: {
      // Test hook: /test/token can add, replace or remove claims of the minted JWT.
      jwt: async (ctx, token, jwt) => {
        const c = customClaims.get(token.gty);
        if (!c) return;
        customClaims.delete(token.gty);
        Object.assign(jwt.payload, c.set || {});
        for (const k of c.unset || []) delete jwt.payload[k];
      },
    },
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    registration: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf || DEFAULT_RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource) => resourceInfo(resource),
    },
    richAuthorizationRequests: {
      enabled: true,
      types: Object.fromEntries(RAR_TYPES.map((t) => [t, { validate: async () => {} }])),
      authorizationDetailsForAccessToken: async (ctx, token, source) => source?.rar,
    },
    ciba: {
      enabled: true,
      deliveryModes: ['poll'],
      processLoginHint: async (ctx, loginHint) => (USERS[loginHint] ? loginHint : undefined),
      validateRequestContext: async () => {},
      verifyUserCode: async () => {},
      // default only allows ^[a-zA-Z0-9-._+/!?#]{1,20}$ — relax to printable ASCII, 1-200 chars
      validateBindingMessage: async (ctx, msg) => {
        if (msg !== undefined && !/^[\x20-\x7e]{1,200}$/.test(msg)) {
          throw new errors.InvalidBindingMessage('binding_message must be 1-200 printable chars');
        }
      },
      triggerAuthenticationDevice: async (ctx, request, account, client) => {
        const p = request.params;
        pending.set(request.jti, {
          auth_req_id: request.jti,
          status: 'pending',
          client_id: client.clientId,
          sub: account.accountId,
          scope: request.scope,
          resource: request.resource,
          binding_message: p.binding_message,
          authorization_details: p.authorization_details && JSON.parse(p.authorization_details),
          expires_in: request.expiration,
        });
        if (AUTO_APPROVE_MS >= 0) {
          setTimeout(() => approve(request.jti).catch((e) => console.error('auto-approve', e)), AUTO_APPROVE_MS);
        }
      },
    },
  },
});

// ---- CIBA approval (what the authentication device would do) ----
async function findRequest(id) {
  if (id === 'latest') id = [...pending.values()].filter((r) => r.status === 'pending').at(-1)?.auth_req_id;
  const req = id && await provider.BackchannelAuthenticationRequest.find(id, { ignoreExpiration: true });
  if (!req) throw Object.assign(new Error('unknown auth_req_id'), { status: 404 });
  return req;
}

// `details`: what the user's device approved, when a test makes it differ from what was asked.
async function approve(id, details) {
  const req = await findRequest(id);
  const grant = new provider.Grant({ clientId: req.clientId, accountId: req.accountId });
  const scopes = req.scope.split(' ');
  grant.addOIDCScope(scopes.filter((s) => ['openid', 'profile', 'email', 'offline_access'].includes(s)).join(' '));
  for (const r of [req.resource].flat().filter(Boolean)) grant.addResourceScope(r, req.scope);
  await grant.save();
  const entry = pending.get(req.jti);
  await provider.backchannelResult(req, grant, {
    rar: details ?? entry?.authorization_details, authTime: Math.floor(Date.now() / 1000), amr: ['hwk'],
  });
  if (entry) entry.status = 'approved';
  return req.jti;
}

async function deny(id) {
  const req = await findRequest(id);
  await provider.backchannelResult(req, new errors.AccessDenied('end-user denied the request'));
  if (pending.get(req.jti)) pending.get(req.jti).status = 'denied';
  return req.jti;
}

// ---- RFC 8693 token exchange (+ Auth0 Token Vault variant) ----
async function tokenExchange(ctx) {
  const p = ctx.oidc.params;
  const vault = p.grant_type === TV;
  if (!p.subject_token) throw new errors.InvalidRequest('missing subject_token');
  if (![AT_TYPE, JWT_TYPE].includes(p.subject_token_type)) {
    throw new errors.InvalidRequest('unsupported subject_token_type');
  }
  if (vault && !p.connection) throw new errors.InvalidRequest('missing connection');
  let subject;
  try {
    ({ payload: subject } = await jose.jwtVerify(p.subject_token, ownJwks, { issuer: ISSUER }));
  } catch (e) {
    throw new errors.InvalidGrant(`invalid subject_token (${e.code})`);
  }
  const first = (v) => (Array.isArray(v) ? v[0] : v);
  const resource = vault ? `https://${p.connection}.connections.test` : first(p.resource) || first(p.audience);
  if (!resource) throw new errors.InvalidTarget('resource or audience required');
  const info = resourceInfo(resource);
  const allowed = new Set(info.scope.split(' '));
  const scope = (p.scope || subject.scope || '').split(' ').filter((s) => allowed.has(s)).join(' ');

  const at = new provider.AccessToken({
    accountId: subject.sub, client: ctx.oidc.client, gty: 'token_exchange', scope: scope || undefined,
  });
  at.resourceServer = new provider.ResourceServer(resource, info);
  at.act = { sub: ctx.oidc.client.clientId, ...(subject.act && { act: subject.act }) }; // read by extraTokenClaims
  const accessToken = await at.save();
  ctx.body = {
    access_token: accessToken,
    issued_token_type: vault ? TV_TYPE : AT_TYPE,
    token_type: 'Bearer',
    expires_in: at.expiration,
    ...(scope && { scope }),
  };
}
const teParams = ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
  'requested_token_type', 'audience', 'resource', 'scope'];

// ---- CIBA extras oidc-provider lacks: `interval` in the response, optional slow_down ----
const lastPoll = new Map();
const cibaExtras = async (ctx, next) => {
  await next();
  if (ctx.oidc?.route === 'backchannel_authentication' && ctx.status === 200) {
    ctx.body = { ...ctx.body, interval: CIBA_INTERVAL };
  }
  if (SLOW_DOWN && ctx.oidc?.route === 'token' && ctx.body?.error === 'authorization_pending') {
    const id = ctx.oidc.params?.auth_req_id;
    const now = Date.now();
    const last = lastPoll.get(id);
    lastPoll.set(id, now);
    if (last && now - last < SLOW_DOWN_BELOW_MS) {
      ctx.body = { error: 'slow_down', error_description: 'you are polling too quickly' };
    }
  }
};

// A provider with the current keys. Stored records (grants, CIBA requests, tokens) live in the
// adapter's module-level store, so they survive a rotation's new provider.
function makeProvider() {
  const p = newProvider();
  p.registerGrantType(TE, tokenExchange, teParams, ['audience', 'resource']);
  p.registerGrantType(TV, tokenExchange, [...teParams, 'connection', 'login_hint']);
  p.use(cibaExtras);
  return p;
}
let provider = makeProvider();
let callback = provider.callback();

// Test hook: rotate the signing keys (the previous ones stay in the JWKS).
function rotate() {
  retired = signing;
  signing = newKeys();
  ownJwks = publicSet();
  provider = makeProvider();
  callback = provider.callback();
  return { kids: signing.map((k) => k.kid), retired: retired.map((k) => k.kid) };
}

// ---- Test hook: mint a user access token as this OP would after a user grant ----
// Body: { sub, client_id, scope, resource, set: {claim: value}, unset: [claim], ttl }
async function mintToken(body) {
  const client = await provider.Client.find(body.client_id || 'agent-1');
  if (!client) throw Object.assign(new Error('unknown client'), { status: 400 });
  const resource = body.resource || DEFAULT_RESOURCE;
  const info = resourceInfo(resource);
  if (body.ttl) info.accessTokenTTL = body.ttl;
  const gty = `test-${crypto.randomUUID()}`; // marks this token for the jwt customizer
  const at = new provider.AccessToken({
    accountId: body.sub || 'alice', client, gty, scope: body.scope || undefined,
  });
  at.resourceServer = new provider.ResourceServer(resource, info);
  if (body.set || body.unset) customClaims.set(gty, { set: body.set, unset: body.unset });
  return { access_token: await at.save(), token_type: 'Bearer', expires_in: at.expiration };
}
const readJson = (req) => new Promise((resolve, reject) => {
  let data = '';
  req.on('data', (c) => { data += c; });
  req.on('end', () => { try { resolve(data ? JSON.parse(data) : {}); } catch (e) { reject(e); } });
});

if (env.PARENT_PID) {
  setInterval(() => {
    try { process.kill(Number(env.PARENT_PID), 0); } catch { process.exit(0); }
  }, 500).unref();
}

// ---- HTTP server: test hooks first, everything else to the provider ----
const send = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};
http.createServer(async (req, res) => {
  const url = new URL(req.url, ISSUER);
  const hook = url.pathname.match(/^\/(approve|deny)\/([^/]+)$/);
  if (url.pathname === '/jwks') stats.jwks += 1;
  if (url.pathname === '/token') stats.token += 1;
  if (req.method === 'GET' && url.pathname === '/test/stats') return send(res, 200, stats);
  if (req.method === 'POST' && url.pathname === '/test/rotate') return send(res, 200, rotate());
  if (req.method === 'POST' && url.pathname === '/test/sign') {
    const { header, payload } = await readJson(req);
    const key = signing.find((k) => k.alg === 'RS256');
    const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
    const input = `${b64({ alg: 'RS256', kid: key.kid, ...header })}.${b64(payload)}`;
    const sig = crypto.sign('sha256', Buffer.from(input), crypto.createPrivateKey({ key, format: 'jwk' }));
    return send(res, 200, { token: `${input}.${sig.toString('base64url')}` });
  }
  if (req.method === 'POST' && url.pathname === '/test/token') {
    try {
      return send(res, 200, await mintToken(await readJson(req)));
    } catch (e) {
      return send(res, e.status || 500, { error: e.message });
    }
  }
  if (req.method === 'GET' && url.pathname === '/pending') {
    const all = url.searchParams.has('all');
    return send(res, 200, [...pending.values()].filter((r) => all || r.status === 'pending'));
  }
  if (req.method === 'POST' && hook) {
    try {
      const details = url.searchParams.get('details');
      const id = await (hook[1] === 'approve' ? approve : deny)(
        decodeURIComponent(hook[2]), details ? JSON.parse(details) : undefined);
      return send(res, 200, { auth_req_id: id, status: hook[1] === 'approve' ? 'approved' : 'denied' });
    } catch (e) {
      return send(res, e.status || 500, { error: e.message });
    }
  }
  return callback(req, res);
}).listen(PORT, HOST, () => console.log(`op listening on ${ISSUER}`));
