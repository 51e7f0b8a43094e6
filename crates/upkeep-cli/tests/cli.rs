//! The `upkeep` binary end to end: repository authoring, a real `repo serve` child process,
//! search and show in both output forms, and the documented exit codes.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{agent_args, ok, tar_of, upkeep, Serve};

fn published_repo(tmp: &Path) -> std::path::PathBuf {
    let dir = tmp.join("repo");
    ok(&upkeep(&["repo", "init", dir.to_str().unwrap()]));
    std::fs::write(
        tmp.join("tools.tar"),
        tar_of(&[("opt/tools/run", b"#!/bin/sh\n", 0o755)]),
    )
    .unwrap();
    std::fs::write(tmp.join("setup.sh"), b"#!/bin/sh\nexit 3010\n").unwrap();
    let d = dir.to_str().unwrap();
    ok(&upkeep(&[
        "repo",
        "add",
        d,
        "--id",
        "11111111-1111-4111-8111-111111111111",
        "--title",
        "Tools 1.0",
        "--payload",
        tmp.join("tools.tar").to_str().unwrap(),
        "--handler",
        "files",
        "--severity",
        "Important",
        "--kb",
        "123",
    ]));
    ok(&upkeep(&[
        "repo",
        "add",
        d,
        "--id",
        "22222222-2222-4222-8222-222222222222",
        "--title",
        "Agent",
        "--payload",
        tmp.join("setup.sh").to_str().unwrap(),
        "--handler",
        "command",
        "--arg",
        "--install",
        "--uninstall-arg",
        "--remove",
        "--reboot",
        "always",
        "--type",
        "driver",
    ]));
    dir
}

#[test]
fn repo_commands_and_search_through_a_served_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let list = ok(&upkeep(&["repo", "list", dir.to_str().unwrap()]));
    assert!(
        list.contains("Tools 1.0") && list.contains("Agent"),
        "{list}"
    );
    let serve = Serve::start(&dir);
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    let url = serve.1.clone();
    let common = agent_args(&url, &root, &state);

    let table = ok(&upkeep(&[&common[..], &["search"]].concat()));
    assert!(
        table.contains("Tools 1.0") && table.contains("2 update(s)"),
        "{table}"
    );

    let json = ok(&upkeep(
        &[&common[..], &["search", "Type='Driver'", "--json"]].concat(),
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["result_code"], "Succeeded");
    assert_eq!(v["updates"].as_array().unwrap().len(), 1);
    let u = &v["updates"][0];
    assert_eq!(u["id"], "22222222-2222-4222-8222-222222222222");
    assert_eq!(u["type"], "Driver");
    assert_eq!(u["handler"]["kind"], "command");
    assert_eq!(u["handler"]["arguments"][0], "--install");
    assert_eq!(
        u["installation_behavior"]["reboot_behavior"],
        "AlwaysRequiresReboot"
    );
    assert_eq!(u["is_installed"], false);

    let show = ok(&upkeep(
        &[
            &common[..],
            &["show", "11111111-1111-4111-8111-111111111111"],
        ]
        .concat(),
    ));
    assert!(
        show.contains("KB123") && show.contains("Important"),
        "{show}"
    );

    // Offline: works from the trusted metadata, even with the server gone.
    drop(serve);
    let off = ok(&upkeep(
        &[&common[..], &["search", "--offline", "--json"]].concat(),
    ));
    let v: serde_json::Value = serde_json::from_str(&off).unwrap();
    assert_eq!(v["updates"].as_array().unwrap().len(), 2);
}

