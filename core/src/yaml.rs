//! YAML as tenants write it: errors told without quoting their text.

/// Why a ConfigMap's text did not parse, without quoting any of it: the parser's message can
/// carry the text (a snippet, a value), and it goes into another tenant's condition, Event and
/// logs. Where, not what.
pub fn unparsed(e: &serde_saphyr::Error) -> String {
    match e.without_snippet().location() {
        Some(at) => format!(
            "does not parse (line {}, column {}; the text is not quoted)",
            at.line(),
            at.column()
        ),
        None => "does not parse (the text is not quoted)".into(),
    }
}
