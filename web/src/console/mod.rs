//! The operators' web console: pages rendered here (with maud, which escapes every value it
//! interpolates), a stylesheet and a little JavaScript of our own, all built into the binary.
//!
//! The pages call the API's own handlers ([`crate::jobs`], [`crate::runs`], ...) with the
//! signed-in role, so a change made here is validated and audited exactly as one made through
//! the API. What the console adds is sign-in and its safeguards:
//! - signing in takes the admin or viewer token and opens a session ([`crate::auth::Sessions`]);
//!   a wrong token is answered after [`GUESS_PAUSE`], and its address may not try again (any
//!   token, here or on the API) for as long ([`crate::auth::Throttle`]);
//! - every form that changes something carries the session's CSRF token, and a POST whose
//!   `Origin` is another site is refused before it is read;
//! - every response carries a strict Content-Security-Policy (scripts and styles from this
//!   server only, no inline script), `X-Frame-Options: DENY`, `nosniff` and `no-store`.
//!
//! Modules: [`view`] (the layout and small pieces), [`pages`] (what is read), [`forms`]
//! (what changes: the job form, enable, disable, run now, delete, kill).

pub mod forms;
pub mod pages;
pub mod view;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;
use serde::Deserialize;

use crate::AppState;
pub use crate::auth::GUESS_PAUSE;
use crate::auth::{Client, Role, Session, session_cookie};
use crate::error::ApiError;

/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = include_str!("../../assets/console.css");
const SCRIPT: &str = include_str!("../../assets/console.js");

/// The console's routes (merged with the API's by [`crate::router`]).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/login", get(sign_in_page).post(sign_in))
        .route("/logout", post(sign_out))
        .route("/jobs", get(pages::jobs).post(forms::create))
        .route("/jobs/new", get(forms::new_job))
        .route("/jobs/{id}", get(forms::job).post(forms::update))
        .route("/jobs/{id}/enable", post(forms::enable))
        .route("/jobs/{id}/disable", post(forms::disable))
        .route("/jobs/{id}/run", post(forms::run_now))
        .route("/jobs/{id}/delete", post(forms::delete))
        .route("/jobs/{id}/runs", get(pages::runs))
        .route("/jobs/{job}/runs/{run}", get(pages::run))
        .route("/runs/{id}/kill", post(forms::kill))
        .route("/executors", get(pages::executors))
        .route("/alarms", get(pages::alarms))
        .route("/audit", get(pages::audit))
        .route("/assets/console.css", get(style))
        .route("/assets/console.js", get(script))
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Sets the security headers on every response (API and console), and refuses a console POST
/// sent from another origin (the API's changes need a bearer token, or a session's
/// `X-CSRF-Token`, which no other site can send).
pub async fn guard(request: Request, next: Next) -> Response {
    if request.method() == Method::POST
        && !request.uri().path().starts_with("/api/")
        && !same_origin(&request)
    {
        return page_error(
            StatusCode::FORBIDDEN,
            "This form was sent from another site; it was refused.",
        );
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Whether a request's `Origin` (when the browser sent one) is the host it was sent to: its
/// `Host`, or the `X-Forwarded-Host` a proxy in front set. Browsers send `Origin` with every
/// POST; other clients need not.
fn same_origin(request: &Request) -> bool {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return true;
    };
    let origin = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
    });
    let Some(origin) = origin else {
        return false;
    };
    [
        header::HOST,
        header::HeaderName::from_static("x-forwarded-host"),
    ]
    .iter()
    .filter_map(|name| request.headers().get(name)?.to_str().ok())
    .any(|host| host.trim().eq_ignore_ascii_case(origin))
}

/// A signed-in console user: a page that needs one sends everyone else to the sign-in page.
pub struct Signed(pub Session);

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match state.sessions().of_request(&parts.headers) {
            Some(session) => Ok(Signed(session)),
            None => {
                // A form posted after the session ended cannot be replayed by a GET: back to
                // the dashboard once signed in.
                let next = match parts.method {
                    Method::GET => parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                    _ => "/",
                };
                let to = format!(
                    "/login?next={}",
                    gocron_shared::config::percent_encode(next)
                );
                // A link followed from another site (an alarm mail in a webmail) comes without
                // the SameSite=Strict cookie: a page of ours that moves on to the sign-in page
                // makes that a same-site navigation, which carries the cookie, and the sign-in
                // page sends a signed-in user on to `next`.
                let cross_site = parts
                    .headers
                    .get("sec-fetch-site")
                    .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site");
                if cross_site && parts.method == Method::GET {
                    return Err(view::bounce(&to).into_response());
                }
                Err(Redirect::to(&to).into_response())
            }
        }
    }
}

impl Signed {
    /// The session's role, if it may change things (a viewer is answered 403).
    pub fn admin(&self) -> Result<Role, ApiError> {
        match self.0.role {
            Role::Admin => Ok(Role::Admin),
            Role::Viewer => Err(ApiError::Forbidden),
        }
    }

    /// Refuses a form whose `csrf` field is not this session's.
    pub fn check_csrf(&self, given: &str) -> Result<(), ApiError> {
        if self.0.csrf_matches(given) {
            Ok(())
        } else {
            Err(ApiError::Csrf)
        }
    }
}

/// The query string; a bad one is answered as a console page.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, PageError> {
        crate::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(PageError)
    }
}

/// The ids of a path (`{id}`, or `({job}, {run})`); a bad one is answered as a console page.
pub struct Ids<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Ids<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, PageError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Ids(p.0))
            .map_err(|e| PageError(ApiError::bad_request(e.body_text())))
    }
}

