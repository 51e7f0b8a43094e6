//! `upkeepd`: the machine's one [`Agent`] served on the system bus as `org.upkeep.Agent1`.
//!
//! This is the daemon's first part (issue 20): the agent object with its properties and
//! `Search`, whose updates are the same flat dictionaries as the CLI's `--json`
//! ([`upkeep::view::update_json`]), and errors whose D-Bus names come from the agent's one
//! table of kinds ([`upkeep::ErrorKind::dbus_name`]). Sessions, job objects with progress
//! signals, and polkit authorization are the next parts; `docs/dbus-api.md` says what is
//! served today.
//!
//! The blocking agent calls run on the runtime's blocking pool (`spawn_blocking`); the
//! agent's own HTTP runs on the same multi-thread runtime (the host's handle).

use std::collections::HashMap;

use upkeep::{Agent, SearchOptions};
use zbus::message::Header;
use zbus::names::ErrorName;
use zbus::{OwnedVariant as OwnedValue, Variant as Value};

/// The well-known name on the system bus.
pub const BUS_NAME: &str = "org.upkeep.Agent1";
/// The agent object's path.
pub const AGENT_PATH: &str = "/org/upkeep/Agent1";
/// The version of the D-Bus API (the `1` of `Agent1`): a change that breaks a client makes
/// an `Agent2`.
pub const API_VERSION: u32 = 1;

/// An agent error as a D-Bus error: its name from the error's kind
/// (`org.upkeep.Agent1.Error.InvalidArgs`, …), its message the agent's, followed by the WUA
/// result code (`… (0x80240032 WU_E_INVALID_CRITERIA)`).
#[derive(Debug)]
pub struct BusError {
    name: &'static str,
    description: String,
}

impl From<upkeep::Error> for BusError {
    fn from(e: upkeep::Error) -> BusError {
        let code = e.hresult();
        BusError {
            name: e.dbus_name(),
            description: format!(
                "{} (0x{:08X} {})",
                e.message(),
                code.as_u32(),
                code.name().unwrap_or("unknown")
            ),
        }
    }
}

impl BusError {
    fn failed(description: String) -> BusError {
        BusError {
            name: upkeep::ErrorKind::Other.dbus_name(),
            description,
        }
    }
}

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.description)
    }
}

impl std::error::Error for BusError {}

impl zbus::DBusError for BusError {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<zbus::message::Message> {
        zbus::message::Message::error(call, self.name).build(&(self.description.as_str(),))
    }
    fn name(&self) -> ErrorName<'_> {
        ErrorName::from_static_str_unchecked(self.name)
    }
    fn description(&self) -> Option<&str> {
        Some(&self.description)
    }
}

/// A JSON value as a D-Bus value: objects are `a{sv}` (keys whose value is `null` left
/// out: D-Bus has no null), arrays `av`, strings `s`, booleans `b`, integers `t` (or `x`
/// when negative), other numbers `d`.
pub fn to_variant(v: &serde_json::Value) -> Option<Value<'static>> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => Value::from(*b),
        J::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Value::from(u),
            (None, Some(i)) => Value::from(i),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::from(s.clone()),
        J::Array(a) => Value::from(
            a.iter()
                .filter_map(to_variant)
                .map(|x| Value::Variant(Box::new(x)))
                .collect::<Vec<Value<'static>>>(),
        ),
        J::Object(_) => Value::from(to_dict(v)),
    })
}

/// A JSON object as an `a{sv}` dictionary (see [`to_variant`]).
pub fn to_dict(v: &serde_json::Value) -> HashMap<String, Value<'static>> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, x)| Some((k.clone(), to_variant(x)?)))
        .collect()
}

fn owned(d: HashMap<String, Value<'static>>) -> HashMap<String, OwnedValue> {
    d.into_iter()
        .filter_map(|(k, v)| Some((k, OwnedValue::try_from(v).ok()?)))
        .collect()
}

/// The agent object.
pub struct AgentObject {
    agent: Agent,
}

impl AgentObject {
    /// Serves `agent`.
    pub fn new(agent: Agent) -> AgentObject {
        AgentObject { agent }
    }

    /// Runs a blocking agent call off the runtime's workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Agent) -> upkeep::Result<T> + Send + 'static,
    ) -> Result<T, BusError> {
        let agent = self.agent.clone();
        match tokio::task::spawn_blocking(move || f(agent)).await {
            Ok(r) => r.map_err(BusError::from),
            Err(e) => Err(BusError::failed(format!("the agent's call failed: {e}"))),
        }
    }
}

/// The caller's uid, from the bus (`GetConnectionUnixUser` of the message's sender).
async fn caller_uid(conn: &zbus::Connection, hdr: &Header<'_>) -> Result<u32, BusError> {
    let sender = hdr
        .sender()
        .ok_or_else(|| BusError::failed("a call without a sender".into()))?;
    let dbus = zbus::fdo::DBusProxy::new(conn)
        .await
        .map_err(|e| BusError::failed(e.to_string()))?;
    dbus.get_connection_unix_user(sender.clone().into())
        .await
        .map_err(|e| BusError::failed(format!("the caller's uid: {e}")))
}

