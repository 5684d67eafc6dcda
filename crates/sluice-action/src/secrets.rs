//! Secrets in connections: `${env:NAME}` in a connection's values is
//! replaced by the environment variable when the connection is first used,
//! so that credentials stay out of flow files (and out of run records,
//! which never hold a connection).

/// Replace `${env:NAME}` by the variable's value.
pub fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${env:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 6..];
        let end = after
            .find('}')
            .ok_or("unclosed `${env:` in the connection")?;
        let name = &after[..end];
        let value =
            std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
