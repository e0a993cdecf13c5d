// A real OpenID Connect provider (the npm package oidc-provider) on 127.0.0.1 for the tests of
// tests/bff/test_oidc.py. Client credentials grant, JWT access tokens (RS256) for the
// audience "vluna-bff-oidc" with an org_id claim.
//
// usage: OIDC_PROVIDER_MODULES=<node_modules> node provider.mjs <private JWKS file> [port]
// (the package is installed by scripts/npm_packages.py into a cache directory, outside the repo)
// Prints "listening on http://127.0.0.1:<port>" once it serves. On SIGHUP it reads the key file
// again and serves the new key set (key rotation: the provider signs with the first key).
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.OIDC_PROVIDER_MODULES;
const entry = path.join(modules, "oidc-provider", "lib", "index.js");
const { default: Provider } = await import(pathToFileURL(entry).href);

const [keysFile, portArg] = process.argv.slice(2);
let provider = null;
let issuer = "";

function build() {
  const jwks = JSON.parse(fs.readFileSync(keysFile, "utf8"));
  provider = new Provider(issuer, {
    clients: [
      {
        client_id: "app",
        client_secret: "app-secret-for-the-oidc-tests-only",
        grant_types: ["client_credentials"],
        redirect_uris: [],
        response_types: [],
      },
    ],
    jwks,
    features: {
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => "urn:vluna-bff",
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: "api",
          audience: "vluna-bff-oidc",
          accessTokenTTL: 600,
          accessTokenFormat: "jwt",
          jwt: { sign: { alg: "RS256" } },
        }),
      },
    },
    extraTokenClaims: () => ({ org_id: "acme" }),
    ttl: { ClientCredentials: 600 },
  });
}

const server = http.createServer((req, res) => provider.callback()(req, res));
server.listen(Number(portArg || 0), "127.0.0.1", () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  build();
  console.log(`listening on ${issuer}`);
});
process.on("SIGHUP", () => {
  build();
  console.log("keys reloaded");
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
