//! Who calls: a bearer token (`[http] admin_token` may do everything, `[http] viewer_token` may
//! read), or a console session opened by signing in with one of them. Tokens are compared in
//! constant time and never logged.
//!
//! Sessions live in the monitor's memory: a random id in an HttpOnly, SameSite=Strict cookie
//! (Secure with `[http] secure_cookie`), each with its own CSRF token that every change made
//! with the session must carry (a form's `csrf` field, or the API's `X-CSRF-Token` header).
//! They end [`SESSION_TTL`] after sign-in, at sign-out, or when the monitor restarts.
//!
//! Guessing is slowed per client address ([`Throttle`]): after a wrong token (at sign-in or in
//! an `Authorization` header), that address is answered 429 for [`GUESS_PAUSE`], whatever it
//! sends; other addresses are not held.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use gocron_shared::config::HttpConfig;
use gocron_shared::rpc::Secret;
use rand::Rng as _;

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

/// The name of the console's session cookie.
pub const SESSION_COOKIE: &str = "gocron_session";

/// The header that carries a session's CSRF token on API changes made with the session.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The most sessions kept; past it, signing in ends the oldest.
pub const MAX_SESSIONS: usize = 10_000;

/// A signed-in console user.
#[derive(Debug, Clone)]
pub struct Session {
    /// The cookie's value.
    pub id: String,
    /// The role of the token signed in with.
    pub role: Role,
    /// What every change made with this session must carry.
    pub csrf: String,
    opened: Instant,
}

impl Session {
    /// Whether `given` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, given: &str) -> bool {
        Secret::new(self.csrf.as_str()).matches(&Secret::new(given))
    }
}

/// The open sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes (from the thread's CSPRNG), in hex.
fn random_hex() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    /// Opens a session for `role`.
    pub fn open(&self, role: Role) -> Session {
        let session = Session {
            id: random_hex(),
            role,
            csrf: random_hex(),
            opened: Instant::now(),
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| s.opened.elapsed() < SESSION_TTL);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open.values().min_by_key(|s| s.opened).map(|s| s.id.clone())
        {
            open.remove(&oldest);
        }
        open.insert(session.id.clone(), session.clone());
        session
    }

    /// The session whose id is `id`, if it is open.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match open.get(id) {
            Some(s) if s.opened.elapsed() < SESSION_TTL => Some(s.clone()),
            Some(_) => {
                open.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends the session `id`.
    pub fn close(&self, id: &str) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// The session named by the request's cookie, if it is open.
    pub fn of_request(&self, headers: &HeaderMap) -> Option<Session> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == SESSION_COOKIE)
            .and_then(|(_, id)| self.get(id.trim()))
    }
}

