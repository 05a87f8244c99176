//! The results of `dotgate check`: one line per check, a summary per client,
//! as text or as one JSON object.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    /// Works, but some clients or some conditions suffer.
    Warn,
    /// Breaks the clients the check names.
    Fail,
    /// Not run: `--quick`, out of time, or an earlier step failed.
    Skip,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// A set of the clients of the client matrix: the ones a check matters to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clients(u8);

impl Clients {
    pub const NONE: Clients = Clients(0);
    pub const ANDROID_STRICT: Clients = Clients(1);
    pub const ANDROID_OPPORTUNISTIC: Clients = Clients(2);
    pub const STUBBY: Clients = Clients(4);
    pub const RESOLVED: Clients = Clients(8);
    pub const ALL: Clients = Clients(15);
    /// The DoH clients (browsers, Windows 11, iOS and macOS): a DoH report
    /// has only this one, since all of them verify the certificate and
    /// RFC 8484 §4.1 has every server take both GET and POST.
    pub const DOH: Clients = Clients(16);
    /// The clients that verify the certificate: Android strict, stubby (with
    /// an authentication name), systemd-resolved with DNSOverTLS=yes.
    pub const VERIFYING: Clients = Clients(1 | 4 | 8);

    pub const fn or(self, other: Clients) -> Clients {
        Clients(self.0 | other.0)
    }

    pub fn contains(self, other: Clients) -> bool {
        self.0 & other.0 == other.0
    }

    /// The clients, each with its JSON id and its label.
    pub const EACH: [(Clients, &'static str, &'static str); 4] = [
        (
            Clients::ANDROID_STRICT,
            "android-strict",
            "Android strict mode",
        ),
        (
            Clients::ANDROID_OPPORTUNISTIC,
            "android-opportunistic",
            "Android opportunistic mode",
        ),
        (Clients::STUBBY, "stubby", "stubby"),
        (Clients::RESOLVED, "systemd-resolved", "systemd-resolved"),
    ];

    /// The clients of a DoH report, as [`Clients::EACH`] for DoT.
    pub const EACH_DOH: [(Clients, &'static str, &'static str); 1] = [(
        Clients::DOH,
        "doh",
        "DoH clients (browsers, Windows 11, iOS and macOS)",
    )];

    fn ids(self) -> Vec<&'static str> {
        Clients::EACH
            .iter()
            .chain(Clients::EACH_DOH.iter())
            .filter(|(c, _, _)| self.contains(*c))
            .map(|(_, id, _)| *id)
            .collect()
    }
}

/// One check's outcome: one line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub id: &'static str,
    pub status: Status,
    pub reason: String,
    /// What to do about a WARN or FAIL.
    pub fix: Option<String>,
    /// The clients a FAIL breaks (a WARN concerns).
    pub clients: Clients,
}

impl Check {
    pub fn pass(id: &'static str, clients: Clients, reason: impl Into<String>) -> Check {
        Check::new(id, Status::Pass, clients, reason.into(), None)
    }

    pub fn warn(
        id: &'static str,
        clients: Clients,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(id, Status::Warn, clients, reason.into(), Some(fix.into()))
    }

    pub fn fail(
        id: &'static str,
        clients: Clients,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(id, Status::Fail, clients, reason.into(), Some(fix.into()))
    }

    fn new(
        id: &'static str,
        status: Status,
        clients: Clients,
        reason: String,
        fix: Option<String>,
    ) -> Check {
        Check {
            id,
            status,
            reason,
            fix,
            clients,
        }
    }

    pub fn skip(id: &'static str, clients: Clients, reason: impl Into<String>) -> Check {
        Check::new(id, Status::Skip, clients, reason.into(), None)
    }
}

/// The order of the report's lines, whatever order the checks ran in.
pub const ORDER: &[&str] = &[
    "resolve",
    "reachable",
    "plaintext",
    "tls",
    "tls1.2",
    "tls1.3",
    "chain",
    "intermediates",
    "expiry",
    "name",
    "eku",
    "key",
    "signature",
    "no-sni",
    "no-alpn",
    "resumption",
    "android-probe",
    "android-strict",
    "pipelining",
    "idle",
    "keepalive",
    "padding",
];

/// The order of a DoH report's lines (`dotgate check https://...`).
pub const DOH_ORDER: &[&str] = &[
    "resolve",
    "reachable",
    "tls",
    "alpn",
    "chain",
    "intermediates",
    "expiry",
    "name",
    "eku",
    "key",
    "signature",
    "post",
    "get",
    "id",
    "cache-control",
    "bad-request",
];

/// The certificate checks that explain a failed chain verification.
pub const CHAIN_CAUSES: &[&str] = &["intermediates", "expiry", "name", "eku", "key", "signature"];

/// What was checked.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls_name: String,
    /// The address the checks ran against, once known.
    pub address: Option<std::net::SocketAddr>,
    pub quick: bool,
    /// The path of a DoH server (`https://HOST:PORT/PATH`); `None` for DoT.
    pub doh_path: Option<String>,
}

