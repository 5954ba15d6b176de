// Handshake authentication with the official client: every refusal code, forged claims,
// client-sent identity fields, and ping/pong.

import { describe, test, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TRANSPORTS,
  engineTransport,
  SECRET,
  assertPositions,
  brokenTokens,
  claims,
  closeAll,
  connect,
  connectAs,
  expectNothing,
  nowSecs,
  publishOk,
  refusedCode,
  request,
  sample,
  sign,
  waitFor,
} from "./lib.mjs";

afterEach(closeAll);

for (const transport of TRANSPORTS) {
  describe(`handshake over ${transport}`, () => {
    test("each broken token is refused with its exact connect_error code", async () => {
      for (const { name, token: t, code } of brokenTokens()) {
        assert.equal(await refusedCode(t, transport), code, name);
      }
    });

    test("a token that is not a string is refused as malformed", async () => {
      for (const t of [42, { sub: 10 }, ["a.b.c"], true]) {
        assert.equal(await refusedCode(t, transport), "token_malformed", JSON.stringify(t));
      }
    });

    test("a valid token connects and reports the token's identity", async () => {
      const exp = nowSecs() + 600;
      const t = sign({ sub: 10, institutionId: 1, role: "ADMIN", exp });
      const { socket } = await connect({ token: t, transport });
      assert.ok(socket, "valid token refused");
      const auth = await waitFor(socket, "authenticated");
      assert.deepEqual(
        { ...auth, rooms: auth.rooms.map((r) => r.room) },
        { userId: "10", institutionId: "1", role: "ADMIN", rooms: ["institution:1", "user:10"], exp },
      );
      assertPositions(auth.rooms, ["institution:1", "user:10"]);
      assert.equal(socket.io.engine.transport.name, engineTransport(transport));
    });

    test("string ids are kept as given", async () => {
      const { auth } = await connectAs("u-7f3a", "inst-north", "INVIGILATOR", { transport });
      assertPositions(auth.rooms, ["institution:inst-north", "user:u-7f3a"]);
      assert.equal(auth.role, "INVIGILATOR");
    });

    test("a token forged with the wrong secret for another tenant is refused", async () => {
      const forged = sign(claims(99, 2, "ADMIN"), { secret: "guessed-secret-000000000000000000000" });
      assert.equal(await refusedCode(forged, transport), "token_invalid_signature");
      // The same claims, properly signed, are accepted: the refusal is the signature's.
      const genuine = sign(claims(99, 2, "ADMIN"), { secret: SECRET });
      const { socket } = await connect({ token: genuine, transport });
      assert.ok(socket);
      assert.equal((await waitFor(socket, "authenticated")).institutionId, "2");
    });

    test("identity fields sent beside the token are ignored", async () => {
      const exp = nowSecs() + 600;
      const { socket: spy } = await connect({
        auth: {
          token: sign({ sub: 5, institutionId: 1, role: "STAFF", exp }),
          institutionId: 2,
          userId: 99,
          sub: 99,
          role: "ADMIN",
        },
        transport,
      });
      assert.ok(spy, "connect refused");
      const auth = await waitFor(spy, "authenticated");
      assert.deepEqual(
        { ...auth, rooms: auth.rooms.map((r) => r.room) },
        { userId: "5", institutionId: "1", role: "STAFF", rooms: ["institution:1", "user:5"], exp },
      );
      assertPositions(auth.rooms, ["institution:1", "user:5"]);
      // A genuine member of tenant 2 as control: tenant 2's events exist and are delivered.
      const { socket: user99 } = await connectAs(99, 2, "ADMIN", { transport });

      const tenant2 = sample("batch_created", 2);
      await publishOk(tenant2);
      const toUser99 = { ...sample("new_notification", 2, { userId: 99 }) };
      await publishOk(toUser99);
      assert.equal((await waitFor(user99, "batch_update")).room, "institution:2");
      assert.equal((await waitFor(user99, "notification")).room, "user:99");
      await expectNothing(spy);

      // The spy does get its own tenant's events.
      await publishOk(sample("batch_created", 1));
      assert.equal((await waitFor(spy, "batch_update")).room, "institution:1");
    });

    test("ping is answered with pong carrying a numeric timestamp", async () => {
      const { socket } = await connectAs(10, 1, "STAFF", { transport });
      const before = Date.now();
      const ack = await request(socket, "ping");
      const pong = await waitFor(socket, "pong");
      const after = Date.now();
      assert.equal(typeof pong.timestamp, "number");
      assert.ok(Number.isInteger(pong.timestamp));
      assert.ok(pong.timestamp >= before - 1000 && pong.timestamp <= after + 1000, `timestamp ${pong.timestamp}`);
      assert.deepEqual(ack, pong);
      // One ping, one pong.
      await expectNothing(socket, "pong", 200);
    });

    test("an unauthenticated socket may ping too, right on connect", async () => {
      const { socket } = await connect({ transport });
      assert.ok(socket);
      const ack = await request(socket, "ping");
      assert.equal(typeof ack.timestamp, "number");
      assert.deepEqual(await waitFor(socket, "pong"), ack);
    });
  });
}
