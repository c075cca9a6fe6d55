//! deploy/ as an operator uses it, checked with the operators' own tools:
//! the systemd unit under `systemd-analyze`, the cloud-init user data under
//! `cloud-init devel render` and `cloud-init schema`, the Terraform module
//! under `terraform fmt` / `validate` / `apply` (of its provider-free part).
//! The container image is `container.rs`.
//!
//! Each test names the programs it needs; `.ci/test` installs them (Debian
//! packages `systemd`, `cloud-init`; Terraform is not a Debian package and
//! must be on the machine). Without one a test says so loudly and skips;
//! in CI (`CI` set) it fails instead.
//!
//! What is not checked here, and why: nothing boots an instance (no cloud
//! from this machine), so the user data's `runcmd` and `install-sky` never
//! run; `terraform plan` needs AWS credentials and the network; and the
//! AWS resources are validated (`terraform validate`) only where the AWS
//! provider can be installed offline, from a filesystem mirror named by
//! `SKY_TF_PLUGIN_DIR` (its layout: `registry.terraform.io/hashicorp/aws/
//! VERSION/linux_amd64/`). That one check skips loudly without the
//! mirror even in CI, because no registry this project reaches serves it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::cli::SKY;
use crate::common::{Scratch, can_run};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `cmd`, panics with its output unless it succeeds.
fn ok(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn deploy(file: &str) -> PathBuf {
    Path::new(ROOT).join("deploy").join(file)
}

// --- systemd -------------------------------------------------------------

/// The unit stays hardened (an exposure of at most 2.0 of 10), parses
/// without a warning, keeps the syscalls the node needs, and is a
/// notify service with a watchdog that does not restart on a bad config.
#[test]
fn the_unit_scores_at_most_2_0_and_keeps_io_uring_and_pinning() {
    if !can_run("the systemd unit check", false, &["systemd-analyze"]) {
        return;
    }
    let unit = deploy("sky.service");
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = text(&o);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for sky.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{report}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{report}");

    // Every directive known to this systemd: verify a copy whose ExecStart
    // exists (verify insists on it).
    let dir = Scratch::new("unit");
    let copy = dir.0.join("sky.service");
    let body = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(&copy, body.replace("/usr/local/bin/sky", SKY)).unwrap();
    let o = ok(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let said = format!("{}{}", text(&o), String::from_utf8_lossy(&o.stderr));
    assert!(said.trim().is_empty(), "systemd-analyze verify:\n{said}");

    // systemd merges SystemCallFilter= lines in order: an allow-list line
    // after the last deny line keeps what it names, whatever the groups.
    let filters: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .collect();
    let last = filters.last().expect("a SystemCallFilter=");
    assert!(filters[0].starts_with('@'), "an allow-list: {filters:?}");
    assert!(!last.starts_with('~'), "{filters:?}");
    for call in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "sched_setaffinity",
    ] {
        assert!(last.split_whitespace().any(|c| c == call), "{call}: {last}");
    }
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "RestartPreventExitStatus=2",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} missing");
    }
    assert!(body.lines().any(|l| l.starts_with("WatchdogSec=")));
}

// --- cloud-init ----------------------------------------------------------

