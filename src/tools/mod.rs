//! The subcommands besides `serve`: [`query`] (`dotgate query`, a
//! pipelining DoT client that also speaks DoH), [`check`] (`dotgate check`,
//! a probe of a DoT or DoH server), [`validate`] (`dotgate serve
//! --check-config`) and [`manual`] (`dotgate completions`, `dotgate
//! manpage`); [`doh`] is the HTTPS client `query` and `check` use for
//! `https://` servers. Built on [`crate::proto`], [`crate::tls`] and
//! [`crate::config`], never on [`crate::server`].

pub mod check;
pub mod doh;
pub mod manual;
pub mod query;
pub mod validate;
