//! The alerts and the dashboard against the real Prometheus (Debian's `prometheus` package:
//! `ARTGC_PROMETHEUS`, `ARTGC_PROMTOOL`; `.ci/run` installs it): the rules pass `promtool check
//! rules` and their unit tests, every alert has both a firing and a quiet test and a runbook;
//! `/metrics` passes a strict OpenMetrics parser and `promtool check metrics`; and Prometheus,
//! scraping `artgc demo --serve` while it works, answers every query of the dashboard.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const RULES: &str = "deploy/prometheus/artgc-alerts.yaml";
const RULE_TESTS: &str = "deploy/prometheus/artgc-alerts.test.yaml";
const DASHBOARD: &str = "grafana/artgc.json";

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn promtool() -> Option<String> {
    artgc_testkit::needed_var("ARTGC_PROMTOOL", "Debian's prometheus package: promtool")
}

/// Runs a tool; its exit status and what it printed.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn alert_names() -> Vec<String> {
    yaml(RULES)["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| {
            r["alert"]
                .as_str()
                .expect("only alerting rules")
                .to_string()
        })
        .collect()
}

#[ignore = "needs Debian's prometheus (ARTGC_PROMETHEUS, ARTGC_PROMTOOL, ARTGC_PROMETHEUS_PYTHON), then cargo test -- --include-ignored (.ci/run sets them)"]
#[test]
fn the_alert_rules_are_valid_and_pass_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let (ok, out) = run(Command::new(&promtool).args(["check", "rules", RULES]));
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alert_names().len())),
        "{out}"
    );
    let (ok, out) = run(Command::new(&promtool)
        .args(["test", "rules", "artgc-alerts.test.yaml"])
        .current_dir("deploy/prometheus"));
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

/// Every alert is tested both ways (a case that expects it and one that expects silence),
/// carries a summary, a description and a runbook link, and the README has that runbook.
#[test]
fn every_alert_is_tested_both_ways_and_has_a_runbook() {
    let tests = yaml(RULE_TESTS);
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in tests["tests"].as_array().unwrap() {
        for case in t["alert_rule_test"].as_array().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_string();
            match case["exp_alerts"].as_array().is_some_and(|a| a.is_empty()) {
                true => quiet.insert(name),
                false => fires.insert(name),
            };
        }
    }
    let readme = read("README.md");
    let rules = yaml(RULES);
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let name = rule["alert"].as_str().unwrap();
        assert!(fires.contains(name), "{name}: no test where it fires");
        assert!(quiet.contains(name), "{name}: no test where it stays quiet");
        let a = &rule["annotations"];
        for field in ["summary", "description", "runbook_url"] {
            assert!(
                a[field].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: {field}"
            );
        }
        let anchor = name.to_lowercase();
        assert!(
            a["runbook_url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("README.md#{anchor}")),
            "{name}: runbook_url"
        );
        assert!(
            readme.contains(&format!("\n#### {name}\n")),
            "README has no runbook section #### {name}"
        );
        assert!(
            rule["labels"]["severity"].as_str().is_some(),
            "{name}: severity"
        );
    }
    assert_eq!(
        read("deploy/helm/artgc/alerts/artgc-alerts.yaml"),
        read(RULES),
        "the chart's rules copy is {RULES}"
    );
}

/// OpenMetrics text as a strict parser reads it, re-exposed in the classic text format that
/// `promtool check metrics` lints (both by Python's prometheus_client, Debian's
/// python3-prometheus-client): what promtool says, and whether the parser accepted it.
fn lint(exposition: &str) -> (bool, String) {
    let python = artgc_testkit::needed_var(
        "ARTGC_PROMETHEUS_PYTHON",
        "a python3 with prometheus_client: Debian's python3-prometheus-client",
    )
    .expect("checked by the caller");
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry
families = list(text_string_to_metric_families(sys.stdin.read()))
class Parsed:
    def collect(self):
        return families
registry = CollectorRegistry(auto_describe=False)
registry.register(Parsed())
sys.stdout.write(generate_latest(registry).decode())
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return (false, String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut check = Command::new(promtool().expect("checked by the caller"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let checked = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    (checked.status.success() && said.trim().is_empty(), said)
}

/// Kills the process when dropped, so a failing test leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET over HTTP/1.0 (Go's server then answers without chunking, closing the connection).
async fn get_json(addr: &str, path: &str, query: &[(&str, &str)]) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path}?{q} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |x| x.1);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}?{q}: {e}: {out}"))
}

async fn query(prom: &str, expr: &str) -> Value {
    let v = get_json(prom, "/api/v1/query", &[("query", expr)]).await;
    assert_eq!(v["status"], "success", "{expr}: {v}");
    v["data"]["result"].clone()
}

/// The dashboard's queries with its variables as Grafana substitutes them: the demo's
/// namespace for `$namespace`, ranges that cover the whole run. Each with its panel's title.
fn dashboard_queries(namespace: &str) -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut out = Vec::new();
    let mut panels: Vec<Value> = dash["panels"].as_array().unwrap().clone();
    while let Some(p) = panels.pop() {
        panels.extend(p["panels"].as_array().cloned().unwrap_or_default());
        for t in p["targets"].as_array().cloned().unwrap_or_default() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$__range", "10m")
                .replace("${namespace}", namespace)
                .replace("$namespace", namespace);
            assert!(!expr.contains('$'), "a variable left in {expr}");
            out.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    let variable = dash["templating"]["list"][1]["definition"]
        .as_str()
        .unwrap();
    let metric = variable
        .strip_prefix("label_values(")
        .and_then(|v| v.split_once(','))
        .map(|(m, _)| m.trim().to_string())
        .expect("label_values(metric, label)");
    out.push((
        "$namespace".into(),
        format!("count by (namespace) ({metric})"),
    ));
    out
}

