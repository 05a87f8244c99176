//! The `dotgate` binary: parse the command line, set up logging, and run a
//! subcommand. `anyhow` lives only here, at the edge.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use dotgate::config::cli::{CheckArgs, Cli, Command, QueryArgs, ServeArgs};
use dotgate::config::{system_resolver, Config, UpstreamSpec};
use dotgate::server::{Listener, ListenerKind};
use dotgate::tools::doh::{self, DohClient, DohUrl};
use dotgate::tools::manual;
use dotgate::tools::query::{self, ServerSpec, Trust};

fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Some(code) = print_manual(&cli.command) {
        return code;
    }
    let log_level = match &cli.command {
        Command::Serve(args) => args.log_level.clone(),
        _ => None,
    };
    init_tracing(
        log_level.as_deref(),
        matches!(cli.command, Command::Query(_) | Command::Check(_)),
    );
    // On one CPU (pinned, or a container's quota of one, which the
    // standard library reads from the cgroup), the single-threaded
    // scheduler: with one worker anyway, work stealing and its
    // cross-thread wake-ups only cost (DoH answered 7.8% more queries per
    // core with it, docs/performance.md).
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dotgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::debug!(
        cpus,
        scheduler = if cpus == 1 {
            "single-threaded"
        } else {
            "one worker per CPU"
        },
        "async runtime started"
    );
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Query(args) => query(args).await,
            Command::Check(args) => check(args).await,
            // Answered by print_manual above.
            Command::Completions(_) | Command::Manpage(_) => Ok(ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dotgate: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// `completions` and `manpage`: printed without a runtime or logging. None
/// for the other subcommands.
fn print_manual(command: &Command) -> Option<ExitCode> {
    use std::io::Write;
    let written = match command {
        Command::Completions(args) => {
            let script = manual::completions(args.shell);
            std::io::stdout()
                .write_all(&script)
                .and_then(|()| std::io::stdout().flush())
                .map_err(|e| format!("cannot write the completions: {e}"))
        }
        Command::Manpage(args) => match &args.dir {
            Some(dir) => manual::manpages_into(dir).map_err(|e| e.to_string()),
            None => {
                let mut page = Vec::new();
                manual::manpage(&mut page)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        std::io::stdout()
                            .write_all(&page)
                            .and_then(|()| std::io::stdout().flush())
                            .map_err(|e| format!("cannot write the man page: {e}"))
                    })
            }
        },
        Command::Serve(_) | Command::Query(_) | Command::Check(_) => return None,
    };
    Some(match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dotgate: {e}");
            ExitCode::FAILURE
        }
    })
}

/// Parses the command line; for `serve --config FILE`, merges the file's keys
/// in under the flags and environment variables (see `config/file.rs`).
fn parse_command_line() -> Result<Cli, ExitCode> {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    // A lenient first pass only finds the file and which flags are already
    // set: a flag the file completes (`--cert` here, `key` there) must not
    // fail yet.
    let first = Cli::command().ignore_errors(true).get_matches_from(&argv);
    if let Some(serve_matches) = first.subcommand_matches("serve") {
        if let Some(path) = serve_matches.get_one::<PathBuf>("config") {
            let serve = Cli::command();
            let Some(serve) = serve.find_subcommand("serve") else {
                return Err(ExitCode::from(2));
            };
            match dotgate::config::file::file_args(path, serve, serve_matches) {
                Ok(extra) => argv.extend(extra),
                Err(e) => {
                    eprintln!("dotgate: {e}");
                    return Err(ExitCode::from(2));
                }
            }
        }
    }
    Ok(Cli::parse_from(argv))
}