/// EC2-style instance data, with or without a public IPv4.
fn instance_data(dir: &Path, public_ipv4: Option<&str>) -> PathBuf {
    let meta = match public_ipv4 {
        Some(ip) => format!(r#"{{"local-ipv4": "10.0.0.5", "public-ipv4": "{ip}"}}"#),
        None => r#"{"local-ipv4": "10.0.0.5"}"#.to_string(),
    };
    let path = dir.join(format!("instance-data-{}.json", public_ipv4.is_some()));
    std::fs::write(
        &path,
        format!(r#"{{"ds": {{"meta_data": {meta}}}, "v1": {{"cloud_name": "aws"}}}}"#),
    )
    .unwrap();
    path
}

/// Renders the Jinja user data `template` against `data` as cloud-init
/// would on the instance, checks the result against cloud-init's schema,
/// and returns the files it writes (path, content).
fn render(dir: &Path, template: &Path, data: &Path) -> Vec<(String, String)> {
    let o = ok(Command::new("cloud-init")
        .args(["devel", "render"])
        .arg(template)
        .arg("--instance-data")
        .arg(data));
    let rendered = text(&o);
    assert!(rendered.starts_with("#cloud-config\n"), "{rendered}");
    assert!(
        !rendered.contains("CI_MISSING_JINJA_VAR"),
        "undefined variables:\n{rendered}"
    );
    let out = dir.join("rendered.yaml");
    std::fs::write(&out, &rendered).unwrap();
    let o = ok(Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&out));
    assert!(text(&o).contains("Valid cloud-config"), "{}", text(&o));
    write_files(&rendered)
}

/// The `write_files` of a rendered cloud-config: the block scalars under
/// `content: |`, de-indented. (A YAML parser would be a dependency for one
/// test; cloud-init's schema check above already parsed the file.)
fn write_files(yaml: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut lines = yaml.lines().peekable();
    let mut path = None;
    while let Some(line) = lines.next() {
        if let Some(p) = line.trim_start().strip_prefix("- path: ") {
            path = Some(p.to_string());
        } else if line.trim_start().starts_with("content: |") {
            let mut content = String::new();
            while let Some(l) = lines.peek() {
                if l.is_empty() {
                    content.push('\n');
                } else if let Some(l) = l.strip_prefix("      ") {
                    content.push_str(l);
                    content.push('\n');
                } else {
                    break;
                }
                lines.next();
            }
            // A block scalar keeps one final newline, not the blank lines
            // that separate it from the next entry.
            let content = format!("{}\n", content.trim_end_matches('\n'));
            files.push((path.take().expect("a path before content"), content));
        }
    }
    files
}

fn file<'a>(files: &'a [(String, String)], path: &str) -> &'a str {
    files
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, c)| c.as_str())
        .unwrap_or_else(|| panic!("{path} not written"))
}

/// `sky node --check-config` on a rendered sky.toml (its `advertise`
/// included).
fn check_config(dir: &Path, toml: &str) {
    let path = dir.join("sky.toml");
    std::fs::write(&path, toml).unwrap();
    ok(Command::new(SKY)
        .args(["node", "--check-config"])
        .arg(&path));
}

