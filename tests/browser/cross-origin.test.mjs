// The stock socket.io-client in Debian's Chromium, on a page served from another origin than
// the gateways, directly and through nginx in front of several gateways on one Redis; and
// Chromium's permessage-deflate with the gateway's compressed frames.
// tests/browser.rs starts everything and passes the addresses in the environment.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { io } from "socket.io-client";
import { launchChromium } from "./lib/chromium.mjs";
import { publish, batchCreated, metricSum, until } from "./lib/gateway.mjs";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (tests/browser.rs sets it)`);
  return v;
};
const PAGE_URL = env("PAGE_URL");
const OTHER_PAGE_URL = env("OTHER_PAGE_URL");
const TOKEN = env("TOKEN");
const PUBLISH_KEY = env("PUBLISH_KEY");
// Events are published on a gateway the clients are not necessarily on: Redis carries them.
const PUBLISH_URL = env("PUBLISH_URL");
const ADMIN_URLS = env("ADMIN_URLS").split(",");
// Which gateway served each request of a session, from the balancer's log.
const upstreamsFrom = (path, pick) => async (sid) =>
  (await readFile(path, "utf8"))
    .split("\n")
    .filter((l) => l.includes(`sid=${sid}`))
    .map((l) => l.split(" ").find(pick));
const TARGETS = [
  { name: "direct", url: env("DIRECT_URL") },
  {
    // nginx: affinity by the client address.
    name: "nginx",
    url: env("NGINX_URL"),
    upstreamsOf: upstreamsFrom(env("NGINX_ACCESS_LOG"), (w) => w.startsWith("upstream=")),
  },
  {
    // HAProxy: affinity by its cookie, which a page on another origin sends only with
    // withCredentials: true (and which needs Access-Control-Allow-Credentials: true).
    name: "HAProxy with withCredentials: true",
    url: env("HAPROXY_URL"),
    withCredentials: true,
    upstreamsOf: upstreamsFrom(env("HAPROXY_LOG"), (w) => /^[\w-]+\/gw\d+$/.test(w)),
  },
];
const MODES = [
  { name: "default transports (polling, then upgrade)", transports: undefined, first: "polling", last: "websocket" },
  { name: "polling only", transports: ["polling"], first: "polling", last: "polling" },
  { name: "WebSocket only", transports: ["websocket"], first: "websocket", last: "websocket" },
];
const WAIT_MS = 10_000;

let browser;
let nextBatch = 1000;

before(async () => {
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
});

async function openPage(url) {
  const page = await browser.newPage();
  const res = await page.goto(url);
  assert.equal(res.status(), 200, `${url}`);
  await page.waitForFunction(() => typeof window.io === "function" && window.rtg);
  return page;
}

for (const target of TARGETS) {
  for (const mode of MODES) {
    test(`${target.name}, ${mode.name}: connect, authenticate, join, receive`, async () => {
      const page = await openPage(PAGE_URL);
      try {
        const opened = await page.evaluate(
          (o) => window.rtg.connect(o),
          { url: target.url, token: TOKEN, transports: mode.transports, withCredentials: target.withCredentials },
        );
        assert.equal(opened.firstTransport, mode.first);
        assert.equal(opened.me.userId, "10");
        assert.equal(opened.me.institutionId, "1");
        const batch = nextBatch++;
        const room = `batch:${batch}`;
        const ack = await page.evaluate((r) => window.rtg.join(r), room);
        assert.equal(ack.ok, true, JSON.stringify(ack));
        if (mode.last !== mode.first) {
          // The upgrade's WebSocket carries the page's Origin too: allowed, so it completes.
          await page.waitForFunction(() => window.rtg.state.upgrades.length > 0, null, { timeout: WAIT_MS });
          assert.deepEqual(await page.evaluate(() => window.rtg.state.upgrades), ["websocket"]);
        }
        const published = await publish(PUBLISH_URL, PUBLISH_KEY, batchCreated(1, [room], batch));
        await page.waitForFunction(() => window.rtg.state.events.length > 0, null, { timeout: WAIT_MS });
        const events = await page.evaluate(() => window.rtg.state.events);
        assert.equal(events.length, 1, JSON.stringify(events));
        assert.equal(events[0].id, published.id);
        assert.equal(events[0].room, room);
        assert.equal(events[0].offset, 1);
        assert.equal(events[0].payload.batchId, batch);
        assert.equal(await page.evaluate(() => window.rtg.transport()), mode.last);

        if (target.upstreamsOf && mode.first === "polling") {
          // Affinity: every request of the session went to one gateway.
          await page.evaluate(() => window.rtg.close());
          const used = await until(
            "the session's requests in the balancer's log",
            async () => {
              const u = await target.upstreamsOf(opened.sid);
              return u.length >= 2 ? u : null;
            },
          );
          assert.ok(used.every((u) => u && u === used[0]), `sid ${opened.sid} went to ${used}`);
        }
      } finally {
        await page.close();
      }
    });
  }
}

test("direct, WebSocket only: permessage-deflate is negotiated and compressed events arrive intact", async () => {
  const page = await openPage(PAGE_URL);
  try {
    await page.evaluate((o) => window.rtg.connect(o), {
      url: TARGETS[0].url,
      token: TOKEN,
      transports: ["websocket"],
    });
    // What Chromium agreed to, as its WebSocket reports it.
    const extensions = await page.evaluate(() => window.rtg.state.socket.io.engine.transport.ws.extensions);
    assert.match(extensions, /^permessage-deflate\b/, extensions);
    assert.match(extensions, /server_no_context_takeover/, extensions);
    assert.match(extensions, /client_no_context_takeover/, extensions);
    const batch = nextBatch++;
    const room = `batch:${batch}`;
    const ack = await page.evaluate((r) => window.rtg.join(r), room);
    assert.equal(ack.ok, true, JSON.stringify(ack));
    // Each event's frame is over the 256-byte threshold, so it goes compressed.
    const published = [];
    for (let i = 0; i < 3; i++) {
      const req = batchCreated(1, [room], batch);
      req.payload.examName = `Finals, sitting ${i + 1} of 3, main hall and annex`;
      published.push({ req, res: await publish(PUBLISH_URL, PUBLISH_KEY, req) });
    }
    await page.waitForFunction(() => window.rtg.state.events.length >= 3, null, { timeout: WAIT_MS });
    const events = await page.evaluate(() => window.rtg.state.events);
    assert.equal(events.length, 3, JSON.stringify(events));
    events.forEach((e, i) => {
      assert.ok(JSON.stringify(["batch_update", e]).length > 256);
      assert.equal(e.id, published[i].res.id);
      assert.equal(e.offset, i + 1);
      assert.deepEqual(e.payload, published[i].req.payload);
    });
  } finally {
    await page.close();
  }
});

test("under --dev, a page on another origin fetches a development token and connects with it", async () => {
  const page = await openPage(PAGE_URL);
  try {
    const opened = await page.evaluate(async (url) => {
      const res = await fetch(`${url}/dev/token?sub=77&institution=3&role=ADMIN&ttl=10m`);
      const { token, exp } = await res.json();
      const opened = await window.rtg.connect({ url, token });
      return { ...opened, exp };
    }, env("DEV_URL"));
    assert.equal(opened.me.userId, "77");
    assert.equal(opened.me.institutionId, "3");
    assert.equal(opened.me.role, "ADMIN");
    assert.ok(Math.abs(opened.exp - (Date.now() / 1000 + 600)) < 5, `exp ${opened.exp}`);
  } finally {
    await page.close();
  }
});

for (const target of TARGETS) {
  test(`${target.name}: a page of an origin not allowed is refused on every transport`, async () => {
    const page = await openPage(OTHER_PAGE_URL);
    try {
      // Long-polling: no Access-Control-Allow-Origin, so the browser withholds the answer.
      for (const transports of [undefined, ["polling"]]) {
        await page.goto(OTHER_PAGE_URL);
        const err = await page.evaluate(
          (o) => window.rtg.connect(o).then(() => "connected", (e) => e.message),
          { url: target.url, token: TOKEN, transports },
        );
        assert.equal(err, "xhr poll error", `transports ${transports}`);
      }
      // WebSocket: the gateway answers 403 origin_not_allowed (counted), the browser reports
      // a failed WebSocket.
      const before = await metricSum(ADMIN_URLS, "gateway_client_protocol_errors_total", 'reason="origin_not_allowed"');
      await page.goto(OTHER_PAGE_URL);
      const err = await page.evaluate(
        (o) => window.rtg.connect(o).then(() => "connected", (e) => e.message),
        { url: target.url, token: TOKEN, transports: ["websocket"] },
      );
      assert.equal(err, "websocket error");
      await until("the refusal counted", async () =>
        (await metricSum(ADMIN_URLS, "gateway_client_protocol_errors_total", 'reason="origin_not_allowed"')) === before + 1,
      );
    } finally {
      await page.close();
    }
  });
}

test("the publish API is closed to pages, even of an allowed origin", async () => {
  const page = await openPage(PAGE_URL);
  try {
    const outcomes = await page.evaluate(async ({ url, key }) => {
      const attempt = (init) =>
        fetch(`${url}/v1/publish`, { method: "POST", ...init }).then(
          (r) => `readable ${r.status}`,
          (e) => `blocked ${e.name}`,
        );
      return [
        // Needs a preflight (Authorization, JSON): refused before the POST is sent.
        await attempt({ headers: { authorization: `Bearer ${key}`, "content-type": "application/json" }, body: "{}" }),
        // A "simple" request: sent, but its answer is withheld from the page.
        await attempt({ headers: { "content-type": "text/plain" }, body: "{}" }),
        await fetch(`${url}/healthz`).then((r) => `readable ${r.status}`, (e) => `blocked ${e.name}`),
      ];
    }, { url: TARGETS[0].url, key: PUBLISH_KEY });
    assert.deepEqual(outcomes, ["blocked TypeError", "blocked TypeError", "blocked TypeError"]);
  } finally {
    await page.close();
  }
});

for (const target of TARGETS) {
  test(`${target.name}: a client without Origin (node's socket.io-client) is unaffected by the list`, async () => {
    // withCredentials: node's client then keeps HAProxy's affinity cookie in a cookie jar.
    const socket = io(target.url, {
      auth: { token: TOKEN }, reconnection: false, timeout: WAIT_MS, withCredentials: !!target.withCredentials,
    });
    try {
      const events = [];
      socket.on("batch_update", (e) => events.push(e));
      await new Promise((resolve, reject) => {
        socket.on("authenticated", resolve);
        socket.on("connect_error", reject);
      });
      const batch = nextBatch++;
      const room = `batch:${batch}`;
      const ack = await socket.timeout(WAIT_MS).emitWithAck("join", room);
      assert.equal(ack.ok, true, JSON.stringify(ack));
      await until("the upgrade", () => socket.io.engine.transport.name === "websocket");
      await publish(PUBLISH_URL, PUBLISH_KEY, batchCreated(1, [room], batch));
      await until("the event", () => events.length > 0);
      assert.equal(events[0].payload.batchId, batch);
    } finally {
      socket.close();
    }
  });
}
