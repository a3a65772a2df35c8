//! Bearer tokens with scopes. Handlers state the scope they need by taking an
//! [`Auth`] extractor (`Auth<ReserveScope>`); the extractor answers 401/403 itself.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorCode};
use crate::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Reserve,
    Adjust,
    /// Implies every other scope.
    Admin,
}

/// One client allowed in: its name (for logs), scopes and the SHA-256 of its token.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub sha256: [u8; 32],
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Reserve => "reserve",
            Self::Adjust => "adjust",
            Self::Admin => "admin",
        }
    }
}

impl TokenEntry {
    fn allows(&self, scope: Scope) -> bool {
        self.scopes
            .iter()
            .any(|s| *s == scope || *s == Scope::Admin)
    }
}

/// Who may call the API. `Anonymous` is only ever configured for a loopback listener
/// (the binary refuses to start otherwise).
#[derive(Debug, Clone)]
pub enum Access {
    Anonymous,
    Tokens(Vec<TokenEntry>),
}

impl Access {
    /// Finds the entry whose digest matches `token`. Every entry is compared, in
    /// constant time, so timing does not reveal how close a guess came.
    fn find(&self, token: &str) -> Option<&TokenEntry> {
        let Self::Tokens(entries) = self else {
            return None;
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in entries {
            if bool::from(entry.sha256.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        found
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is matched
/// case-insensitively (RFC 9110 §11.1: `bearer`, `BEARER` and `Bearer` are one scheme),
/// separated from the token by one or more spaces.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Who a request's token says the caller is, for `GET /v1/whoami`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Identity {
    /// Whether this server asks for tokens at all (false: anonymous on loopback).
    pub(crate) tokens_required: bool,
    /// The token's client name; null without a token.
    pub(crate) name: Option<String>,
    /// What the caller may do (`admin` implies every other scope).
    pub(crate) scopes: Vec<&'static str>,
}

const ALL_SCOPES: [Scope; 4] = [Scope::Read, Scope::Reserve, Scope::Adjust, Scope::Admin];

/// The caller's identity: none without a token; 401 for a token the server does not
/// know.
pub(crate) fn identify(state: &AppState, parts: &Parts) -> Result<Identity, ApiError> {
    let Access::Tokens(_) = state.access() else {
        return Ok(Identity {
            tokens_required: false,
            name: None,
            scopes: ALL_SCOPES.iter().map(|s| s.as_str()).collect(),
        });
    };
    let Some(token) = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
    else {
        return Ok(Identity {
            tokens_required: true,
            name: None,
            scopes: Vec::new(),
        });
    };
    let entry = state
        .access()
        .find(token)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "the bearer token is not valid"))?;
    Ok(Identity {
        tokens_required: true,
        name: Some(entry.name.clone()),
        scopes: ALL_SCOPES
            .iter()
            .filter(|s| entry.allows(**s))
            .map(|s| s.as_str())
            .collect(),
    })
}

/// The scope a route requires, as a type.
pub trait RequiredScope: Send + Sync + 'static {
    const SCOPE: Scope;
}

macro_rules! scope_marker {
    ($name:ident, $scope:expr) => {
        pub struct $name;
        impl RequiredScope for $name {
            const SCOPE: Scope = $scope;
        }
    };
}
scope_marker!(ReadScope, Scope::Read);
scope_marker!(ReserveScope, Scope::Reserve);
scope_marker!(AdjustScope, Scope::Adjust);
scope_marker!(AdminScope, Scope::Admin);

/// Proof that the caller may use a route needing scope `S`. Holds the client name.
pub struct Auth<S: RequiredScope> {
    pub client: Option<String>,
    _scope: PhantomData<S>,
}

impl<S: RequiredScope> FromRequestParts<AppState> for Auth<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Access::Anonymous = state.access() {
            return Ok(Self {
                client: None,
                _scope: PhantomData,
            });
        }
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "a bearer token is required"))?;
        let entry = state.access().find(token).ok_or_else(|| {
            ApiError::new(ErrorCode::Unauthorized, "the bearer token is not valid")
        })?;
        if !entry.allows(S::SCOPE) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "the token of '{}' lacks the '{}' scope",
                    entry.name,
                    S::SCOPE.as_str()
                ),
            ));
        }
        Ok(Self {
            client: Some(entry.name.clone()),
            _scope: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in [
            "Bearer t0k",
            "bearer t0k",
            "BEARER t0k",
            "BeArEr   t0k",
            " Bearer t0k ",
        ] {
            assert_eq!(bearer_token(value), Some("t0k"), "{value:?}");
        }
        for value in ["Basic dXNlcg==", "Bearer", "Bearer ", "Bearert0k", "t0k"] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
