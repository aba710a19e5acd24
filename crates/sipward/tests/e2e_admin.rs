//! The admin surface of `sipward run`, against the state SIPp creates: the API's answers
//! (checked against the checked-in OpenAPI description), metrics that move with traffic,
//! 401 without the token, the blacklist over the API, the CLI, and the dashboard in
//! headless Chromium showing a live call.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Topology, ADMIN_TOKEN};
use serde_json::Value;

fn get(t: &Topology, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = ureq::get(&format!("{}{path}", t.api()));
    if let Some(tok) = token {
        req = req.set("Authorization", &format!("Bearer {tok}"));
    }
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{path}: {e}"),
    }
}

fn json(t: &Topology, path: &str) -> Value {
    let (status, body) = get(t, path, Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The OpenAPI description in docs/.
fn openapi() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks `value` against an OpenAPI (JSON Schema) `schema`: the subset the document
/// uses (type, with "null" in type lists; properties; required; items;
/// additionalProperties; enum; $ref).
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/components/schemas/");
        return check(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        assert!(
            allowed.contains(&actual) || (actual == "integer" && allowed.contains(&"number")),
            "{at}: {actual} where the OpenAPI says {allowed:?}: {value}"
        );
        if actual == "null" {
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        assert!(options.contains(value), "{at}: {value} not in {options:?}");
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for key in required.iter().filter_map(Value::as_str) {
            assert!(value.get(key).is_some(), "{at}: missing {key}: {value}");
        }
    }
    if let (Some(props), Some(obj)) = (schema.get("properties"), value.as_object()) {
        for (key, v) in obj {
            match props.get(key) {
                Some(s) => check(doc, s, v, &format!("{at}.{key}")),
                None => assert!(
                    schema.get("additionalProperties").is_some(),
                    "{at}: {key} is not in the OpenAPI description"
                ),
            }
        }
    }
    if let (Some(extra), Some(obj)) = (schema.get("additionalProperties"), value.as_object()) {
        if extra.is_object() {
            let known = schema.get("properties");
            for (key, v) in obj {
                if known.and_then(|p| p.get(key)).is_none() {
                    check(doc, extra, v, &format!("{at}.{key}"));
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            check(doc, items, v, &format!("{at}[{i}]"));
        }
    }
}

/// Every GET path of the description answers 200 with a body its schema accepts, and
/// 401 without the token.
fn check_against_openapi(t: &Topology) {
    let doc = openapi();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let Some(get_op) = ops.get("get") else {
            continue;
        };
        let (status, _) = get(t, path, None);
        assert_eq!(status, 401, "{path} without a token");
        let (status, _) = get(t, path, Some("wrong-token-wrong-token"));
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, body) = get(t, path, Some(ADMIN_TOKEN));
        assert_eq!(status, 200, "{path}: {body}");
        let content = &get_op["responses"]["200"]["content"];
        if let Some(schema) = content.get("application/json").map(|c| &c["schema"]) {
            let value: Value = serde_json::from_str(&body).unwrap();
            check(&doc, schema, &value, path);
        } else {
            assert!(
                content.get("text/plain").is_some(),
                "{path}: no content type"
            );
        }
    }
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn api_metrics_cli_and_dashboard_show_what_sipp_does() {
    let t = Topology::new(71);
    let _gw = t.start_gateway();
    check_against_openapi(&t);
    let (_, before) = get(&t, "/metrics", Some(ADMIN_TOKEN));

    // A registration and a call with media, kept up while we look.
    t.register_alice();
    let (caller, far) = t.media_call(8000, &[]);
    std::thread::sleep(Duration::from_millis(1500));

    let regs = json(&t, "/api/v1/registrations");
    assert!(
        regs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["aor"].as_str().unwrap().starts_with("alice@")),
        "{regs}"
    );
    let calls = json(&t, "/api/v1/calls");
    let call = calls
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "call")
        .unwrap_or_else(|| panic!("no call: {calls}"));
    assert_eq!(call["state"], "confirmed", "{call}");
    assert_eq!(call["direction"], "outbound");
    let stream = &call["streams"][0];
    assert!(
        stream["packets_from_inside"].as_u64().unwrap() > 10,
        "media is counted: {stream}"
    );
    assert!(
        stream["packets_from_outside"].as_u64().unwrap() > 10,
        "{stream}"
    );
    check_against_openapi(&t);
    let inside_call_id = call["inside_call_id"].as_str().unwrap().to_string();

    // The CLI shows the same.
    let out = t.admin(&["calls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&inside_call_id) && text.contains("confirmed"),
        "{text}"
    );
    let out = t.admin(&["registrations"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice@"));
    let out = t.admin(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["calls"], 1, "{status}");

    // The dashboard, in headless Chromium, shows the call.
    let shot = t.dir.join("dashboard.png");
    let url = format!("{}/dashboard#token={ADMIN_TOKEN}", t.api());
    let dom = common::output_within(
        Command::new("chromium").args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1200,900",
            "--virtual-time-budget=3000",
            "--dump-dom",
            &url,
        ]),
        Duration::from_secs(60),
    )
    .expect("chromium is installed (scripts/install-deps.sh installs it)");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains(&inside_call_id),
        "the dashboard does not show the call:\n{dom}"
    );
    assert!(
        dom.contains("alice@"),
        "the dashboard does not show the registration"
    );
    let status = common::output_within(
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1200,900",
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--screenshot={}", shot.display()))
            .arg(&url),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(status.status.success());
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "empty screenshot"
    );
    // Kept for a look after the run.
    let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::copy(&shot, &keep).unwrap();
    eprintln!("dashboard screenshot: {}", keep.display());

    caller.wait_ok("phone");
    far.wait_ok("far end");

    // Metrics moved with the traffic.
    let (_, after) = get(&t, "/metrics", Some(ADMIN_TOKEN));
    let invites = "sipward_requests_total{direction=\"in\",method=\"INVITE\"}";
    assert_eq!(metric(&before, invites), 0);
    assert!(metric(&after, invites) >= 1, "{after}");
    let registers = "sipward_requests_total{direction=\"out\",method=\"REGISTER\"}";
    assert!(metric(&after, registers) >= 2, "{after}");
    assert!(
        metric(&after, "sipward_processing_seconds_count")
            > metric(&before, "sipward_processing_seconds_count")
    );
    assert!(after.contains("sipward_registrations 1"), "{after}");

    // The blacklist over the API.
    let added: Value = ureq::post(&format!("{}/api/v1/blacklist", t.api()))
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .send_json(serde_json::json!({"source": "192.0.2.66", "seconds": 60, "reason": "test"}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(added["source"], "192.0.2.66");
    assert_eq!(added["reason"], "test");
    let list = json(&t, "/api/v1/blacklist");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let out = t.admin(&["blacklist", "remove", "192.0.2.66"]);
    assert!(out.status.success(), "{out:?}");
    assert!(json(&t, "/api/v1/blacklist").as_array().unwrap().is_empty());
    let gone = ureq::delete(&format!("{}/api/v1/blacklist/192.0.2.66", t.api()))
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call();
    assert!(matches!(gone, Err(ureq::Error::Status(404, _))));
}

fn post(t: &Topology, path: &str) -> (u16, Value) {
    let r = ureq::post(&format!("{}{path}", t.api()))
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call();
    match r {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
        Err(e) => panic!("{path}: {e}"),
    }
}

#[test]
fn reload_refuses_a_broken_config_and_keeps_calls_through_a_good_one() {
    let t = Topology::new(72);
    let gw = t.start_gateway();
    t.register_alice();
    let (caller, far) = t.media_call(4000, &[]);
    std::thread::sleep(Duration::from_millis(1000));
    let digest = json(&t, "/api/v1/status")["config_digest"].clone();
    let cfg = t.dir.join("sipward.toml");
    let good = std::fs::read_to_string(&cfg).unwrap();

    // A broken file: refused with file, line and what; the running one stays.
    std::fs::write(&cfg, format!("{good}[[rule]]\naction = \"explode\"\nfrom = \"lan\"\nsource = \"phones\"\nto = \"wan\"\ndestination = \"proxy\"\nservice = \"sip\"\n")).unwrap();
    let (status, body) = post(&t, "/api/v1/reload");
    assert_eq!(status, 400, "{body}");
    let why = body["error"].as_str().unwrap();
    assert!(
        why.contains("sipward.toml:") && why.contains("unknown action"),
        "{why}"
    );
    assert_eq!(json(&t, "/api/v1/status")["config_digest"], digest);

    // A good one by SIGHUP: applied, the call and the registration carry on.
    std::fs::write(
        &cfg,
        good.replace("[alg.sip]\n", "[alg.sip]\nmax_sessions_per_id = 7\n"),
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &gw.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    std::thread::sleep(Duration::from_millis(300));
    let status = json(&t, "/api/v1/status");
    assert_ne!(status["config_digest"], digest, "SIGHUP did not reload");
    assert_eq!(status["calls"], 1, "the call survived the reload: {status}");
    assert_eq!(status["registrations"], 1, "{status}");
    caller.wait_ok("phone (its BYE after the reload)");
    far.wait_ok("far end");
    assert_eq!(json(&t, "/api/v1/status")["calls"], 0);
}
