//! `upkeepd`: opens the machine's agent (configuration, trusted metadata, recovery) and
//! serves it on the system bus until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// upkeep's system service: the machine's agent on D-Bus (`org.upkeep.Agent1`).
#[derive(Parser, Debug)]
#[command(name = "upkeepd", version, about)]
struct Args {
    /// Configuration file (TOML), as the `upkeep` command's.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Repository base URL, or a local directory.
    #[arg(long = "repo", value_name = "URL")]
    repo: Option<String>,
    /// Initially trusted root metadata.
    #[arg(long, value_name = "FILE")]
    trusted_root: Option<PathBuf>,
    /// State directory.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Install root.
    #[arg(long = "root", value_name = "DIR")]
    root: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UPKEEP_LOG")
                .unwrap_or_else(|_| "upkeepd=info,upkeep=info,upkeep_agent=info".into()),
        )
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("upkeepd")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut b = upkeep::Agent::builder()
        .default_client_application_id("upkeepd")
        .runtime(rt.handle().clone());
    if let Some(c) = &args.config {
        b = b.config_file(c);
    }
    if let Some(r) = &args.repo {
        b = b.repository(r);
    }
    if let Some(t) = &args.trusted_root {
        b = b.trusted_root(t);
    }
    if let Some(s) = &args.state_dir {
        b = b.state_dir(s);
    }
    if let Some(r) = &args.root {
        b = b.install_root(r);
    }
    // Opening reads files and recovers an interrupted transaction: before serving.
    let agent = match b.open() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(e.exit_code());
        }
    };
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            _ => {
                tracing::error!("cannot handle SIGTERM and SIGINT");
                return ExitCode::FAILURE;
            }
        };
        let conn = match upkeepd::serve(agent).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("cannot serve {} on the system bus: {e}", upkeepd::BUS_NAME);
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(name = upkeepd::BUS_NAME, "serving");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping");
        drop(conn);
        ExitCode::SUCCESS
    })
}
