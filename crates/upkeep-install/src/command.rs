//! The `command` handler: the payload is an executable, run with the update's declared
//! arguments.
//!
//! - The payload is copied from the cache to `<work>/run/<update>/` with mode 0755 (beside
//!   the update's other content files, by their names) and run there, with a timeout.
//! - Environment: `UPKEEP_INSTALL_ROOT`, `UPKEEP_UPDATE_ID`, `UPKEEP_UPDATE_REVISION`,
//!   `UPKEEP_OPERATION` (`install`, `upgrade` or `uninstall`), `UPKEEP_PREVIOUS_REVISION`
//!   (for `upgrade`: the revision being replaced), `UPKEEP_CONTENT_DIR`. Paths are absolute.
//! - Exit codes map through the update's own table: a code in `success_exit_codes`
//!   (default `0`) is success, one in `reboot_exit_codes` (default `3010`, `1641`) success
//!   with a restart required; anything else is failure (`WU_E_UH_INSTALLERFAILURE`, the raw
//!   code kept in history). Killed by a signal: failure with the raw code `128 + signal`.
//! - The command runs in its own session and process group. Over the timeout, or on abort,
//!   the whole group gets SIGTERM, then SIGKILL after [`KILL_GRACE`]; the result is
//!   `WU_E_UH_TIMEOUT` or `WU_E_CALL_CANCELLED`. Once the command itself has exited, output
//!   is read for at most [`OUTPUT_GRACE`] more: a background process it started (a daemon)
//!   may keep the pipes open without holding the install up.
//! - Progress: a line `upkeep-progress: N` (N from 0 to 100) on standard output reports N %.
//!   Every other line of output goes to the log (`tracing`, target `upkeep::command`).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use upkeep_types::HResult;

use crate::{InstallError, Reporter, Result};

/// How long a command's process group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// How long output is still read after the command itself has exited.
pub const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// A content file to put beside the command.
#[derive(Clone, Debug)]
pub struct RunFile {
    /// Its verified copy in the content cache.
    pub cached: PathBuf,
    /// Its file name in the update.
    pub name: String,
    /// Its signed hashes (`(algorithm, hex)`), every one checked again while it is
    /// copied.
    pub hashes: Option<Vec<(String, String)>>,
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
    /// `install`, `upgrade` or `uninstall`.
    pub operation: String,
    /// For an upgrade: the revision it replaces.
    pub previous_revision: Option<u32>,
    /// Exit codes that mean success.
    pub success_exit_codes: Vec<i64>,
    /// Exit codes that mean success with a restart required.
    pub reboot_exit_codes: Vec<i64>,
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
    /// The code is one of the update's `reboot_exit_codes`.
    pub reboot_required: bool,
}

/// Whether `path` is something the handler can run: a script with a `#!` line or an ELF
/// executable. `repo add` refuses anything else (the kernel would: `ENOEXEC`).
pub fn check_executable(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| InstallError::io(path, e))?;
    let head = &head[..n];
    if head.starts_with(b"#!") || head.starts_with(b"\x7fELF") {
        return Ok(());
    }
    Err(InstallError::new(
        HResult::WU_E_UH_INSTALLERFAILURE,
        format!(
            "{}: the command handler cannot run it: neither a script starting with #! nor an ELF executable",
            path.display()
        ),
    ))
}

