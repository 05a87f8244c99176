//! `dotgate check HOST[:PORT]`: connects to any DoT server the way the real
//! clients (Android strict and opportunistic, stubby, systemd-resolved) do
//! and says, one line per check,
//! whether it will work for them and why not: name and port, TLS 1.2 and 1.3,
//! the certificate chain as Android strict mode verifies it, SNI and ALPN,
//! resumption, plaintext refusal, Android's validation probe, pipelining, the
//! idle timeout, keepalive and padding. Then one summary line per client.
//!
//! * [`probes`] makes the connections and exchanges, each step bounded by a
//!   timeout and by the overall [`probes::Budget`];
//! * [`cert`] judges the chain the server sent (verified offline with
//!   webpki, exactly as rustls would, fetching nothing);
//! * [`report`] holds the results and prints them as text or JSON.
//!
//! Connections are made with a verifier that accepts any certificate, so
//! that a bad certificate is reported and every other check still runs; the
//! chain is then verified separately against the real trust store.
//!
//! Over 700 lines: one function per check of `dotgate check`, in report
//! order; splitting them by theme (TLS, DNS, EDNS) is left for a later phase.

pub mod cert;
pub mod doh;
pub mod probes;
pub mod report;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, HandshakeKind, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::time::Instant;

use crate::tools::doh::{DohError, DohUrl};
use crate::tools::query::{self, ClientError, DialError, ServerSpec, Trust};
use probes::{Budget, Conn, ConnectError, Plaintext, Recv};
pub use report::{Check, Clients, Report, Status, Target};

/// The whole command ends within about this long...
pub const FULL_BUDGET: Duration = Duration::from_secs(38);
/// ...or this long with `--quick`.
pub const QUICK_BUDGET: Duration = Duration::from_secs(14);
/// Android closes a connection after 20 s idle; the server must not close
/// first (R13).
pub const IDLE_WAIT: Duration = Duration::from_secs(20);
/// Queries sent at once by the pipelining check.
pub const PIPELINED: u16 = 10;

const BOTH: &[&SupportedProtocolVersion] = &[&TLS13, &TLS12];

/// What to check, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    /// The name the certificate must cover (default: the host).
    pub tls_name: String,
    /// The trust store: the system's roots, or `--ca`.
    pub trust: Trust,
    /// Connect here instead of resolving the host.
    pub address: Option<IpAddr>,
    /// Skip the 20 s idle wait.
    pub quick: bool,
    /// The path of a DoH server (`https://HOST[:PORT]/PATH`): the checks are
    /// then [`doh`]'s. `None` for DoT.
    pub doh_path: Option<String>,
}

impl Options {
    /// From `HOST[:PORT]` (an `@` before it is accepted, as in `query`), or
    /// from a DoH server's `https://HOST[:PORT]/PATH`.
    pub fn new(
        server: &str,
        tls_name: Option<String>,
        trust: Trust,
        address: Option<IpAddr>,
        quick: bool,
    ) -> Result<Options, CheckError> {
        let (spec, doh_path) = if DohUrl::is_url(server) {
            let url: DohUrl = server.parse()?;
            let spec = ServerSpec {
                host: url.host,
                port: url.port,
            };
            (spec, Some(url.path))
        } else {
            (server.parse()?, None)
        };
        Ok(Options {
            tls_name: tls_name.unwrap_or_else(|| spec.host.clone()),
            host: spec.host,
            port: spec.port,
            trust,
            address,
            quick,
            doh_path,
        })
    }
}

/// Why `dotgate check` could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Url(#[from] DohError),
}

