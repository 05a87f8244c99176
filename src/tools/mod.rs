//! The subcommands besides `serve`: [`query`] (`dotgate query`, a
//! pipelining DoT client), [`check`] (`dotgate check`, a probe of a DoT
//! server), [`validate`] (`dotgate serve --check-config`) and [`manual`]
//! (`dotgate completions`, `dotgate manpage`). Built on
//! [`crate::proto`], [`crate::tls`] and [`crate::config`], never on
//! [`crate::server`].

pub mod check;
pub mod manual;
pub mod query;
pub mod validate;
