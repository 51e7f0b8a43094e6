//! `upkeep demo`: a signed demo repository in a temporary directory, served on loopback,
//! and the agent walked through it: search, download, install into a sandbox root (a
//! `files` update, a `command` update that needs a restart, one with a license, one
//! superseding another), history, uninstall. Everything is removed at the end.

use std::time::Instant;

use upkeep::{Category, Handler, InstallationRebootBehavior, UpdateMetadata, UpdateSession};
use upkeep_publish::serve::{repository_mounts, Server};
use upkeep_publish::{ContentSource, InitOptions, NewUpdate, Repository};
use uuid::Uuid;

use crate::exit::Exit;
use crate::output;

const TOOLS: Uuid = Uuid::from_u128(0x6d1f1d2e_0b5c_4c62_9a54_1f0a5e2b0001);
const TOOLS_NEW: Uuid = Uuid::from_u128(0x6d1f1d2e_0b5c_4c62_9a54_1f0a5e2b0002);
const AGENT: Uuid = Uuid::from_u128(0x6d1f1d2e_0b5c_4c62_9a54_1f0a5e2b0003);
const FONTS: Uuid = Uuid::from_u128(0x6d1f1d2e_0b5c_4c62_9a54_1f0a5e2b0004);
const CAT_TOOLS: Uuid = Uuid::from_u128(0x0000_0c47_0000_4000_8000_0000_0000_0001);
const CAT_SECURITY: Uuid = Uuid::from_u128(0x0000_0c47_0000_4000_8000_0000_0000_0002);

fn tarball(files: &[(&str, &[u8], u32)]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, path, *data)?;
    }
    b.into_inner()
}

fn demo_updates() -> std::io::Result<Vec<NewUpdate>> {
    let released = |days: i64| jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days);
    let tools_cat = Category {
        id: CAT_TOOLS,
        name: "Tools".into(),
    };
    let sec_cat = Category {
        id: CAT_SECURITY,
        name: "Security Updates".into(),
    };

    let mut tools = UpdateMetadata::new(TOOLS, "Acme Tools 2.1", "x");
    tools.description = "Command-line tools for Acme devices.".into();
    tools.kb_article_ids = vec!["5001001".into()];
    tools.categories = vec![tools_cat.clone()];
    tools.severity = "Moderate".into();
    tools.release_date = Some(released(30));

    let mut tools_new = tools.clone();
    tools_new.id = TOOLS_NEW;
    tools_new.title = "Acme Tools 2.2".into();
    tools_new.kb_article_ids = vec!["5001002".into()];
    tools_new.supersedes = vec![TOOLS];
    tools_new.severity = "Important".into();
    tools_new.release_date = Some(released(2));

    let mut agent = UpdateMetadata::new(AGENT, "Acme Agent service 5.0", "x");
    agent.description = "Replaces the device agent service; needs a restart.".into();
    agent.categories = vec![sec_cat];
    agent.severity = "Critical".into();
    agent.mandatory = true;
    agent.installation_behavior.reboot_behavior = InstallationRebootBehavior::AlwaysRequiresReboot;
    agent.handler = Handler::Command {
        arguments: vec!["install".into()],
        uninstall_arguments: Some(vec!["uninstall".into()]),
        timeout_secs: 120,
        success_exit_codes: vec![0],
        // 3010 as a Linux exit status arrives as 194 (8 bits).
        reboot_exit_codes: vec![194],
    };
    agent.release_date = Some(released(5));

    let mut fonts = UpdateMetadata::new(FONTS, "Acme Fonts pack", "x");
    fonts.description = "Licensed display fonts.".into();
    fonts.categories = vec![tools_cat];
    fonts.release_date = Some(released(10));

    let tools_payload = |version: &str| {
        let bin = format!("#!/bin/sh\necho acme-tools {version}\n");
        tarball(&[
            ("usr/local/bin/acme-tool", bin.as_bytes(), 0o755),
            ("usr/local/share/acme/README", b"Acme Tools\n", 0o644),
        ])
    };
    let agent_script = b"#!/bin/sh\n# upkeep demo: the command handler runs this with install|uninstall\necho \"acme-agent: $1\"\nexit 3010\n".to_vec();
    Ok(vec![
        NewUpdate {
            metadata: tools,
            payload: ContentSource::Bytes {
                name: "acme-tools-2.1.tar".into(),
                data: tools_payload("2.1")?,
            },
            extra_content: vec![],
            eula: None,
            bootstrapper: None,
        },
        NewUpdate {
            metadata: tools_new,
            payload: ContentSource::Bytes {
                name: "acme-tools-2.2.tar".into(),
                data: tools_payload("2.2")?,
            },
            extra_content: vec![],
            eula: None,
            bootstrapper: None,
        },
        NewUpdate {
            metadata: agent,
            payload: ContentSource::Bytes {
                name: "acme-agent-setup.sh".into(),
                data: agent_script,
            },
            extra_content: vec![],
            eula: None,
            bootstrapper: None,
        },
        NewUpdate {
            metadata: fonts,
            payload: ContentSource::Bytes {
                name: "acme-fonts.tar".into(),
                data: tarball(&[("usr/local/share/fonts/acme.otf", &[0u8; 4096], 0o644)])?,
            },
            extra_content: vec![],
            eula: Some(ContentSource::Bytes {
                name: "EULA.txt".into(),
                data: b"Acme Fonts licence: you may use these fonts on Acme devices.\n".to_vec(),
            }),
            bootstrapper: None,
        },
    ])
}