/// A TLS client configuration that accepts any certificate (it is judged
/// separately) with these versions, ALPN `dot` or none, SNI or none, and its
/// own session cache.
fn tls_config(
    versions: &[&'static SupportedProtocolVersion],
    alpn: bool,
    sni: bool,
) -> Result<Arc<ClientConfig>, ClientError> {
    let mut config = query::tls_config(&Trust::Insecure, versions)?;
    if !alpn {
        config.alpn_protocols.clear();
    }
    config.enable_sni = sni;
    Ok(Arc::new(config))
}

/// Everything the checks share.
struct Ctx {
    budget: Budget,
    addr: SocketAddr,
    name: ServerName<'static>,
    /// A label for query names under `dotgate-check.example.`, unique to
    /// this run.
    run: String,
}

impl Ctx {
    /// A query name no resolver has cached: `<what>-<run>.dotgate-check.example.`.
    fn qname(&self, what: &str) -> String {
        format!("{what}-{}.dotgate-check.example.", self.run)
    }

    async fn connect(&self, config: Arc<ClientConfig>) -> Result<Conn, ConnectError> {
        probes::connect(self.addr, &self.name, config, &self.budget).await
    }

    fn out_of_time(&self) -> bool {
        self.budget.left() < Duration::from_millis(300)
    }
}

/// The name the certificate must cover, the trust anchors and how to name
/// them in the report.
fn trust_of(opts: &Options) -> Result<(ServerName<'static>, RootCertStore, String), ClientError> {
    let name = ServerName::try_from(opts.tls_name.clone())
        .map_err(|_| DialError::BadTlsName(opts.tls_name.clone()))?;
    let (roots, trust_label) = match &opts.trust {
        Trust::Ca(path) => (
            query::roots_from_file(path)?,
            format!("the CA file {}", path.display()),
        ),
        Trust::System | Trust::Insecure => (query::system_roots()?, "the system roots".to_string()),
    };
    Ok((name, roots, trust_label))
}

/// Runs every check. An error is a problem with the command line or this
/// machine (an unreadable CA file, no system roots), not with the server.
pub async fn run(opts: &Options) -> Result<Report, ClientError> {
    if let Some(path) = &opts.doh_path {
        return doh::run(opts, path).await;
    }
    let started = Instant::now();
    let budget = Budget::new(if opts.quick {
        QUICK_BUDGET
    } else {
        FULL_BUDGET
    });
    let (name, roots, trust_label) = trust_of(opts)?;
    let roots = Arc::new(roots);
    let mut target = Target {
        host: opts.host.clone(),
        port: opts.port,
        tls_name: opts.tls_name.clone(),
        address: None,
        quick: opts.quick,
        doh_path: None,
    };
    let mut checks = Vec::new();
    let finish = |target: Target, mut checks: Vec<Check>, reason: &str| {
        skip_rest(&mut checks, reason);
        Report::new(target, checks, started.elapsed())
    };

    let (check, addrs) = resolve_step(opts, &budget).await;
    checks.push(check);
    if addrs.is_empty() {
        return Ok(finish(target, checks, "not run: no address to connect to"));
    }
    let (check, addr) = reachable_step(&addrs, &budget).await;
    checks.push(check);
    let Some(addr) = addr else {
        return Ok(finish(target, checks, "not run: the port is not reachable"));
    };
    target.address = Some(addr);
    let ctx = Ctx {
        budget,
        addr,
        name,
        run: probes::random_label(),
    };

    let plain = probes::plaintext_probe(addr, &ctx.qname("plain"), &budget).await;
    let main = ctx.connect(tls_config(BOTH, true, true)?).await;
    checks.push(plaintext_check(&plain));
    let conn = match main {
        Ok(conn) => conn,
        Err(e) => {
            checks.push(tls_failed(&e, &plain, &opts.tls_name));
            return Ok(finish(target, checks, "not run: no TLS handshake"));
        }
    };
    checks.push(tls_check(&conn));
    let chain: Vec<CertificateDer<'static>> = conn
        .tls()
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    conn.close().await;

    let (rest, idle) = tokio::join!(
        rest_checks(&ctx, &chain, &roots, &trust_label),
        idle_check(&ctx, opts.quick)
    );
    checks.extend(rest.0);
    checks.push(match idle {
        Some(check) => check,
        // Under --quick, say what the server advertises instead.
        None => Check::skip(
            "idle",
            Clients::ALL,
            match rest.1 {
                Some(units) => format!(
                    "--quick: did not wait {} s idle (the server advertises {:.1} s by keepalive)",
                    IDLE_WAIT.as_secs(),
                    f64::from(units) / 10.0
                ),
                None => format!("--quick: did not wait {} s idle", IDLE_WAIT.as_secs()),
            },
        ),
    });
    Ok(finish(target, checks, "not run: out of time"))
}

/// Adds a SKIP for every check not yet in `checks`.
fn skip_rest(checks: &mut Vec<Check>, reason: &str) {
    skip_rest_of(checks, report::ORDER, reason);
}

/// [`skip_rest`] for the checks of `order` (a DoH report's).
fn skip_rest_of(checks: &mut Vec<Check>, order: &[&'static str], reason: &str) {
    for id in order {
        if !checks.iter().any(|c| c.id == *id) {
            checks.push(Check::skip(id, Clients::NONE, reason));
        }
    }
}

// ---------- name and port ----------

async fn resolve_step(opts: &Options, budget: &Budget) -> (Check, Vec<SocketAddr>) {
    const ID: &str = "resolve";
    if let Some(ip) = opts.address {
        let addr = SocketAddr::new(ip, opts.port);
        return (
            Check::pass(
                ID,
                Clients::ALL,
                format!("not resolved: --address {ip} given"),
            ),
            vec![addr],
        );
    }
    if let Ok(ip) = opts.host.parse::<IpAddr>() {
        return (
            Check::pass(
                ID,
                Clients::ALL,
                format!("{ip} is an address (Android's Private DNS setting takes a hostname)"),
            ),
            vec![SocketAddr::new(ip, opts.port)],
        );
    }
    let spec = ServerSpec {
        host: opts.host.clone(),
        port: opts.port,
    };
    let Some(limit) = budget.limit(probes::CONNECT_TIMEOUT) else {
        return (Check::skip(ID, Clients::ALL, "out of time"), Vec::new());
    };
    let fail = |why: String| {
        Check::fail(
            ID,
            Clients::ALL,
            format!("{} does not resolve ({why})", opts.host),
            format!(
                "publish A/AAAA records for {}: clients resolve it over plain DNS first",
                opts.host
            ),
        )
    };
    match tokio::time::timeout(limit, query::resolve(&spec)).await {
        Ok(Ok(addrs)) => {
            let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            (
                Check::pass(
                    ID,
                    Clients::ALL,
                    format!(
                        "{} resolves to {} (system resolver)",
                        opts.host,
                        list.join(", ")
                    ),
                ),
                addrs,
            )
        }
        Ok(Err(ClientError::Resolve { reason, .. })) => (fail(reason), Vec::new()),
        Ok(Err(e)) => (fail(e.to_string()), Vec::new()),
        Err(_) => (
            fail(format!("no answer within {} s", limit.as_secs())),
            Vec::new(),
        ),
    }
}

/// Connects to every address at once; the checks go on with the first that
/// accepts.
async fn reachable_step(addrs: &[SocketAddr], budget: &Budget) -> (Check, Option<SocketAddr>) {
    const ID: &str = "reachable";
    let mut tasks = tokio::task::JoinSet::new();
    for (i, addr) in addrs.iter().copied().enumerate() {
        let budget = *budget;
        tasks.spawn(async move { (i, addr, probes::tcp_connect(addr, &budget).await.map(drop)) });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(result) = joined {
            results.push(result);
        }
    }
    results.sort_by_key(|(i, _, _)| *i);
    let ok: Vec<SocketAddr> = results
        .iter()
        .filter(|r| r.2.is_ok())
        .map(|r| r.1)
        .collect();
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(_, addr, r)| r.as_ref().err().map(|e| format!("{addr}: {e}")))
        .collect();
    let port = addrs[0].port();
    let listed = |list: &[SocketAddr]| {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let check = if failed.is_empty() {
        Check::pass(
            ID,
            Clients::ALL,
            format!("TCP port {port} accepts connections ({})", listed(&ok)),
        )
    } else if ok.is_empty() {
        Check::fail(
            ID,
            Clients::ALL,
            format!("nothing accepts TCP connections on port {port}: {}", failed.join("; ")),
            format!("start the DoT server, listen on this address and open TCP port {port} in the firewall"),
        )
    } else {
        Check::warn(
            ID,
            Clients::ALL,
            format!(
                "TCP port {port} accepts connections on {} but not on {}: Android probes every address of the name",
                listed(&ok),
                failed.join("; ")
            ),
            "serve on every address the name resolves to, or remove the others from DNS",
        )
    };
    (check, ok.first().copied())
}

// ---------- TLS ----------

fn plaintext_check(plain: &Plaintext) -> Check {
    const ID: &str = "plaintext";
    match plain {
        Plaintext::Answered { rcode } => Check::fail(
            ID,
            Clients::NONE,
            format!(
                "a plain DNS query over TCP got a DNS reply ({}): this port serves unencrypted DNS (R1, RFC 7858 §3.1)",
                probes::rcode_name(*rcode)
            ),
            "refuse anything but TLS on the DoT port (dotgate closes such connections at once); plain DNS belongs on port 53",
        ),
        Plaintext::Closed => Check::pass(ID, Clients::NONE, "a plain DNS query got no reply: the connection was closed"),
        Plaintext::Refused { first_byte: 0x15 } => Check::pass(
            ID,
            Clients::NONE,
            "a plain DNS query got no DNS reply (a TLS alert, then a close)",
        ),
        Plaintext::Refused { first_byte } => Check::pass(
            ID,
            Clients::NONE,
            format!("a plain DNS query got no DNS reply (bytes starting 0x{first_byte:02x})"),
        ),
        Plaintext::Silent(wait) => Check::pass(
            ID,
            Clients::NONE,
            format!("a plain DNS query got no reply within {:.0} s", wait.as_secs_f32()),
        ),
        Plaintext::NotTried(why) => Check::skip(ID, Clients::NONE, format!("not run: {why}")),
    }
}

fn version_name(conn: &Conn) -> String {
    tls_version_name(conn.tls())
}

/// "TLS 1.3", "TLS 1.2".
fn tls_version_name(tls: &rustls::ClientConnection) -> String {
    match tls.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".into(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".into(),
        Some(other) => format!("{other:?}"),
        None => "TLS".into(),
    }
}

fn suite_name(conn: &Conn) -> String {
    tls_suite_name(conn.tls())
}

/// The negotiated cipher suite's name.
fn tls_suite_name(tls: &rustls::ClientConnection) -> String {
    tls.negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default()
}

fn tls_check(conn: &Conn) -> Check {
    let alpn = match conn.tls().alpn_protocol() {
        Some(p) => format!("ALPN {}", String::from_utf8_lossy(p)),
        None => "no ALPN chosen".into(),
    };
    let certs = conn.tls().peer_certificates().map_or(0, <[_]>::len);
    Check::pass(
        "tls",
        Clients::ALL,
        format!(
            "{} ({}), {alpn}, {certs} certificate{} sent, handshake in {} ms",
            version_name(conn),
            suite_name(conn),
            if certs == 1 { "" } else { "s" },
            conn.handshake_time.as_millis()
        ),
    )
}

/// The alert a server refused the ClientHello with, when it names an
/// access decision: `access_denied` (dotgate's client IDs) or
/// `unrecognized_name` (servers that pick certificates by name).
fn refusal_alert(e: &ConnectError) -> Option<rustls::AlertDescription> {
    match e.rustls()? {
        rustls::Error::AlertReceived(
            alert @ (rustls::AlertDescription::AccessDenied
            | rustls::AlertDescription::UnrecognisedName),
        ) => Some(*alert),
        _ => None,
    }
}

/// The client ID a TLS name would carry on a server with client IDs: its
/// first label, and the domain under it; `None` for an address or a name
/// of fewer than three labels.
pub fn client_id_of(tls_name: &str) -> Option<(&str, &str)> {
    if tls_name.parse::<IpAddr>().is_ok() {
        return None;
    }
    let name = tls_name.trim_end_matches('.');
    let (id, domain) = name.split_once('.')?;
    (domain.contains('.') && !id.is_empty()).then_some((id, domain))
}

fn tls_failed(e: &ConnectError, plain: &Plaintext, tls_name: &str) -> Check {
    if let Some(alert) = refusal_alert(e) {
        let alert = alert_name(alert);
        let (reason, fix) = match client_id_of(tls_name) {
            Some((id, domain)) => (
                format!(
                    "the server refused the TLS name {tls_name} on its ClientHello (alert {alert}):                      a private endpoint with client IDs under {domain} does not list the ID {id:?}"
                ),
                format!(
                    "use the name of a listed ID (ID.{domain}, exactly as typed into Android's Private DNS),                      or list {id} on the server (dotgate: --client-id or a line in the --client-ids file)"
                ),
            ),
            None => (
                format!(
                    "the server refused the TLS name {tls_name} on its ClientHello (alert {alert}):                      it serves only other names (a private endpoint with client IDs wants ID.DOMAIN)"
                ),
                "check with the name a client is given, e.g. --tls-name ID.DOMAIN".to_string(),
            ),
        };
        return Check::fail("tls", Clients::ALL, reason, fix);
    }
    if let Plaintext::Answered { .. } = plain {
        return Check::fail(
            "tls",
            Clients::ALL,
            format!("no TLS: the port answers plain DNS over TCP, and {e}"),
            "serve DNS over TLS on this port (DoT is port 853), e.g. dotgate in front of this resolver",
        );
    }
    let fix = match e {
        ConnectError::TlsTimeout(_) => "check that this port runs a DoT server and not another service",
        ConnectError::OutOfTime => "run again with more time (without --quick)",
        _ => "check the server's TLS configuration (certificate and key loaded, TLS 1.2 and 1.3 enabled) and its logs",
    };
    Check::fail("tls", Clients::ALL, format!("no TLS: {e}"), fix)
}

/// An alert as the TLS specification writes it.
fn alert_name(alert: rustls::AlertDescription) -> &'static str {
    match alert {
        rustls::AlertDescription::AccessDenied => "access_denied",
        rustls::AlertDescription::UnrecognisedName => "unrecognized_name",
        _ => "other",
    }
}

