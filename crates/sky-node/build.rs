//! Records the git commit the node is built from, for the `revision` label
//! of `sky_build_info`: `SKY_REVISION` from the environment when set (a
//! build from a source archive or a container context without `.git`),
//! else `git rev-parse --short=12 HEAD`, else "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SKY_REVISION");
    let revision = std::env::var("SKY_REVISION")
        .ok()
        .map(|r| sanitized(&r))
        .filter(|r| !r.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SKY_REVISION={revision}");
}

/// A label value of at most 40 characters from a small alphabet, whatever
/// the environment held.
fn sanitized(s: &str) -> String {
    s.trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(40)
        .collect()
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn git_revision() -> Option<String> {
    let revision = git(&["rev-parse", "--short=12", "HEAD"])?;
    if !revision.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    // Build again when HEAD moves: HEAD itself (a checkout), the branch it
    // names (a commit), the packed refs (a gc). Only paths that exist, or
    // cargo would rebuild every time.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = [Some("HEAD"), branch.as_deref(), Some("packed-refs")];
    for name in watched.into_iter().flatten() {
        if let Some(path) = git(&["rev-parse", "--git-path", name])
            && Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(revision)
}
