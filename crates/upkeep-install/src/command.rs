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
//!   Other lines go to the log (`tracing`, target `upkeep::command`), bounded: a line is
//!   cut at [`MAX_LINE`] bytes, blank lines are not logged, and after [`LOG_BUDGET`] bytes
//!   or [`LOG_LINES`] lines of a command's output nothing more is logged; the rest is read and dropped, and how
//!   much was dropped is logged at the end. The last [`TAIL_LINES`] lines of standard error
//!   are kept and a failure's message (and so history) ends with them. Memory stays
//!   bounded whatever a command prints.

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

/// A line of a command's output is cut after this many bytes.
pub const MAX_LINE: usize = 4096;

/// Bytes of one command's output (both streams) that go to the log; past them (or past
/// [`LOG_LINES`] lines), output is counted and dropped.
pub const LOG_BUDGET: usize = 64 << 10;

/// Lines of one command's output that go to the log at most.
pub const LOG_LINES: usize = 500;

/// Lines of standard error kept for a failure's message.
pub const TAIL_LINES: usize = 10;

/// What a command printed that was not logged, and the tail of its standard error.
#[derive(Default, Debug)]
struct OutputSummary {
    logged_lines: usize,
    logged_bytes: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
    tail: std::collections::VecDeque<String>,
}

impl OutputSummary {
    /// Counts one line (as read, cut at [`MAX_LINE`]; `cut` bytes past that), and says
    /// whether it may be logged.
    fn admit(&mut self, line: &[u8], cut: u64) -> bool {
        self.dropped_bytes += cut;
        if line.iter().all(u8::is_ascii_whitespace) {
            return false;
        }
        if self.logged_bytes + line.len() > LOG_BUDGET || self.logged_lines >= LOG_LINES {
            self.dropped_lines += 1;
            self.dropped_bytes += line.len() as u64;
            return false;
        }
        self.logged_bytes += line.len();
        self.logged_lines += 1;
        true
    }

    fn keep(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        let mut l = line.to_string();
        if l.len() > 200 {
            let mut end = 200;
            while !l.is_char_boundary(end) {
                end -= 1;
            }
            l.truncate(end);
            l.push('…');
        }
        self.tail.push_back(l);
    }
}

/// Reads `r` to its end in lines of at most [`MAX_LINE`] bytes (the rest of a longer line
/// is read and counted, not kept), calling `f(line, bytes cut from it)` for each. Memory
/// stays at one buffer whatever the input.
fn for_each_line(mut r: impl std::io::Read, mut f: impl FnMut(&[u8], u64)) {
    let mut buf = vec![0u8; 64 << 10];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut cut = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for chunk in buf[..n].split_inclusive(|&b| b == b'\n') {
            let (body, ends) = match chunk.strip_suffix(b"\n") {
                Some(b) => (b, true),
                None => (chunk, false),
            };
            let room = MAX_LINE - line.len();
            if body.len() > room {
                line.extend_from_slice(&body[..room]);
                cut += (body.len() - room) as u64;
            } else {
                line.extend_from_slice(body);
            }
            if ends {
                f(&line, cut);
                line.clear();
                cut = 0;
            }
        }
    }
    if !line.is_empty() || cut > 0 {
        f(&line, cut);
    }
}

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
    let n = upkeep_fs::open(path)?
        .read(&mut head)
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
    let mut src = upkeep_fs::open(&f.cached).map_err(InstallError::from)?;
    let mut dst = upkeep_fs::create(to).map_err(InstallError::from)?;
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
    upkeep_fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .map_err(InstallError::from)
}

/// Runs the command. Cancellation through `reporter` kills its process group (the result
/// is then `WU_E_CALL_CANCELLED`).
pub fn run(inv: &Invocation, reporter: &dyn Reporter) -> Result<Outcome> {
    let dir = &inv.run_dir;
    let _ = upkeep_fs::remove_dir_all(dir);
    upkeep_fs::create_dir_all(dir).map_err(InstallError::from)?;
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
        let _ = upkeep_fs::remove_dir_all(dir);
        return Err(e);
    }
    let result = run_in(inv, &exe, first.name.clone(), reporter);
    let _ = upkeep_fs::remove_dir_all(dir);
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
    // Output readers: progress lines to us, the rest to the log within its budget. Each
    // says when its pipe closed.
    let (tx, rx) = std::sync::mpsc::channel::<Option<f64>>();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let summary = std::sync::Arc::new(std::sync::Mutex::new(OutputSummary::default()));
    let (out_name, out_tx, out_sum) = (name.clone(), tx.clone(), summary.clone());
    std::thread::spawn(move || {
        for_each_line(out, |line, cut| {
            let text = String::from_utf8_lossy(line);
            match text
                .strip_prefix("upkeep-progress:")
                .map(|n| n.trim().parse::<f64>())
            {
                Some(Ok(p)) => {
                    let _ = out_tx.send(Some((p / 100.0).clamp(0.0, 1.0)));
                }
                _ => {
                    if out_sum.lock().expect("not poisoned").admit(line, cut) {
                        tracing::info!(target: "upkeep::command", "{out_name}: {}", text.escape_debug())
                    }
                }
            }
        });
        let _ = out_tx.send(None);
    });
    let (err_name, err_sum) = (name.clone(), summary.clone());
    std::thread::spawn(move || {
        for_each_line(err, |line, cut| {
            let text = String::from_utf8_lossy(line);
            let mut sum = err_sum.lock().expect("not poisoned");
            sum.keep(&text);
            if sum.admit(line, cut) {
                drop(sum);
                tracing::warn!(target: "upkeep::command", "{err_name}: {}", text.escape_debug());
            }
        });
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
    let (tail, dropped) = {
        let sum = summary.lock().expect("not poisoned");
        if sum.dropped_bytes > 0 {
            tracing::info!(
                target: "upkeep::command",
                "{name}: {} more line(s) and {} byte(s) of output not logged (at most {LOG_LINES} lines and {LOG_BUDGET} bytes of a command's output are, each cut at {MAX_LINE})",
                sum.dropped_lines,
                sum.dropped_bytes
            );
        }
        (
            sum.tail.iter().cloned().collect::<Vec<_>>(),
            sum.dropped_bytes,
        )
    };
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
        let mut message = format!("{} {} exited with {code}", name, inv.operation);
        if !tail.is_empty() {
            message.push_str("; its last error output: ");
            message.push_str(&crate::escape_controls(&tail.join(" | ")));
        }
        if dropped > 0 {
            message.push_str(&format!(" ({dropped} bytes of output not kept)"));
        }
        Err(InstallError {
            hresult: HResult::WU_E_UH_INSTALLERFAILURE,
            message,
            unmapped: code,
        })
    }
}