/// A posted form; a malformed one is answered as a console page.
pub struct Posted<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Posted<T> {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &S) -> Result<Self, PageError> {
        axum::extract::Form::<T>::from_request(request, state)
            .await
            .map(|f| Posted(f.0))
            .map_err(|e| {
                PageError(ApiError::BadRequest {
                    status: e.status(),
                    message: e.body_text(),
                })
            })
    }
}

/// A signed-in admin's one-button form (enable, disable, run now, delete, kill, with nothing
/// but the CSRF token), the token checked: the admin's role.
pub struct AdminAction(pub Role);

impl axum::extract::FromRequest<AppState> for AdminAction {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let signed = Signed::from_request_parts(&mut parts, state).await?;
        let Posted(form) =
            Posted::<CsrfForm>::from_request(Request::from_parts(parts, body), state)
                .await
                .map_err(IntoResponse::into_response)?;
        signed
            .check_csrf(&form.csrf)
            .and_then(|()| signed.admin())
            .map(AdminAction)
            .map_err(|e| PageError(e).into_response())
    }
}

/// An error as a console page: the API's words and status.
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> PageError {
        PageError(e)
    }
}

impl From<sea_orm::DbErr> for PageError {
    fn from(e: sea_orm::DbErr) -> PageError {
        PageError(ApiError::Database(e))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if let ApiError::Database(e) = &self.0 {
            tracing::error!(error = %e, "console: database statement failed");
        }
        page_error(self.0.status(), &self.0.to_string())
    }
}

fn page_error(status: StatusCode, message: &str) -> Response {
    let body = view::bare(
        "Error",
        html! {
            main.narrow {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p.error-text { (message) }
                p { a href="/" { "Back to the dashboard" } }
            }
        },
    );
    (status, body).into_response()
}

/// The query of the sign-in page.
#[derive(Debug, Default, Deserialize)]
pub struct NextQuery {
    /// Where to go once signed in (a path on this server).
    pub next: Option<String>,
}

/// Only a path of this server: never another site (`//host`, `/\host`, `https://...`, nor
/// what a browser makes of them once it drops tabs and newlines: `/<TAB>/host`).
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.chars().any(|c| c == '\\' || c.is_control()) =>
        {
            p
        }
        _ => "/",
    }
}

async fn sign_in_page(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<NextQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    if state.sessions().of_request(&headers).is_some() {
        return Redirect::to(local_path(query.next.as_deref())).into_response();
    }
    view::sign_in(local_path(query.next.as_deref()), None).into_response()
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct SignInForm {
    /// The admin or viewer token.
    pub token: String,
    /// Where to go next.
    #[serde(default)]
    pub next: Option<String>,
}

async fn sign_in(
    State(state): State<AppState>,
    Client(client): Client,
    Posted(form): Posted<SignInForm>,
) -> Response {
    let next = local_path(form.next.as_deref()).to_owned();
    if state.throttle().paused(client).is_some() {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            view::sign_in(
                &next,
                Some("A wrong token was sent from here a moment ago: wait a second."),
            ),
        )
            .into_response();
    }
    let Some(role) = state.tokens().role(form.token.trim()) else {
        // Paused from now (tries sent meanwhile are refused) until a second after the answer.
        state.throttle().failed(client);
        tracing::warn!(%client, "console: a sign-in with an unknown token was refused");
        tokio::time::sleep(GUESS_PAUSE).await;
        state.throttle().failed(client);
        return (
            StatusCode::UNAUTHORIZED,
            view::sign_in(&next, Some("That token is not valid.")),
        )
            .into_response();
    };
    let session = state.sessions().open(role);
    tracing::info!(role = role.as_str(), %client, "console: signed in");
    let mut response = Redirect::to(&next).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(Some(&session.id), state.secure_cookie()),
    );
    response
}

/// A form with nothing but its CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
}

async fn sign_out(
    State(state): State<AppState>,
    signed: Signed,
    Posted(form): Posted<CsrfForm>,
) -> Result<Response, PageError> {
    signed.check_csrf(&form.csrf)?;
    state.sessions().close(&signed.0.id);
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(None, state.secure_cookie()),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path(Some("/jobs/3/runs/9")), "/jobs/3/runs/9");
        for hostile in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "https://evil.example",
            "",
        ] {
            assert_eq!(local_path(Some(hostile)), "/", "{hostile}");
        }
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn a_post_from_another_origin_is_not_same_origin() {
        let request = |origin: Option<&str>| {
            let mut b = Request::builder()
                .method("POST")
                .uri("/jobs")
                .header("host", "127.0.0.1:8080");
            if let Some(o) = origin {
                b = b.header("origin", o);
            }
            b.body(axum::body::Body::empty()).unwrap()
        };
        assert!(same_origin(&request(None)));
        assert!(same_origin(&request(Some("http://127.0.0.1:8080"))));
        assert!(!same_origin(&request(Some("http://evil.example"))));
        assert!(!same_origin(&request(Some("null"))));
        // Behind a proxy that passes the public host on.
        let proxied = Request::builder()
            .method("POST")
            .uri("/jobs")
            .header("host", "127.0.0.1:8080")
            .header("x-forwarded-host", "cron.example.com")
            .header("origin", "https://cron.example.com")
            .body(axum::body::Body::empty())
            .unwrap();
        assert!(same_origin(&proxied));
    }
}