#[ignore = "needs Debian's prometheus (ARTGC_PROMETHEUS, ARTGC_PROMTOOL, ARTGC_PROMETHEUS_PYTHON), then cargo test -- --include-ignored (.ci/run sets them)"]
#[tokio::test]
async fn prometheus_scrapes_the_demo_and_answers_every_dashboard_query() {
    let Some(prometheus) =
        artgc_testkit::needed_var("ARTGC_PROMETHEUS", "Debian's prometheus package")
    else {
        return;
    };
    if promtool().is_none()
        || artgc_testkit::needed_var("ARTGC_PROMETHEUS_PYTHON", "python3-prometheus-client")
            .is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", artgc_testkit::free_port());
    let prom = format!("127.0.0.1:{}", artgc_testkit::free_port());
    let rules = std::fs::canonicalize(RULES).unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 250ms, evaluation_interval: 1s}}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n\
             - job_name: artgc\n  static_configs: [{{targets: [\"{admin}\"]}}]\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Running(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    // Listening comes before ready (its storage opens in between): /-/ready says when.
    common::until("Prometheus is ready", async || {
        tokio::net::TcpStream::connect(&prom).await.is_ok()
            && common::http_get(&format!("http://{prom}/-/ready")).await.0 == 200
    })
    .await;
    // Scraping already (the target down) before the demo starts.
    common::until("Prometheus scrapes the target", async || {
        let v = get_json(&prom, "/api/v1/query", &[("query", "up{job=\"artgc\"}")]).await;
        v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    })
    .await;

    // The demo's work is scraped while it happens: its counters rise between scrapes.
    let demo_out = std::fs::File::create(dir.path().join("demo.out")).unwrap();
    let _demo = Running(
        Command::new(env!("CARGO_BIN_EXE_artgc"))
            .args(["demo", "--serve", "--pace", "1s", "--admin-addr", &admin])
            .env("NO_COLOR", "1")
            .stdout(demo_out.try_clone().unwrap())
            .stderr(demo_out)
            .spawn()
            .expect("start the demo"),
    );
    let demo_log = dir.path().join("demo.out");
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while !std::fs::read_to_string(&demo_log)
        .unwrap_or_default()
        .contains("serving until Ctrl-C")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not finish: {}",
            std::fs::read_to_string(&demo_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Scrapes after the demo's last change, and a rule evaluation.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let up = query(&prom, "up{job=\"artgc\"}").await;
    assert_eq!(up[0]["value"][1], "1", "artgc scraped: {up}");

    // /metrics as served passes a strict OpenMetrics parser and promtool's lint; the same
    // pipeline refuses a badly named metric, so a pass means something.
    let (status, exposition) = common::http_get(&format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200);
    let (ok, said) = lint(&exposition);
    assert!(ok, "lint: {said}\n{exposition}");
    let (ok, said) = lint(
        "# TYPE artgc_wait_milliseconds gauge\n# HELP artgc_wait_milliseconds x\nartgc_wait_milliseconds 1\n# EOF\n",
    );
    assert!(!ok && said.contains("milliseconds"), "{said}");

    // Every dashboard query evaluates; the core panels have data.
    let mut empty = Vec::new();
    for (title, expr) in dashboard_queries("argo-demo") {
        let result = query(&prom, &expr).await;
        let numbers: Vec<f64> = result
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
            .collect();
        if numbers.is_empty() {
            empty.push(title.clone());
        }
        let core = [
            "Bytes reclaimed",
            "Objects deleted",
            "Artifacts deleted",
            "GC latency",
            "$namespace",
        ];
        if core.iter().any(|c| title.starts_with(c)) {
            assert!(
                !numbers.is_empty() && numbers.iter().all(|n| n.is_finite()),
                "{title}: {expr} returned {result}"
            );
        }
    }
    // Prometheus' total is what artgc served.
    let served: f64 = exposition
        .lines()
        .filter(|l| l.starts_with("artgc_reclaimed_bytes_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    let total = query(
        &prom,
        "sum(artgc_reclaimed_bytes_total{namespace=~\"argo-demo\"})",
    )
    .await;
    assert!(served > 0.0);
    assert_eq!(total[0]["value"][1], served.to_string(), "{total}");
    // Quiet panels (no failures, no waiting finalizer in the demo) are the expected ones.
    for title in &empty {
        assert!(
            [
                "Artifacts failed",
                "Failures by",
                "Reconcile errors",
                "Workflows waiting",
                "Oldest finalizer",
                "Finalizers released",
            ]
            .iter()
            .any(|q| title.starts_with(q)),
            "{title} has no data"
        );
    }

    // Prometheus loaded every alert and evaluates it without error; none fires on a healthy
    // demo.
    let rules = get_json(&prom, "/api/v1/rules", &[]).await;
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), alert_names().len(), "{rules}");
    for r in &loaded {
        assert_eq!(r["health"], "ok", "{r}");
    }
    let alerts = get_json(&prom, "/api/v1/alerts", &[]).await;
    assert_eq!(alerts["data"]["alerts"], serde_json::json!([]), "{alerts}");
}
