//! Shared helpers: a throwaway PKI, dotgate in-process and as a process, a
//! raw DoT client, and DNS message helpers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{Name, RData, RecordType};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use clap::Parser;
use dotgate::config::cli::{Cli, Command as CliCommand};
use dotgate::config::Config;

use crate::upstream::{expected_a, expected_aaaa, expected_txt, lower_fqdn};

/// The name in the test certificate (besides IP 127.0.0.1).
pub const TLS_NAME: &str = "dns.test";

/// How long a test waits for a reply it expects before failing.
pub const REPLY_WAIT: Duration = Duration::from_secs(5);

// ---------- temporary files and certificates ----------

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "dotgate-it-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A throwaway CA and a server certificate for `dns.test` and 127.0.0.1,
/// generated at run time and written to a temporary directory.
pub struct Pki {
    pub dir: TempDir,
    /// The CA certificate (PEM), for clients.
    pub ca: PathBuf,
    /// The server chain: leaf, then CA (PEM).
    pub cert: PathBuf,
    /// The leaf's private key (PEM).
    pub key: PathBuf,
    /// A rustls client trusting only the CA, offering ALPN `dot`.
    pub client: Arc<ClientConfig>,
    /// The CA itself, to issue more leaves (certificate reload tests).
    pub issuer: Arc<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>>,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "dotgate integration test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec![TLS_NAME.to_string(), "127.0.0.1".into()])
            .expect("leaf parameters");
        leaf.distinguished_name
            .push(DnType::CommonName, TLS_NAME.to_string());
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf_cert = leaf.signed_by(&leaf_key, &ca).unwrap();

        let dir = TempDir::new();
        let ca_path = dir.path().join("ca.pem");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        std::fs::write(&cert, format!("{}{}", leaf_cert.pem(), ca.pem())).unwrap();
        std::fs::write(&key, leaf_key.serialize_pem()).unwrap();

        Pki {
            dir,
            ca: ca_path,
            cert,
            key,
            client: client_trusting(ca.der()),
            issuer: Arc::new(ca),
        }
    }

    /// The same CA and server certificate, in files of its own directory:
    /// for a second server that clients must take for the first.
    pub fn share(&self) -> Pki {
        let dir = TempDir::new();
        let copy = |from: &Path| {
            let to = dir.path().join(from.file_name().expect("a file name"));
            std::fs::copy(from, &to).expect("copy a PKI file");
            to
        };
        Pki {
            ca: copy(&self.ca),
            cert: copy(&self.cert),
            key: copy(&self.key),
            client: self.client.clone(),
            issuer: self.issuer.clone(),
            dir,
        }
    }

    /// A new leaf for `dns.test` and 127.0.0.1 from the same CA, with its
    /// own key: (chain PEM, leaf first; key PEM; leaf DER).
    pub fn issue_leaf(&self) -> (String, String, Vec<u8>) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec![TLS_NAME.to_string(), "127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("reissued {TLS_NAME}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params.signed_by(&key, &*self.issuer).unwrap();
        (
            format!("{}{}", leaf.pem(), self.issuer.pem()),
            key.serialize_pem(),
            leaf.der().to_vec(),
        )
    }

    /// The DER of the leaf certificate now in `cert`.
    pub fn leaf_der(&self) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::pem_file_iter(&self.cert)
            .expect("read the test chain")
            .next()
            .expect("a leaf")
            .expect("a PEM certificate")
            .to_vec()
    }

    /// A rustls client trusting the CA, with only these TLS versions and
    /// ALPN protocols, its own session cache, and SNI as `sni` says.
    pub fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
        sni: bool,
    ) -> Arc<ClientConfig> {
        self.client_config_with(
            rustls::crypto::aws_lc_rs::default_provider(),
            versions,
            alpn,
            sni,
        )
    }

    /// As [`Pki::client_config`], with a given crypto provider (for
    /// cipher-suite tests).
    pub fn client_config_with(
        &self,
        provider: rustls::crypto::CryptoProvider,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
        sni: bool,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let mut client = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .expect("TLS versions the provider supports")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        client.enable_sni = sni;
        Arc::new(client)
    }
}

