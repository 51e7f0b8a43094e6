//! A real system bus and a real `polkitd` for tests of the daemon: a private `dbus-daemon`
//! on a socket in a temporary directory, and `polkitd` serving authorization on it, each
//! started here and stopped by its PID when dropped. Actions and rules are installed where
//! `polkitd` reads them (`/usr/share/polkit-1/actions`, `/etc/polkit-1/rules.d`) and removed
//! when their guards drop. No logind runs here, so callers are in no session: an action's
//! `allow_any` default applies (`../shared/docs/daemon-notes.md`).
//!
//! Needs root (as the agent's tests do) and the Debian packages `dbus-daemon` and `polkitd`;
//! without them this panics with a clear message: a test that needs the bus does not pass by
//! skipping.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process stopped (SIGKILL) and reaped when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private system bus: `dbus-daemon --system`-like configuration on its own socket,
/// reachable by every user (the directory is 0755), every message allowed (the daemon under
/// test authorizes through polkit, not through the bus policy).
pub struct SystemBus {
    dir: tempfile::TempDir,
    address: String,
    child: Guard,
}

impl SystemBus {
    /// Starts the bus and waits (bounded) until it answers.
    pub fn start() -> SystemBus {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("the bus directory opened to every user");
        let socket = dir.path().join("system_bus_socket");
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow receive_type="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("the bus configuration");
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon runs (Debian package dbus-daemon)");
        let bus = SystemBus {
            address: format!("unix:path={}", socket.display()),
            dir,
            child: Guard(child),
        };
        wait_until("the bus answers", || bus.has_name("org.freedesktop.DBus"));
        bus
    }

    /// The address, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The bus daemon's PID.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// A directory beside the socket for the test's own files (readable by every user).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether `name` has an owner on this bus (`NameHasOwner`, through `dbus-send`).
    pub fn has_name(&self, name: &str) -> bool {
        let out = Command::new("dbus-send")
            .arg(format!("--bus={}", self.address))
            .args([
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.NameHasOwner",
            ])
            .arg(format!("string:{name}"))
            .stderr(Stdio::null())
            .output()
            .expect("dbus-send runs (Debian package dbus-bin)");
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("boolean true")
    }

    /// A command that talks to this bus (`DBUS_SYSTEM_BUS_ADDRESS` set).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("DBUS_SYSTEM_BUS_ADDRESS", &self.address);
        c
    }
}

/// `polkitd` serving `org.freedesktop.PolicyKit1` on a [`SystemBus`].
pub struct Polkit {
    child: Guard,
}

impl Polkit {
    /// Starts `polkitd` on `bus` and waits (bounded) until it owns its name.
    pub fn start(bus: &SystemBus) -> Polkit {
        let child = bus
            .command("/usr/lib/polkit-1/polkitd")
            .arg("--no-debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("polkitd runs (Debian package polkitd)");
        let p = Polkit {
            child: Guard(child),
        };
        wait_until("polkitd owns org.freedesktop.PolicyKit1", || {
            bus.has_name("org.freedesktop.PolicyKit1")
        });
        p
    }

    /// polkitd's PID.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// A file installed where polkitd reads it, removed when dropped.
pub struct Installed {
    path: PathBuf,
}

impl Installed {
    /// Installs an action definition (`.policy` XML) as `/usr/share/polkit-1/actions/NAME`.
    pub fn action(name: &str, xml: &str) -> Installed {
        Installed::write(Path::new("/usr/share/polkit-1/actions").join(name), xml)
    }

    /// Installs a JavaScript rule as `/etc/polkit-1/rules.d/NAME` (polkitd re-reads the
    /// directory on its own).
    pub fn rule(name: &str, js: &str) -> Installed {
        Installed::write(Path::new("/etc/polkit-1/rules.d").join(name), js)
    }

    fn write(path: PathBuf, text: &str) -> Installed {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).expect("polkit's directory");
        }
        std::fs::write(&path, text).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (installing polkit files needs root)",
                path.display()
            )
        });
        Installed { path }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An unprivileged user tests act as.
#[derive(Clone, Debug)]
pub struct User {
    /// Its name (what polkit rules see as `subject.user`).
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl User {
    /// `upkeep-probe` (made by `.ci/run` with useradd), else `nobody`.
    pub fn unprivileged() -> User {
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id")
                .args([flag, "upkeep-probe"])
                .output()
                .ok()?;
            String::from_utf8(out.stdout).ok()?.trim().parse().ok()
        };
        match (id("-u"), id("-g")) {
            (Some(uid), Some(gid)) => User {
                name: "upkeep-probe".into(),
                uid,
                gid,
            },
            _ => User {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534,
            },
        }
    }

    /// `command` to run as this user (uid and gid set in the child before it execs).
    pub fn run(&self, mut command: Command) -> Command {
        use std::os::unix::process::CommandExt;
        command.uid(self.uid).gid(self.gid);
        command
    }
}

/// Polls `ready` every 10 ms until it holds, for at most 10 s; panics naming `what`
/// otherwise. For conditions another process makes true (a name owned, a rule read), not a
/// sleep standing in for one.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}
