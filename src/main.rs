//! The `dotgate` binary: parse the command line, set up logging, and run a
//! subcommand. `anyhow` lives only here, at the edge.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use dotgate::cli::{Cli, Command, QueryArgs, ServeArgs};
use dotgate::client::{self, ServerSpec, Trust};
use dotgate::config::{Config, RESOLV_CONF};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_level = match &cli.command {
        Command::Serve(args) => args.log_level.clone(),
        Command::Query(_) => None,
    };
    init_tracing(
        log_level.as_deref(),
        matches!(cli.command, Command::Query(_)),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dotgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Query(args) => query(args).await,
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
    let config = Config::from_args(&args, Path::new(RESOLV_CONF))?;
    let mut listeners = Vec::with_capacity(config.listen.len());
    for addr in &config.listen {
        listeners.push(bind(*addr).with_context(|| format!("cannot listen on {addr}"))?);
    }
    let shutdown = dotgate::shutdown::on_signals().context("cannot install signal handlers")?;
    dotgate::server::run(config, listeners, shutdown).await?;
    Ok(ExitCode::SUCCESS)
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
    let spec: ServerSpec = server.parse()?;
    let questions = client::parse_questions(words)?;
    if questions.is_empty() {
        bail!("no question: give at least one NAME after the server");
    }
    let trust = match (&args.ca, args.insecure) {
        (_, true) => Trust::Insecure,
        (Some(path), false) => Trust::Ca(path.clone()),
        (None, false) => Trust::System,
    };
    let config = client::client_config(&trust)?;
    let tls_name = args.tls_name.clone().unwrap_or_else(|| spec.host.clone());
    let limit = args.timeout.0;
    let addrs = tokio::time::timeout(limit, client::resolve(&spec))
        .await
        .map_err(|_| client::ClientError::Timeout)??;
    let mut last_error = None;
    for addr in addrs {
        let connected =
            tokio::time::timeout(limit, client::connect(addr, &tls_name, config.clone())).await;
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
        let answers = client::pipeline(stream, &questions, limit).await?;
        let mut missing = 0;
        for answer in &answers {
            print!("{}", client::format_answer(answer, addr));
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
