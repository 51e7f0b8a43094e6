//! The stable, flat view of an update that scripts and other processes read: the CLI's
//! `--json` (documented in the README) and the daemon's D-Bus dictionaries have the same
//! keys, from this one mapping.

use serde_json::{json, Value};

use crate::Update;

/// The stable JSON form of an update: its signed fields and its state on this machine.
pub fn update_json(u: &Update) -> Value {
    let m = u.metadata();
    json!({
        "id": m.id,
        "revision": m.revision,
        "version": m.version,
        "title": m.title,
        "description": m.description,
        "release_notes": m.release_notes,
        "more_info_urls": m.more_info_urls,
        "type": m.update_type,
        "severity": m.severity,
        "kb_article_ids": m.kb_article_ids,
        "categories": m.categories,
        "supersedes": m.supersedes,
        "mandatory": m.mandatory,
        "uninstallable": m.uninstallable,
        "deployment_action": m.deployment_action,
        "browse_only": m.browse_only,
        "installation_behavior": m.installation_behavior,
        "uninstallation_behavior": u.uninstallation_behavior(),
        "handler": m.handler,
        "release_date": m.release_date,
        "deadline": m.deadline,
        "has_eula": m.eula.is_some(),
        "has_bootstrapper": m.bootstrapper.is_some(),
        "min_download_size": u.min_download_size(),
        "max_download_size": u.max_download_size(),
        "content": u.download_contents(),
        "is_installed": u.is_installed(),
        "installed_revision": u.installed_revision(),
        "is_hidden": u.is_hidden(),
        "is_downloaded": u.is_downloaded(),
        "eula_accepted": u.eula_accepted(),
        "reboot_required": u.reboot_required(),
        "service": u.service(),
        "applicable": u.is_applicable(),
        "not_applicable_reason": u.not_applicable_reason(),
        "detected": u.is_detected(),
        "applicability": m.applicability,
        "applicability_checks": u.applicability_checks(),
    })
}
