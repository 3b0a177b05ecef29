// A real OpenID provider (panva/oidc-provider, OpenID Certified) for the
// interop tests (tests/e2e/test_oidc_provider_interop.py). Nothing of ours is
// in it: the provider issues JWT access tokens for our audience the way an
// operator would configure it.
//
//   node server.mjs CONFIG.json
//
// CONFIG: {"cert": PEM chain file, "key": PEM key file, "access_token_ttl": seconds}.
// Listens with HTTPS on 127.0.0.1 port 0 and prints one JSON line on stdout,
// {"issuer": ..., "port": ...}, once it accepts connections.
// SIGHUP rotates: a new RS256 key becomes the signing key (the old one stays
// published, so tokens already issued stay valid); prints {"rotated": KID}.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';

import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const accessTokenTTL = config.access_token_ttl ?? 300;

// Resource indicators (RFC 8707) this provider knows: ours signed RS256, ours
// signed ES256 (a second indicator for the same audience), and another API.
const RESOURCES = {
  'api://cluster-connect': { audience: 'api://cluster-connect', alg: 'RS256' },
  'urn:cluster-connect:es256': { audience: 'api://cluster-connect', alg: 'ES256' },
  'api://other-app': { audience: 'api://other-app', alg: 'RS256' },
};
const SCOPE = 'cluster-connect';

let generation = 0;
function signingKey(type) {
  generation += 1;
  const options = type === 'RSA' ? { modulusLength: 2048 } : { namedCurve: 'P-256' };
  const { privateKey } = crypto.generateKeyPairSync(type === 'RSA' ? 'rsa' : 'ec', options);
  const alg = type === 'RSA' ? 'RS256' : 'ES256';
  return { ...privateKey.export({ format: 'jwk' }), kid: `${alg.toLowerCase()}-${generation}`, alg, use: 'sig' };
}

// The first key of an algorithm signs; rotation puts the new key first.
const keys = [signingKey('RSA'), signingKey('EC')];
const cookieKeys = [crypto.randomBytes(32).toString('hex')];

function newProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: [{
      // The CLI: a public client (no secret) with the device flow and refresh.
      client_id: 'arcctl',
      token_endpoint_auth_method: 'none',
      application_type: 'native',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
      response_types: [],
      redirect_uris: [],
    }],
    jwks: { keys },
    cookies: { keys: cookieKeys },
    scopes: ['openid', 'offline_access', SCOPE],
    ttl: { AccessToken: accessTokenTTL, DeviceCode: 600, RefreshToken: 86400, Grant: 86400 },
    features: {
      deviceFlow: { enabled: true },
      devInteractions: { enabled: true },  // the login and consent pages the test submits
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'api://cluster-connect',
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator) => {
          const server = RESOURCES[indicator];
          if (!server) {
            throw new Provider.errors.InvalidTarget();
          }
          return {
            scope: SCOPE,
            audience: server.audience,
            accessTokenTTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: server.alg } },
          };
        },
      },
    },
    // A public client's refresh token whenever it may use the grant (the
    // default also wants offline_access and a consent prompt).
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    // Subjects are bare login names: no oid, no tid, no groups (not Entra).
    findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  });
  provider.proxy = false;
  return provider;
}

let provider;
const server = https.createServer({
  cert: fs.readFileSync(config.cert),
  key: fs.readFileSync(config.key),
}, (req, res) => provider.callback()(req, res));

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `https://127.0.0.1:${port}`;
  provider = newProvider(issuer);
  // The default in-memory adapter is process-wide: grants, device codes and
  // refresh tokens outlive a rotation's new Provider instance.
  process.on('SIGHUP', () => {
    keys.unshift(signingKey('RSA'));
    provider = newProvider(issuer);
    process.stdout.write(`${JSON.stringify({ rotated: keys[0].kid })}\n`);
  });
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
