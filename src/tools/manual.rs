//! `dotgate completions SHELL` and `dotgate manpage`: shell completion
//! scripts (clap_complete) and roff man pages (clap_mangen), generated from
//! the same clap definitions the binary parses with, so they cannot drift
//! from the flags. The packages and tarballs ship their output
//! (`packaging/build.sh` runs the freshly built binary); generating at run
//! time rather than in `build.rs` keeps the clap definitions out of the
//! build script and lets anyone regenerate them from an installed binary.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::config::cli::{Cli, Shell};

/// What can go wrong writing the completions or the pages.
#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    #[error("cannot write the man page: {0}")]
    Man(#[source] std::io::Error),
    #[error("cannot write the man pages into {dir}: {source}")]
    ManDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// The completion script for `shell`. Built in memory: clap_complete panics
/// on a failed write, and stdout may be a pipe closed early.
pub fn completions(shell: Shell) -> Vec<u8> {
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut Cli::command(), "dotgate", &mut script);
    script
}

/// Writes dotgate(1), the top-level page that lists the subcommands, to `out`.
pub fn manpage(out: &mut dyn Write) -> Result<(), ManualError> {
    man(Cli::command().disable_help_subcommand(true))
        .render(out)
        .map_err(ManualError::Man)
}

/// Writes dotgate.1 and one page per subcommand (dotgate-serve.1, ...) into
/// `dir`, which must exist.
pub fn manpages_into(dir: &Path) -> Result<(), ManualError> {
    let failed = |source| ManualError::ManDir {
        dir: dir.display().to_string(),
        source,
    };
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands() {
        man(sub.clone()).generate_to(dir).map_err(failed)?;
    }
    man(cmd).generate_to(dir).map_err(failed)?;
    Ok(())
}

/// A page with dotgate's own source and manual names in its header.
fn man(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .source(format!("dotgate {}", env!("CARGO_PKG_VERSION")))
        .manual("dotgate manual")
}
