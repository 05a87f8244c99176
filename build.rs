//! Build script: records the git commit the binary is built from, for
//! `dotgate --version` (a bug report then names the exact source).
//!
//! `DOTGATE_GIT_COMMIT` in the environment wins (a build from a tarball or a
//! container context without `.git` can still be told its commit);
//! otherwise `git rev-parse` is asked; with neither, the commit is
//! "unknown" and the build goes on: a missing git is no reason to fail.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DOTGATE_GIT_COMMIT");
    let commit = std::env::var("DOTGATE_GIT_COMMIT")
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .or_else(|| {
            watch_git_head();
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=DOTGATE_GIT_COMMIT={commit}");
}

/// One line of git's output, or None when git is missing or fails (no
/// repository, a container build context without `.git`).
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!line.is_empty()).then_some(line)
}

/// Re-runs this script when HEAD moves (a commit, a checkout), and only
/// then: HEAD itself, the branch it names, and packed refs. Paths come from
/// git, so a worktree (whose `.git` is a file) works too.
fn watch_git_head() {
    let mut paths = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        paths.push(branch);
    }
    for path in paths {
        if let Some(file) = git(&["rev-parse", "--git-path", &path]) {
            let file = PathBuf::from(file);
            if file.exists() {
                println!("cargo:rerun-if-changed={}", file.display());
            }
        }
    }
}
