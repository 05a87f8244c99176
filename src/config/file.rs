//! The `--config FILE` (TOML) layer of `dotgate serve`.
//!
//! Every `serve` flag has a key of the same name (`max-inflight = 64`,
//! `upstream = ["127.0.0.1:5353"]`, `proxy-protocol = true`). Precedence is
//! flag > environment > file > default: a key from the file is applied only
//! to flags that neither the command line nor a `DOTGATE_*` variable set.
//!
//! The file is merged by turning its keys into extra command-line arguments
//! and parsing again, so every value goes through the same clap parsers and
//! checks as a flag does, and a flag added to `cli.rs` is a valid key
//! without any change here.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// Keys that make no sense inside the file itself.
const NOT_IN_FILE: &[&str] = &["config", "check-config", "help"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config file {path}: unknown key {key:?} (keys are the flag names of `dotgate serve`, e.g. max-inflight)")]
    UnknownKey { path: String, key: String },
    #[error("config file {path}: key {key:?} {problem}")]
    BadValue {
        path: String,
        key: String,
        problem: &'static str,
    },
}

/// Reads `path` and returns the extra arguments its keys stand for, leaving
/// out every flag that `matches` (the `serve` arguments parsed without the
/// file) already got from the command line or the environment.
pub fn file_args(
    path: &Path,
    serve: &Command,
    matches: &ArgMatches,
) -> Result<Vec<OsString>, ConfigFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: shown.clone(),
        source,
    })?;
    args_from_toml(&text, &shown, serve, |id| {
        matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    })
}

/// The pure part of [`file_args`]: `already_set(id)` tells whether the flag
/// with that clap id was set by a flag or a variable.
pub fn args_from_toml(
    text: &str,
    path: &str,
    serve: &Command,
    already_set: impl Fn(&str) -> bool,
) -> Result<Vec<OsString>, ConfigFileError> {
    let table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigFileError::Syntax {
                path: path.to_string(),
                message: e.message().to_string(),
            })?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let bad = |problem| ConfigFileError::BadValue {
            path: path.to_string(),
            key: key.clone(),
            problem,
        };
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .filter(|_| !NOT_IN_FILE.contains(&key.as_str()))
            .ok_or_else(|| ConfigFileError::UnknownKey {
                path: path.to_string(),
                key: key.clone(),
            })?;
        if already_set(arg.get_id().as_str()) {
            continue;
        }
        let flag = OsString::from(format!("--{key}"));
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value {
                toml::Value::Boolean(true) => out.push(flag),
                toml::Value::Boolean(false) => {}
                _ => return Err(bad("must be true or false")),
            }
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => {
                if !matches!(arg.get_action(), ArgAction::Append) {
                    return Err(bad("takes one value, not a list"));
                }
                items.iter().map(scalar).collect::<Option<Vec<_>>>()
            }
            other => scalar(other).map(|v| vec![v]),
        }
        .ok_or_else(|| {
            bad("must be a string, a number, or (for repeatable flags) a list of them")
        })?;
        for v in values {
            // `--key=value` keeps a value that starts with '-' a value.
            out.push(OsString::from(format!("--{key}={v}")));
        }
    }
    Ok(out)
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cli::Cli;
    use clap::CommandFactory;

    fn serve_command() -> Command {
        Cli::command()
            .find_subcommand("serve")
            .cloned()
            .expect("serve subcommand")
    }

    fn args(text: &str, set: &[&str]) -> Result<Vec<String>, ConfigFileError> {
        let serve = serve_command();
        args_from_toml(text, "test.toml", &serve, |id| set.contains(&id))
            .map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn every_kind_of_value_becomes_flags() {
        let mut got = args(
            "listen = [\"127.0.0.1:853\", \"[::1]:853\"]\nmax-inflight = 64\nidle-timeout = \"45s\"\nself-signed = \"dns.test\"\n",
            &[],
        )
        .unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                "--idle-timeout=45s",
                "--listen=127.0.0.1:853",
                "--listen=[::1]:853",
                "--max-inflight=64",
                "--self-signed=dns.test",
            ]
        );
    }

    #[test]
    fn flags_and_environment_win_over_the_file() {
        let got = args(
            "max-inflight = 64\nidle-timeout = \"45s\"\n",
            &["max_inflight"],
        )
        .unwrap();
        assert_eq!(got, vec!["--idle-timeout=45s"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = args("max-inflight = 1\nmax_inflihgt = 2\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"max_inflihgt\"") && e.contains("test.toml"),
            "{e}"
        );
        let e = args("config = \"other.toml\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key \"config\""), "{e}");
    }

    #[test]
    fn wrong_shapes_are_explained() {
        let e = args("max-inflight = [1, 2]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max-inflight") && e.contains("one value"), "{e}");
        let e = args("idle-timeout = 1.5\n", &[]).unwrap_err().to_string();
        assert!(e.contains("idle-timeout"), "{e}");
        let e = args("listen = \n", &[]).unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
    }
}
