//! The TypeScript SDK against real gateways: the client's Node tests (`sdk/client/test`) and the
//! size budget of the browser packages.

mod common;

use std::time::Duration;

/// Longest the client's test file may run.
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// Positions, de-duplication, shared rooms, re-join after a reconnect, token refresh before
/// `exp`, refused tokens and resync, with the real `socket.io-client` against a real gateway.
#[tokio::test]
async fn sdk_client() {
    let gw = common::Gateway::start(&[("NO_COLOR", "1")]);
    gw.wait_readyz(200).await;
    common::sdk::node(
        &[
            "--test",
            "--test-reporter=spec",
            "client/test/client.test.mjs",
        ],
        &[
            ("GATEWAY_URL", gw.url()),
            ("JWT_SECRET", common::SECRET.to_string()),
            ("PUBLISH_KEY", common::KEY.to_string()),
        ],
        CLIENT_DEADLINE,
        || format!("--- gateway log ---\n{}", gw.log()),
    )
    .await;
}