impl Target {
    /// The lines of this target's report, in order.
    pub fn order(&self) -> &'static [&'static str] {
        match self.doh_path {
            Some(_) => DOH_ORDER,
            None => ORDER,
        }
    }

    /// The clients its summaries are about.
    fn clients(&self) -> &'static [(Clients, &'static str, &'static str)] {
        match self.doh_path {
            Some(_) => &Clients::EACH_DOH,
            None => &Clients::EACH,
        }
    }

    /// `HOST:PORT`, or the URL of a DoH server.
    fn server(&self) -> String {
        match &self.doh_path {
            Some(path) => crate::tools::doh::DohUrl {
                host: self.host.clone(),
                port: self.port,
                path: path.clone(),
            }
            .to_string(),
            None => format!("{}:{}", self.host, self.port),
        }
    }
}

/// How one client would fare.
#[derive(Debug, Clone)]
pub struct Summary {
    pub client: &'static str,
    pub label: &'static str,
    /// The first FAIL among the checks that matter to this client.
    pub first_fail: Option<Check>,
    /// The WARNs that concern it.
    pub warnings: Vec<&'static str>,
}

impl Summary {
    pub fn works(&self) -> bool {
        self.first_fail.is_none()
    }

    /// "Android strict mode: should work", or the FAIL that breaks it.
    pub fn line(&self) -> String {
        match &self.first_fail {
            Some(check) => format!("{}: fails: {}: {}", self.label, check.id, check.reason),
            None if self.warnings.is_empty() => format!("{}: should work", self.label),
            None => format!(
                "{}: should work (see WARN: {})",
                self.label,
                self.warnings.join(", ")
            ),
        }
    }
}

/// The whole report.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: Target,
    pub checks: Vec<Check>,
    pub elapsed: Duration,
}

impl Report {
    /// Puts the checks in report order.
    pub fn new(target: Target, mut checks: Vec<Check>, elapsed: Duration) -> Report {
        let order = target.order();
        let position = |id: &str| order.iter().position(|o| *o == id).unwrap_or(order.len());
        checks.sort_by_key(|c| position(c.id));
        Report {
            target,
            checks,
            elapsed,
        }
    }

    /// True when nothing FAILed: the exit status is 0.
    pub fn ok(&self) -> bool {
        !self.checks.iter().any(|c| c.status == Status::Fail)
    }

    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    pub fn summaries(&self) -> Vec<Summary> {
        self.target
            .clients()
            .iter()
            .map(|(client, id, label)| {
                let concerns = |c: &&Check| c.clients.contains(*client);
                let fails: Vec<&Check> = self
                    .checks
                    .iter()
                    .filter(concerns)
                    .filter(|c| c.status == Status::Fail)
                    .collect();
                // "chain" says that verification failed; a later certificate
                // check says why, which is what the operator needs.
                let first_fail = match fails.first() {
                    Some(c) if c.id == "chain" => fails
                        .iter()
                        .find(|f| CHAIN_CAUSES.contains(&f.id))
                        .or(fails.first()),
                    first => first,
                };
                Summary {
                    client: id,
                    label,
                    first_fail: first_fail.map(|c| (*c).clone()),
                    warnings: self
                        .checks
                        .iter()
                        .filter(concerns)
                        .filter(|c| c.status == Status::Warn)
                        .map(|c| c.id)
                        .collect(),
                }
            })
            .collect()
    }

    fn heading(&self) -> String {
        let t = &self.target;
        let mut s = format!("dotgate check {} (TLS name {}", t.server(), t.tls_name);
        if let Some((id, domain)) = super::client_id_of(&t.tls_name) {
            // What a server with `--client-id-domain DOMAIN` sees.
            let _ = write!(s, ", client ID {id:?} under {domain}");
        }
        if let Some(addr) = t.address {
            let _ = write!(s, ", address {addr}");
        }
        if t.quick {
            s.push_str(", --quick");
        }
        s.push(')');
        s
    }

    /// The report as text: a heading, one line per check, the summaries.
    pub fn to_text(&self) -> String {
        let mut s = self.heading();
        s.push_str("\n\n");
        let width = self.checks.iter().map(|c| c.id.len()).max().unwrap_or(0);
        for c in &self.checks {
            let _ = write!(s, "{} {:<width$}  {}", c.status.label(), c.id, c.reason);
            if let Some(fix) = &c.fix {
                let _ = write!(s, "; fix: {fix}");
            }
            s.push('\n');
        }
        s.push('\n');
        for summary in self.summaries() {
            let _ = writeln!(s, "{}", summary.line());
        }
        let _ = writeln!(
            s,
            "\n{} passed, {} warnings, {} failed, {} skipped in {:.1} s",
            self.count(Status::Pass),
            self.count(Status::Warn),
            self.count(Status::Fail),
            self.count(Status::Skip),
            self.elapsed.as_secs_f64()
        );
        s
    }