/// Copies a cached file, checking its signed hash on the way (the cache is re-verified on
/// use: see `docs/architecture.md`, durability).
pub fn copy_in(f: &RunFile, to: &Path, mode: u32) -> Result<()> {
    use std::io::{Read, Write};
    let mut verifier = crate::verifier(f.hashes.as_deref(), &f.cached)?;
    let mut src = std::fs::File::open(&f.cached).map_err(|e| InstallError::io(&f.cached, e))?;
    let mut dst = std::fs::File::create(to).map_err(|e| InstallError::io(to, e))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = src
            .read(&mut buf)
            .map_err(|e| InstallError::io(&f.cached, e))?;
        if n == 0 {
            break;
        }
        if let Some(v) = &mut verifier {
            v.update(&buf[..n]);
        }
        dst.write_all(&buf[..n])
            .map_err(|e| InstallError::io(to, e))?;
    }
    if let Some(v) = verifier {
        if v.finish().is_err() {
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

/// Runs the command. Cancellation through `reporter` kills its process group (the result
/// is then `WU_E_CALL_CANCELLED`).
pub fn run(inv: &Invocation, reporter: &dyn Reporter) -> Result<Outcome> {
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
    let result = run_in(inv, &exe, first.name.clone(), reporter);
    let _ = std::fs::remove_dir_all(dir);
    result
}

/// Sends `sig` to the process group `pgid`.
fn kill_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory effects.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

/// SIGTERM to the group, then SIGKILL once `KILL_GRACE` has passed; reaps the child.
fn stop_group(child: &mut std::process::Child) {
    let pgid = child.id();
    kill_group(pgid, libc::SIGTERM);
    let deadline = Instant::now() + KILL_GRACE;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(pgid, libc::SIGKILL);
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    // Whatever else of the group ignored SIGTERM goes now.
    kill_group(pgid, libc::SIGKILL);
}

fn run_in(inv: &Invocation, exe: &Path, name: String, reporter: &dyn Reporter) -> Result<Outcome> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(exe);
    cmd.args(&inv.arguments)
        .current_dir(&inv.run_dir)
        .env("UPKEEP_INSTALL_ROOT", &inv.install_root)
        .env("UPKEEP_UPDATE_ID", &inv.update_id)
        .env("UPKEEP_UPDATE_REVISION", inv.revision.to_string())
        .env("UPKEEP_OPERATION", &inv.operation)
        .env("UPKEEP_CONTENT_DIR", &inv.run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match inv.previous_revision {
        Some(r) => cmd.env("UPKEEP_PREVIOUS_REVISION", r.to_string()),
        None => cmd.env_remove("UPKEEP_PREVIOUS_REVISION"),
    };
    // SAFETY: setsid(2) is async-signal-safe; the child gets its own session and process
    // group (pgid = its pid), so the whole group can be signalled and a terminal's Ctrl-C
    // does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // A process forked by another thread between our writing the executable and running
    // it still holds the written file open for a moment: exec fails with ETXTBSY until it
    // has exec'd or exited. Try again a few times, as Go's os/exec and cargo do.
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            r => {
                break r.map_err(|e| {
                    InstallError::new(
                        HResult::WU_E_UH_INSTALLERFAILURE,
                        format!("{}: cannot run: {e}", name),
                    )
                })?
            }
        }
    };
    // Output readers: progress lines to us, everything else to the log. Each says when its
    // pipe closed.
    let (tx, rx) = std::sync::mpsc::channel::<Option<f64>>();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let out_name = name.clone();
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out)
            .lines()
            .map_while(std::result::Result::ok)
        {
            match line
                .strip_prefix("upkeep-progress:")
                .map(|n| n.trim().parse::<f64>())
            {
                Some(Ok(p)) => {
                    let _ = out_tx.send(Some((p / 100.0).clamp(0.0, 1.0)));
                }
                _ => {
                    tracing::info!(target: "upkeep::command", "{out_name}: {}", line.escape_debug())
                }
            }
        }
        let _ = out_tx.send(None);
    });
    let err_name = name.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err)
            .lines()
            .map_while(std::result::Result::ok)
        {
            tracing::warn!(target: "upkeep::command", "{err_name}: {}", line.escape_debug());
        }
        let _ = tx.send(None);
    });
    let started = Instant::now();
    let mut closed = 0;
    let drain = |rx: &std::sync::mpsc::Receiver<Option<f64>>, closed: &mut i32| {
        while let Ok(m) = rx.try_recv() {
            match m {
                Some(p) => reporter.on_progress(p),
                None => *closed += 1,
            }
        }
    };
    let status = loop {
        drain(&rx, &mut closed);
        if let Some(s) = child.try_wait().map_err(|e| InstallError::io(exe, e))? {
            break Ok(s);
        }
        if reporter.is_cancelled() {
            stop_group(&mut child);
            break Err(InstallError::cancelled());
        }
        if started.elapsed() >= inv.timeout {
            stop_group(&mut child);
            break Err(InstallError::new(
                HResult::WU_E_UH_TIMEOUT,
                format!("{}: still running after {:?}; stopped", name, inv.timeout),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Read what is left, for a short while: a background process may hold the pipes.
    let deadline = Instant::now() + OUTPUT_GRACE;
    while closed < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Some(p)) => reporter.on_progress(p),
            Ok(None) => closed += 1,
            Err(_) => {
                if closed < 2 {
                    tracing::info!(target: "upkeep::command", "{name}: a process it started still holds its output; not waiting for it");
                }
                break;
            }
        }
    }
    let status = status?;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c as i64,
        (None, Some(sig)) => 128 + sig as i64,
        _ => -1,
    };
    if inv.success_exit_codes.contains(&code) {
        Ok(Outcome {
            exit_code: code,
            reboot_required: false,
        })
    } else if inv.reboot_exit_codes.contains(&code) {
        Ok(Outcome {
            exit_code: code,
            reboot_required: true,
        })
    } else {
        Err(InstallError {
            hresult: HResult::WU_E_UH_INSTALLERFAILURE,
            message: format!("{} {} exited with {code}", name, inv.operation),
            unmapped: code,
        })
    }
}
