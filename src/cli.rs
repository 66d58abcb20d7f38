//! Command line: `switchyard [run] [-c DIR]`, `switchyard check [-c DIR]`,
//! and the signal handling of a running proxy (SIGHUP reload, SIGTERM/SIGINT drain).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{self, Config, LogFormat};
use crate::server::Server;
use crate::workers::Workers;

/// A TLS-terminating reverse proxy for sync worker pools and async WebSocket backends.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The configuration directory (switchyard.toml and sites/*.toml).
    #[arg(
        short,
        long,
        global = true,
        default_value = "./config",
        value_name = "PATH"
    )]
    pub config: PathBuf,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the configuration and print a summary; exit 0 or 1.
    Check,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(&cli.config),
        Command::Run => run(&cli.config),
    }
}

fn print_errors(errors: &config::ConfigErrors) {
    for e in &errors.0 {
        eprintln!("{e}");
    }
    eprintln!(
        "switchyard: {} error{} in the configuration",
        errors.0.len(),
        if errors.0.len() == 1 { "" } else { "s" }
    );
}

fn check(dir: &Path) -> ExitCode {
    match config::load(dir) {
        Ok(c) => {
            print!("{}", summary(&c));
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_errors(&e);
            ExitCode::FAILURE
        }
    }
}

/// A one-screen summary of a configuration, as `check` prints it.
pub fn summary(c: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let addrs = |v: &[std::net::SocketAddr]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(s, "configuration {} is valid", c.dir.display());
    let _ = writeln!(
        s,
        "listen: https [{}]  http [{}]  admin {}",
        addrs(&c.listen.https),
        addrs(&c.listen.http),
        c.listen.admin.map_or("off".to_string(), |a| a.to_string())
    );
    let keys: Vec<String> = c
        .tls
        .ticket_keys
        .iter()
        .map(|k| k.path.display().to_string())
        .collect();
    let _ = if keys.is_empty() {
        writeln!(s, "session tickets: per-process rotating keys")
    } else {
        writeln!(
            s,
            "session tickets: shared keys {} (the first issues)",
            keys.join(", ")
        )
    };
    for site in &c.sites {
        let _ = writeln!(
            s,
            "site {}: hosts {}{}{}",
            site.name,
            site.hosts.join(", "),
            if site.acme {
                "; tls acme"
            } else if site.tls.is_some() {
                "; tls"
            } else {
                ""
            },
            if site.redirect_https {
                "; redirect_https"
            } else {
                ""
            }
        );
        for p in &site.pools {
            let _ = writeln!(
                s,
                "  pool {}: {}{}",
                p.name,
                p.servers.join(", "),
                p.max_in_flight
                    .map_or(String::new(), |n| format!(" (max_in_flight {n})"))
            );
        }
        for r in &site.routes {
            let pool =
                |i: Option<usize>| i.and_then(|i| site.pools.get(i)).map(|p| p.name.as_str());
            let mut targets: Vec<String> = Vec::new();
            if let Some(f) = &r.files {
                let internal = if f.internal { " (internal)" } else { "" };
                targets.push(format!("files {}{internal}", f.dir.display()));
            }
            if let Some(p) = pool(r.pool) {
                targets.push(format!("pool {p}"));
            }
            if let Some(p) = pool(r.websocket) {
                targets.push(format!("websocket {p}"));
            }
            let _ = writeln!(s, "  route {} {} -> {}", r.name, r.path, targets.join(", "));
        }
    }
    s
}

fn init_logging(c: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&c.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi);
    let _ = match c.log.format {
        // One flat object per line: {"timestamp", "level", "target", "site", ...}.
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn run(dir: &Path) -> ExitCode {
    let config = match config::load(dir) {
        Ok(c) => c,
        Err(e) => {
            print_errors(&e);
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config);
    // One single-threaded runtime per worker (see `crate::workers`): this
    // one is worker 0, the others start with the server.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(serve(dir.to_path_buf(), config));
    // Tasks still running (a second signal cut the drain short) are
    // dropped; do not wait on blocking work either.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

async fn serve(dir: PathBuf, config: Config) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: a signal that arrives while the listeners are being
    // bound must not take the default action (terminate the process).
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("switchyard: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let workers = match config.runtime.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let workers = if workers > 1 {
        match Workers::start(workers) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("switchyard: cannot start {workers} worker threads: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let server = match Server::start_on(config, workers).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&server, &dir).await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("draining; a second signal exits at once");
    let drain = {
        let server: Arc<Server> = server.clone();
        async move { server.shutdown().await }
    };
    tokio::select! {
        () = drain => {
            tracing::info!("drained; exiting");
            ExitCode::SUCCESS
        }
        _ = term.recv() => ExitCode::SUCCESS,
        _ = int.recv() => ExitCode::SUCCESS,
    }
}

async fn reload(server: &Server, dir: &Path) {
    let dir2 = dir.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || config::load(&dir2)).await;
    let config = match loaded {
        Ok(Ok(c)) => c,
        Ok(Err(errors)) => {
            for e in &errors.0 {
                tracing::error!("reload: {e}");
            }
            tracing::error!("reload rejected: the old configuration keeps serving");
            server
                .shared()
                .metrics
                .counter(
                    crate::metrics::CONFIG_RELOADS_TOTAL,
                    &[("result", "failure")],
                )
                .increment(1);
            return;
        }
        Err(e) => {
            tracing::error!("reload failed: {e}");
            return;
        }
    };
    match server.reload(config).await {
        Ok(()) => tracing::info!(config = %dir.display(), "configuration reloaded"),
        Err(e) => tracing::error!("reload rejected: {e}; the old configuration keeps serving"),
    }
}
