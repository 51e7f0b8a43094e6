//! `upkeepd` as a real process on a real private system bus (`dbus-daemon`), over a real
//! loopback repository: it takes its name, any caller — an unprivileged user too — searches
//! through it and gets the same update dictionaries as `--json`, a bad criteria string is
//! the agent's D-Bus error name with its HRESULT, what it serves matches
//! `docs/dbus/org.upkeep.Agent1.xml`, and SIGTERM stops it cleanly.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};

use upkeep_testkit::bus::{wait_until, SystemBus, User};
use upkeep_testkit::{tar_zst, RepoSim};
use zbus::OwnedVariant;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bus: &SystemBus, sim: &RepoSim, url: &str, dir: &std::path::Path) -> Daemon {
    let child = bus
        .command(env!("CARGO_BIN_EXE_upkeepd"))
        .arg("--repo")
        .arg(url)
        .arg("--trusted-root")
        .arg(sim.trusted_root_file())
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--root")
        .arg(dir.join("root"))
        .env_remove("UPKEEP_CONFIG")
        .stdin(Stdio::null())
        .spawn()
        .expect("upkeepd starts");
    let d = Daemon(child);
    wait_until("upkeepd owns org.upkeep.Agent1", || {
        bus.has_name("org.upkeep.Agent1")
    });
    d
}

async fn client(bus: &SystemBus) -> zbus::Connection {
    zbus::connection::Builder::address(bus.address())
        .build()
        .await
        .expect("a connection to the test bus")
}

type Updates = (u32, Vec<HashMap<String, OwnedVariant>>);

async fn search(conn: &zbus::Connection, criteria: &str) -> zbus::Result<Updates> {
    let options: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    let reply = conn
        .call_method(
            Some("org.upkeep.Agent1"),
            "/org/upkeep/Agent1",
            Some("org.upkeep.Agent1"),
            "Search",
            &(criteria, options),
        )
        .await?;
    reply.body().deserialize::<Updates>()
}

fn text(v: &OwnedVariant) -> String {
    String::try_from(v.clone()).expect("a string")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_search_to_any_caller_with_the_agents_errors() {
    let mut sim = RepoSim::new();
    sim.add_update(
        "targets",
        RepoSim::update(1, "Served"),
        &tar_zst(&[("etc/served.conf", b"v1")]),
    );
    sim.publish();
    let server = sim.serve();
    let dir = tempfile::tempdir().unwrap();
    let bus = SystemBus::start();
    let daemon = start(&bus, &sim, &server.base_url(), dir.path());
    let conn = client(&bus).await;

    // Properties.
    let props = zbus::fdo::PropertiesProxy::builder(&conn)
        .destination("org.upkeep.Agent1")
        .path("/org/upkeep/Agent1")
        .build()
        .await
        .unwrap();
    let all = props
        .get_all(zbus::names::InterfaceName::from_static_str_unchecked(
            "org.upkeep.Agent1",
        ))
        .await
        .unwrap();
    assert_eq!(u32::try_from(&all["ApiVersion"]).unwrap(), 1);
    assert!(!bool::try_from(&all["Busy"]).unwrap());
    assert!(!bool::try_from(&all["RebootRequired"]).unwrap());
    assert_eq!(text(&all["Version"]), env!("CARGO_PKG_VERSION"));

    // A search: the update as the CLI's --json has it.
    let (code, updates) = search(&conn, "IsInstalled=0").await.unwrap();
    assert_eq!(code, 2, "OperationResultCode Succeeded");
    assert_eq!(updates.len(), 1);
    let u = &updates[0];
    assert_eq!(text(&u["title"]), "Served");
    assert_eq!(
        text(&u["id"]),
        "00000000-0000-0000-0000-000000000001",
        "{u:?}"
    );
    assert!(!bool::try_from(&u["is_installed"]).unwrap());
    assert!(!u.contains_key("deadline"), "a null is left out: {u:?}");
    let (_, none) = search(&conn, "IsInstalled=1").await.unwrap();
    assert!(none.is_empty());

    // Bad criteria: the agent's error kind as the D-Bus name, the message with its code.
    match search(&conn, "IsInstalled=").await {
        Err(zbus::Error::MethodError(name, Some(message), _)) => {
            assert_eq!(name.as_str(), "org.upkeep.Agent1.Error.InvalidArgs");
            assert!(message.contains("WU_E_INVALID_CRITERIA"), "{message}");
        }
        other => panic!("bad criteria answered {other:?}"),
    }

    // An unprivileged caller may search (through dbus-send, as that user).
    let user = User::unprivileged();
    let mut c = bus.command("dbus-send");
    c.arg(format!("--bus={}", bus.address())).args([
        "--print-reply",
        "--dest=org.upkeep.Agent1",
        "/org/upkeep/Agent1",
        "org.freedesktop.DBus.Properties.Get",
        "string:org.upkeep.Agent1",
        "string:ApiVersion",
    ]);
    let out = user.run(c).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("uint32 1"),
        "{out:?}"
    );

    // What it serves is what the repository documents.
    let xml = conn
        .call_method(
            Some("org.upkeep.Agent1"),
            "/org/upkeep/Agent1",
            Some("org.freedesktop.DBus.Introspectable"),
            "Introspect",
            &(),
        )
        .await
        .unwrap()
        .body()
        .deserialize::<String>()
        .unwrap();
    let served = interface(&xml, "org.upkeep.Agent1");
    let documented = interface(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/dbus/org.upkeep.Agent1.xml"
        ))
        .unwrap(),
        "org.upkeep.Agent1",
    );
    assert_eq!(
        served, documented,
        "docs/dbus/org.upkeep.Agent1.xml is not what is served"
    );

    // SIGTERM: a clean stop, the name released.
    let mut daemon = daemon;
    let pid = daemon.0.id();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let status = daemon.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!bus.has_name("org.upkeep.Agent1"));
}

/// The `<interface name="NAME">` element of introspection XML, one trimmed line per tag
/// (comments and blank lines dropped), so that layout does not matter.
fn interface(xml: &str, name: &str) -> Vec<String> {
    let start = xml
        .find(&format!("<interface name=\"{name}\">"))
        .unwrap_or_else(|| panic!("no interface {name} in {xml}"));
    let end = start
        + xml[start..]
            .find("</interface>")
            .expect("a closed interface");
    let mut lines = Vec::new();
    let mut in_comment = false;
    for l in xml[start..end + "</interface>".len()].lines() {
        let l = l.trim();
        if l.starts_with("<!--") {
            in_comment = !l.ends_with("-->");
            continue;
        }
        if in_comment {
            in_comment = !l.ends_with("-->");
            continue;
        }
        if !l.is_empty() {
            lines.push(l.to_string());
        }
    }
    lines
}
