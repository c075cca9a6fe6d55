//! The SRE's side of `/metrics`: the alert rules and scrape config pass
//! promtool, the alerts and the dashboard name only what the node exports,
//! every alert has a runbook, and every dashboard and alert query runs on a
//! real Prometheus scraping a real node.

use super::*;

#[test]
fn alert_rules_and_scrape_config_pass_promtool() {
    let Some(promtool) = promtool() else { return };
    let root = env!("CARGO_MANIFEST_DIR");
    for args in [
        &["check", "config", "deploy/prometheus/scrape.yml"][..],
        &["check", "rules", "deploy/prometheus/alerts.yml"][..],
        &["test", "rules", "deploy/prometheus/alerts_test.yml"][..],
    ] {
        let out = Command::new(promtool)
            .args(args)
            .current_dir(root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The alert rules and the dashboard name only metrics and label values the
/// node exports: a rename cannot silently blind them.
#[test]
fn alerts_and_dashboard_use_only_exported_names() {
    let (text, _) = busy_node_metrics().remove(0);
    let mut exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    // A histogram by its own name too (its series add _bucket, _sum, _count).
    exported.extend(
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram")),
    );
    // The `reason` values each metric exports (every one is resolved at
    // start, so a busy node shows them all, at 0 or more).
    let mut reasons: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, labels)) = line.split_once('{') else {
            continue;
        };
        if let Some(value) = labels
            .split_once("reason=\"")
            .and_then(|(_, v)| v.split_once('"'))
            .map(|(v, _)| v)
        {
            reasons.entry(name).or_default().insert(value);
        }
    }
    // The drop reasons are the core's closed set, and table_full is no
    // longer one of them: a full table refuses, it does not drop.
    assert_eq!(
        reasons.get(metrics::DROPPED),
        Some(
            &sky_node::shard::DropReason::ALL
                .iter()
                .map(|r| r.label())
                .collect()
        )
    );
    assert_eq!(
        reasons.get(metrics::REGISTRATIONS_REFUSED),
        Some(
            &sky_node::presence::Refused::ALL
                .iter()
                .map(|r| r.label())
                .collect()
        )
    );
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "deploy/prometheus/alerts.yml",
        "grafana/dashboards/sky.json",
    ] {
        let body = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut rest = body.as_str();
        while let Some(i) = rest.find("sky_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            // Every name is a series as exported (a histogram's too: its
            // _bucket, _sum and _count).
            if name.len() > 4 && !name.ends_with('_') {
                assert!(
                    exported.contains(name.as_str()),
                    "{file} uses {name}, not exported"
                );
            }
        }
        let parts: Vec<&str> = body.split("reason").collect();
        for (i, part) in parts.iter().enumerate().skip(1) {
            // The metric a `reason` matcher filters: the last name before it.
            let before = parts[..i].concat();
            let metric: String = before
                .rfind("sky_")
                .map(|j| {
                    before[j..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect()
                })
                .unwrap_or_default();
            let Some(values) = part
                .strip_prefix("=~\\\"")
                .or_else(|| part.strip_prefix("=~\""))
                .or_else(|| part.strip_prefix("=\\\""))
                .or_else(|| part.strip_prefix("=\""))
            else {
                continue;
            };
            let values = values.split(['"', '\\']).next().unwrap();
            for v in values.split('|') {
                assert!(
                    reasons.get(metric.as_str()).is_some_and(|r| r.contains(v)),
                    "{file} uses reason {v} on {metric}, which exports {:?}",
                    reasons.get(metric.as_str())
                );
            }
        }
    }
}

/// Every query of the dashboard filters on the `job` variable (and so
/// serves several skies scraped as several jobs).
#[test]
fn every_dashboard_query_filters_on_job() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/grafana/dashboards/sky.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"job"), "{variables:?}");
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() > 30);
    for expr in &exprs {
        for selector in selectors(expr) {
            assert!(
                selector.contains("job=~\"$job\""),
                "`{selector}` in `{expr}` does not filter on $job"
            );
        }
    }
}