#[test]
fn bad_input_exits_2_with_the_wua_code() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    let common = agent_args("http://127.0.0.1:9/", &root, &state);

    let o = upkeep(
        &[
            &common[..],
            &["search", "IsInstalled=0 and (IsHidden=0 or Type='Driver')"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("WU_E_INVALID_CRITERIA (0x80240032)") && err.contains("position 30"),
        "{err}"
    );

    let o = upkeep(&[&common[..], &["search", "Colour='red'", "--json"]].concat());
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stderr).trim()).unwrap();
    assert_eq!(v["error"]["hresult"], "0x80240032");

    // Unreachable repository: failure (1) with the connection code.
    let o = upkeep(&[&common[..], &["search"]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("0x80244004"));

    // Unknown flag, and a bad manifest.
    assert_eq!(upkeep(&["search", "--frobnicate"]).status.code(), Some(2));
    std::fs::write(tmp.path().join("m.toml"), "title = 1").unwrap();
    let o = upkeep(&[
        "repo",
        "add",
        dir.to_str().unwrap(),
        "--manifest",
        tmp.path().join("m.toml").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    // A severity that does not exist changes nothing.
    let before = std::fs::read(dir.join("metadata/timestamp.json")).unwrap();
    let o = upkeep(&[
        "repo",
        "add",
        dir.to_str().unwrap(),
        "--id",
        "33333333-3333-4333-8333-333333333333",
        "--title",
        "x",
        "--payload",
        tmp.path().join("tools.tar").to_str().unwrap(),
        "--handler",
        "files",
        "--severity",
        "Meh",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        std::fs::read(dir.join("metadata/timestamp.json")).unwrap(),
        before
    );
}

#[test]
fn show_of_an_unknown_update_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let serve = Serve::start(&dir);
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    let o = upkeep(&[
        "--repo",
        &serve.1,
        "--trusted-root",
        root.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "show",
        "99999999-9999-4999-8999-999999999999",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("WU_E_UNKNOWN_ID"));
}

#[test]
fn the_demo_runs_and_cleans_up() {
    let o = upkeep(&["demo"]);
    let out = ok(&o);
    assert!(
        out.contains("Acme Tools 2.2") && out.contains("Demo finished"),
        "{out}"
    );
    let removed = out.lines().find(|l| l.contains("removed ")).unwrap();
    let path = removed.trim().trim_start_matches("removed ");
    assert!(!Path::new(path).exists(), "{path} still exists");
}

/// Interrupted by SIGTERM (as a service manager or `timeout` stops it), the demo stops at
/// its next step, removes its directory and exits 4 (aborted).
#[test]
fn the_demo_cleans_up_on_a_signal() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_upkeep"))
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Its first line names its directory; it is stopped there (SIGSTOP), so the signal
    // lands while it works, whatever the machine's speed.
    let first = lines.next().unwrap().unwrap();
    let pid = child.id() as i32;
    // SAFETY: kill sends signals to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let dir = std::path::PathBuf::from(
        first
            .strip_prefix("Working in ")
            .expect("the demo names its directory first")
            .trim(),
    );
    assert!(dir.exists());
    // SAFETY: as above.
    unsafe {
        assert_eq!(libc::kill(pid, libc::SIGTERM), 0);
        assert_eq!(libc::kill(pid, libc::SIGCONT), 0);
    }
    for _ in lines {} // drain until it exits
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(4), "{status:?}");
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

#[test]
fn a_config_file_supplies_the_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let serve = Serve::start(&dir);
    let cfg = tmp.path().join("upkeep.toml");
    std::fs::write(
        &cfg,
        format!(
            "repository = {:?}\ntrusted_root = {:?}\nstate_dir = {:?}\n",
            serve.1,
            dir.join("metadata/root.json"),
            tmp.path().join("state")
        ),
    )
    .unwrap();
    let out = ok(&upkeep(&[
        "--config",
        cfg.to_str().unwrap(),
        "search",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["updates"].as_array().unwrap().len(), 2);
    std::fs::write(&cfg, "repository = 3\n").unwrap();
    assert_eq!(
        upkeep(&["--config", cfg.to_str().unwrap(), "search"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn download_fills_the_cache_and_search_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let serve = Serve::start(&dir);
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    let common = agent_args(&serve.1, &root, &state);
    let tools = "11111111-1111-4111-8111-111111111111";

    let out = ok(&upkeep(
        &[&common[..], &["download", tools, "--json"]].concat(),
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result_code"], "Succeeded");
    assert_eq!(v["updates"][0]["id"], tools);
    assert_eq!(v["updates"][0]["hresult"], "0x00000000");

    let out = ok(&upkeep(&[&common[..], &["search", "--json"]].concat()));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for u in v["updates"].as_array().unwrap() {
        assert_eq!(u["is_downloaded"], u["id"] == tools, "{u}");
    }
    // The cached file is the published payload.
    let cached: Vec<_> = std::fs::read_dir(state.join("cache/objects"))
        .unwrap()
        .collect();
    assert_eq!(cached.len(), 1);
    assert_eq!(
        std::fs::read(cached[0].as_ref().unwrap().path()).unwrap(),
        std::fs::read(tmp.path().join("tools.tar")).unwrap()
    );

    // Everything else, in table form.
    let table = ok(&upkeep(&[&common[..], &["download", "--all"]].concat()));
    assert!(table.contains("Download: Succeeded"), "{table}");
}

#[test]
fn metadata_and_content_go_through_the_proxy_named_by_http_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let server = upkeep_testkit::faults::FaultServer::start();
    server.put_dir(&dir);
    let proxy = upkeep_testkit::proxy::ForwardProxy::start(server.addr());
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    // A host name that does not resolve: only the proxy can reach "it".
    let repo = "http://updates.upkeep.invalid/";
    let out = Command::new(env!("CARGO_BIN_EXE_upkeep"))
        .args(agent_args(repo, &root, &state))
        .args(["download", "--all", "--json"])
        .env_remove("UPKEEP_CONFIG")
        .env_remove("UPKEEP_REPOSITORY")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("HTTP_PROXY", proxy.url())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(v["result_code"], "Succeeded");
    let seen = proxy.seen();
    assert!(
        seen.iter()
            .any(|u| u == "http://updates.upkeep.invalid/metadata/timestamp.json"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|u| u.starts_with("http://updates.upkeep.invalid/targets/updates/")),
        "{seen:?}"
    );
    assert!(seen.iter().all(|u| u.starts_with(repo)), "{seen:?}");
}

#[test]
fn download_refuses_bad_selections() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let serve = Serve::start(&dir);
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    let common = agent_args(&serve.1, &root, &state);
    assert_eq!(
        upkeep(&[&common[..], &["download"]].concat()).status.code(),
        Some(2)
    );
    assert_eq!(
        upkeep(
            &[
                &common[..],
                &["download", "--all", "--criteria", "IsInstalled=0"]
            ]
            .concat()
        )
        .status
        .code(),
        Some(2)
    );
    let o = upkeep(
        &[
            &common[..],
            &["download", "99999999-9999-4999-8999-999999999999"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("WU_E_UNKNOWN_ID"));
    let o = upkeep(&[&common[..], &["download", "--all", "--bootstrapper"]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("WU_E_NOT_SUPPORTED"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A published 4 MB update served by a fault server whose first transfer of it stalls
/// half-way, and an `upkeep download --all --json` child process that has written exactly
/// that half to its partial file.
struct StalledDownload {
    _tmp: tempfile::TempDir,
    server: upkeep_testkit::faults::FaultServer,
    payload_url: String,
    args: Vec<String>,
    child: Child,
    state: std::path::PathBuf,
    data: Vec<u8>,
}

impl StalledDownload {
    fn start() -> StalledDownload {
        use upkeep_testkit::faults::{Fault, FaultServer};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("repo");
        ok(&upkeep(&["repo", "init", dir.to_str().unwrap()]));
        let noise: Vec<u8> = (0..4_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let data = tar_of(&[("opt/big.bin", &noise, 0o644)]);
        std::fs::write(tmp.path().join("big.tar"), &data).unwrap();
        ok(&upkeep(&[
            "repo",
            "add",
            dir.to_str().unwrap(),
            "--id",
            "55555555-5555-4555-8555-555555555555",
            "--title",
            "Big",
            "--payload",
            tmp.path().join("big.tar").to_str().unwrap(),
            "--handler",
            "files",
        ]));
        let server = FaultServer::start();
        server.put_dir(&dir);
        // With consistent snapshots the payload is served as HASH.big.tar.
        let payload_dir = dir.join("targets/updates/55555555-5555-4555-8555-555555555555/1");
        let name = std::fs::read_dir(&payload_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name();
        let payload_url = format!(
            "/targets/updates/55555555-5555-4555-8555-555555555555/1/{}",
            name.to_string_lossy()
        );
        server.push_fault(&payload_url, Fault::StallAfter(2_000_000));
        let state = tmp.path().join("state");
        let root = dir.join("metadata/1.root.json");
        let args = [
            "--repo",
            &server.base_url(),
            "--trusted-root",
            root.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "download",
            "--all",
            "--json",
        ]
        .map(String::from)
        .to_vec();
        let mut child = Command::new(env!("CARGO_BIN_EXE_upkeep"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait (bounded) until half the file is on disk.
        let partial_dir = state.join("cache/partial");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let half_written = || {
            std::fs::read_dir(&partial_dir)
                .ok()
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| {
                    e.path().extension().is_some_and(|x| x == "part")
                        && e.metadata().is_ok_and(|m| m.len() == 2_000_000)
                })
        };
        while !half_written() {
            assert!(
                std::time::Instant::now() < deadline,
                "the download never reached 50 %"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the download ended before it was stopped"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        StalledDownload {
            _tmp: tmp,
            server,
            payload_url,
            args,
            child,
            state,
            data,
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's PID.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Runs the download again: it resumes from byte 2,000,000 and ends with the right
    /// bytes in the cache.
    fn resume_and_check(self) {
        let out = upkeep(&self.args.iter().map(String::as_str).collect::<Vec<_>>());
        let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(v["result_code"], "Succeeded");
        let resumed: Vec<_> = self
            .server
            .log()
            .into_iter()
            .filter(|l| l.path == self.payload_url)
            .collect();
        assert_eq!(resumed.len(), 2);
        assert_eq!(resumed[1].range.as_deref(), Some("bytes=2000000-"));
        let objects: Vec<_> = std::fs::read_dir(self.state.join("cache/objects"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(std::fs::read(objects[0].path()).unwrap(), self.data);
    }
}

#[test]
fn a_download_killed_with_sigkill_resumes_where_it_stopped() {
    let mut d = StalledDownload::start();
    d.signal(libc::SIGKILL);
    let status = d.child.wait().unwrap();
    assert!(!status.success());
    d.resume_and_check();
}

#[test]
fn ctrl_c_aborts_the_download_keeps_the_partial_file_and_exits_4() {
    let mut d = StalledDownload::start();
    d.signal(libc::SIGINT);
    let mut stdout = String::new();
    std::io::Read::read_to_string(d.child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let status = d.child.wait().unwrap();
    assert_eq!(status.code(), Some(4), "the documented aborted exit code");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["result_code"], "Aborted");
    assert_eq!(v["updates"][0]["result_code"], "Aborted");
    let part = std::fs::read_dir(d.state.join("cache/partial"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "part"))
        .expect("the partial file is kept");
    assert_eq!(part.metadata().unwrap().len(), 2_000_000);
    d.resume_and_check();
}

/// A repository in `tmp/repo` with one `command` update running `script`, served on
/// loopback; returns the server and the trusted root file.
fn command_update_repo(
    tmp: &Path,
    id: &str,
    title: &str,
    script: &str,
) -> (Serve, std::path::PathBuf) {
    let dir = tmp.join("repo");
    ok(&upkeep(&["repo", "init", dir.to_str().unwrap()]));
    let payload = tmp.join("command.sh");
    std::fs::write(&payload, script).unwrap();
    ok(&upkeep(&[
        "repo",
        "add",
        dir.to_str().unwrap(),
        "--id",
        id,
        "--title",
        title,
        "--payload",
        payload.to_str().unwrap(),
        "--handler",
        "command",
    ]));
    (Serve::start(&dir), dir.join("metadata/1.root.json"))
}

#[test]
fn two_installers_in_two_processes_one_is_refused_and_status_says_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let go = tmp.path().join("go");
    let started = tmp.path().join("started");
    let script = format!(
        "#!/bin/sh\ntouch {s}\ni=0\nwhile [ ! -e {g} ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done\nexit 0\n",
        s = started.display(),
        g = go.display()
    );
    let id = "99999999-9999-4999-8999-999999999999";
    let (serve, root) = command_update_repo(tmp.path(), id, "Slow", &script);
    let state = tmp.path().join("state");
    let mut args: Vec<String> = agent_args(&serve.1, &root, &state)
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend([
        "--root".to_string(),
        tmp.path().join("root").display().to_string(),
    ]);
    let mut first = Command::new(env!("CARGO_BIN_EXE_upkeep"))
        .args(&args)
        .args(["install", id, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first install never started its command"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first install ended early"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let status = upkeep(&[&a[..], &["status", "--json"]].concat());
    let v: serde_json::Value =
        serde_json::from_str(&String::from_utf8_lossy(&status.stdout)).unwrap();
    assert_eq!(v["busy"], true);
    let second = upkeep(&[&a[..], &["install", id, "--json"]].concat());
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("WU_E_INSTALL_NOT_ALLOWED"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    std::fs::write(&go, b"").unwrap();
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result_code"], "Succeeded");
    let h = ok(&upkeep(&[&a[..], &["history", "--json"]].concat()));
    let v: serde_json::Value = serde_json::from_str(&h).unwrap();
    assert_eq!(v["total"], 1);
    assert_eq!(v["entries"][0]["operation"], "Installation");
}

#[test]
fn relative_paths_reach_a_command_update_as_absolute_ones_and_list_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
    let script = tmp.path().join("cmd.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$UPKEEP_INSTALL_ROOT\" in /*) ;; *) exit 9 ;; esac\necho \"$UPKEEP_OPERATION\" > \"$UPKEEP_INSTALL_ROOT/marker\"\n",
    )
    .unwrap();
    let id = "66666666-6666-4666-8666-666666666666";
    ok(&upkeep(&[
        "repo",
        "add",
        repo.to_str().unwrap(),
        "--id",
        id,
        "--title",
        "Marker",
        "--payload",
        script.to_str().unwrap(),
        "--handler",
        "command",
        "--uninstall-arg",
        "remove",
    ]));
    let serve = Serve::start(&repo);
    let machine = tmp.path().join("machine");
    std::fs::create_dir_all(machine.join("root")).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_upkeep"))
            .current_dir(&machine)
            .args(["--repo", &serve.1, "--trusted-root"])
            .arg(repo.join("metadata/1.root.json"))
            .args(["--state-dir", "state", "--root", "root"])
            .args(args)
            .env_remove("UPKEEP_CONFIG")
            .output()
            .unwrap()
    };
    ok(&run(&["install", id]));
    assert_eq!(
        std::fs::read_to_string(machine.join("root/marker")).unwrap(),
        "install\n",
        "the command wrote into the install root, told to it as an absolute path"
    );
    let list: serde_json::Value = serde_json::from_str(&ok(&run(&["list", "--json"]))).unwrap();
    assert_eq!(list["installed"][0]["id"], id);
    assert_eq!(list["installed"][0]["revision"], 1);
    assert!(ok(&run(&["list"])).contains("Marker"));
    ok(&run(&["uninstall", id]));
    assert_eq!(
        std::fs::read_to_string(machine.join("root/marker")).unwrap(),
        "uninstall\n"
    );
    let list: serde_json::Value = serde_json::from_str(&ok(&run(&["list", "--json"]))).unwrap();
    assert!(list["installed"].as_array().unwrap().is_empty());
    let o = run(&["uninstall", id]);
    assert_eq!(o.status.code(), Some(2), "not installed");
}

#[test]
fn the_state_directory_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
    let state = tmp.path().join("state");
    let o = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {} --trusted-root {} --state-dir {} --root {} status",
            env!("CARGO_BIN_EXE_upkeep"),
            repo.join("metadata/1.root.json").display(),
            state.display(),
            tmp.path().join("root").display()
        ))
        .env_remove("UPKEEP_CONFIG")
        .output()
        .unwrap();
    ok(&o);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "not 0777 from the umask");
    assert_eq!(mode(&state.join("install.lock")) & 0o077, 0);
}

#[test]
fn ctrl_c_at_the_terminal_aborts_an_install_and_the_command_is_stopped_by_the_agent() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let started = tmp.path().join("started");
    let pidfile = tmp.path().join("pid");
    // Ignores nothing: it runs until stopped (bounded at 30 s by its loop).
    let script = format!(
        "#!/bin/sh\necho $$ > {p}\ntouch {s}\ni=0\nwhile [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done\nexit 0\n",
        p = pidfile.display(),
        s = started.display()
    );
    let id = "55555555-5555-4555-8555-555555555555";
    let (serve, root) = command_update_repo(tmp.path(), id, "Long", &script);
    let state = tmp.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_upkeep"))
        .args(agent_args(&serve.1, &root, &state))
        .arg("--root")
        .arg(tmp.path().join("root"))
        .args(["install", id, "--json"])
        .process_group(0) // a foreground job of its own, as a shell would make it
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started"
        );
        assert!(child.try_wait().unwrap().is_none(), "upkeep ended early");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The terminal's Ctrl-C: SIGINT to the whole foreground process group.
    // SAFETY: kill(2) on the process group of our own child.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(4), "aborted: {stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["updates"][0]["result_code"], "Aborted");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty()
            || stat
                .rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z')),
        "the command was stopped"
    );
    let h = ok(&Command::new(env!("CARGO_BIN_EXE_upkeep"))
        .args(agent_args(&serve.1, &root, &state))
        .args(["history", "--json"])
        .output()
        .unwrap());
    let h: serde_json::Value = serde_json::from_str(&h).unwrap();
    assert_eq!(h["entries"][0]["result_code"], "Aborted");
}

#[test]
fn repo_add_refuses_what_devices_would_refuse_and_fills_in_the_installed_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let d = dir.to_str().unwrap();
    ok(&upkeep(&["repo", "init", d]));
    let before = std::fs::read(dir.join("metadata/timestamp.json")).unwrap();
    let add = |payload: &[u8], extra: &[&str]| {
        let p = tmp.path().join("payload.tar");
        std::fs::write(&p, payload).unwrap();
        let mut args = vec![
            "repo",
            "add",
            d,
            "--id",
            "66666666-6666-4666-8666-666666666666",
            "--title",
            "Su",
            "--payload",
            p.to_str().unwrap(),
            "--handler",
            "files",
        ];
        args.extend_from_slice(extra);
        upkeep(&args)
    };
    let refused = |o: &std::process::Output, why: &str| {
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{err}");
        assert_eq!(
            std::fs::read(dir.join("metadata/timestamp.json")).unwrap(),
            before,
            "nothing published"
        );
    };
    refused(
        &add(b"not a tar at all, not even close", &[]),
        "not a valid archive",
    );
    let su = tar_of(&[
        ("usr/bin/su", b"#!/bin/sh\n", 0o4755),
        ("usr/bin/x", b"12345", 0o755),
    ]);
    refused(&add(&su, &[]), "--setid PATH");
    let mut link = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    link.append_link(&mut h, "etc", "../../etc").unwrap();
    refused(
        &add(&link.into_inner().unwrap(), &[]),
        "leaves the install root",
    );
    // Declared, it is published, with the installed size the device will hold it to.
    ok(&add(&su, &["--setid", "usr/bin/su"]));
    let newest = std::fs::read_dir(dir.join("metadata"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let v: u64 = n.strip_suffix(".targets.json")?.parse().ok()?;
            Some((v, e.path()))
        })
        .max()
        .unwrap()
        .1;
    let targets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(newest).unwrap()).unwrap();
    let record = targets["signed"]["targets"]
        .as_object()
        .unwrap()
        .values()
        .find_map(|t| t.pointer("/custom/upkeep"))
        .unwrap()
        .clone();
    assert_eq!(record["installed_size"], 10 + 5, "{record}");
    assert_eq!(record["setid_paths"][0], "usr/bin/su", "{record}");
}

/// Runs the agent with `env` set; returns (exit code, stdout, stderr).
fn run_env(
    args: &[&str],
    env: &[(&str, &str)],
    stderr_file: Option<&Path>,
) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_upkeep"));
    c.args(args)
        .env_remove("UPKEEP_CONFIG")
        .env_remove("UPKEEP_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(f) = stderr_file {
        c.stderr(std::fs::File::create(f).unwrap());
    }
    let o = c.output().unwrap();
    let err = match stderr_file {
        Some(f) => std::fs::read_to_string(f).unwrap(),
        None => String::from_utf8(o.stderr).unwrap(),
    };
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stdout).unwrap(),
        err,
    )
}

#[test]
fn with_json_every_stderr_line_is_json_in_every_failure_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let serve = Serve::start(&dir);
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    let common = agent_args(&serve.1, &root, &state);
    let dead = agent_args("http://127.0.0.1:9/", &root, &state);
    let tools = "11111111-1111-4111-8111-111111111111";
    let install_root = tmp.path().join("r");
    let install_root = install_root.to_str().unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case<'_>> = vec![
        ([&dead[..], &["search", "--json"]].concat(), vec![]),
        (
            [&common[..], &["search", "Bogus=1", "--json"]].concat(),
            vec![],
        ),
        (
            [&common[..], &["search", "--json", "--no-such-flag"]].concat(),
            vec![],
        ),
        (
            [
                &common[..],
                &["show", "99999999-9999-4999-8999-999999999999", "--json"],
            ]
            .concat(),
            vec![],
        ),
        (
            [&common[..], &["download", tools, "--json"]].concat(),
            vec![],
        ),
        (
            [&common[..], &["uninstall", tools, "--json"]].concat(),
            vec![],
        ),
        (
            [
                &common[..],
                &["--root", install_root, "install", tools, "--json"],
            ]
            .concat(),
            vec![("UPKEEP_PANIC_AT", "install:applied")],
        ),
        ([&common[..], &["history", "--json"]].concat(), vec![]),
    ];
    for (args, env) in cases {
        let mut env = env;
        env.push(("UPKEEP_LOG", "debug"));
        let (code, _out, err) = run_env(&args, &env, None);
        assert!(
            !err.trim().is_empty() || code == 0,
            "{args:?}: nothing on stderr"
        );
        for line in err.lines() {
            let v: Result<serde_json::Value, _> = serde_json::from_str(line);
            assert!(v.is_ok(), "{args:?}: not JSON on stderr: {line:?}");
        }
        if code != 0 && code != 5 {
            let last: serde_json::Value =
                serde_json::from_str(err.lines().last().unwrap()).unwrap();
            assert!(
                last.get("error").is_some()
                    || args.contains(&"install")
                    || args.contains(&"download"),
                "{args:?}: the last line names the error: {last}"
            );
        }
    }
}

#[test]
fn logs_have_no_colours_off_a_terminal_and_journal_priorities_under_systemd() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    let args = [
        "--repo",
        "http://127.0.0.1:9/",
        "--trusted-root",
        root.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "-vv",
        "search",
    ];
    let (_, _, err) = run_env(&args, &[], None);
    assert!(err.contains("DEBUG"), "-vv logs debug records: {err}");
    // The agent's own debug records, not its dependencies' (HTTP, TLS).
    for dep in ["hyper", "reqwest", "rustls", "h2::"] {
        assert!(!err.contains(dep), "-vv floods with {dep}: {err}");
    }
    assert!(
        !err.contains('\x1b'),
        "no escape sequences off a terminal: {err:?}"
    );
    let without_v: Vec<&str> = args.iter().copied().filter(|a| *a != "-vv").collect();
    let (_, _, quiet) = run_env(&without_v, &[], None);
    assert!(!quiet.contains("DEBUG"), "{quiet}");
    // Under systemd stderr is the journal stream JOURNAL_STREAM names (device:inode).
    let f = tmp.path().join("journal-stream");
    std::fs::write(&f, b"").unwrap();
    let m = std::fs::metadata(&f).unwrap();
    let stream = format!(
        "{}:{}",
        std::os::unix::fs::MetadataExt::dev(&m),
        std::os::unix::fs::MetadataExt::ino(&m)
    );
    let (_, _, journal) = run_env(&args, &[("JOURNAL_STREAM", &stream)], Some(&f));
    let lines: Vec<&str> = journal.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let ok = l.starts_with("<7>")
            || l.starts_with("<6>")
            || l.starts_with("<4>")
            || l.starts_with("<3>");
        assert!(ok, "a journal line with its priority: {l:?}");
    }
    assert!(lines.iter().any(|l| l.starts_with("<7>")), "{journal}");
    // The CLI's own errors carry their priority too.
    let mut bad: Vec<&str> = without_v.clone();
    bad.push("IsInstalled=banana");
    let (_, _, journal) = run_env(&bad, &[("JOURNAL_STREAM", &stream)], Some(&f));
    assert!(
        journal.lines().any(|l| l.starts_with("<3>upkeep: error: ")),
        "{journal}"
    );
    assert!(journal.lines().all(|l| l.starts_with('<')), "{journal}");
}

#[test]
fn a_failure_names_its_cause_in_the_table_the_json_and_history() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let serve = Serve::start(&dir);
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    let install_root = tmp.path().join("r");
    let common = agent_args(&serve.1, &root, &state);
    let tools = "11111111-1111-4111-8111-111111111111";
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = common.iter().map(|s| s.to_string()).collect();
        v.extend(["--root".to_string(), install_root.display().to_string()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        upkeep(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Not downloaded, and not allowed to download: the table says so under the update.
    let o = run(&["install", tools, "--no-download"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("is not downloaded"), "{table}");
    let o = run(&["install", tools, "--no-download", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = &v["updates"][0]["error"];
    assert_eq!(e["name"], "WU_E_DM_NOTDOWNLOADED", "{v}");
    assert!(
        e["message"].as_str().unwrap().contains("is not downloaded"),
        "{v}"
    );
    let h: serde_json::Value = serde_json::from_slice(&run(&["history", "--json"]).stdout).unwrap();
    let first = &h["entries"][0];
    assert_eq!(first["result_code"], "Failed", "{h}");
    assert!(
        first["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not downloaded"),
        "{h}"
    );
    let table = String::from_utf8_lossy(&run(&["history"]).stdout).into_owned();
    assert!(table.contains("is not downloaded"), "{table}");
}

#[test]
fn the_cli_does_what_its_docs_say() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let d = dir.to_str().unwrap();
    // `repo add` without --id generates one and prints it; with --eula, `show --eula`
    // prints the terms.
    let eula = tmp.path().join("EULA.txt");
    std::fs::write(&eula, "You agree.\n").unwrap();
    let out = ok(&upkeep(&[
        "repo",
        "add",
        d,
        "--title",
        "Licensed",
        "--payload",
        tmp.path().join("tools.tar").to_str().unwrap(),
        "--handler",
        "files",
        "--eula",
        eula.to_str().unwrap(),
    ]));
    let id = out
        .split_whitespace()
        .find_map(|w| uuid::Uuid::parse_str(w).ok())
        .expect("the generated id is printed");
    assert!(ok(&upkeep(&["repo", "list", d])).contains(&id.to_string()));
    let serve = Serve::start(&dir);
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    let common = agent_args(&serve.1, &root, &state);
    let id_s = id.to_string();
    let text = ok(&upkeep(&[&common[..], &["show", &id_s, "--eula"]].concat()));
    assert_eq!(text, "You agree.\n");
    let o = upkeep(
        &[
            &common[..],
            &["show", "11111111-1111-4111-8111-111111111111", "--eula"],
        ]
        .concat(),
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no license terms"));
    // The caller's name in history comes from the configuration when it gives one.
    let install_root = tmp.path().join("r");
    for (env, want) in [(None, "upkeep-cli"), (Some("fleet-tool"), "fleet-tool")] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_upkeep"));
        c.args(common)
            .args(["--root", install_root.to_str().unwrap()])
            .args(["install", "11111111-1111-4111-8111-111111111111"])
            .env_remove("UPKEEP_CONFIG")
            .env_remove("UPKEEP_CLIENT_APPLICATION_ID");
        if let Some(v) = env {
            c.env("UPKEEP_CLIENT_APPLICATION_ID", v);
            c.arg("--json"); // reinstall is harmless; history gets a row either way
        }
        let _ = c.output().unwrap();
        let h = ok(&upkeep(&[&common[..], &["history", "--json"]].concat()));
        let v: serde_json::Value = serde_json::from_str(&h).unwrap();
        assert_eq!(v["entries"][0]["client_application_id"], want, "{v}");
        ok(&upkeep(
            &[
                &common[..],
                &[
                    "--root",
                    install_root.to_str().unwrap(),
                    "uninstall",
                    "11111111-1111-4111-8111-111111111111",
                ],
            ]
            .concat(),
        ));
    }
    // `status --json` names each last result's update and code; `hide --json` answers in JSON.
    let st: serde_json::Value =
        serde_json::from_str(&ok(&upkeep(&[&common[..], &["status", "--json"]].concat()))).unwrap();
    let last = &st["last_results"][0];
    assert_eq!(last["id"], "11111111-1111-4111-8111-111111111111", "{st}");
    assert_eq!(last["hresult"], "0x00000000", "{st}");
    let h: serde_json::Value = serde_json::from_str(&ok(&upkeep(
        &[&common[..], &["hide", "KB123", "--json"]].concat(),
    )))
    .unwrap();
    assert_eq!(h["updates"][0]["is_hidden"], true, "{h}");
    // With nothing configured, nothing is created.
    let fresh = tmp.path().join("fresh-state");
    let o = upkeep(&["--state-dir", fresh.to_str().unwrap(), "search"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no trusted root yet"));
    assert!(!fresh.exists(), "nothing was created");
}

#[test]
fn completions_and_the_manual_come_from_the_command_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ok(&upkeep(&["completions", shell]));
        for verb in ["search", "install", "uninstall", "history", "repo"] {
            assert!(out.contains(verb), "{shell}: {verb} missing");
        }
    }
    // The bash script is valid bash.
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("upkeep.bash");
    std::fs::write(&f, ok(&upkeep(&["completions", "bash"]))).unwrap();
    let st = Command::new("bash").arg("-n").arg(&f).status().unwrap();
    assert!(st.success());
    let man = ok(&upkeep(&["man"]));
    assert!(man.contains(".SH NAME") && man.contains("install"), "{man}");
}

#[test]
fn operators_select_by_kb_title_severity_and_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let serve = Serve::start(&dir);
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    let common = agent_args(&serve.1, &root, &state);
    let ids = |extra: &[&str]| -> Vec<String> {
        let out = ok(&upkeep(
            &[&common[..], &["search", "--json"], extra].concat(),
        ));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["updates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["title"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&["--kb", "123"]), ["Tools 1.0"]);
    assert_eq!(ids(&["--kb", "KB123"]), ["Tools 1.0"]);
    assert_eq!(ids(&["--title", "AGENT"]), ["Agent"]);
    assert_eq!(ids(&["--severity", "important"]), ["Tools 1.0"]);
    assert!(ids(&["--severity", "Critical"]).is_empty());
    assert_eq!(ids(&["--max-size", "1KB"]), ["Agent"]);
    assert_eq!(ids(&["--min-size", "1KB"]), ["Tools 1.0"]);
    assert!(ids(&["--category", "nothing"]).is_empty());
    // The table shows KB, severity, size and flags.
    let table = ok(&upkeep(&[&common[..], &["search"]].concat()));
    assert!(table.contains("KB") && table.contains("FLAGS"), "{table}");
    assert!(table.contains("KB123"), "{table}");
    // A KB article id selects its update wherever an id is accepted.
    let out = ok(&upkeep(
        &[&common[..], &["download", "KB123", "--json"]].concat(),
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["updates"][0]["id"],
        "11111111-1111-4111-8111-111111111111"
    );
    let table = ok(&upkeep(&[&common[..], &["search", "--kb", "123"]].concat()));
    assert!(table.contains("D----"), "downloaded flag: {table}");
    let o = upkeep(&[&common[..], &["download", "KB999"]].concat());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("KB999"));
    let o = upkeep(&[&common[..], &["download", "not-an-id"]].concat());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("KB article id"));
}

#[test]
fn a_trusted_root_of_another_repository_is_a_clear_error_with_a_hint() {
    let (ta, tb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (published_repo(ta.path()), published_repo(tb.path()));
    let (sa, sb) = (Serve::start(&a), Serve::start(&b));
    let state = ta.path().join("state");
    let root_a = a.join("metadata/root.json");
    let root_b = b.join("metadata/root.json");
    ok(&upkeep(
        &[&agent_args(&sa.1, &root_a, &state)[..], &["search"]].concat(),
    ));
    // The same state directory pointed at repository B with B's root.
    let o = upkeep(
        &[
            &agent_args(&sb.1, &root_b, &state)[..],
            &["search", "--json"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(1));
    let err: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stderr).lines().last().unwrap()).unwrap();
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("shares no key with --trusted-root"), "{msg}");
    assert!(msg.contains("use another --state-dir"), "{msg}");
    assert_eq!(err["error"]["kind"], "Threshold");
    // Never ignored silently: an offline search, which refuses nothing, warns too.
    let o = upkeep(
        &[
            &agent_args(&sb.1, &root_b, &state)[..],
            &["search", "--offline"],
        ]
        .concat(),
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("WARN") && e.contains("which was not used"),
        "{e}"
    );
}

#[test]
fn a_local_repository_works_by_file_url_and_by_plain_path_with_no_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let root = dir.join("metadata/root.json");
    let tools = "11111111-1111-4111-8111-111111111111";
    for (i, repo) in [
        format!("file://{}/", dir.display()),
        dir.display().to_string(),
    ]
    .iter()
    .enumerate()
    {
        let state = tmp.path().join(format!("state{i}"));
        let install_root = tmp.path().join(format!("root{i}"));
        let common = agent_args(repo, &root, &state);
        let out = ok(&upkeep(&[&common[..], &["search", "--json"]].concat()));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["updates"].as_array().unwrap().len(), 2, "{repo}: {v}");
        let out = ok(&upkeep(
            &[
                &common[..],
                &[
                    "--root",
                    install_root.to_str().unwrap(),
                    "install",
                    tools,
                    "--json",
                ],
            ]
            .concat(),
        ));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["result_code"], "Succeeded", "{repo}: {v}");
        assert_eq!(
            std::fs::read(install_root.join("opt/tools/run")).unwrap(),
            b"#!/bin/sh\n"
        );
    }
    // A local file that is not what was signed is refused like a download.
    let state = tmp.path().join("state-bad");
    let common = agent_args(dir.to_str().unwrap(), &root, &state);
    ok(&upkeep(&[&common[..], &["search"]].concat()));
    for f in walk_tree(&dir.join("targets/updates/11111111-1111-4111-8111-111111111111")) {
        let mut data = std::fs::read(&f).unwrap();
        data[600] ^= 1;
        std::fs::write(&f, data).unwrap();
    }
    let o = upkeep(&[&common[..], &["download", tools, "--json"]].concat());
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["updates"][0]["hresult"], "0x80246002", "{v}");
    assert_eq!(
        std::fs::read_dir(state.join("cache/objects"))
            .unwrap()
            .count(),
        0
    );
}

fn walk_tree(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk_tree(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn agent_settings_are_offered_only_where_they_mean_something() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let serve = Serve::start(&dir);
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    // Before or after an agent command: the same.
    let after = ok(&upkeep(&[
        "search",
        "--json",
        "--repo",
        &serve.1,
        "--trusted-root",
        root.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]));
    let v: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(v["updates"].as_array().unwrap().len(), 2);
    // Not offered by the publisher, the demo, completions or the manual.
    for cmd in [
        &["repo", "init", "--help"][..],
        &["demo", "--help"],
        &["man", "--help"],
    ] {
        let help = ok(&upkeep(cmd));
        for flag in [
            "--repo ",
            "--state-dir",
            "--trusted-root",
            "--root ",
            "--config",
        ] {
            assert!(!help.contains(flag), "{cmd:?} offers {flag}:\n{help}");
        }
    }
    let o = upkeep(&[
        "repo",
        "init",
        tmp.path().join("x").to_str().unwrap(),
        "--root",
        "/",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = upkeep(&["--state-dir", "/tmp", "demo"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not use them"));
    // Logging flags mean something everywhere.
    assert!(ok(&upkeep(&["repo", "list", dir.to_str().unwrap(), "-q"])).contains("Tools"));
}

#[test]
fn every_repo_verb_answers_in_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let d = dir.to_str().unwrap();
    let json = |args: &[&str]| -> serde_json::Value {
        let o = upkeep(args);
        assert!(o.status.success(), "{args:?}: {o:?}");
        assert!(
            o.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    assert!(json(&["repo", "init", d, "--json"])["trusted_root"].is_string());
    let p = tmp.path().join("setup.sh");
    std::fs::write(&p, b"#!/bin/sh\n").unwrap();
    let added = json(&[
        "repo",
        "add",
        d,
        "--title",
        "T",
        "--payload",
        p.to_str().unwrap(),
        "--handler",
        "command",
        "--json",
    ]);
    let id = added["id"].as_str().unwrap().to_string();
    assert_eq!(json(&["repo", "list", d, "--json"])["updates"][0]["id"], id);
    assert!(json(&["repo", "publish", d, "--json"])["roles"].is_array());
    assert_eq!(
        json(&["repo", "rotate-key", d, "snapshot", "--json"])["rotated"],
        "snapshot"
    );
    assert!(json(&["repo", "prune", d, "--json"])["metadata_removed"].is_number());
    assert!(json(&["repo", "status", d, "--json"])["roles"].is_array());
    assert_eq!(json(&["repo", "remove", d, &id, "--json"])["updates"], 0);
    // A refusal is one JSON line on stderr.
    let o = upkeep(&["repo", "remove", d, &id, "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let e: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not in the repository"));
}

/// The bash completion offers the update ids and KB ids of the trusted metadata where a
/// command takes ids (read offline, from the line's own `--state-dir`), and the options
/// as before.
#[test]
fn bash_completion_offers_update_ids_and_kb_ids_from_the_trusted_catalog() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let serve = Serve::start(&dir);
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    ok(&upkeep(
        &[&agent_args(&serve.1, &root, &state)[..], &["search"]].concat(),
    ));
    drop(serve); // offline from here on
    let ids = ok(&upkeep(&["__ids", "--state-dir", state.to_str().unwrap()]));
    assert!(
        ids.lines()
            .any(|l| l == "11111111-1111-4111-8111-111111111111"),
        "{ids}"
    );
    assert!(ids.lines().any(|l| l == "KB123"), "{ids}");
    let script = tmp.path().join("upkeep.bash");
    std::fs::write(&script, ok(&upkeep(&["completions", "bash"]))).unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_upkeep")).parent().unwrap();
    let complete = |words: &str| -> Vec<String> {
        let o = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {script}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); _upkeep_ids upkeep \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script = script.display()
            ))
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let st = state.to_str().unwrap();
    let got = complete(&format!("upkeep --state-dir {st} install 1111"));
    assert!(
        got.contains(&"11111111-1111-4111-8111-111111111111".to_string()),
        "{got:?}"
    );
    let got = complete(&format!("upkeep --state-dir {st} show KB"));
    assert!(got.contains(&"KB123".to_string()), "{got:?}");
    // Options still complete; no ids where an option is being typed.
    let got = complete(&format!("upkeep --state-dir {st} install --acc"));
    assert_eq!(got, ["--accept-eula"], "{got:?}");
}

#[test]
fn a_command_opens_one_agent_and_selects_and_runs_its_job_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = published_repo(tmp.path());
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    let install_root = tmp.path().join("root");
    let tools = "11111111-1111-4111-8111-111111111111";
    let repo = dir.to_str().unwrap();
    let common = agent_args(repo, &root, &state);
    let opened = |err: &str| err.matches("agent opened").count();
    // install: selects (a search), downloads and installs; hide: selects and records.
    for verb in [
        vec![
            "--root",
            install_root.to_str().unwrap(),
            "-vv",
            "install",
            tools,
        ],
        vec!["-vv", "hide", "22222222-2222-4222-8222-222222222222"],
        vec!["-vv", "download", "--all"],
    ] {
        let (code, _, err) = run_env(&[&common[..], &verb[..]].concat(), &[], None);
        assert_eq!(code, 0, "{verb:?}: {err}");
        assert_eq!(opened(&err), 1, "{verb:?} opened one agent: {err}");
        // And built the catalog once (or opened its index once).
        let built =
            err.matches("catalog built").count() + err.matches("catalog index opened").count();
        assert!(
            built <= 1,
            "{verb:?} built the catalog {built} times: {err}"
        );
    }
    assert!(install_root.join("opt/tools/run").exists());
}
