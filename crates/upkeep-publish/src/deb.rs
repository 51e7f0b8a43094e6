//! A Debian binary package (`.deb`) as a `files` update: `repo add --from-deb FILE`.
//!
//! A `.deb` is an `ar` archive of `debian-binary`, `control.tar.*` and `data.tar.*`. The
//! data tree becomes the payload as it is (a `.gz` or `.zst` data archive is copied, an
//! `.xz` one is decompressed and compressed again with zstd, which devices read); the
//! control file gives the title (the package name), the version (the record's
//! `version`), the description (synopsis, then the extended description with Debian's
//! ` .` blank lines) and the architecture (as `uname -m` names it). Set-id files of the
//! package are declared, so that devices install them as the package has them. The
//! maintainer scripts are not run by upkeep: they are named in the result, in a publish
//! warning and in the description, so that nobody expects their effects.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::repo::PublishError;

/// What a `.deb` holds, ready to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebPackage {
    /// `Package`.
    pub package: String,
    /// `Version`.
    pub version: String,
    /// `Architecture` as Debian names it (`amd64`, `all`).
    pub architecture: String,
    /// The machine names (`uname -m`) it runs on; empty for `all`.
    pub machines: Vec<String>,
    /// The description: synopsis, a blank line, the extended description.
    pub description: String,
    /// The data tree, as a tar archive devices read (`.tar.gz`, `.tar.zst` or `.tar`).
    pub payload: PathBuf,
    /// Paths of the data tree with set-user-id or set-group-id bits.
    pub setid_paths: Vec<String>,
    /// Bytes the data tree's files add up to.
    pub installed_size: u64,
    /// Maintainer scripts in the package (`preinst`, `postinst`, `prerm`, `postrm`,
    /// `config`, `triggers`), which upkeep does not run.
    pub maintainer_scripts: Vec<String>,
}

fn bad(deb: &Path, why: impl std::fmt::Display) -> PublishError {
    PublishError::Invalid(format!("{}: {why}", deb.display()))
}