    /// The report as one JSON object (for monitoring).
    pub fn to_json(&self) -> Value {
        let t = &self.target;
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "status": c.status.label(),
                    "reason": c.reason,
                    "fix": c.fix,
                    "clients": c.clients.ids(),
                })
            })
            .collect();
        let summary: Vec<Value> = self
            .summaries()
            .iter()
            .map(|s| {
                json!({
                    "client": s.client,
                    "label": s.label,
                    "works": s.works(),
                    "first_fail": s.first_fail.as_ref().map(|c| c.id),
                    "warnings": s.warnings,
                    "text": s.line(),
                })
            })
            .collect();
        json!({
            "target": {
                "host": t.host,
                "port": t.port,
                "protocol": if t.doh_path.is_some() { "doh" } else { "dot" },
                "url": t.doh_path.is_some().then(|| t.server()),
                "tls_name": t.tls_name,
                "client_id": super::client_id_of(&t.tls_name).map(|(id, _)| id),
                "address": t.address.map(|a| a.to_string()),
                "quick": t.quick,
            },
            "ok": self.ok(),
            "counts": {
                "pass": self.count(Status::Pass),
                "warn": self.count(Status::Warn),
                "fail": self.count(Status::Fail),
                "skip": self.count(Status::Skip),
            },
            "elapsed_ms": u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX),
            "checks": checks,
            "summary": summary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(checks: Vec<Check>) -> Report {
        Report::new(
            Target {
                host: "dns.test".into(),
                port: 853,
                tls_name: "dns.test".into(),
                address: None,
                quick: true,
                doh_path: None,
            },
            checks,
            Duration::from_millis(1500),
        )
    }

    #[test]
    fn summaries_name_the_first_fail_that_matters() {
        let r = report(vec![
            Check::pass("tls", Clients::ALL, "ok"),
            Check::warn("keepalive", Clients::STUBBY, "none", "support RFC 7828"),
            Check::fail(
                "no-sni",
                Clients::ANDROID_OPPORTUNISTIC.or(Clients::RESOLVED),
                "refused",
                "x",
            ),
            Check::fail(
                "intermediates",
                Clients::VERIFYING,
                "the server does not send its intermediate certificate",
                "y",
            ),
        ]);
        assert!(!r.ok());
        let lines: Vec<String> = r.summaries().iter().map(Summary::line).collect();
        assert_eq!(
            lines[0],
            "Android strict mode: fails: intermediates: the server does not send its intermediate certificate"
        );
        assert_eq!(
            lines[1],
            "Android opportunistic mode: fails: no-sni: refused"
        );
        assert!(
            lines[2].starts_with("stubby: fails: intermediates"),
            "{}",
            lines[2]
        );
        // Report order, not insertion order: no-sni comes after intermediates.
        assert!(
            lines[3].starts_with("systemd-resolved: fails: intermediates"),
            "{}",
            lines[3]
        );

        // A failed verification is summed up by its cause, when one is known.
        let r = report(vec![
            Check::fail("chain", Clients::VERIFYING, "does not verify", "x"),
            Check::pass("intermediates", Clients::VERIFYING, "sent"),
            Check::fail("expiry", Clients::VERIFYING, "expired", "renew"),
        ]);
        assert_eq!(r.summaries()[0].first_fail.as_ref().unwrap().id, "expiry");
        let r = report(vec![Check::fail(
            "chain",
            Clients::VERIFYING,
            "untrusted root",
            "x",
        )]);
        assert_eq!(r.summaries()[0].first_fail.as_ref().unwrap().id, "chain");
    }

    #[test]
    fn all_pass_should_work_and_warnings_are_named() {
        let r = report(vec![
            Check::pass("tls", Clients::ALL, "ok"),
            Check::warn("keepalive", Clients::STUBBY, "none", "support RFC 7828"),
            Check::skip("idle", Clients::ALL, "--quick"),
        ]);
        assert!(r.ok());
        let lines: Vec<String> = r.summaries().iter().map(Summary::line).collect();
        assert_eq!(lines[0], "Android strict mode: should work");
        assert_eq!(lines[2], "stubby: should work (see WARN: keepalive)");
        let text = r.to_text();
        assert!(
            text.contains("WARN keepalive  none; fix: support RFC 7828"),
            "{text}"
        );
        assert!(text.contains("SKIP idle       --quick\n"), "{text}");
    }

    #[test]
    fn json_carries_everything_and_escapes() {
        let r = report(vec![Check::fail(
            "tls",
            Clients::ALL,
            "a \"quoted\" reason\nwith a newline",
            "fix \\ it",
        )]);
        let v = r.to_json();
        let text = v.to_string();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["ok"], false);
        assert_eq!(
            back["checks"][0]["reason"],
            "a \"quoted\" reason\nwith a newline"
        );
        assert_eq!(back["checks"][0]["fix"], "fix \\ it");
        assert_eq!(back["checks"][0]["clients"].as_array().unwrap().len(), 4);
        assert_eq!(back["summary"][0]["works"], false);
        assert_eq!(back["summary"][0]["first_fail"], "tls");
        assert_eq!(back["counts"]["fail"], 1);
        assert_eq!(back["target"]["port"], 853);
    }
}
