//! `upkeep-tuf-conformance`: the client protocol of the public TUF conformance suite.
//!
//! ```text
//! upkeep-tuf-conformance --metadata-dir DIR init TRUSTED_ROOT
//! upkeep-tuf-conformance --metadata-url URL --metadata-dir DIR refresh
//! upkeep-tuf-conformance --metadata-url URL --metadata-dir DIR --target-name PATH ...
//!     --target-dir TDIR --target-base-url TURL download
//! ```
//! Exit 0 on success, 1 on any failure (never a panic code).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use upkeep_tuf::{encode_role, Client, ClientConfig, HttpTransport, Limits, TargetReader};

#[derive(Default)]
struct Args {
    metadata_dir: Option<PathBuf>,
    metadata_url: Option<String>,
    target_names: Vec<String>,
    target_dir: Option<PathBuf>,
    target_base_url: Option<String>,
    command: Option<String>,
    positional: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--metadata-dir" => a.metadata_dir = Some(value(&arg)?.into()),
            "--metadata-url" => a.metadata_url = Some(value(&arg)?),
            "--target-name" => a.target_names.push(value(&arg)?),
            "--target-dir" => a.target_dir = Some(value(&arg)?.into()),
            "--target-base-url" => a.target_base_url = Some(value(&arg)?),
            "-v" | "-vv" | "-vvv" | "--verbose" => {}
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s if a.command.is_none() => a.command = Some(s.to_string()),
            s => a.positional.push(s.to_string()),
        }
    }
    Ok(a)
}

fn client(a: &Args) -> Result<Client, String> {
    let cfg = ClientConfig {
        metadata_dir: a.metadata_dir.clone().ok_or("--metadata-dir is required")?,
        metadata_url: a.metadata_url.clone().ok_or("--metadata-url is required")?,
        limits: Limits::default(),
        offline: false,
        timestamp_first: false,
    };
    let transport = HttpTransport::new().map_err(|e| e.to_string())?;
    Client::new(cfg, Arc::new(transport)).map_err(|e| e.to_string())
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    match a.command.as_deref() {
        Some("init") => {
            let dir = a
                .metadata_dir
                .as_ref()
                .ok_or("--metadata-dir is required")?;
            let root = a.positional.first().ok_or("init needs TRUSTED_ROOT")?;
            let bytes = upkeep_fs::read(root).map_err(|e| e.to_string())?;
            Client::init_trusted_root(dir, &bytes, false).map_err(|e| e.to_string())
        }
        Some("refresh") => client(&a)?.refresh().map_err(|e| e.to_string()),
        Some("download") => {
            let mut c = client(&a)?;
            let dir = a.target_dir.clone().ok_or("--target-dir is required")?;
            let base = a
                .target_base_url
                .clone()
                .ok_or("--target-base-url is required")?;
            if a.target_names.is_empty() {
                return Err("--target-name is required".into());
            }
            c.refresh().map_err(|e| e.to_string())?;
            for name in &a.target_names {
                let info = c
                    .target_info(name)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{name}: not found in the repository"))?;
                let dest = dir.join(encode_role(name));
                if let Ok(f) = upkeep_fs::open(&dest) {
                    if let Ok(mut r) = TargetReader::new(name, &info, f) {
                        if r.copy_to(&mut std::io::sink()).is_ok() {
                            continue;
                        }
                    }
                }
                c.download_target(&base, name, &info, &dest)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other}")),
        None => Err("no command: init, refresh or download".into()),
    }
}

fn main() -> ExitCode {
    if std::env::var_os("UPKEEP_LOG").is_some() {
        eprintln!("(logging through UPKEEP_LOG is not wired in this binary)");
    }
    match std::panic::catch_unwind(run) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("upkeep-tuf-conformance: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("upkeep-tuf-conformance: internal error");
            ExitCode::FAILURE
        }
    }
}
