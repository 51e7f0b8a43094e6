//! The `command` handler: the payload is an executable, run with the update's declared
//! arguments.
//!
//! - The payload is copied from the cache to `<work>/run/<update>/` with mode 0755 (beside
//!   the update's other content files, by their names) and run there, with a timeout.
//! - Environment: `UPKEEP_INSTALL_ROOT`, `UPKEEP_UPDATE_ID`, `UPKEEP_UPDATE_REVISION`,
//!   `UPKEEP_OPERATION` (`install` or `uninstall`), `UPKEEP_CONTENT_DIR`.
//! - Exit code 0: success; 3010: success, restart required; 1641: success, restart
//!   initiated (reported as restart required); anything else: failure
//!   (`WU_E_UH_INSTALLERFAILURE`, the raw code kept in history); killed by a signal: failure
//!   with the raw code `128 + signal`; over the timeout: killed, `WU_E_UH_TIMEOUT`. Exit
//!   statuses are 8 bits on Linux, so 3010 and 1641 arrive as 194 and 105 (`3010 & 255`,
//!   `1641 & 255`): those are read as 3010 and 1641, and recorded so.
//! - Progress: a line `upkeep-progress: N` (N from 0 to 100) on standard output reports N %.
//!   Every other line of output goes to the log (`tracing`, target `upkeep::command`).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use upkeep_types::HResult;

use crate::{InstallError, Result};

/// A content file to put beside the command.
#[derive(Clone, Debug)]
pub struct RunFile {
    /// Its verified copy in the content cache.
    pub cached: PathBuf,
    /// Its file name in the update.
    pub name: String,
    /// Its signed SHA-256 (hex), checked again while it is copied.
    pub sha256: Option<String>,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The update's content files; the first is the executable.
    pub files: Vec<RunFile>,
    /// Arguments.
    pub arguments: Vec<String>,
    /// Time limit.
    pub timeout: Duration,
    /// `install` or `uninstall`.
    pub operation: String,
    /// The install root.
    pub install_root: PathBuf,
    /// Update id and revision.
    pub update_id: String,
    /// Revision.
    pub revision: u32,
    /// Private directory to run in (emptied first, removed afterwards).
    pub run_dir: PathBuf,
}

/// A command's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The raw exit code.
    pub exit_code: i64,
    /// 3010 or 1641.
    pub reboot_required: bool,
}

/// Copies a cached file, checking its signed hash on the way (the cache is re-verified on
/// use: see `docs/architecture.md`, durability).
fn copy_in(f: &RunFile, to: &Path, mode: u32) -> Result<()> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    let mut src = std::fs::File::open(&f.cached).map_err(|e| InstallError::io(&f.cached, e))?;
    let mut dst = std::fs::File::create(to).map_err(|e| InstallError::io(to, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = src
            .read(&mut buf)
            .map_err(|e| InstallError::io(&f.cached, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(|e| InstallError::io(to, e))?;
    }
    if let Some(want) = &f.sha256 {
        if hex::encode(h.finalize()) != want.to_ascii_lowercase() {
            return Err(InstallError::new(
                HResult::WU_E_DM_INCORRECTFILEHASH,
                format!(
                    "{}: the cached file does not match its signed hash; download it again",
                    f.cached.display()
                ),
            ));
        }
    }
    drop(dst);
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .map_err(|e| InstallError::io(to, e))
}

/// Runs the command. `abort` kills it (the result is then `WU_E_CALL_CANCELLED`).
pub fn run(
    inv: &Invocation,
    progress: &mut dyn FnMut(f64),
    abort: &dyn Fn() -> bool,
) -> Result<Outcome> {
    let dir = &inv.run_dir;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| InstallError::io(dir, e))?;
    let Some(first) = inv.files.first() else {
        return Err(InstallError::new(
            HResult::WU_E_UH_INVALIDMETADATA,
            "a command update without content",
        ));
    };
    let exe = dir.join(&first.name);
    let copied =
        inv.files.iter().enumerate().try_for_each(|(i, f)| {
            copy_in(f, &dir.join(&f.name), if i == 0 { 0o755 } else { 0o644 })
        });
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(dir);
        return Err(e);
    }
    let result = run_in(inv, &exe, first.name.clone(), progress, abort);
    let _ = std::fs::remove_dir_all(dir);
    result
}

fn run_in(
    inv: &Invocation,
    exe: &Path,
    name: String,
    progress: &mut dyn FnMut(f64),
    abort: &dyn Fn() -> bool,
) -> Result<Outcome> {
    let mut child = Command::new(exe)
        .args(&inv.arguments)
        .current_dir(&inv.run_dir)
        .env("UPKEEP_INSTALL_ROOT", &inv.install_root)
        .env("UPKEEP_UPDATE_ID", &inv.update_id)
        .env("UPKEEP_UPDATE_REVISION", inv.revision.to_string())
        .env("UPKEEP_OPERATION", &inv.operation)
        .env("UPKEEP_CONTENT_DIR", &inv.run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            InstallError::new(
                HResult::WU_E_UH_INSTALLERFAILURE,
                format!("{}: cannot run: {e}", name),
            )
        })?;
    // Output readers: progress lines to us, everything else to the log.
    let (tx, rx) = std::sync::mpsc::channel::<f64>();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let out_name = name.clone();
    let t_out = std::thread::spawn(move || {
        for line in BufReader::new(out)
            .lines()
            .map_while(std::result::Result::ok)
        {
            match line
                .strip_prefix("upkeep-progress:")
                .map(|n| n.trim().parse::<f64>())
            {
                Some(Ok(p)) => {
                    let _ = tx.send((p / 100.0).clamp(0.0, 1.0));
                }
                _ => tracing::info!(target: "upkeep::command", "{out_name}: {line}"),
            }
        }
    });
    let err_name = name.clone();
    let t_err = std::thread::spawn(move || {
        for line in BufReader::new(err)
            .lines()
            .map_while(std::result::Result::ok)
        {
            tracing::warn!(target: "upkeep::command", "{err_name}: {line}");
        }
    });
    let started = Instant::now();
    let status = loop {
        while let Ok(p) = rx.try_recv() {
            progress(p);
        }
        if let Some(s) = child.try_wait().map_err(|e| InstallError::io(exe, e))? {
            break Ok(s);
        }
        if abort() {
            let _ = child.kill();
            let _ = child.wait();
            break Err(InstallError::new(HResult::WU_E_CALL_CANCELLED, "aborted"));
        }
        if started.elapsed() >= inv.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break Err(InstallError::new(
                HResult::WU_E_UH_TIMEOUT,
                format!("{}: still running after {:?}; killed", name, inv.timeout),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = t_out.join();
    let _ = t_err.join();
    while let Ok(p) = rx.try_recv() {
        progress(p);
    }
    let status = status?;
    let code = match (status.code(), status.signal()) {
        (Some(194), _) => 3010,
        (Some(105), _) => 1641,
        (Some(c), _) => c as i64,
        (None, Some(sig)) => 128 + sig as i64,
        _ => -1,
    };
    match code {
        0 => Ok(Outcome {
            exit_code: 0,
            reboot_required: false,
        }),
        3010 | 1641 => Ok(Outcome {
            exit_code: code,
            reboot_required: true,
        }),
        _ => Err(InstallError {
            hresult: HResult::WU_E_UH_INSTALLERFAILURE,
            message: format!("{} {} exited with {code}", name, inv.operation),
            unmapped: code,
        }),
    }
}
