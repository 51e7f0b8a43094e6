//! Property tests: the criteria parser and the metadata parser never panic, report
//! positions inside the input, and accept everything the grammar generates.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use proptest::prelude::*;
use upkeep::criteria::Criteria;

fn criterion() -> impl Strategy<Value = String> {
    let guid = "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-8[0-9a-f]{3}-[0-9a-f]{12}";
    prop_oneof![
        prop::sample::select(vec![
            "IsInstalled",
            "IsHidden",
            "IsPresent",
            "RebootRequired",
            "IsAssigned",
            "BrowseOnly",
            "AutoSelectOnWebSites"
        ])
        .prop_flat_map(|p| (Just(p), 0..2u8, "[ ]{0,2}"))
        .prop_map(|(p, v, ws)| format!("{p}{ws}={ws}{v}")),
        (
            prop::sample::select(vec!["=", "!="]),
            prop::sample::select(vec!["Software", "Driver", "software"])
        )
            .prop_map(|(op, t)| format!("Type{op}'{t}'")),
        prop::sample::select(vec![
            "Installation",
            "Uninstallation",
            "OptionalInstallation"
        ])
        .prop_map(|a| format!("DeploymentAction='{a}'")),
        guid.prop_map(|g| format!("CategoryIDs contains '{g}'")),
        (guid, 0..1000u32).prop_map(|(g, r)| format!("(UpdateID='{g}' and RevisionNumber={r})")),
    ]
}

fn and_group() -> impl Strategy<Value = String> {
    prop::collection::vec(criterion(), 1..4).prop_map(|v| v.join(" and "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn generated_criteria_parse(groups in prop::collection::vec(and_group(), 1..4), paren in any::<bool>()) {
        let text = groups
            .iter()
            .map(|g| if paren { format!("({g})") } else { g.clone() })
            .collect::<Vec<_>>()
            .join(" or ");
        let c = Criteria::parse(&text);
        prop_assert!(c.is_ok(), "{text}: {:?}", c.err());
        prop_assert_eq!(c.unwrap().groups().len(), groups.len());
    }

    #[test]
    fn arbitrary_text_never_panics_and_positions_are_in_range(s in "\\PC{0,80}") {
        if let Err(e) = Criteria::parse(&s) {
            prop_assert!(e.position <= s.chars().count(), "{} > {}", e.position, s.chars().count());
        }
    }

    #[test]
    fn or_inside_parentheses_is_always_refused(a in criterion(), b in criterion()) {
        let text = format!("IsHidden=0 and ({a} or {b})");
        prop_assert!(Criteria::parse(&text).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_metadata_parser(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = upkeep_tuf::metadata::parse::<upkeep_tuf::metadata::Targets>("targets", &data);
        let _ = upkeep_tuf::metadata::parse::<upkeep_tuf::metadata::Root>("root", &data);
        let _ = upkeep_tuf::metadata::parse::<upkeep_tuf::metadata::Timestamp>("timestamp", &data);
    }

    #[test]
    fn mutated_metadata_never_panics_and_a_changed_payload_never_verifies(pos in 0usize..2000, byte in any::<u8>()) {
        let sim = upkeep_testkit::RepoSim::new();
        let good = sim.write_targets("targets");
        let mut bad = good.clone();
        let i = pos % bad.len();
        bad[i] = byte;
        if let Ok(env) = upkeep_tuf::metadata::parse::<upkeep_tuf::metadata::Targets>("targets", &bad) {
            let keys = &sim.root.keys;
            let rk = &sim.root.roles["targets"];
            let verified = env.verify("targets", keys, rk).is_ok();
            let good_env = upkeep_tuf::metadata::parse::<upkeep_tuf::metadata::Targets>("targets", &good).unwrap();
            let same_payload = serde_json::to_value(&env.signed).ok() == serde_json::to_value(&good_env.signed).ok();
            prop_assert!(!verified || same_payload, "a changed payload verified");
        }
    }
}
