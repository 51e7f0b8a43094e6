//! Canonical JSON (OLPC), the byte form TUF signatures are computed over.

use serde::Serialize;

/// Serialises `value` as canonical JSON. Fails for values canonical JSON cannot express:
/// floating-point numbers, and strings holding a control character (U+0000–U+001F), which
/// canonical JSON writes raw and no JSON parser then reads — signing one would make the
/// whole role unreadable to every client.
pub fn to_canonical<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    value.serialize(&mut ser).map_err(|e| e.to_string())?;
    // Canonical JSON has no whitespace outside strings: any byte below 0x20 is in one.
    if let Some(at) = out.iter().position(|&b| b < 0x20) {
        let start = out[..at].iter().rposition(|&b| b == b'"').unwrap_or(0);
        let context = String::from_utf8_lossy(&out[start..at]);
        return Err(format!(
            "a string holds control character U+{:04X} after {context:?}; canonical JSON cannot carry control characters",
            out[at]
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::to_canonical;

    #[test]
    fn control_characters_are_refused_not_written_raw() {
        assert_eq!(
            to_canonical(&serde_json::json!({"a": "x\\y\"z"})).unwrap(),
            br#"{"a":"x\\y\"z"}"#
        );
        let e = to_canonical(&serde_json::json!({"t": "Tools\t1.0"})).unwrap_err();
        assert!(e.contains("U+0009") && e.contains("Tools"), "{e}");
        assert!(to_canonical(&serde_json::json!(["a\nb"])).is_err());
    }
}
