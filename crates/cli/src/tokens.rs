//! The tokens file (`--tokens`) and `invsync token new`.

use std::path::Path;

use invsync_api::{Scope, TokenEntry};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{bad, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<RawEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    scopes: Vec<Scope>,
    sha256: Option<String>,
    /// Plain token: for development only (logged as a warning).
    token: Option<String>,
}

/// Reads and checks a tokens file. Errors name the entry and key at fault.
pub fn load(path: &Path) -> Result<Vec<TokenEntry>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("tokens", format!("cannot read {}: {e}", path.display())))?;
    parse(&text).map_err(|e| ConfigError {
        message: format!("{} ({})", e.message, path.display()),
        ..e
    })
}

fn parse(text: &str) -> Result<Vec<TokenEntry>, ConfigError> {
    let file: TokensFile = toml::from_str(text).map_err(|e| bad("tokens", e.message()))?;
    if file.token.is_empty() {
        return Err(bad("tokens", "no [[token]] entries"));
    }
    let mut entries = Vec::with_capacity(file.token.len());
    for (i, raw) in file.token.into_iter().enumerate() {
        let at = |key: &str| format!("token[{i}].{key}");
        if raw.name.trim().is_empty() {
            return Err(bad(at("name"), "must not be empty"));
        }
        if raw.scopes.is_empty() {
            return Err(bad(at("scopes"), "must list at least one scope"));
        }
        let sha256 = match (raw.sha256, raw.token) {
            (Some(hex_digest), None) => {
                let bytes = hex::decode(hex_digest.trim())
                    .map_err(|_| bad(at("sha256"), "must be 64 hex digits"))?;
                <[u8; 32]>::try_from(bytes.as_slice())
                    .map_err(|_| bad(at("sha256"), "must be 64 hex digits"))?
            }
            (None, Some(plain)) => {
                if plain.len() < 8 {
                    return Err(bad(at("token"), "must be at least 8 characters"));
                }
                tracing::warn!(token.name = %raw.name, "plain token in the tokens file: for development only, use sha256 in production");
                Sha256::digest(plain.as_bytes()).into()
            }
            _ => {
                return Err(bad(
                    format!("token[{i}]"),
                    format!("({}) give exactly one of sha256 and token", raw.name),
                ))
            }
        };
        entries.push(TokenEntry {
            name: raw.name,
            scopes: raw.scopes,
            sha256,
        });
    }
    Ok(entries)
}

/// A fresh random token (256 bits, hex) and the tokens-file entry for it.
pub fn new_token(name: &str, scopes: &[String]) -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    let scopes = scopes
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let entry = format!("[[token]]\nname = {name:?}\nscopes = [{scopes}]\nsha256 = \"{digest}\"\n");
    (token, entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_entry_parses_and_matches_its_token() {
        let (token, entry) = new_token("order-service", &["reserve".into(), "read".into()]);
        let entries = parse(&entry).unwrap();
        assert_eq!(entries[0].scopes, vec![Scope::Reserve, Scope::Read]);
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        assert_eq!(entries[0].sha256, digest);
    }

    #[test]
    fn bad_entries_are_refused_naming_the_key() {
        let both =
            "[[token]]\nname = \"a\"\nscopes = [\"read\"]\nsha256 = \"00\"\ntoken = \"abcdefgh\"\n";
        let err = parse(both).unwrap_err();
        assert!(
            err.key == "token[0]" && err.message.contains("exactly one"),
            "{err}"
        );
        let short = "[[token]]\nname = \"a\"\nscopes = [\"read\"]\nsha256 = \"abcd\"\n";
        assert_eq!(parse(short).unwrap_err().key, "token[0].sha256");
        let scope = "[[token]]\nname = \"a\"\nscopes = [\"write\"]\ntoken = \"abcdefgh\"\n";
        assert!(parse(scope).is_err());
        assert!(parse("").unwrap_err().message.contains("no [[token]]"));
    }
}