/// How the server certificate of [`Pki::with_intermediate`] is made: by
/// default a good chain, or one of the mistakes `dotgate check` must catch.
#[derive(Debug, Clone, Default)]
pub struct ChainSpec {
    /// The leaf's names (default: `dns.test` and 127.0.0.1).
    pub names: Option<Vec<String>>,
    /// A leaf that expired yesterday.
    pub expired: bool,
    /// The chain file holds only the leaf, not the intermediate.
    pub leaf_only: bool,
    /// The chain file holds the leaf, then a certificate that did not issue
    /// it (another CA's) instead of the intermediate.
    pub unrelated_second: bool,
}

impl Pki {
    /// A root CA, an intermediate CA it signed, and a leaf the intermediate
    /// signed, as public CAs issue them. `ca` holds the root only; `cert`
    /// holds the leaf, then the intermediate (or the leaf alone with
    /// `leaf_only`). `issuer` is the intermediate, so that
    /// [`Pki::issue_leaf`] chains through it (and `client_config` trusts it
    /// directly, which verifies the same chains).
    pub fn with_intermediate(spec: &ChainSpec) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let ca_params = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params
        };
        let root = CertifiedIssuer::self_signed(
            ca_params("dotgate test root CA"),
            KeyPair::generate().unwrap(),
        )
        .unwrap();
        let intermediate = CertifiedIssuer::signed_by(
            ca_params("dotgate test intermediate CA"),
            KeyPair::generate().unwrap(),
            &root,
        )
        .unwrap();

        let names = spec
            .names
            .clone()
            .unwrap_or_else(|| vec![TLS_NAME.to_string(), "127.0.0.1".into()]);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(names.clone()).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, names[0].clone());
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.expired {
            let day = Duration::from_secs(24 * 60 * 60);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            let epoch = rcgen::date_time_ymd(1970, 1, 1);
            leaf.not_before = epoch + (now - 90 * day);
            leaf.not_after = epoch + (now - day);
        }
        let leaf_cert = leaf.signed_by(&leaf_key, &intermediate).unwrap();

        let dir = TempDir::new();
        let ca_path = dir.path().join("ca.pem");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&ca_path, root.pem()).unwrap();
        let chain = if spec.leaf_only {
            leaf_cert.pem()
        } else if spec.unrelated_second {
            let unrelated = CertifiedIssuer::self_signed(
                ca_params("dotgate test unrelated CA"),
                KeyPair::generate().unwrap(),
            )
            .unwrap();
            format!("{}{}", leaf_cert.pem(), unrelated.pem())
        } else {
            format!("{}{}", leaf_cert.pem(), intermediate.pem())
        };
        std::fs::write(&cert, chain).unwrap();
        std::fs::write(&key, leaf_key.serialize_pem()).unwrap();

        Pki {
            dir,
            ca: ca_path,
            cert,
            key,
            client: client_trusting(root.der()),
            issuer: Arc::new(intermediate),
        }
    }
}

// ---------- dotgate in-process ----------

