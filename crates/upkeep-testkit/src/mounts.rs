//! Real mounts for tests: a small tmpfs that fills up, as a disk does.

use std::path::{Path, PathBuf};

/// A tmpfs of a given size mounted on a temporary directory; unmounted when dropped.
/// Mounting needs root, as the agent does; without it this panics with a clear message
/// (a test that needs a real full disk does not pass by skipping).
pub struct Tmpfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `4m`, `512k`).
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).expect("a mount point");
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&mnt)
            .status()
            .expect("mount runs");
        assert!(
            ok.success(),
            "mounting a tmpfs needs root (the agent's tests run as root)"
        );
        Tmpfs { mnt, _dir: dir }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Fills it: writes `name` until the filesystem has no room left (ENOSPC).
    pub fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.mnt.join(name)).expect("a filler file");
        let block = vec![0x55u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let mut rest = vec![0x55u8; 512];
        while rest.len() > 1 {
            if f.write_all(&rest).is_err() {
                rest.truncate(rest.len() / 2);
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .status();
    }
}

/// `mount --bind FROM TO`; unmounted when dropped. Needs root, as [`Tmpfs`].
pub struct Bind {
    to: PathBuf,
}

impl Bind {
    /// Binds `from` at `to` (an existing directory).
    pub fn new(from: &Path, to: &Path) -> Bind {
        let ok = std::process::Command::new("mount")
            .arg("--bind")
            .arg(from)
            .arg(to)
            .status()
            .expect("mount runs");
        assert!(
            ok.success(),
            "a bind mount needs root (the agent's tests run as root)"
        );
        Bind {
            to: to.to_path_buf(),
        }
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.to)
            .status();
    }
}
