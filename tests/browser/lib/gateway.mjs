// Talking to test gateways from node: publishing over the HTTP API and reading /metrics.

/** Publishes `body` to `baseUrl` with `key`; throws unless the gateway answers 200. */
export async function publish(baseUrl, key, body) {
  const res = await fetch(`${baseUrl}/v1/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`publish to ${baseUrl}: ${res.status} ${text}`);
  return JSON.parse(text);
}

/** A valid `batch_update` / `batch_created` publish request for `tenant`, addressed to `rooms`. */
export function batchCreated(tenant, rooms, batchId) {
  return {
    channel: "batch_update",
    event: "batch_created",
    institutionId: tenant,
    rooms,
    payload: {
      batchId, batchNumber: `B-${batchId}`, examId: 100, examName: "Finals", courseCode: "CS101",
      totalSlots: 30, createdBy: 7, createdByName: "Registrar", institutionId: tenant,
    },
  };
}

/** Sum of a counter over the label sets that contain `labels`, on every admin URL given. */
export async function metricSum(adminUrls, name, labels = "") {
  let sum = 0;
  for (const url of adminUrls) {
    const text = await (await fetch(`${url}/metrics`)).text();
    for (const line of text.split("\n")) {
      if (line.startsWith("#") || !line.startsWith(name)) continue;
      const rest = line.slice(name.length);
      if (!(rest.startsWith("{") || rest.startsWith(" ")) || !line.includes(labels)) continue;
      sum += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return sum;
}

/** Polls `check()` until it returns a truthy value, at most `ms`; throws `what` if it never does. */
export async function until(what, check, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