/// The error and its causes on one line, skipping a cause whose text the
/// line already holds (several error types quote their source).
fn describe(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

/// `--log-level` wins, then RUST_LOG, then `info` (`warn` for `query`, whose
/// output is the replies).
fn init_tracing(flag: Option<&str>, quiet: bool) {
    let filter = flag
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(if quiet { "warn" } else { "info" }));
    // Colour only on a terminal: `docker logs` and journald get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.check_config {
        return Ok(check_config(&args));
    }
    let config = Config::from_args(&args, &args.resolv_conf)?;
    if args.upstream.is_empty() {
        let system: Vec<SocketAddr> = config
            .upstreams
            .iter()
            .filter_map(|u| match u {
                UpstreamSpec::Plain(addr) => Some(*addr),
                _ => None,
            })
            .collect();
        tracing::info!("{}", system_resolver::chosen(&system, &args.resolv_conf));
    }
    let mut listeners = Vec::new();
    let proxy = config.proxy.enabled;
    let plain = config.listen.iter().map(|a| (a, proxy, ListenerKind::Dot));
    let behind_proxy = config
        .proxy_listen
        .iter()
        .map(|a| (a, true, ListenerKind::Dot));
    let doh = config
        .doh
        .listen
        .iter()
        .map(|a| (a, proxy, ListenerKind::Doh));
    let doh_plain = config
        .doh
        .listen_plain
        .iter()
        .map(|a| (a, proxy, ListenerKind::DohPlain));
    for (addr, proxy, kind) in plain.chain(behind_proxy).chain(doh).chain(doh_plain) {
        let socket = bind(*addr).with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(Listener {
            socket,
            proxy,
            kind,
        });
    }
    let shutdown =
        dotgate::server::shutdown::on_signals().context("cannot install signal handlers")?;
    dotgate::server::run_listeners(config, listeners, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// `serve --check-config`: prints every problem and warning; exit 0 when
/// dotgate would start.
fn check_config(args: &ServeArgs) -> ExitCode {
    let found = dotgate::tools::validate::check(args, &args.resolv_conf);
    for warning in &found.warnings {
        println!("warning: {warning}");
    }
    for problem in &found.problems {
        println!("problem: {problem}");
    }
    if found.problems.is_empty() {
        println!("configuration OK");
        ExitCode::SUCCESS
    } else {
        println!(
            "{} problem(s): dotgate would not start",
            found.problems.len()
        );
        ExitCode::FAILURE
    }
}

/// Binds a listening socket. An IPv6 wildcard also accepts IPv4 (so the
/// default `[::]:853` serves both), whatever the system's default says.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

async fn query(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let (server, words) = match args.args.split_first() {
        Some((server, words)) if server.starts_with('@') => (server, words),
        _ => bail!("the first argument must be the server, written @SERVER[:PORT]"),
    };
    // `@https://...`: DoH; anything else is a DoT server.
    let doh_url = match server.strip_prefix('@') {
        Some(url) if DohUrl::is_url(url) => Some(url.parse::<DohUrl>()?),
        _ => None,
    };
    let spec: ServerSpec = match &doh_url {
        Some(url) => ServerSpec {
            host: url.host.clone(),
            port: url.port,
        },
        None => server.parse()?,
    };
    let questions = query::parse_questions(words)?;
    if questions.is_empty() {
        bail!("no question: give at least one NAME after the server");
    }
    if args.get && doh_url.is_none() {
        bail!("--get is for DoH servers (@https://HOST[:PORT]/PATH)");
    }
    let trust = match (&args.ca, args.insecure) {
        (_, true) => Trust::Insecure,
        (Some(path), false) => Trust::Ca(path.clone()),
        (None, false) => Trust::System,
    };
    let config = match &doh_url {
        Some(_) => doh::for_https(query::tls_config(
            &trust,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        )?),
        None => query::client_config(&trust)?,
    };
    let tls_name = args.tls_name.clone().unwrap_or_else(|| spec.host.clone());
    let limit = args.timeout.0;
    let addrs = match &args.bootstrap {
        // A server given by name, resolved through the given resolver (the
        // same lookup as for a `tls://NAME` upstream).
        Some(bootstrap) if spec.host.parse::<std::net::IpAddr>().is_err() => {
            let bootstrap = match dotgate::config::parse_upstream(bootstrap) {
                Ok(dotgate::config::UpstreamSpec::Plain(addr)) => addr,
                _ => bail!("--bootstrap {bootstrap:?}: write IP or IP:PORT"),
            };
            let (ips, _ttl) = dotgate::upstream::resolve_via(bootstrap, &spec.host, limit).await?;
            ips.into_iter()
                .map(|ip| SocketAddr::new(ip, spec.port))
                .collect()
        }
        _ => tokio::time::timeout(limit, query::resolve(&spec))
            .await
            .map_err(|_| query::ClientError::Timeout)??,
    };
    let mut last_error = None;
    for addr in addrs {
        let connected =
            tokio::time::timeout(limit, query::dial(addr, &tls_name, config.clone())).await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                last_error = Some(anyhow::Error::from(e));
                continue;
            }
            Err(_) => {
                last_error = Some(anyhow::anyhow!("connecting to {addr} timed out"));
                continue;
            }
        };
        let (answers, transport) = match &doh_url {
            None => (
                query::pipeline(stream, &questions, limit).await?,
                "TLS".to_string(),
            ),
            Some(url) => {
                let client = tokio::time::timeout(limit, DohClient::start(stream, url))
                    .await
                    .map_err(|_| query::ClientError::Timeout)??;
                (
                    query::ask_https(&client, &questions, args.get, limit).await?,
                    format!("{url}, {}", client.version.label()),
                )
            }
        };
        let mut missing = 0;
        for answer in &answers {
            print!("{}", query::format_answer(answer, addr, &transport));
            println!();
            missing += usize::from(answer.reply.is_none());
        }
        if missing > 0 {
            eprintln!(
                "dotgate: {missing} of {} questions got no reply",
                answers.len()
            );
            return Ok(ExitCode::FAILURE);
        }
        return Ok(ExitCode::SUCCESS);
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no address to connect to")))
}

/// `dotgate check`: the report on stdout; exit 0 when nothing FAILs, 1 when
/// something does, 2 when the check could not run (a bad `--ca` file).
async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let trust = match &args.ca {
        Some(path) => Trust::Ca(path.clone()),
        None => Trust::System,
    };
    let options = dotgate::tools::check::Options::new(
        &args.server,
        args.tls_name.clone(),
        trust,
        args.address,
        args.quick,
    )?;
    let report = dotgate::tools::check::run(&options).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
