//! Canonical JSON (OLPC), the byte form TUF signatures are computed over.

use serde::Serialize;

/// Serialises `value` as canonical JSON. Fails for values canonical JSON cannot express
/// (floating-point numbers).
pub fn to_canonical<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    value.serialize(&mut ser).map_err(|e| e.to_string())?;
    Ok(out)
}
