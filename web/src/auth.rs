//! Bearer tokens: `[http] admin_token` may do everything, `[http] viewer_token` may read.
//! Tokens are compared in constant time and never logged.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use gocron_shared::config::HttpConfig;
use gocron_shared::rpc::Secret;

use crate::AppState;
use crate::error::ApiError;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Read only.
    Viewer,
}

impl Role {
    /// The name recorded as `cron_audit.actor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// The configured tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    admin: Option<Secret>,
    viewer: Option<Secret>,
}

impl Tokens {
    /// The tokens of `[http]`.
    pub fn new(config: &HttpConfig) -> Tokens {
        Tokens {
            admin: config.admin_token.clone(),
            viewer: config.viewer_token.clone(),
        }
    }

    /// The role of `token`, if it is one of ours.
    pub fn role(&self, token: &str) -> Option<Role> {
        let given = Secret::new(token);
        // Both are compared whichever matches, so timing does not tell which role a guess hit.
        let admin = self.admin.as_ref().is_some_and(|t| t.matches(&given));
        let viewer = self.viewer.as_ref().is_some_and(|t| t.matches(&given));
        match (admin, viewer) {
            (true, _) => Some(Role::Admin),
            (_, true) => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// A caller with a valid token (any role): what every read needs.
#[derive(Debug, Clone, Copy)]
pub struct Reader(pub Role);

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or(ApiError::Unauthorized)?;
        state
            .tokens()
            .role(token)
            .map(Reader)
            .ok_or(ApiError::Unauthorized)
    }
}

/// A caller with the admin token: what every change needs.
#[derive(Debug, Clone, Copy)]
pub struct Admin(pub Role);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Reader::from_request_parts(parts, state).await? {
            Reader(Role::Admin) => Ok(Admin(Role::Admin)),
            Reader(Role::Viewer) => Err(ApiError::Forbidden),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_roles() {
        let tokens = Tokens::new(&HttpConfig {
            listen: None,
            admin_token: Some(Secret::new("admin-token-0123456789")),
            viewer_token: Some(Secret::new("viewer-token-0123456789")),
        });
        assert_eq!(tokens.role("admin-token-0123456789"), Some(Role::Admin));
        assert_eq!(tokens.role("viewer-token-0123456789"), Some(Role::Viewer));
        assert_eq!(tokens.role("admin-token-012345678"), None);
        assert_eq!(tokens.role(""), None);
        let none = Tokens::new(&HttpConfig::default());
        assert_eq!(none.role(""), None);
    }
}