/// The members of an `ar` archive: (name, bytes).
fn ar_members(
    deb: &Path,
    data: &[u8],
) -> Result<Vec<(String, std::ops::Range<usize>)>, PublishError> {
    if !data.starts_with(b"!<arch>\n") {
        return Err(bad(deb, "not a Debian package (no ar archive header)"));
    }
    let mut out = Vec::new();
    let mut at = 8;
    while at + 60 <= data.len() {
        let h = &data[at..at + 60];
        if &h[58..60] != b"`\n" {
            return Err(bad(deb, format!("damaged ar member header at byte {at}")));
        }
        let name = String::from_utf8_lossy(&h[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: usize = String::from_utf8_lossy(&h[48..58])
            .trim()
            .parse()
            .map_err(|_| bad(deb, format!("ar member {name:?} has no size")))?;
        let start = at + 60;
        let end = start
            .checked_add(size)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| bad(deb, format!("ar member {name:?} is cut short")))?;
        out.push((name, start..end));
        at = end + (size % 2);
    }
    Ok(out)
}

/// The decompressed bytes of a `control.tar.*` or `data.tar.*` member.
fn decompress(deb: &Path, name: &str, bytes: &[u8]) -> Result<Vec<u8>, PublishError> {
    let mut out = Vec::new();
    let r = match name.rsplit_once('.').map(|(_, e)| e) {
        Some("tar") => {
            out.extend_from_slice(bytes);
            Ok(())
        }
        Some("xz") => lzma_rs::xz_decompress(&mut std::io::BufReader::new(bytes), &mut out)
            .map_err(|e| e.to_string()),
        Some("gz") => flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Some("zst") => zstd::stream::read::Decoder::new(bytes)
            .and_then(|mut d| d.read_to_end(&mut out))
            .map(|_| ())
            .map_err(|e| e.to_string()),
        _ => Err(format!("{name}: a compression upkeep does not read")),
    };
    r.map_err(|e| bad(deb, format!("{name}: {e}")))?;
    Ok(out)
}

/// `uname -m` names for a Debian architecture (`all`: none, it runs anywhere).
pub fn machines_of(arch: &str) -> Vec<String> {
    let names: &[&str] = match arch {
        "all" => &[],
        "amd64" => &["x86_64"],
        "arm64" => &["aarch64"],
        "armhf" => &["armv7l", "armv8l"],
        "armel" => &["armv5tel", "armv6l"],
        "i386" => &["i386", "i486", "i586", "i686"],
        "ppc64el" => &["ppc64le"],
        "riscv64" => &["riscv64"],
        "mips64el" => &["mips64"],
        other => return vec![other.to_string()],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// The fields of a control file: `Key: value` with continuation lines (leading space).
fn control_fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, v)) = out.last_mut() {
                v.push('\n');
                v.push_str(line);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// A Debian `Description` as plain text: the synopsis, a blank line, the extended lines
/// without their leading space (` .` is an empty line), tabs as spaces.
fn description_of(raw: &str) -> String {
    let mut lines = raw.lines();
    let mut out = vec![lines.next().unwrap_or_default().trim().to_string()];
    let extended: Vec<String> = lines
        .map(|l| {
            let l = l.strip_prefix(' ').unwrap_or(l);
            if l == "." {
                String::new()
            } else {
                l.replace('\t', "    ")
            }
        })
        .collect();
    if !extended.is_empty() {
        out.push(String::new());
        out.extend(extended);
    }
    out.join("\n")
        .chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .collect()
}

/// A file name for the payload from the package's own names (`:` of an epoch and other
/// characters a target name should not carry become `_`).
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-.~_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads the `.deb` at `deb`, writing its payload into `work` (a directory).
pub fn read(deb: &Path, work: &Path) -> Result<DebPackage, PublishError> {
    let data = upkeep_fs::read(deb).map_err(|e| bad(deb, e))?;
    let members = ar_members(deb, &data)?;
    let find = |prefix: &str| {
        members
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .cloned()
            .ok_or_else(|| {
                bad(
                    deb,
                    format!("no {prefix}* member: not a Debian binary package"),
                )
            })
    };
    let (bin_name, bin) = find("debian-binary")?;
    let format = String::from_utf8_lossy(&data[bin]).trim().to_string();
    if !format.starts_with("2.") {
        return Err(bad(
            deb,
            format!("{bin_name}: package format {format:?}, not 2.x"),
        ));
    }
    let (control_name, control_range) = find("control.tar")?;
    let control_tar = decompress(deb, &control_name, &data[control_range])?;
    let mut control = None;
    let mut maintainer_scripts = Vec::new();
    let mut ar = tar::Archive::new(control_tar.as_slice());
    for e in ar
        .entries()
        .map_err(|e| bad(deb, format!("{control_name}: {e}")))?
    {
        let mut e = e.map_err(|e| bad(deb, format!("{control_name}: {e}")))?;
        let path = e
            .path()
            .map_err(|e| bad(deb, format!("{control_name}: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        match path.as_str() {
            "control" => {
                let mut s = String::new();
                e.read_to_string(&mut s)
                    .map_err(|e| bad(deb, format!("control: {e}")))?;
                control = Some(s);
            }
            "preinst" | "postinst" | "prerm" | "postrm" | "config" | "triggers" => {
                maintainer_scripts.push(path)
            }
            _ => {}
        }
    }
    let control = control.ok_or_else(|| bad(deb, format!("{control_name} has no control file")))?;
    let fields = control_fields(&control);
    let field = |k: &str| {
        fields
            .iter()
            .find(|(f, _)| f.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let package = field("Package").ok_or_else(|| bad(deb, "the control file has no Package"))?;
    let version = field("Version").ok_or_else(|| bad(deb, "the control file has no Version"))?;
    let architecture =
        field("Architecture").ok_or_else(|| bad(deb, "the control file has no Architecture"))?;
    let description = description_of(&field("Description").unwrap_or_default());

    // The data tree: its set-id files and size, and the payload devices read.
    let (data_name, data_range) = find("data.tar")?;
    let raw = &data[data_range];
    let tar_bytes = decompress(deb, &data_name, raw)?;
    let mut setid_paths = Vec::new();
    let mut installed_size = 0u64;
    let mut ar = tar::Archive::new(tar_bytes.as_slice());
    for e in ar
        .entries()
        .map_err(|e| bad(deb, format!("{data_name}: {e}")))?
    {
        let e = e.map_err(|e| bad(deb, format!("{data_name}: {e}")))?;
        let h = e.header();
        if h.entry_type().is_file() {
            installed_size += h.size().unwrap_or(0);
        }
        let mode = h.mode().unwrap_or(0);
        if mode & 0o6000 != 0 {
            let p = e
                .path()
                .map_err(|e| bad(deb, format!("{data_name}: {e}")))?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            setid_paths.push(p);
        }
    }
    let stem = format!(
        "{}_{}_{}",
        safe(&package),
        safe(&version),
        safe(&architecture)
    );
    let (payload, bytes): (PathBuf, std::borrow::Cow<'_, [u8]>) =
        match data_name.rsplit_once('.').map(|(_, e)| e) {
            Some("gz") => (work.join(format!("{stem}.tar.gz")), raw.into()),
            Some("zst") => (work.join(format!("{stem}.tar.zst")), raw.into()),
            Some("tar") => (work.join(format!("{stem}.tar")), raw.into()),
            _ => (
                work.join(format!("{stem}.tar.zst")),
                zstd::encode_all(tar_bytes.as_slice(), 3)
                    .map_err(|e| bad(deb, format!("recompressing {data_name}: {e}")))?
                    .into(),
            ),
        };
    upkeep_fs::write(&payload, &bytes).map_err(|e| bad(&payload, e))?;
    Ok(DebPackage {
        machines: machines_of(&architecture),
        package,
        version,
        architecture,
        description,
        payload,
        setid_paths,
        installed_size,
        maintainer_scripts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_fields_and_descriptions_read_as_debian_writes_them() {
        let c = "Package: hello\nVersion: 2.10-3\nArchitecture: amd64\nDescription: example package\n The GNU hello program\n .\n \tindented\n";
        let f = control_fields(c);
        assert_eq!(f[0], ("Package".into(), "hello".into()));
        let d = f.iter().find(|(k, _)| k == "Description").unwrap();
        assert_eq!(
            description_of(&d.1),
            "example package\n\nThe GNU hello program\n\n    indented"
        );
        assert_eq!(machines_of("amd64"), ["x86_64"]);
        assert!(machines_of("all").is_empty());
        assert_eq!(safe("1:2.3+dfsg~1"), "1_2.3+dfsg~1");
    }

    #[test]
    fn what_is_not_a_package_is_refused_with_the_reason() {
        let p = Path::new("x.deb");
        assert!(ar_members(p, b"PK\x03\x04")
            .unwrap_err()
            .to_string()
            .contains("no ar archive header"));
        let mut cut = b"!<arch>\n".to_vec();
        cut.extend_from_slice(
            format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                "data.tar.xz/", 0, 0, 0, 100644, 999
            )
            .as_bytes(),
        );
        assert!(ar_members(p, &cut)
            .unwrap_err()
            .to_string()
            .contains("cut short"));
    }
}