/// The handshake pinned to one version.
async fn version_check(
    ctx: &Ctx,
    version: &'static SupportedProtocolVersion,
) -> Result<Check, String> {
    let (id, label) = if version == &TLS12 {
        ("tls1.2", "TLS 1.2")
    } else {
        ("tls1.3", "TLS 1.3")
    };
    let config = tls_config(&[version], true, true).map_err(|e| e.to_string())?;
    Ok(match ctx.connect(config).await {
        Ok(conn) => {
            let check = Check::pass(
                id,
                Clients::ALL,
                format!("{label} handshake completes ({})", suite_name(&conn)),
            );
            conn.close().await;
            check
        }
        Err(ConnectError::OutOfTime) => Check::skip(id, Clients::NONE, "not run: out of time"),
        Err(e) if version == &TLS12 => Check::warn(
            id,
            Clients::ANDROID_STRICT.or(Clients::ANDROID_OPPORTUNISTIC),
            format!(
                "{label} refused: {e}; old Android and Windows clients fail (they have no TLS 1.3)"
            ),
            "accept TLS 1.2 as well as 1.3 (dotgate: --tls-min-version 1.2, the default)",
        ),
        Err(e) => Check::warn(
            id,
            Clients::NONE,
            format!("{label} refused: {e}; clients fall back to TLS 1.2, with a slower handshake"),
            "enable TLS 1.3",
        ),
    })
}