fn flag(options: &HashMap<String, OwnedValue>, key: &str) -> Result<Option<bool>, BusError> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => bool::try_from(v).map(Some).map_err(|_| BusError {
            name: upkeep::ErrorKind::InvalidInput.dbus_name(),
            description: format!("option {key:?} must be a boolean"),
        }),
    }
}

#[zbus::interface(name = "org.upkeep.Agent1")]
impl AgentObject {
    /// The daemon's version.
    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    /// The D-Bus API's version.
    #[zbus(property)]
    fn api_version(&self) -> u32 {
        API_VERSION
    }

    /// `IUpdateInstaller::IsBusy`: an install or uninstall is running.
    #[zbus(property)]
    fn busy(&self) -> bool {
        matches!(self.agent.try_install_lock(), Ok(None))
    }

    /// A restart is pending (`ISystemInformation::RebootRequired`).
    #[zbus(property)]
    fn reboot_required(&self) -> bool {
        self.agent
            .store()
            .and_then(|s| Ok(s.reboot_pending()?))
            .unwrap_or(false)
    }

    /// `IUpdateSearcher::Search`: the updates matching WUA's `criteria`, each an `a{sv}`
    /// with the keys of the CLI's `--json`, and WUA's `OperationResultCode` (2:
    /// succeeded, 3: succeeded with errors). Options (`a{sv}`, all optional): `online` (b,
    /// default true), `include_superseded` (b), `include_not_applicable` (b), `service`
    /// (s). Any caller may search.
    #[zbus(out_args("result_code", "updates"))]
    async fn search(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        criteria: String,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(u32, Vec<HashMap<String, OwnedValue>>), BusError> {
        let uid = caller_uid(conn, &hdr).await?;
        let opts = SearchOptions {
            offline: !flag(&options, "online")?.unwrap_or(true),
            include_superseded: flag(&options, "include_superseded")?.unwrap_or(false),
            include_not_applicable: flag(&options, "include_not_applicable")?.unwrap_or(false),
            service: match options.get("service") {
                None => None,
                Some(v) => Some(String::try_from(v.clone()).map_err(|_| BusError {
                    name: upkeep::ErrorKind::InvalidInput.dbus_name(),
                    description: "option \"service\" must be a string".into(),
                })?),
            },
        };
        let result = self
            .blocking(move |agent| {
                let mut req = agent.request("upkeepd");
                req.uid = uid;
                agent.search(&req, &criteria, &opts)
            })
            .await?;
        let updates = result
            .updates()
            .iter()
            .map(|u| owned(to_dict(&upkeep::view::update_json(u))))
            .collect();
        Ok((result.result_code() as u32, updates))
    }
}

/// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set), serves `agent` at
/// [`AGENT_PATH`] and takes [`BUS_NAME`]; the connection serves until dropped.
pub async fn serve(agent: Agent) -> zbus::Result<zbus::Connection> {
    zbus::connection::Builder::system()
        .serve_at(AGENT_PATH, AgentObject::new(agent))
        .name(BUS_NAME)
        .build()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_becomes_dbus_values_without_nulls() {
        let v = serde_json::json!({
            "title": "T",
            "revision": 3,
            "offset": -2,
            "ratio": 0.5,
            "installed": false,
            "deadline": null,
            "kb": ["KB1", null, "KB2"],
            "behavior": { "reboot": "never", "gone": null },
        });
        let d = to_dict(&v);
        assert!(!d.contains_key("deadline"), "null left out");
        assert_eq!(d["title"], Value::from("T"));
        assert_eq!(d["revision"], Value::from(3u64));
        assert_eq!(d["offset"], Value::from(-2i64));
        assert_eq!(d["ratio"], Value::from(0.5f64));
        assert_eq!(d["installed"], Value::from(false));
        let Value::Array(kb) = &d["kb"] else {
            panic!("{:?}", d["kb"])
        };
        assert_eq!(kb.len(), 2, "nulls left out of arrays: {kb:?}");
        let b: HashMap<String, Value<'_>> = d["behavior"].clone().try_into().unwrap();
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!(d["behavior"].value_signature().to_string(), "a{sv}");
        // Every value is owned (no fds): the whole dictionary crosses the bus.
        assert_eq!(owned(d).len(), 7);
    }

    #[test]
    fn an_agent_error_keeps_its_kind_and_code_on_the_bus() {
        let e = upkeep::Error::new(upkeep::HResult::WU_E_INVALID_CRITERIA, "bad criteria");
        let b = BusError::from(e);
        assert_eq!(
            zbus::DBusError::name(&b).as_str(),
            "org.upkeep.Agent1.Error.InvalidArgs"
        );
        let d = zbus::DBusError::description(&b).unwrap();
        assert!(
            d.starts_with("bad criteria (0x80240032 WU_E_INVALID_CRITERIA)"),
            "{d}"
        );
    }
}
