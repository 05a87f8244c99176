//! `dotgate serve --check-config`: validate everything a start would need,
//! without serving, and report every problem found rather than the first.
//!
//! Problems (exit 1): flags that do not parse into a [`Config`], a
//! certificate or key that cannot be read or do not match, a ticket key file
//! that is unusable. Warnings (exit 0): the chain checks of
//! [`crate::tls::chain`] (leaf-only, name not covered, expiry).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::cli::ServeArgs;
use crate::config::{CertSource, Config};
use crate::tls::chain;
use crate::tls::identity;

/// What the check found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Each would stop dotgate from starting.
    pub problems: Vec<String>,
    /// Worth fixing, but dotgate would start.
    pub warnings: Vec<String>,
}

/// Checks the `serve` arguments (after the config file was merged in).
pub fn check(args: &ServeArgs, resolv_conf: &Path) -> Findings {
    let mut found = Findings::default();
    let config = Config::from_args(args, resolv_conf);
    if let Err(e) = &config {
        found.problems.push(e.to_string());
    }
    // Each remaining check stands on its own, so that one run shows them all.
    for upstream in &args.upstream {
        if let Err(e) = crate::config::parse_upstream(upstream) {
            let text = e.to_string();
            if !found.problems.contains(&text) {
                found.problems.push(text);
            }
        }
    }
    if let Some(path) = &args.client_ids {
        if let Err(e) = crate::config::client_id::read_id_file(path) {
            found.problems.push(e.to_string());
        }
    }
    if let Some(path) = &args.ticket_key_file {
        if let Err(e) = crate::tls::tickets::read_secret(path) {
            found.problems.push(e.to_string());
        }
    }
    if let Ok(Some(acme)) = crate::config::acme::AcmeSettings::from_args(&args.acme) {
        found.problems.extend(crate::acme::check(&acme));
    }
    let source = match (&args.cert, &args.key, &args.self_signed) {
        (Some(cert), Some(key), _) => Some(CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None, Some(name)) => Some(CertSource::SelfSigned(name.clone())),
        _ => None,
    };
    if let Some(source) = source {
        match identity::load_identity(&source) {
            Ok(identity) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let report = chain::check_chain(
                    &identity.certified.cert,
                    identity.self_signed,
                    args.tls_name.as_deref(),
                    now,
                );
                found
                    .warnings
                    .extend(report.findings.iter().map(|f| f.to_string()));
            }
            Err(e) => found.problems.push(e.to_string()),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cli::{Cli, Command};
    use clap::Parser;

    /// A bad line in the client-ID file is a problem that names the file
    /// and the line; a good file is none.
    #[test]
    fn the_client_id_file_is_checked() {
        let dir = std::env::temp_dir().join(format!("dotgate-validate-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ids");
        let run = |text: &str| {
            std::fs::write(&file, text).unwrap();
            let argv = [
                "dotgate",
                "serve",
                "--self-signed",
                "dns.test",
                "--upstream",
                "127.0.0.1",
                "--client-id-domain",
                "dns.test",
                "--client-ids",
                file.to_str().unwrap(),
            ];
            let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
                unreachable!("a serve command line")
            };
            check(&args, Path::new("/nonexistent"))
        };
        assert!(run("alice\n# bob\n").problems.is_empty());
        let found = run("alice\nbob smith\n");
        assert_eq!(found.problems.len(), 1, "{:?}", found.problems);
        assert!(
            found.problems[0].contains("line 2") && found.problems[0].contains("ids"),
            "{:?}",
            found.problems
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
