// Where the demo connects, from the page's query string (with defaults that fit
// `cargo run -- --dev` and `npm run demo`):
//   ?gateway=http://127.0.0.1:3000   the gateway or load balancer
//   &tokenUrl=...                    answers { token, exp } (default: the gateway's --dev endpoint)
//   &api=/api                        the application API (`/batches/:id`)
//   &sub=10&institution=1&role=ADMIN who to be
//   &debug=0                         turn the SDK's console log off
const params = new URLSearchParams(location.search);
const param = (name: string, fallback: string) => params.get(name) ?? fallback;

export const gatewayUrl = param("gateway", "http://127.0.0.1:3000");
export const sub = param("sub", "10");
export const institution = param("institution", "1");
export const role = param("role", "ADMIN");
export const tokenUrl = param(
  "tokenUrl",
  `${gatewayUrl}/dev/token?sub=${encodeURIComponent(sub)}&institution=${encodeURIComponent(institution)}&role=${encodeURIComponent(role)}`,
);
export const apiUrl = param("api", "/api");
export const debug = param("debug", "1") !== "0";
export const batchId = Number(param("batch", "456"));

/** How many tokens the page fetched (shown by the probe). */
export let tokensFetched = 0;

/** Fetches a token from `tokenUrl` (`{ token, exp }`). */
export async function getToken(): Promise<string> {
  tokensFetched++;
  const res = await fetch(tokenUrl);
  if (!res.ok) throw new Error(`token endpoint answered ${res.status}`);
  const body = (await res.json()) as { token: string };
  return body.token;
}