/// Every metric selector in a PromQL expression: a name and its braces.
fn selectors(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find(|c: char| c.is_ascii_alphabetic()) {
        rest = &rest[i..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[name.len()..];
        let metric = name.starts_with("sky_") || name.starts_with("process_") || name == "up";
        if !metric {
            continue;
        }
        let braces = rest
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
            .map(|(inside, _)| inside);
        out.push(format!("{name}{{{}}}", braces.unwrap_or("")));
    }
    out
}

fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// The expressions of alerts.yml (one line, or a folded block).
fn alert_exprs(rules: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            alert = name.to_string();
        }
        let Some(expr) = line.trim().strip_prefix("expr: ") else {
            continue;
        };
        if expr != ">-" {
            out.push((alert.clone(), expr.to_string()));
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = Vec::new();
        while let Some(next) = lines.next_if(|l| l.len() - l.trim_start().len() > indent) {
            block.push(next.trim());
        }
        out.push((alert.clone(), block.join(" ")));
    }
    out
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every alert names a runbook, and the runbook is a section of
/// deploy/README.md.
#[test]
fn every_alert_has_a_runbook_section() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/deploy/README.md")).unwrap();
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect();
    let blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert!(blocks.len() >= 13, "{} alerts", blocks.len());
    for block in blocks {
        let name = block.lines().next().unwrap().trim();
        let url = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .unwrap_or_else(|| panic!("{name} has no runbook_url"))
            .trim_matches('"');
        let section = url
            .strip_prefix("deploy/README.md#")
            .unwrap_or_else(|| panic!("{name}: {url} is not a section of deploy/README.md"));
        assert_eq!(section, name.to_lowercase(), "{name}: {url}");
        assert!(
            anchors.contains(section),
            "deploy/README.md has no #{section}"
        );
    }
}

/// A Prometheus server of our own, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Scrapes `target` every second, as job `sky`.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("sky-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: sky\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port, told to Prometheus (which cannot say which it took).
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, addr, dir }
    }

    /// `/api/v1/query`: the result vector, or the error Prometheus gave.
    fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let mut s = TcpStream::connect(self.addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: localhost\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("{e}: {text}"))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

fn prometheus_binary() -> bool {
    let found = Command::new("prometheus").arg("--version").output().is_ok();
    match (found, std::env::var_os("CI").is_some()) {
        (true, _) => true,
        (false, true) => {
            panic!("prometheus missing in CI: .ci/test installs it (apt package prometheus)")
        }
        (false, false) => {
            eprintln!(
                "WARNING: prometheus not found; run .ci/test (installs it) to check the dashboard's queries"
            );
            false
        }
    }
}

/// Every panel query of the dashboard returns data from a real Prometheus
/// scraping a real, busy node, with the dashboard's variables as Grafana
/// fills them; every alert expression evaluates without error.
#[test]
fn dashboard_and_alert_queries_run_on_a_live_prometheus() {
    if !prometheus_binary() {
        return;
    }
    let node = start(engines()[0]);
    let sky = node.local_addr();
    let prometheus = Prometheus::start(node.metrics_addr().unwrap());
    let mut alice = Client::new(sky, QUIET * 4).unwrap();
    let reg = alice.register(&secret(0x3c), true).unwrap();
    // Traffic while Prometheus takes its first scrapes, until it has a few
    // (rates need two samples).
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        alice.lookup(reg.address, VirtualAddr([2; 16])).unwrap();
        alice.ping().unwrap();
        let scrapes = prometheus
            .query("count_over_time(up{job=\"sky\"}[1m]) and up{job=\"sky\"} == 1")
            .ok()
            .and_then(|r| r.first().cloned())
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok());
        if scrapes.is_some_and(|n| n >= 4.0) {
            break;
        }
        assert!(Instant::now() < end, "prometheus never scraped the node");
        std::thread::sleep(Duration::from_millis(250));
    }

    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/grafana/dashboards/sky.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let grafana = |expr: &str| {
        expr.replace("$job", "sky")
            .replace("$instance", ".*")
            .replace("$__rate_interval", "10s")
            .replace("$__range", "1m")
    };
    let mut empty = Vec::new();
    for expr in dashboard_exprs(&dashboard) {
        match prometheus.query(&grafana(&expr)) {
            Ok(result) if result.is_empty() => empty.push(expr),
            Ok(_) => {}
            Err(e) => panic!("`{expr}` fails: {e}"),
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
    for variable in ["sky_build_info", "sky_build_info{job=~\"sky\"}"] {
        assert!(
            !prometheus.query(variable).unwrap().is_empty(),
            "{variable}"
        );
    }
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let alerts = alert_exprs(&rules);
    assert!(alerts.len() >= 13, "{alerts:?}");
    for (alert, expr) in alerts {
        if let Err(e) = prometheus.query(&expr) {
            panic!("{alert}: `{expr}` fails: {e}");
        }
    }
    drop(prometheus);
    node.shutdown().unwrap();
}