/// `dotgate serve` arguments for this PKI and upstream, plus `extra`.
fn serve_args(
    pki: &Pki,
    listen: &str,
    upstream: Option<SocketAddr>,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        listen.into(),
        "--cert".into(),
        pki.cert.display().to_string(),
        "--key".into(),
        pki.key.display().to_string(),
    ];
    if let Some(upstream) = upstream {
        args.extend(["--upstream".into(), upstream.to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// dotgate served in this test's runtime on 127.0.0.1:0; stopped on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub pki: Pki,
    /// The DoH listener (TLS), when started with one.
    pub doh: Option<SocketAddr>,
    /// The DoH listener without TLS, when started with one.
    pub doh_plain: Option<SocketAddr>,
    shutdown: CancellationToken,
}

impl Server {
    /// Starts dotgate toward `upstream`, with extra `serve` flags such as
    /// `["--upstream-timeout", "500ms"]`.
    pub async fn start(upstream: SocketAddr, extra: &[&str]) -> Server {
        Server::start_with_pki(Pki::new(), upstream, extra).await
    }

    /// As [`Server::start`], serving the certificate of `pki`.
    pub async fn start_with_pki(pki: Pki, upstream: SocketAddr, extra: &[&str]) -> Server {
        let mut argv = vec!["dotgate".to_string()];
        argv.extend(serve_args(&pki, "127.0.0.1:0", Some(upstream), extra));
        Server::start_argv(pki, argv).await
    }

    /// Starts dotgate with only the `--upstream` entries given in `extra`
    /// (such as `tcp://` or `tls://` ones), and its other flags.
    pub async fn start_without_default_upstream(extra: &[&str]) -> Server {
        Server::start_without_default_upstream_with_pki(Pki::new(), extra).await
    }

    /// As [`Server::start_without_default_upstream`], serving the
    /// certificate of `pki`.
    pub async fn start_without_default_upstream_with_pki(pki: Pki, extra: &[&str]) -> Server {
        let mut argv: Vec<String> = [
            "dotgate",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &pki.cert.display().to_string(),
            "--key",
            &pki.key.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(extra.iter().map(|s| s.to_string()));
        Server::start_argv(pki, argv).await
    }

    /// Starts dotgate with a DoT listener, a DoH listener and a plain DoH
    /// listener, toward `upstream`, with extra `serve` flags.
    pub async fn start_doh(upstream: SocketAddr, extra: &[&str]) -> Server {
        Server::start_doh_with_pki(Pki::new(), upstream, extra).await
    }

    /// As [`Server::start_doh`], serving the certificate of `pki`.
    pub async fn start_doh_with_pki(pki: Pki, upstream: SocketAddr, extra: &[&str]) -> Server {
        let mut argv = vec!["dotgate".to_string()];
        argv.extend(serve_args(&pki, "127.0.0.1:0", Some(upstream), extra));
        // Tells the configuration that DoH is served (the sockets are bound
        // below, on port 0).
        argv.extend(["--doh-listen".to_string(), "127.0.0.1:0".to_string()]);
        Server::start_listeners(pki, argv, true).await
    }

    async fn start_argv(pki: Pki, argv: Vec<String>) -> Server {
        Server::start_listeners(pki, argv, false).await
    }

    async fn start_listeners(pki: Pki, argv: Vec<String>, doh: bool) -> Server {
        use dotgate::server::{Listener, ListenerKind};
        init_logging();
        let args = match Cli::try_parse_from(argv).expect("serve flags").command {
            CliCommand::Serve(args) => *args,
            _ => unreachable!("built a serve command line"),
        };
        let config = Config::from_args(&args, Path::new("/nonexistent/resolv.conf"))
            .expect("valid configuration");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = config.proxy.enabled;
        let mut listeners = vec![Listener::dot(listener, proxy)];
        let (mut doh_addr, mut plain_addr) = (None, None);
        if doh {
            for (kind, slot) in [
                (ListenerKind::Doh, &mut doh_addr),
                (ListenerKind::DohPlain, &mut plain_addr),
            ] {
                let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
                *slot = Some(socket.local_addr().unwrap());
                listeners.push(Listener {
                    socket,
                    proxy,
                    kind,
                });
            }
        }
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = dotgate::server::run_listeners(config, listeners, token).await {
                panic!("dotgate::server::run_listeners failed: {e}");
            }
        });
        Server {
            addr,
            pki,
            doh: doh_addr,
            doh_plain: plain_addr,
            shutdown,
        }
    }

    /// A TLS connection to this server, verified against the test CA.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr, &self.pki).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Logs of in-process servers go to the test's captured output, filtered by
/// RUST_LOG (e.g. `RUST_LOG=dotgate=debug`); nothing without it.
fn init_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

// ---------- dotgate as a process ----------

/// A port that was free a moment ago on 127.0.0.1, for a server the test
/// starts next (`--metrics-listen`, the real binary's `--listen`).
///
/// Taken below the kernel's ephemeral range, and never twice in this
/// process: a port the kernel handed out for `:0` can be given again, a
/// moment later, as the local port of one of the thousands of outgoing
/// connections the other tests make, and the server would then fail to bind.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(0);
    if ephemeral_low >= 16_384 {
        // The upper half below the range, from an offset per process so that
        // test binaries running side by side start apart.
        let (low, span) = (ephemeral_low / 2, ephemeral_low / 2);
        let offset = std::process::id() * 7919;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let port = low + offset.wrapping_add(n) % span;
            if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
                return listener.local_addr().unwrap().port();
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `dotgate serve` binary on a free port; killed on drop.
pub struct Process {
    pub addr: SocketAddr,
    pub pki: Pki,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts the binary and waits until its port accepts connections.
    pub async fn start(upstream: SocketAddr, extra: &[&str]) -> Process {
        Process::start_with_env(upstream, extra, &[]).await
    }

    /// Like [`Process::start`], with extra environment variables.
    pub async fn start_with_env(
        upstream: SocketAddr,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Process {
        Process::start_with_pki(Pki::new(), upstream, extra, env).await
    }

    /// Like [`Process::start_with_env`], serving the certificate of `pki`.
    pub async fn start_with_pki(
        pki: Pki,
        upstream: SocketAddr,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Process {
        Process::spawn(pki, Some(upstream), extra, env, None, false).await
    }

    /// Like [`Process::start`] without `--upstream`: dotgate picks its
    /// upstreams itself (give it `--resolv-conf`, never the machine's own).
    pub async fn start_without_upstream(extra: &[&str]) -> Process {
        Process::spawn(Pki::new(), None, extra, &[], None, false).await
    }

    /// Like [`Process::start`], with the process's file-descriptor limit
    /// (RLIMIT_NOFILE, soft and hard) set to `nofile` before it runs, as
    /// `prlimit --nofile` or systemd's `LimitNOFILE` would.
    pub async fn start_with_nofile(upstream: SocketAddr, extra: &[&str], nofile: u64) -> Process {
        Process::spawn(Pki::new(), Some(upstream), extra, &[], Some(nofile), false).await
    }

    /// Like [`Process::start`], allowed to run on one CPU only (CPU 0), as
    /// `taskset -c 0`, a cpuset or a container's quota of one would.
    pub async fn start_on_one_cpu(upstream: SocketAddr, extra: &[&str]) -> Process {
        Process::spawn(Pki::new(), Some(upstream), extra, &[], None, true).await
    }

    async fn spawn(
        pki: Pki,
        upstream: Option<SocketAddr>,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
        one_cpu: bool,
    ) -> Process {
        let mut failures = String::new();
        // The free port may be taken again before dotgate binds it: retry.
        for attempt in 0..3 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let log = pki.dir.path().join(format!("dotgate-{attempt}.log"));
            let mut command = Command::new(env!("CARGO_BIN_EXE_dotgate"));
            command
                .args(serve_args(&pki, &addr.to_string(), upstream, extra))
                .args(["--log-level", "dotgate=debug"])
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            if let Some(nofile) = nofile {
                use std::os::unix::process::CommandExt;
                let limit = libc::rlimit {
                    rlim_cur: nofile as libc::rlim_t,
                    rlim_max: nofile as libc::rlim_t,
                };
                // SAFETY: setrlimit(2) is async-signal-safe, and the closure
                // touches nothing but its own copy of `limit`.
                unsafe {
                    command.pre_exec(move || {
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    });
                }
            }
            if one_cpu {
                use std::os::unix::process::CommandExt;
                // SAFETY: CPU_ZERO and CPU_SET write into the closure's own
                // set; sched_setaffinity(2) is a plain system call, safe
                // between fork and exec.
                unsafe {
                    command.pre_exec(|| {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_ZERO(&mut set);
                        libc::CPU_SET(0, &mut set);
                        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    });
                }
            }
            let mut child = command.spawn().expect("spawn dotgate");
            if wait_until_listening(&mut child, addr, Duration::from_secs(10)).await {
                return Process {
                    addr,
                    pki,
                    child,
                    log,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            failures.push_str(&std::fs::read_to_string(&log).unwrap_or_default());
        }
        panic!("dotgate did not start listening; its logs:\n{failures}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP, as `systemctl reload` or a certbot deploy hook would.
    pub fn sighup(&self) {
        let pid = libc::pid_t::try_from(self.pid()).unwrap();
        // SAFETY: kill(2) with a child's pid and a valid signal number.
        let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
        assert_eq!(rc, 0, "kill(SIGHUP) failed");
    }

    /// Sends SIGTERM, as `docker stop` or systemd would.
    pub fn sigterm(&self) {
        let pid = libc::pid_t::try_from(self.pid()).unwrap();
        // SAFETY: kill(2) with a child's pid and a valid signal number.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Waits (bounded) for the process to exit; None if it is still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the process has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr, &self.pki).await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `addr` accepts a TCP connection, the child exits, or `limit`
/// passes. True when it is listening.
async fn wait_until_listening(child: &mut Child, addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        if TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

// ---------- a raw DoT client ----------

/// A TLS client configuration (offering ALPN `dot`) that trusts one root.
fn client_trusting(root: &rustls_pki_types::CertificateDer<'_>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone().into_owned()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"dot".to_vec()];
    Arc::new(client)
}

/// What reading one frame gave.
#[derive(Debug)]
pub enum Read {
    /// One whole message (without its length prefix).
    Frame(Vec<u8>),
    /// A clean end: close_notify (or FIN on plain TCP) between messages.
    Eof,
    /// The connection failed, or ended inside a message or without
    /// close_notify.
    Error(std::io::Error),
    /// Nothing complete arrived in time.
    Timeout,
}

/// A TLS client that sends raw bytes, so tests control framing, IDs and
/// segmentation, and reads length-prefixed frames.
pub struct Client {
    pub stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, pki: &Pki) -> Client {
        Client::try_connect(addr, pki)
            .await
            .expect("TLS connection to dotgate")
    }

    pub async fn try_connect(addr: SocketAddr, pki: &Pki) -> std::io::Result<Client> {
        Client::try_connect_with(addr, pki.client.clone(), TLS_NAME).await
    }

    /// Connects with a given client configuration, verifying `name` (a DNS
    /// name or an IP address), within [`REPLY_WAIT`].
    pub async fn try_connect_with(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        name: &str,
    ) -> std::io::Result<Client> {
        let name = ServerName::try_from(name.to_string()).expect("a valid server name");
        let connect = async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            TlsConnector::from(config).connect(name, tcp).await
        };
        let stream = tokio::time::timeout(REPLY_WAIT, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connect"))??;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// A TLS connection over a TCP connection the test set up itself (bound
    /// to a given source address, with small socket buffers...), verified
    /// against the test CA, within [`REPLY_WAIT`].
    pub async fn try_connect_over(tcp: TcpStream, pki: &Pki) -> std::io::Result<Client> {
        let name = ServerName::try_from(TLS_NAME.to_string()).expect("a valid server name");
        tcp.set_nodelay(true)?;
        let connect = TlsConnector::from(pki.client.clone()).connect(name, tcp);
        let stream = tokio::time::timeout(REPLY_WAIT, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connect"))??;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// The TLS session of this connection (version, ALPN, resumption,
    /// the server's certificates).
    pub fn tls(&self) -> &rustls::ClientConnection {
        self.stream.get_ref().1
    }

    /// Writes raw bytes (already framed, or not) and flushes them.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// Sends one message with its length prefix, in one write.
    pub async fn send(&mut self, msg: &Message) {
        self.send_raw(&frame(&encode(msg))).await;
    }

    /// Reads the next frame, waiting at most `limit`.
    pub async fn read(&mut self, limit: Duration) -> Read {
        let deadline = Instant::now() + limit;
        loop {
            if self.buf.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
                if self.buf.len() >= 2 + len {
                    let msg = self.buf[2..2 + len].to_vec();
                    self.buf.drain(..2 + len);
                    return Read::Frame(msg);
                }
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Read::Timeout,
                Ok(Ok(0)) if self.buf.is_empty() => return Read::Eof,
                Ok(Ok(0)) => {
                    return Read::Error(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("closed inside a message ({} bytes pending)", self.buf.len()),
                    ))
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Read::Error(e),
            }
        }
    }

    /// Reads the next frame as a strictly parsed DNS message; fails the test
    /// on anything else.
    pub async fn recv(&mut self) -> Message {
        match self.read(REPLY_WAIT).await {
            Read::Frame(bytes) => parse(&bytes),
            other => panic!("expected a reply, got {other:?}"),
        }
    }
}

/// Sends `names` (A queries, IDs from `first_id`) pipelined in one write and
/// checks that each gets exactly one reply, its own answer, in any order.
pub async fn ask_all(client: &mut Client, names: &[String], first_id: u16) {
    let mut batch = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let id = first_id.wrapping_add(i as u16);
        batch.extend(frame(&encode(&query(id, name, RecordType::A))));
    }
    client.send_raw(&batch).await;
    let mut answered = vec![false; names.len()];
    for _ in 0..names.len() {
        let reply = client.recv().await;
        let index = usize::from(reply.metadata.id.wrapping_sub(first_id));
        assert!(
            index < names.len() && !answered[index],
            "unexpected or repeated ID {}",
            reply.metadata.id
        );
        answered[index] = true;
        assert_answer(&reply, reply.metadata.id, &names[index], RecordType::A);
    }
}

// ---------- DNS messages ----------

/// A query with RD set and no EDNS.
pub fn query(id: u16, name: &str, rtype: RecordType) -> Message {
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    msg
}

/// The same query with an OPT record (payload 4096, no options).
pub fn with_opt(mut msg: Message) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    msg.set_edns(edns);
    msg
}

pub fn encode(msg: &Message) -> Vec<u8> {
    msg.to_vec().expect("encode a test message")
}

/// A message with its 2-byte length prefix.
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(msg.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    out
}

/// Parses a reply, failing the test (with the bytes) if it is not a valid
/// DNS message.
pub fn parse(bytes: &[u8]) -> Message {
    Message::from_vec(bytes)
        .unwrap_or_else(|e| panic!("reply is not a valid DNS message ({e}): {bytes:02x?}"))
}

/// Checks that `reply` answers the query (`id`, `name`, `rtype`) with the
/// scripted upstream's records for that name.
pub fn assert_answer(reply: &Message, id: u16, name: &str, rtype: RecordType) {
    assert_reply_header(reply, id, name, rtype, ResponseCode::NoError);
    let wanted = match rtype {
        RecordType::A => RData::A(A(expected_a(name))),
        RecordType::AAAA => RData::AAAA(AAAA(expected_aaaa(name))),
        RecordType::TXT => {
            let txt = expected_txt(name);
            RData::TXT(TXT::from_bytes(txt.iter().map(Vec::as_slice).collect()))
        }
        other => panic!("no expected answer for {other}"),
    };
    assert_eq!(reply.answers.len(), 1, "one answer for {name}: {reply:?}");
    let record = &reply.answers[0];
    assert_eq!(lower_fqdn(&record.name.to_ascii()), lower_fqdn(name));
    assert_eq!(record.data, wanted, "answer for {name} {rtype}");
}

/// Checks ID, QR, RCODE and that the question is exactly `name` `rtype`.
pub fn assert_reply_header(
    reply: &Message,
    id: u16,
    name: &str,
    rtype: RecordType,
    rcode: ResponseCode,
) {
    assert_eq!(reply.metadata.id, id, "reply ID for {name}");
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    assert_eq!(
        reply.metadata.response_code, rcode,
        "RCODE of the reply for {name}"
    );
    assert_eq!(reply.queries.len(), 1, "QDCOUNT of the reply for {name}");
    let q = &reply.queries[0];
    assert_eq!(lower_fqdn(&q.name().to_ascii()), lower_fqdn(name));
    assert_eq!(q.query_type(), rtype);
}
