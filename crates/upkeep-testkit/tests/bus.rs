//! The test bus and polkit harness against the real programs: a private `dbus-daemon`
//! that answers and goes away with its guard, and a real `polkitd` on it that refuses an
//! unprivileged caller an admin action at once (no agent, no hang), allows root, and allows
//! the caller once a `rules.d` rule says so.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::process::Command;
use std::time::{Duration, Instant};

use upkeep_testkit::bus::{wait_until, Installed, Polkit, SystemBus, User};

const ACTION: &str = "org.upkeep.test.harness";

fn policy() -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE policyconfig PUBLIC "-//freedesktop//DTD PolicyKit Policy Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/PolicyKit/1/policyconfig.dtd">
<policyconfig>
  <action id="{ACTION}">
    <description>upkeep's test harness action</description>
    <message>Authentication is required for the harness</message>
    <defaults>
      <allow_any>auth_admin</allow_any>
      <allow_inactive>auth_admin</allow_inactive>
      <allow_active>auth_admin</allow_active>
    </defaults>
  </action>
</policyconfig>
"#
    )
}

/// `pkcheck` for ACTION on its own process, as `user` (root when `None`): its exit code.
fn pkcheck(bus: &SystemBus, user: Option<&User>) -> i32 {
    let mut c = bus.command("sh");
    c.args([
        "-c",
        &format!("exec pkcheck --action-id {ACTION} --process $$"),
    ]);
    let mut c = match user {
        Some(u) => u.run(c),
        None => c,
    };
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("pkcheck runs")
        .code()
        .unwrap_or(-1)
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_private_bus_answers_and_stops_with_its_guard() {
    let bus = SystemBus::start();
    assert!(bus.has_name("org.freedesktop.DBus"));
    assert!(!bus.has_name("org.upkeep.Nobody"));
    let out = Command::new("dbus-send")
        .arg(format!("--bus={}", bus.address()))
        .args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetId",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pid = bus.pid();
    assert!(alive(pid));
    drop(bus);
    assert!(!alive(pid), "the bus outlived its guard");
}

#[test]
fn polkit_refuses_an_unprivileged_caller_at_once_and_a_rule_allows_it() {
    let bus = SystemBus::start();
    let polkit = Polkit::start(&bus);
    let _action = Installed::action(&format!("{ACTION}.policy"), &policy());
    let user = User::unprivileged();
    // polkitd reads new action files on its own; root is allowed once it knows the action.
    wait_until("polkitd knows the action and allows root", || {
        pkcheck(&bus, None) == 0
    });
    // No authentication agent and no session: refused, and at once (never a hang).
    let started = Instant::now();
    let refused = pkcheck(&bus, Some(&user));
    // 2: not authorized (authentication would be needed, and no agent can give it); 1
    // would be pkcheck failing to reach polkitd at all.
    assert_eq!(refused, 2, "{} and an auth_admin action", user.name);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refusal took {:?}",
        started.elapsed()
    );
    // A rule for this user and this action only.
    let rule = Installed::rule(
        "50-upkeep-test-harness.rules",
        &format!(
            r#"polkit.addRule(function(action, subject) {{
    if (action.id == "{ACTION}" && subject.user == "{}") {{
        return polkit.Result.YES;
    }}
}});
"#,
            user.name
        ),
    );
    wait_until("the rule is read", || pkcheck(&bus, Some(&user)) == 0);
    drop(rule);
    wait_until("the rule's removal is read", || {
        pkcheck(&bus, Some(&user)) == 2
    });
    let (bus_pid, polkit_pid) = (bus.pid(), polkit.pid());
    drop(polkit);
    drop(bus);
    assert!(
        !alive(polkit_pid) && !alive(bus_pid),
        "a daemon outlived its guard"
    );
}
