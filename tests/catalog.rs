//! The catalog as an operator meets it: `--catalog` / `GATEWAY_CATALOG`, `realtime-gateway
//! catalog [--check FILE]`, and `GET /v1/catalog`. Every bad catalog stops the binary with
//! exit status 2 and one line that names the file and the JSON pointer of the problem.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

fn elms() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog/elms.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("catalog/elms.json")).expect("JSON")
}

/// Runs the binary with `args` and `env`, none of the caller's gateway settings inherited.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::binary());
    for name in [
        "GATEWAY_CATALOG",
        "JWT_SECRET",
        "PUBLISH_API_KEYS",
        "REDIS_URL",
    ] {
        cmd.env_remove(name);
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run the gateway binary")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write catalog");
    path
}

/// Each kind of bad catalog the issue names, with the pointer its error must name.
fn bad_catalogs() -> Vec<(&'static str, String, &'static str)> {
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut doc = elms();
        f(&mut doc);
        doc.to_string()
    };
    vec![
        ("not-json.json", "{ \"name\": \"elms\", ".to_owned(), "/"),
        (
            "bad-schema.json",
            edit(&|d| {
                d["channels"]["incident"]["events"]["incident_resolved"]["payload"]["properties"]
                    ["resolution"] = json!({"type": 5})
            }),
            "/channels/incident/events/incident_resolved/payload/properties/resolution/type",
        ),
        (
            "bad-template.json",
            edit(&|d| d["channels"]["notification"]["defaultRoom"] = json!("user:{payload.userId")),
            "/channels/notification/defaultRoom",
        ),
        (
            "duplicate-event.json",
            edit(&|d| {
                d["channels"]["incident"]["events"]["script_graded"] =
                    d["channels"]["script_submission"]["events"]["script_graded"].clone()
            }),
            // The test writes keys sorted, so incident comes first and script_submission repeats.
            "/channels/script_submission/events/script_graded",
        ),
        (
            "reserved-channel.json",
            edit(&|d| d["channels"]["authenticated"] = d["channels"]["incident"].clone()),
            "/channels/authenticated",
        ),
        (
            "bad-channel-name.json",
            edit(&|d| d["channels"]["Exam Room"] = d["channels"]["incident"].clone()),
            "/channels/Exam Room",
        ),
        (
            "remote-ref.json",
            edit(&|d| d["$defs"]["id"] = json!({"$ref": "http://127.0.0.1:9/id.json"})),
            "/$defs/id/$ref",
        ),
    ]
}

#[test]
fn each_bad_catalog_exits_2_with_one_line_naming_file_and_pointer() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text, pointer) in bad_catalogs() {
        let path = write(dir.path(), name, &text);
        let file = path.to_str().expect("UTF-8 path");
        let check = run(&["catalog", "--check", file], &[]);
        let serve = run(
            &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
            &[("GATEWAY_CATALOG", file), ("JWT_SECRET", common::SECRET)],
        );
        let flag = run(
            &["--catalog", file, "--check-config"],
            &[("JWT_SECRET", common::SECRET)],
        );
        for (what, out) in [
            ("catalog --check", &check),
            ("serve", &serve),
            ("--check-config", &flag),
        ] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name}, {what}: {stderr}");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{name}, {what}: one line, got {stderr}");
            let named = lines[0]
                .split_once(&format!("{file}: "))
                .and_then(|(_, rest)| rest.split_once(": "))
                .map(|(p, _)| p);
            assert_eq!(
                named,
                Some(pointer),
                "{name}, {what}: file and pointer in {stderr}"
            );
        }
    }
}

#[test]
fn catalog_check_accepts_good_files_and_prints_the_effective_catalog() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, summary) in [
        (
            "catalog/elms.json",
            "catalog elms version 1 ok: 5 channels, 17 events",
        ),
        (
            "tests/catalogs/exams.json",
            "catalog exams version 3 ok: 1 channels, 1 events",
        ),
    ] {
        let path = root.join(file);
        let out = run(&["catalog", "--check", path.to_str().expect("path")], &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), summary);
    }
    // Without a file: the built-in catalog, exactly the repository's document.
    let out = run(&["catalog"], &[]);
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(printed, elms());
    // GATEWAY_CATALOG selects the effective one, defaults spelled out.
    let exams = root.join("tests/catalogs/exams.json");
    let out = run(
        &["catalog"],
        &[("GATEWAY_CATALOG", exams.to_str().expect("path"))],
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(printed["name"], "exams");
    assert_eq!(
        printed["channels"]["exam_room"]["defaultRoom"],
        "exam:{payload.examId}"
    );
}

#[tokio::test]
async fn get_catalog_serves_the_built_in_catalog_with_an_etag() {
    let gw = common::Gateway::start(&[("NO_COLOR", "1")]);
    gw.wait_readyz(200).await;
    let url = format!("{}/v1/catalog", gw.url());
    let client = reqwest::Client::new();
    let res = client.get(&url).send().await.expect("GET /v1/catalog");
    assert_eq!(res.status(), 200);
    let etag = res.headers()["etag"].to_str().expect("etag").to_owned();
    assert!(etag.starts_with("\"elms-1-"), "{etag}");
    assert_eq!(res.headers()["cache-control"], "no-cache");
    let doc: Value = res.json().await.expect("JSON");
    assert_eq!(doc, elms());
    let again = client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("conditional GET");
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().expect("etag"), etag);
}
