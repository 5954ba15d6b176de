// Posts a body far over the publish limit with Node's own fetch, TRIES times, one request at a
// time; prints one JSON line per answer and a summary. Driven by tests/gateway_core.rs.
const url = `${process.env.GATEWAY_URL}/v1/publish`;
const key = process.env.KEY;
const tries = Number(process.env.TRIES || 30);
const body = JSON.stringify({ padding: "x".repeat(2 * 1024 * 1024) });
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");

const answers = [];
for (let i = 0; i < tries; i++) {
  try {
    const res = await fetch(url, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body,
    });
    const json = await res.json().catch(() => null);
    answers.push({ status: res.status, code: json?.error?.code ?? null });
  } catch (e) {
    answers.push({ status: 0, code: e.cause?.code ?? String(e) });
  }
  say({ step: "answer", ...answers.at(-1) });
}
say({ step: "done", answers });