/// Set by a signal: the demo stops at its next step.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Announces step `n`, or stops the demo (its directory is removed as it unwinds) if it was
/// interrupted.
fn step(n: u32, text: &str) -> Result<(), Exit> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        crate::logs::error!("demo interrupted before step {n}; removing what it made");
        return Err(Exit::Aborted);
    }
    println!();
    println!("== {n}. {text}");
    Ok(())
}

fn demo_err(e: impl std::fmt::Display) -> Exit {
    crate::logs::error!("demo failed: {e}");
    Exit::Failure
}

pub fn run() -> Result<Exit, Exit> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("upkeep-demo-")
        .tempdir()
        .map_err(demo_err)?;
    let repo_dir = tmp.path().join("repository");
    // Interrupted (Ctrl-C, SIGTERM, SIGHUP), it stops at the next step, removes what it
    // made (the temporary directory is dropped) and exits 4 (aborted); the install steps
    // take the signal to abort their job, and give it back after.
    let cleanup_on_signal = || {
        crate::on_ctrl_c(Box::new(|| {
            INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        }))
    };
    cleanup_on_signal();
    println!("Working in {}", tmp.path().display());

    step(
        1,
        "Publish a signed repository (ed25519 keys, consistent snapshots)",
    )?;
    let mut repo = Repository::init(&repo_dir, InitOptions::default()).map_err(demo_err)?;
    let report = repo
        .add_updates(demo_updates().map_err(demo_err)?)
        .map_err(demo_err)?;
    println!(
        "   {} updates, {} targets in {}",
        report.updates,
        report.targets,
        repo_dir.display()
    );

    step(2, "Serve it on loopback")?;
    let server = Server::start(
        "127.0.0.1:0".parse().expect("address"),
        repository_mounts(&repo_dir),
    )
    .map_err(demo_err)?;
    println!("   {}", server.base_url());

    step(
        3,
        "Open a session: trusted root, state directory and a sandbox install root",
    )?;
    let session = UpdateSession::builder()
        .env(false)
        .repository(server.base_url())
        .trusted_root(repo.root_path())
        .state_dir(tmp.path().join("state"))
        .install_root(tmp.path().join("root"))
        .client_application_id("upkeep-demo")
        .build()
        .map_err(demo_err)?;
    let mut searcher = session.create_update_searcher();

    step(
        4,
        "Search: IsInstalled=0 and IsHidden=0 (TUF refresh, then the catalog)",
    )?;
    let r = searcher
        .search("IsInstalled=0 and IsHidden=0")
        .map_err(demo_err)?;
    output::print_search(&r, false);
    println!("   (Acme Tools 2.1 is left out: 2.2 supersedes it)");

    step(
        5,
        "Search again with superseded updates included, and only Critical security ones",
    )?;
    searcher.set_include_potentially_superseded_updates(true);
    let all = searcher.search("IsInstalled=0").map_err(demo_err)?;
    println!(
        "   {} updates including superseded ones",
        all.updates().len()
    );
    let sec = searcher
        .search(&format!("CategoryIDs contains '{CAT_SECURITY}'"))
        .map_err(demo_err)?;
    for u in sec.updates() {
        println!("   security: {} ({})", u.title(), u.msrc_severity());
    }

    step(6, "Show one update in full")?;
    let agent = all
        .updates()
        .iter()
        .find(|u| u.identity().update_id == AGENT)
        .ok_or_else(|| demo_err("the agent update is missing"))?;
    output::print_update(agent, false);

    step(
        7,
        "Invalid criteria are refused with WU_E_INVALID_CRITERIA and the position",
    )?;
    match searcher.search("IsInstalled=0 and (IsHidden=0 or Type='Driver')") {
        Err(e) => println!("   {} [{}]", e, e.hresult()),
        Ok(_) => return Err(demo_err("invalid criteria were accepted")),
    }

    step(
        8,
        "Download what the search found (verified against the signed hashes)",
    )?;
    let todo = r.updates().clone();
    let d = crate::download_cmd::transfer(
        &session,
        &todo,
        upkeep::DownloadType::Full,
        upkeep::DownloadPriority::Normal,
        false,
    )?;
    cleanup_on_signal();
    for (i, u) in todo.iter().enumerate() {
        let x = d.update_result(i).expect("one result per update");
        println!("   {:<10} {}", x.result_code().to_string(), u.title());
    }

    step(
        9,
        "Read and accept the fonts' license, then install everything into the sandbox root",
    )?;
    let fonts = todo
        .iter()
        .find(|u| u.identity().update_id == FONTS)
        .ok_or_else(|| demo_err("the fonts update is missing"))?;
    println!(
        "   license: {}",
        session.eula_text(fonts).map_err(demo_err)?.trim()
    );
    session.accept_eula(fonts).map_err(demo_err)?;
    let installed = crate::install_cmd::run_job(&session, &todo, false, false, false)?;
    cleanup_on_signal();
    for (i, u) in todo.iter().enumerate() {
        let x = installed.update_result(i).expect("one result per update");
        let restart = if x.reboot_required() {
            " (restart required)"
        } else {
            ""
        };
        println!(
            "   {:<10} {}{restart}",
            x.result_code().to_string(),
            u.title()
        );
    }
    println!(
        "   overall: {}, restart required: {}",
        installed.result_code(),
        installed.reboot_required()
    );
    let root = tmp.path().join("root");
    let tool = root.join("usr/local/bin/acme-tool");
    println!(
        "   {} -> {}",
        tool.strip_prefix(&root).unwrap_or(&tool).display(),
        upkeep_fs::read_to_string(&tool)
            .map_err(demo_err)?
            .lines()
            .nth(1)
            .unwrap_or("")
    );

    step(
        10,
        "Search what is installed, and what a restart is pending for",
    )?;
    let inst = searcher.search("IsInstalled=1").map_err(demo_err)?;
    for u in inst.updates() {
        println!("   installed: {}", u.title());
    }
    let pending = searcher.search("RebootRequired=1").map_err(demo_err)?;
    for u in pending.updates() {
        println!("   restart pending for: {}", u.title());
    }

    step(
        11,
        "Publish revision 2 of Acme Tools 2.2; the search offers it as an upgrade",
    )?;
    let mut rev2 = UpdateMetadata::new(TOOLS_NEW, "Acme Tools 2.2.1", "x");
    if let Some(u) = inst
        .updates()
        .iter()
        .find(|u| u.identity().update_id == TOOLS_NEW)
    {
        rev2 = u.metadata().clone();
    }
    rev2.revision = 2;
    rev2.title = "Acme Tools 2.2.1".into();
    repo.add_updates(vec![NewUpdate {
        metadata: rev2,
        payload: ContentSource::Bytes {
            name: "acme-tools-2.2.1.tar".into(),
            data: tarball(&[
                (
                    "usr/local/bin/acme-tool",
                    b"#!/bin/sh\necho acme-tools 2.2.1\n",
                    0o755,
                ),
                ("usr/local/share/acme/README", b"Acme Tools\n", 0o644),
            ])
            .map_err(demo_err)?,
        },
        extra_content: vec![],
        eula: None,
        bootstrapper: None,
    }])
    .map_err(demo_err)?;
    let readme = root.join("usr/local/share/acme/README");
    let inode = |p: &std::path::Path| {
        upkeep_fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok()
    };
    let readme_inode = inode(&readme);
    searcher.set_include_potentially_superseded_updates(false);
    let upgrades = searcher.search("IsInstalled=0").map_err(demo_err)?;
    output::print_search(&upgrades, false);
    step(
        12,
        "A restart is pending, so installs wait for it; forced, the upgrade installs as one transaction and the unchanged README is not rewritten",
    )?;
    let mut waiting = session.create_update_installer();
    waiting.set_updates(upgrades.updates().clone());
    match waiting.install() {
        Err(e) => println!("   {} [{}]", e.message(), e.hresult()),
        Ok(r) => println!("   installed without waiting: {}", r.result_code()),
    }
    crate::download_cmd::transfer(
        &session,
        upgrades.updates(),
        upkeep::DownloadType::Full,
        upkeep::DownloadPriority::Normal,
        false,
    )?;
    let up = crate::install_cmd::run_job(&session, upgrades.updates(), false, true, false)?;
    cleanup_on_signal();
    println!(
        "   {}; acme-tool says: {}; README same inode: {}",
        up.result_code(),
        upkeep_fs::read_to_string(&tool)
            .map_err(demo_err)?
            .lines()
            .nth(1)
            .unwrap_or(""),
        readme_inode.is_some() && inode(&readme) == readme_inode
    );

    step(
        13,
        "Uninstall Acme Tools: its files go, what was there before revision 1 comes back",
    )?;
    let tools: upkeep::UpdateCollection = searcher
        .search("IsInstalled=1")
        .map_err(demo_err)?
        .updates()
        .iter()
        .filter(|u| u.identity().update_id == TOOLS_NEW)
        .cloned()
        .collect();
    let un = crate::install_cmd::run_job(&session, &tools, true, true, false)?;
    cleanup_on_signal();
    println!(
        "   {}; acme-tool present: {}",
        un.result_code(),
        tool.exists()
    );

    step(14, "History, newest first")?;
    for h in searcher.query_history(0, 10).map_err(demo_err)? {
        let raw = if h.unmapped_result_code != 0 {
            format!(" (exit {})", h.unmapped_result_code)
        } else {
            String::new()
        };
        let how = match h.previous_revision {
            Some(p) => format!(" (upgrade r{p} → r{})", h.revision),
            None => String::new(),
        };
        println!(
            "   {:<15} {:<10} {}{how}{raw}",
            h.operation.to_string(),
            h.result_code.to_string(),
            h.title
        );
    }

    step(
        15,
        "Stop the server and search offline, from the metadata trusted locally",
    )?;
    let requests = server.request_count();
    server.stop();
    searcher.set_online(false);
    searcher.set_include_potentially_superseded_updates(false);
    let offline = searcher.search("").map_err(demo_err)?;
    println!(
        "   {} updates found offline (the server had answered {requests} requests)",
        offline.updates().len()
    );

    step(16, "Clean up")?;
    let path = tmp.path().to_path_buf();
    drop(repo);
    tmp.close().map_err(demo_err)?;
    println!("   removed {}", path.display());
    println!();
    println!("Demo finished in {:.2} s.", started.elapsed().as_secs_f64());
    Ok(Exit::Success)
}