/// Both versions refused, though the first handshake worked (a flaky
/// server): a FAIL each, not two WARNs.
fn both_versions(mut a: Check, mut b: Check) -> [Check; 2] {
    if a.status == Status::Warn && b.status == Status::Warn {
        a.status = Status::Fail;
        b.status = Status::Fail;
    }
    [a, b]
}

/// The certificate the server sends without SNI, compared with the one it
/// sends with it.
async fn no_sni_check(
    ctx: &Ctx,
    chain: &[CertificateDer<'static>],
    roots: &Arc<RootCertStore>,
    trust_label: &str,
    now: i64,
) -> Check {
    const ID: &str = "no-sni";
    let clients = Clients::ANDROID_OPPORTUNISTIC.or(Clients::RESOLVED);
    let config = match tls_config(BOTH, false, false) {
        Ok(c) => c,
        Err(e) => return Check::skip(ID, clients, e.to_string()),
    };
    let conn = match ctx.connect(config).await {
        Ok(conn) => conn,
        Err(ConnectError::OutOfTime) => return Check::skip(ID, clients, "not run: out of time"),
        Err(e) if refusal_alert(&e).is_some() => {
            let alert = refusal_alert(&e).map_or("", alert_name);
            return Check::warn(
                ID,
                clients,
                format!(
                    "the server refuses clients that send no SNI (alert {alert}), as a private endpoint \
                     with client IDs does: Android opportunistic mode and systemd-resolved given only an \
                     address cannot use it; Android strict mode with ID.DOMAIN can"
                ),
                "nothing, if the endpoint is private on purpose; otherwise serve clients without SNI",
            );
        }
        Err(e) => {
            return Check::fail(
                ID,
                clients,
                format!("a handshake without SNI fails: {e}; Android opportunistic mode and systemd-resolved given only an address send none"),
                "serve a default certificate to clients that send no SNI",
            )
        }
    };
    let other: Vec<CertificateDer<'static>> = conn
        .tls()
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    conn.close().await;
    let base =
        "a handshake without SNI (nor ALPN) completes, as Android opportunistic mode makes it";
    if other.first() == chain.first() {
        return Check::pass(ID, clients, format!("{base}, with the same certificate"));
    }
    let subject = other
        .first()
        .and_then(|c| crate::tls::chain::cert_facts(c).ok())
        .map(|f| f.subject)
        .unwrap_or_else(|| "an unreadable certificate".into());
    let name_text = ctx.name.to_str();
    let verdict = cert::chain_checks(&cert::ChainInput {
        chain: &other,
        roots,
        trust_label,
        name: &ctx.name,
        name_text: &name_text,
        now,
    });
    if verdict.iter().any(|c| c.status == Status::Fail) {
        Check::warn(
            ID,
            Clients::RESOLVED,
            format!(
                "{base}, but with another certificate ({subject}) that does not verify for {name_text}: \
                 clients that send no SNI yet verify (systemd-resolved given an address and a name) refuse it"
            ),
            "make the DoT certificate the default one, served when there is no SNI",
        )
    } else {
        Check::pass(
            ID,
            clients,
            format!("{base}, with another certificate ({subject}) that also verifies"),
        )
    }
}

/// Two connections with one session cache: the second should resume.
async fn resumption_check(ctx: &Ctx) -> Check {
    const ID: &str = "resumption";
    let clients = Clients::ANDROID_STRICT
        .or(Clients::ANDROID_OPPORTUNISTIC)
        .or(Clients::RESOLVED);
    let config = match tls_config(BOTH, true, true) {
        Ok(c) => c,
        Err(e) => return Check::skip(ID, clients, e.to_string()),
    };
    let mut first = match ctx.connect(config.clone()).await {
        Ok(conn) => conn,
        Err(e) => return Check::skip(ID, clients, format!("not run: {e}")),
    };
    // TLS 1.3 tickets come after the handshake: read a reply to get them.
    let q = probes::query(rand::random(), &ctx.qname("resume"), RecordType::A, None);
    let _ = first.exchange(&q, &ctx.budget).await;
    first.close().await;
    let second = match ctx.connect(config).await {
        Ok(conn) => conn,
        Err(e) => return Check::skip(ID, clients, format!("not run: {e}")),
    };
    let kind = second.tls().handshake_kind();
    let version = version_name(&second);
    second.close().await;
    if kind == Some(HandshakeKind::Resumed) {
        Check::pass(
            ID,
            clients,
            format!("a second connection resumed the first one's session ({version})"),
        )
    } else {
        Check::warn(
            ID,
            clients,
            format!(
                "a second connection was not resumed ({version}): every connection pays a full handshake \
                 (RFC 7858 §3.4; Android and systemd-resolved cache sessions)"
            ),
            "enable TLS session tickets or a session cache",
        )
    }
}

// ---------- DNS ----------

/// Android's validation probe on a connection made as Android strict mode
/// makes it (SNI, no ALPN), then whether the probe name has an address.
/// The connection is the one of the no-ALPN check.
async fn android_checks(ctx: &Ctx, conn: Option<Conn>) -> [Check; 2] {
    let probe_clients = Clients::ANDROID_STRICT.or(Clients::ANDROID_OPPORTUNISTIC);
    let Some(mut conn) = conn else {
        return [
            Check::skip(
                "android-probe",
                probe_clients,
                "not run: no connection without ALPN, as Android makes it",
            ),
            Check::skip(
                "android-strict",
                Clients::ANDROID_STRICT,
                "not run: no connection",
            ),
        ];
    };
    let probe_name = format!("{}-dnsotls-ds.metric.gstatic.com.", probes::random_label());
    // Android numbers queries from 0 on each connection, and sends no EDNS.
    let q = probes::query(0, &probe_name, RecordType::AAAA, None);
    let started = Instant::now();
    let reply = match conn.exchange(&q, &ctx.budget).await {
        Ok(reply) => reply,
        Err(e) => {
            conn.close().await;
            return [
                Check::fail(
                    "android-probe",
                    probe_clients,
                    format!("Android's validation probe (AAAA {probe_name}) got no answer: {e}; Private DNS says \"Couldn't connect\""),
                    "answer every query, with SERVFAIL and the question when the upstream fails (R11)",
                ),
                Check::skip("android-strict", Clients::ANDROID_STRICT, "not run: the probe got no reply"),
            ];
        }
    };
    let ms = started.elapsed().as_millis();
    let probe = probe_verdict(&probe_name, &reply, ms);
    let mut found = probes::addresses(&reply);
    if found.is_empty() {
        let q = probes::query(1, &probe_name, RecordType::A, None);
        if let Ok(reply) = conn.exchange(&q, &ctx.budget).await {
            found = probes::addresses(&reply);
        }
    }
    conn.close().await;
    let strict = strict_answer_check(&probe_name, &reply, &found);
    [probe, strict]
}

/// Android's verdict on the reply to its validation probe: a DNS response
/// that echoes the question (QDCOUNT 1), whatever its RCODE.
fn probe_verdict(probe_name: &str, reply: &[u8], ms: u128) -> Check {
    let probe_clients = Clients::ANDROID_STRICT.or(Clients::ANDROID_OPPORTUNISTIC);
    match probes::header(reply) {
        Some(h) if h.response && h.qdcount == 1 => Check::pass(
            "android-probe",
            probe_clients,
            format!("the probe (AAAA {probe_name}, no EDNS) got {} with its question (QDCOUNT 1) in {ms} ms: Android's validation passes", probes::rcode_name(h.rcode)),
        ),
        Some(h) if h.response => Check::fail(
            "android-probe",
            probe_clients,
            format!(
                "the probe's reply ({}) has QDCOUNT {}: Android's validation needs the question echoed (QDCOUNT 1), so Private DNS says \"Couldn't connect\"",
                probes::rcode_name(h.rcode),
                h.qdcount
            ),
            "echo the question in every reply, SERVFAIL included (R11, R23)",
        ),
        _ => Check::fail(
            "android-probe",
            probe_clients,
            "the probe's reply is not a DNS response: Android's validation fails",
            "answer DNS queries with DNS responses carrying the question",
        ),
    }
}

fn strict_answer_check(probe_name: &str, reply: &[u8], found: &[String]) -> Check {
    const ID: &str = "android-strict";
    let sinkholed = |a: &String| a == "0.0.0.0" || a == "::" || a == "127.0.0.1" || a == "::1";
    let rcode = probes::header(reply).map_or(2, |h| h.rcode);
    if !found.is_empty() && !found.iter().all(sinkholed) {
        return Check::pass(
            ID,
            Clients::ANDROID_STRICT,
            format!("the probe name has an address ({}): strict mode's lookup of it through the server works", found[0]),
        );
    }
    let what = if found.is_empty() {
        format!("{} and no address", probes::rcode_name(rcode))
    } else {
        format!("only {}", found.join(", "))
    };
    let blocked = !found.is_empty() || rcode == 3 || rcode == 5;
    let reason = format!(
        "{probe_name} got {what}: Android strict mode looks the probe name up through the server and needs an address, \
         else it marks Private DNS as failing"
    );
    if blocked {
        Check::fail(
            ID,
            Clients::ANDROID_STRICT,
            format!("{reason}; the name looks blocked"),
            "let *.metric.gstatic.com resolve (remove it from the upstream's block lists)",
        )
    } else {
        Check::warn(
            ID,
            Clients::ANDROID_STRICT,
            reason,
            "check that the upstream resolver can resolve *.metric.gstatic.com",
        )
    }
}

/// Ten queries in one write on one connection (Android's IDs 0..9).
async fn pipelining_check(ctx: &Ctx) -> Check {
    const ID: &str = "pipelining";
    let config = match tls_config(BOTH, false, true) {
        Ok(c) => c,
        Err(e) => return Check::skip(ID, Clients::ALL, e.to_string()),
    };
    let mut conn = match ctx.connect(config).await {
        Ok(conn) => conn,
        Err(e) => return Check::skip(ID, Clients::ALL, format!("not run: {e}")),
    };
    let mut batch = Vec::new();
    for id in 0..PIPELINED {
        let q = probes::query(id, &ctx.qname(&format!("p{id}")), RecordType::A, None);
        batch.extend(crate::proto::dns::frame(&q));
    }
    if let Err(e) = conn.send_raw(&batch, &ctx.budget).await {
        return Check::fail(
            ID,
            Clients::ALL,
            format!("{PIPELINED} pipelined queries could not be sent: {e}"),
            "read every query a connection sends (RFC 7766 §6.2.1)",
        );
    }
    let started = Instant::now();
    let limit = ctx
        .budget
        .limit(probes::REPLY_TIMEOUT)
        .unwrap_or(Duration::ZERO);
    let deadline = started + limit;
    let mut order: Vec<u16> = Vec::new();
    let ended = loop {
        if order.len() == usize::from(PIPELINED) {
            break None;
        }
        match conn
            .recv(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Recv::Frame(frame) => {
                let id = crate::proto::dns::id(&frame);
                if id < PIPELINED && !order.contains(&id) {
                    order.push(id);
                }
            }
            Recv::Closed => {
                break Some(format!(
                    "the server closed the connection after {}",
                    replies(order.len())
                ))
            }
            Recv::Error(e) => {
                break Some(format!(
                    "the connection failed after {}: {e}",
                    replies(order.len())
                ))
            }
            Recv::Timeout => {
                break Some(format!(
                    "no more replies within {:.0} s",
                    limit.as_secs_f32()
                ))
            }
        }
    };
    let ms = started.elapsed().as_millis();
    conn.close().await;
    pipelining_verdict(&order, ended, ms)
}

/// The verdict on the pipelined queries: `order` holds the IDs that got a
/// reply, in the order they came; `ended` says why reading stopped early,
/// if it did.
fn pipelining_verdict(order: &[u16], ended: Option<String>, ms: u128) -> Check {
    const ID: &str = "pipelining";
    match ended {
        None => {
            let in_order = order.windows(2).all(|w| w[0] < w[1]);
            let how = if in_order {
                "in the order sent (fine; answering each as it is ready, RFC 7766 §7, keeps a slow query from holding up the rest)"
            } else {
                "out of order, each as it was ready (RFC 7766 §7)"
            };
            Check::pass(ID, Clients::ALL, format!("{PIPELINED} of {PIPELINED} pipelined queries answered on one connection in {ms} ms, {how}"))
        }
        Some(why) => Check::fail(
            ID,
            Clients::ALL,
            format!(
                "only {} of {PIPELINED} pipelined queries answered on one connection: {why}; Android sends all its queries over one connection",
                order.len()
            ),
            "answer every query of a connection, several at once, and keep the connection open (RFC 7766 §6.2.1)",
        ),
    }
}

/// "1 reply", "3 replies".
fn replies(n: usize) -> String {
    if n == 1 {
        "1 reply".into()
    } else {
        format!("{n} replies")
    }
}

/// A query asking for keepalive; returns the check and the advertised
/// timeout (100 ms units).
async fn keepalive_check(ctx: &Ctx) -> (Check, Option<u16>) {
    const ID: &str = "keepalive";
    let reply = match edns_exchange(ctx, "keepalive", &[probes::keepalive_option()]).await {
        Ok(reply) => reply,
        Err(e) => {
            return (
                Check::warn(
                    ID,
                    Clients::STUBBY,
                    format!("a query with edns-tcp-keepalive got no reply: {e}"),
                    "answer queries that carry EDNS options",
                ),
                None,
            )
        }
    };
    keepalive_verdict(&reply)
}

/// Judges the reply to a query that asked for keepalive: the check and the
/// advertised timeout (100 ms units).
fn keepalive_verdict(reply: &[u8]) -> (Check, Option<u16>) {
    const ID: &str = "keepalive";
    let rcode = probes::rcode_name(probes::header(reply).map_or(2, |h| h.rcode));
    match probes::option_data(reply, crate::proto::edns::KEEPALIVE) {
        Some(data) if data.len() == 2 => {
            let units = u16::from_be_bytes([data[0], data[1]]);
            (
                Check::pass(
                    ID,
                    Clients::STUBBY,
                    format!("the reply advertises an idle timeout of {:.1} s (edns-tcp-keepalive, RFC 7828)", f64::from(units) / 10.0),
                ),
                Some(units),
            )
        }
        Some(data) => (
            Check::warn(
                ID,
                Clients::STUBBY,
                format!("the reply's edns-tcp-keepalive option is {} bytes long, not 2", data.len()),
                "send the idle timeout as two bytes, in units of 100 ms (RFC 7828)",
            ),
            None,
        ),
        None => (
            Check::warn(
                ID,
                Clients::STUBBY,
                format!("the reply ({rcode}) has no edns-tcp-keepalive option: stubby cannot learn the idle timeout and may hold idle connections the server then closes"),
                "support edns-tcp-keepalive (RFC 7828; dotgate does; unbound: edns-tcp-keepalive: yes)",
            ),
            None,
        ),
    }
}

/// The clients that pad their queries and expect padded replies.
const PADDING_CLIENTS: Clients = Clients::ANDROID_STRICT
    .or(Clients::ANDROID_OPPORTUNISTIC)
    .or(Clients::STUBBY);

async fn padding_check(ctx: &Ctx) -> Check {
    const ID: &str = "padding";
    let clients = PADDING_CLIENTS;
    let reply = match edns_exchange(ctx, "padding", &[probes::padding_option()]).await {
        Ok(reply) => reply,
        Err(e) => {
            return Check::warn(
                ID,
                clients,
                format!("a padded query got no reply: {e}"),
                "answer queries that carry EDNS padding",
            )
        }
    };
    padding_verdict(&reply)
}

/// Judges the reply to a padded query.
fn padding_verdict(reply: &[u8]) -> Check {
    const ID: &str = "padding";
    let clients = PADDING_CLIENTS;
    let len = reply.len();
    match probes::option_data(reply, crate::proto::edns::PADDING) {
        Some(_) if len.is_multiple_of(crate::proto::edns::RESPONSE_BLOCK) => Check::pass(
            ID,
            clients,
            format!("a padded query got a reply padded to {len} bytes (a multiple of 468, RFC 8467)"),
        ),
        Some(_) => Check::pass(
            ID,
            clients,
            format!("a padded query got a padded reply ({len} bytes; RFC 8467 recommends blocks of 468)"),
        ),
        None => Check::warn(
            ID,
            clients,
            format!("a padded query got an unpadded reply ({len} bytes): its size tells an observer what was asked (RFC 7830)"),
            "pad replies to padded queries, to a multiple of 468 bytes (RFC 8467)",
        ),
    }
}

/// One query with an OPT record carrying `options`, on its own connection
/// (SNI and ALPN `dot`, as stubby connects).
async fn edns_exchange(
    ctx: &Ctx,
    what: &str,
    options: &[(u16, Vec<u8>)],
) -> Result<Vec<u8>, String> {
    let config = tls_config(BOTH, true, true).map_err(|e| e.to_string())?;
    let mut conn = ctx.connect(config).await.map_err(|e| e.to_string())?;
    let q = probes::query(
        rand::random(),
        &ctx.qname(what),
        RecordType::A,
        Some(options),
    );
    let reply = conn.exchange(&q, &ctx.budget).await;
    conn.close().await;
    reply
}

/// A connection kept idle for [`IDLE_WAIT`] after one answered query, then
/// asked again. `None` under `--quick`.
async fn idle_check(ctx: &Ctx, quick: bool) -> Option<Check> {
    if quick {
        return None;
    }
    idle_check_for(ctx, IDLE_WAIT).await
}

/// Stray messages a server may send during the idle wait before the check
/// stops reading them (each is ignored: it does not end the wait).
const MAX_STRAY: usize = 100;

/// [`idle_check`] with a wait of `wait` (tests use seconds, not 20).
async fn idle_check_for(ctx: &Ctx, wait: Duration) -> Option<Check> {
    const ID: &str = "idle";
    let skip = |why: String| Some(Check::skip(ID, Clients::ALL, format!("not run: {why}")));
    if ctx.budget.left() < wait + Duration::from_secs(2) {
        return skip("out of time".into());
    }
    let config = match tls_config(BOTH, false, true) {
        Ok(c) => c,
        Err(e) => return skip(e.to_string()),
    };
    let mut conn = match ctx.connect(config).await {
        Ok(conn) => conn,
        Err(e) => return skip(e.to_string()),
    };
    let q = probes::query(0, &ctx.qname("idle0"), RecordType::A, None);
    if let Err(e) = conn.exchange(&q, &ctx.budget).await {
        return skip(format!("the first query got no reply ({e})"));
    }
    let idle_from = Instant::now();
    let fix =
        "keep idle connections open longer than 20 s (dotgate: --idle-timeout, 30 s by default)";
    let closed = |after: Duration| {
        Check::warn(
            ID,
            Clients::ALL,
            format!(
                "the server closed the connection after {:.1} s idle: Android keeps connections open 20 s idle \
                 (stubby and systemd-resolved 10 s), and a query sent as the server closes is lost",
                after.as_secs_f32()
            ),
            fix,
        )
    };
    // The whole wait, whatever arrives in it: a stray message (a late
    // duplicate, an unsolicited reply) must not end it early, or a server
    // that closes before the wait is over could still PASS.
    let idle_until = idle_from + wait;
    let mut stray = 0;
    loop {
        let left = idle_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match conn.recv(left).await {
            Recv::Timeout => break,
            Recv::Frame(_) if stray < MAX_STRAY => stray += 1,
            Recv::Frame(_) => {
                conn.close().await;
                return Some(Check::warn(
                    ID,
                    Clients::ALL,
                    format!("the server sent over {MAX_STRAY} messages nobody asked for on an idle connection"),
                    "send a reply only for a query received",
                ));
            }
            Recv::Closed | Recv::Error(_) => return Some(closed(idle_from.elapsed())),
        }
    }
    let q = probes::query(1, &ctx.qname("idle1"), RecordType::A, None);
    let check = match conn.exchange(&q, &ctx.budget).await {
        Ok(_) => Check::pass(
            ID,
            Clients::ALL,
            format!(
                "the connection stays open and answers after {} s idle",
                wait.as_secs()
            ),
        ),
        Err(e) if e.contains("closed") => closed(idle_from.elapsed()),
        Err(e) => Check::warn(
            ID,
            Clients::ALL,
            format!(
                "after {} s idle the connection is open but the query failed: {e}",
                wait.as_secs()
            ),
            fix,
        ),
    };
    conn.close().await;
    Some(check)
}

/// Everything after the first handshake except the idle wait, in report
/// order; also the keepalive the server advertised.
async fn rest_checks(
    ctx: &Ctx,
    chain: &[CertificateDer<'static>],
    roots: &Arc<RootCertStore>,
    trust_label: &str,
) -> (Vec<Check>, Option<u16>) {
    let mut checks = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));

    let v12 = version_check(ctx, &TLS12).await;
    let v13 = version_check(ctx, &TLS13).await;
    match (v12, v13) {
        (Ok(a), Ok(b)) => checks.extend(both_versions(a, b)),
        (a, b) => {
            for (r, id) in [(a, "tls1.2"), (b, "tls1.3")] {
                checks.push(r.unwrap_or_else(|e| Check::skip(id, Clients::NONE, e)));
            }
        }
    }

    let name_text = ctx.name.to_str();
    checks.extend(cert::chain_checks(&cert::ChainInput {
        chain,
        roots,
        trust_label,
        name: &ctx.name,
        name_text: &name_text,
        now,
    }));

    if ctx.out_of_time() {
        return (checks, None);
    }
    checks.push(no_sni_check(ctx, chain, roots, trust_label, now).await);

    // No ALPN, with SNI: as Android strict mode and systemd-resolved connect.
    let no_alpn_clients = Clients::ANDROID_STRICT
        .or(Clients::ANDROID_OPPORTUNISTIC)
        .or(Clients::RESOLVED);
    let android_conn = match tls_config(BOTH, false, true) {
        Ok(config) => match ctx.connect(config).await {
            Ok(conn) => {
                checks.push(Check::pass(
                    "no-alpn",
                    no_alpn_clients,
                    "a handshake without ALPN completes, as Android and systemd-resolved make it",
                ));
                Some(conn)
            }
            Err(ConnectError::OutOfTime) => None,
            Err(e) => {
                checks.push(Check::fail(
                    "no-alpn",
                    no_alpn_clients,
                    format!("a handshake without ALPN fails: {e}; Android and systemd-resolved offer none"),
                    "accept clients that offer no ALPN (offer dot, never require it)",
                ));
                None
            }
        },
        Err(e) => {
            checks.push(Check::skip("no-alpn", no_alpn_clients, e.to_string()));
            None
        }
    };
    checks.extend(android_checks(ctx, android_conn).await);

    if ctx.out_of_time() {
        return (checks, None);
    }
    checks.push(pipelining_check(ctx).await);
    if ctx.out_of_time() {
        return (checks, None);
    }
    checks.push(resumption_check(ctx).await);
    if ctx.out_of_time() {
        return (checks, None);
    }
    let (keepalive, units) = keepalive_check(ctx).await;
    checks.push(keepalive);
    if ctx.out_of_time() {
        return (checks, units);
    }
    checks.push(padding_check(ctx).await);
    (checks, units)
}
