//! The subcommands besides `serve`: [`query`] (`dotgate query`, a
//! pipelining DoT client), [`check`] (`dotgate check`, a probe of a DoT
//! server) and [`validate`] (`dotgate serve --check-config`). Built on
//! [`crate::proto`], [`crate::tls`] and [`crate::config`], never on
//! [`crate::server`].

pub mod check;
pub mod query;
pub mod validate;