/// The user data renders to valid cloud-config with and without a public
/// IPv4 in the instance data, advertises that address or marks the
/// fallback, and carries deploy/'s unit and sysctl file verbatim.
#[test]
fn cloud_init_user_data_renders_valid_and_advertises_the_public_ipv4() {
    if !can_run("the cloud-init check", false, &["cloud-init"]) {
        return;
    }
    let dir = Scratch::new("cloud-init");
    let template = deploy("cloud-init.yaml");

    let files = render(
        &dir.0,
        &template,
        &instance_data(&dir.0, Some("203.0.113.7")),
    );
    let toml = file(&files, "/etc/sky/sky.toml");
    assert!(
        toml.lines()
            .any(|l| l == r#"advertise = "203.0.113.7:7700""#),
        "{toml}"
    );
    assert!(toml.lines().any(|l| l == r#"listen = "0.0.0.0:7700""#));
    assert!(toml.lines().any(|l| l == r#"metrics = "127.0.0.1:9770""#));
    check_config(&dir.0, toml);
    for (path, source) in [
        ("/etc/systemd/system/sky.service", "sky.service"),
        ("/etc/sysctl.d/60-sky.conf", "sysctl.d/60-sky.conf"),
    ] {
        assert_eq!(
            file(&files, path),
            std::fs::read_to_string(deploy(source)).unwrap(),
            "{path} in deploy/cloud-init.yaml is not deploy/{source}: copy it over"
        );
    }
    assert!(file(&files, "/usr/local/lib/sky/install-sky").starts_with("#!/bin/sh\n"));

    // No public IPv4: the placeholder install-sky replaces with the
    // default route's address at boot.
    let files = render(&dir.0, &template, &instance_data(&dir.0, None));
    let toml = file(&files, "/etc/sky/sky.toml");
    assert!(
        toml.lines()
            .any(|l| l == r#"advertise = "@DEFAULT_ROUTE_IPV4@:7700""#),
        "{toml}"
    );
}

// --- Terraform -----------------------------------------------------------

/// deploy/terraform and deploy/cloud-init.yaml copied into `dir` (so that
/// `terraform init` writes nothing into the work tree), and a CLI
/// configuration that installs providers from `mirror` only, never from
/// the network.
fn terraform_copy(dir: &Path, mirror: Option<&Path>) -> (PathBuf, PathBuf) {
    let deploy_copy = dir.join("deploy");
    std::fs::create_dir_all(&deploy_copy).unwrap();
    ok(Command::new("cp")
        .arg("-r")
        .arg(deploy("terraform"))
        .arg(deploy("cloud-init.yaml"))
        .arg(&deploy_copy));
    let installation = match mirror {
        Some(m) => format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path = {:?}\n  }}\n}}\n",
            m.display().to_string()
        ),
        None => String::new(),
    };
    let config = dir.join("terraform.tfrc");
    std::fs::write(&config, installation).unwrap();
    (deploy_copy.join("terraform"), config)
}

fn terraform(config: &Path, dir: &Path, args: &[&str]) -> Output {
    ok(Command::new("terraform")
        .arg(format!("-chdir={}", dir.display()))
        .args(args)
        .env("TF_CLI_CONFIG_FILE", config)
        .env("TF_IN_AUTOMATION", "1")
        .env("CHECKPOINT_DISABLE", "1"))
}

/// What runs without a cloud provider: `terraform fmt -check` of the
/// module, `init` and `validate` of its provider-free part, and an `apply`
/// of that part (outputs only, local state) whose user data then renders
/// to valid cloud-config with the settings Terraform filled in.
#[test]
fn terraform_module_is_formatted_and_fills_in_the_user_data() {
    if !can_run("the Terraform check", false, &["terraform", "cloud-init"]) {
        return;
    }
    let dir = Scratch::new("terraform");
    let (module, config) = terraform_copy(&dir.0, None);
    terraform(&config, &module, &["fmt", "-check", "-recursive", "-diff"]);
    let user_data = module.join("user-data");
    terraform(&config, &user_data, &["init", "-input=false", "-no-color"]);
    terraform(&config, &user_data, &["validate", "-no-color"]);

    let root = dir.0.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("main.tf"),
        format!(
            r#"module "user_data" {{
  source        = "{}"
  template      = file("{}")
  binary_url    = "https://example.com/sky \"quoted\""
  binary_sha256 = "{}"
  advertise     = "198.51.100.4"
  seeds         = ["198.51.100.5:7701", "198.51.100.6:7701"]
  metrics       = "0.0.0.0:9770"
}}

output "user_data" {{
  value = module.user_data.user_data
}}
"#,
            user_data.display(),
            module.join("../cloud-init.yaml").display(),
            "ab".repeat(32)
        ),
    )
    .unwrap();
    terraform(&config, &root, &["init", "-input=false", "-no-color"]);
    terraform(
        &config,
        &root,
        &["apply", "-auto-approve", "-input=false", "-no-color"],
    );
    let o = terraform(&config, &root, &["output", "-raw", "user_data"]);
    let template = dir.0.join("user-data.yaml");
    std::fs::write(&template, text(&o)).unwrap();

    let files = render(
        &dir.0,
        &template,
        &instance_data(&dir.0, Some("203.0.113.7")),
    );
    let toml = file(&files, "/etc/sky/sky.toml");
    // The Elastic IP Terraform passes wins over the instance data.
    for line in [
        r#"advertise = "198.51.100.4:7700""#,
        r#"metrics = "0.0.0.0:9770""#,
        r#"seeds = ["198.51.100.5:7701", "198.51.100.6:7701"]"#,
    ] {
        assert!(toml.lines().any(|l| l == line), "{line} not in:\n{toml}");
    }
    check_config(&dir.0, toml);
    let rendered = std::fs::read_to_string(dir.0.join("rendered.yaml")).unwrap();
    assert!(
        rendered.contains(&format!(
            r#"- [/usr/local/lib/sky/install-sky, "https://example.com/sky \"quoted\"", "{}"]"#,
            "ab".repeat(32)
        )),
        "{rendered}"
    );
}

/// `terraform validate` of the whole module against the AWS provider,
/// installed from the filesystem mirror `SKY_TF_PLUGIN_DIR` names. No
/// mirror, no check: a loud skip, in CI too (see the module doc).
#[test]
fn terraform_module_validates_against_the_aws_provider() {
    if !can_run("the Terraform AWS check", false, &["terraform"]) {
        return;
    }
    let Some(mirror) = std::env::var_os("SKY_TF_PLUGIN_DIR").map(PathBuf::from) else {
        eprintln!(
            "WARNING: deploy/terraform not validated against the AWS provider: \
             set SKY_TF_PLUGIN_DIR to a filesystem mirror holding hashicorp/aws 5.x"
        );
        return;
    };
    let dir = Scratch::new("terraform-aws");
    let (module, config) = terraform_copy(&dir.0, Some(&mirror));
    terraform(
        &config,
        &module,
        &["init", "-backend=false", "-input=false", "-no-color"],
    );
    let o = terraform(&config, &module, &["validate", "-no-color"]);
    assert!(
        text(&o).contains("The configuration is valid"),
        "{}",
        text(&o)
    );
}
