//! Fuzz the TUF metadata parser for every role: no panic on any bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use upkeep_tuf::metadata::{parse, Root, Snapshot, Targets, Timestamp};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = parse::<Root>("root", data) {
        let rk = env.signed.roles.get("root").cloned();
        if let Some(rk) = rk {
            let _ = env.verify("root", &env.signed.keys, &rk);
        }
    }
    let _ = parse::<Timestamp>("timestamp", data);
    let _ = parse::<Snapshot>("snapshot", data);
    if let Ok(t) = parse::<Targets>("targets", data) {
        if let Some(d) = &t.signed.delegations {
            let _ = d.roles_for_target("a/b/c");
            if d.role_count() <= 4096 {
                let _ = d.all_role_names().len();
            }
        }
    }
});