/// The `Set-Cookie` value that gives the browser session `id` (`None`: ends it).
pub fn session_cookie(id: Option<&str>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = match id {
        Some(id) => format!(
            "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_TTL.as_secs()
        ),
        None => format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    // Made of ASCII letters, digits and punctuation only.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// How long an address that sent a wrong token is refused (429) before it may try again.
pub const GUESS_PAUSE: Duration = Duration::from_secs(1);

/// The most addresses remembered; past it, the oldest failures are forgotten.
const MAX_THROTTLED: usize = 10_000;

/// Wrong tokens by client address: an address that sent one may not try again for
/// [`GUESS_PAUSE`], so guessing goes at one try a second an address. Addresses are kept only
/// while paused.
#[derive(Debug, Default)]
pub struct Throttle {
    paused: Mutex<HashMap<IpAddr, Instant>>,
}

impl Throttle {
    /// Whether `client` is paused now (and until when).
    pub fn paused(&self, client: IpAddr) -> Option<Instant> {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        match paused.get(&client) {
            Some(until) if *until > Instant::now() => Some(*until),
            Some(_) => {
                paused.remove(&client);
                None
            }
            None => None,
        }
    }

    /// Records a wrong token from `client`: paused for [`GUESS_PAUSE`] from now.
    pub fn failed(&self, client: IpAddr) {
        let now = Instant::now();
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if paused.len() >= MAX_THROTTLED {
            paused.retain(|_, until| *until > now);
        }
        if paused.len() < MAX_THROTTLED {
            paused.insert(client, now + GUESS_PAUSE);
        }
    }
}

/// The address a request came from (the proxy's, behind one); unspecified when the server was
/// not started with connection info (in-process tests of the router).
pub fn client_of(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// The client's address, as an extractor (see [`client_of`]).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Client(client_of(parts)))
    }
}

/// A caller with a valid token or session (any role): what every read needs. A session's
/// change (any method but GET, HEAD, OPTIONS) must carry its CSRF token in [`CSRF_HEADER`].
#[derive(Debug, Clone, Copy)]
pub struct Reader(pub Role);

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(header) = parts.headers.get(AUTHORIZATION) {
            let client = client_of(parts);
            if state.throttle().paused(client).is_some() {
                return Err(ApiError::TooManyGuesses);
            }
            let role = header
                .to_str()
                .ok()
                .and_then(|v| {
                    let (scheme, token) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                })
                .and_then(|token| state.tokens().role(token));
            return match role {
                Some(role) => Ok(Reader(role)),
                None => {
                    state.throttle().failed(client);
                    Err(ApiError::Unauthorized)
                }
            };
        }
        let session = state
            .sessions()
            .of_request(&parts.headers)
            .ok_or(ApiError::Unauthorized)?;
        if !parts.method.is_safe() {
            let given = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !session.csrf_matches(given) {
                return Err(ApiError::Csrf);
            }
        }
        Ok(Reader(session.role))
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
            ..HttpConfig::default()
        });
        assert_eq!(tokens.role("admin-token-0123456789"), Some(Role::Admin));
        assert_eq!(tokens.role("viewer-token-0123456789"), Some(Role::Viewer));
        assert_eq!(tokens.role("admin-token-012345678"), None);
        assert_eq!(tokens.role(""), None);
        let none = Tokens::new(&HttpConfig::default());
        assert_eq!(none.role(""), None);
    }

    #[test]
    fn sessions_are_found_by_their_cookie_and_end_at_sign_out() {
        let sessions = Sessions::default();
        let a = sessions.open(Role::Admin);
        let v = sessions.open(Role::Viewer);
        assert_ne!(a.id, v.id);
        assert_ne!(a.csrf, a.id);
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("theme=dark; {SESSION_COOKIE}={}", v.id)).unwrap(),
        );
        assert_eq!(sessions.of_request(&headers).unwrap().role, Role::Viewer);
        assert!(a.csrf_matches(&a.csrf) && !a.csrf_matches(&v.csrf) && !a.csrf_matches(""));
        sessions.close(&v.id);
        assert!(sessions.of_request(&headers).is_none());
        headers.insert(COOKIE, HeaderValue::from_static("gocron_session=forged"));
        assert!(sessions.of_request(&headers).is_none());
        assert_eq!(sessions.get(&a.id).unwrap().role, Role::Admin);
    }

    #[test]
    fn a_wrong_token_pauses_its_address_only() {
        let throttle = Throttle::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(throttle.paused(a).is_none());
        throttle.failed(a);
        let until = throttle.paused(a).expect("paused after a failure");
        assert!(until > Instant::now() && until <= Instant::now() + GUESS_PAUSE);
        assert!(throttle.paused(b).is_none());
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let c = session_cookie(Some("abc"), false);
        let c = c.to_str().unwrap();
        assert!(c.starts_with("gocron_session=abc;") && c.contains("HttpOnly"));
        assert!(c.contains("SameSite=Strict") && !c.contains("Secure"));
        assert!(
            session_cookie(None, true)
                .to_str()
                .unwrap()
                .contains("Max-Age=0; Secure")
        );
    }
}
