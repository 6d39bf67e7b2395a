//! The console's layout and the small pieces pages share. Everything interpolated into
//! `html!` is escaped by maud; nothing here builds HTML from strings.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use maud::{DOCTYPE, Markup, html};

use crate::auth::{Role, Session};

/// The page sections, for the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `/`.
    Dashboard,
    /// `/jobs` and below.
    Jobs,
    /// `/executors`.
    Executors,
    /// `/alarms`.
    Alarms,
    /// `/audit`.
    Audit,
}

/// A page's `<head>`: its title, the stylesheet and, with `script`, the console's script.
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · gocron" }
            link rel="stylesheet" href="/assets/console.css";
            @if script { script src="/assets/console.js" defer {} }
        }
    }
}

/// A page with the navigation bar of a signed-in user.
pub fn page(title: &str, section: Section, session: &Session, body: Markup) -> Markup {
    let link = |href: &str, label: &str, this: Section| {
        html! { a href=(href) class=[(section == this).then_some("current")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body {
                header.top {
                    a.brand href="/" { "gocron" }
                    nav {
                        (link("/", "Dashboard", Section::Dashboard))
                        (link("/jobs", "Jobs", Section::Jobs))
                        (link("/executors", "Executors", Section::Executors))
                        (link("/alarms", "Alarms", Section::Alarms))
                        (link("/audit", "Audit", Section::Audit))
                    }
                    form.sign-out method="post" action="/logout" {
                        span.role { (session.role.as_str()) }
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" { "Sign out" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page without navigation (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, false))
            body { (body) }
        }
    }
}

/// A page that moves on to `to` at once (a same-site navigation, unlike the link that led here).
pub fn bounce(to: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content={ "0; url=" (to) };
                title { "gocron" }
            }
            body { p { a href=(to) { "Continue to gocron" } } }
        }
    }
}

/// The sign-in page, with `error` when the last try failed.
pub fn sign_in(next: &str, error: Option<&str>) -> Markup {
    bare(
        "Sign in",
        html! {
            main.narrow {
                h1 { "gocron" }
                form.card method="post" action="/login" {
                    @if let Some(error) = error { p.error-text role="alert" { (error) } }
                    label for="token" { "Token" }
                    input #token type="password" name="token" autocomplete="current-password"
                        required autofocus;
                    input type="hidden" name="next" value=(next);
                    button type="submit" { "Sign in" }
                    p.hint { "The admin or viewer token of [http] in conf.ini." }
                }
            }
        },
    )
}

/// An instant in `tz`, to the millisecond, with the zone's abbreviation.
pub fn time(at: DateTime<Utc>, tz: Tz) -> Markup {
    html! {
        time datetime=(at.to_rfc3339()) { (crate::jobs::shown(at, tz)) }
    }
}

/// [`time`], or a dash.
pub fn maybe_time(at: Option<DateTime<Utc>>, tz: Tz) -> Markup {
    match at {
        Some(at) => time(at, tz),
        None => html! { span.none { "–" } },
    }
}

/// A run's status, coloured.
pub fn status(status: &str) -> Markup {
    html! { span class={ "status st-" (status) } { (status) } }
}

/// From `start` to `end` for people: `840 ms`, `12.3 s`, `4 min 5 s`, `2 h 3 min`.
pub fn duration(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> String {
    let (Some(start), Some(end)) = (start, end) else {
        return "–".into();
    };
    let ms = (end - start).num_milliseconds().max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// Previous/next links for page `page` of `total` rows, `per_page` a page; `link` makes the
/// URL of a page.
pub fn pager(page: u64, per_page: u64, total: u64, link: impl Fn(u64) -> String) -> Markup {
    let pages = total.div_ceil(per_page).max(1);
    html! {
        nav.pager aria-label="pages" {
            @if page > 1 { a href=(link(page - 1)) rel="prev" { "← Previous" } }
            span { "Page " (page) " of " (pages) " · " (total) " in all" }
            @if page < pages { a href=(link(page + 1)) rel="next" { "Next →" } }
        }
    }
}

/// The hidden CSRF field of a form that changes something.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A one-button form posting to `action` (with a confirmation when `confirm` is given).
pub fn button(session: &Session, action: &str, label: &str, confirm: Option<&str>) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            (csrf(session))
            button type="submit" { (label) }
        }
    }
}

/// Whether `session` may change things (the admin's buttons are shown to admins only).
pub fn is_admin(session: &Session) -> bool {
    session.role == Role::Admin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        let t0 = DateTime::<Utc>::from_timestamp(1_000_000, 0).unwrap();
        let after = |ms| Some(t0 + chrono::Duration::milliseconds(ms));
        assert_eq!(duration(Some(t0), after(840)), "840 ms");
        assert_eq!(duration(Some(t0), after(12_345)), "12.3 s");
        assert_eq!(duration(Some(t0), after(245_000)), "4 min 5 s");
        assert_eq!(duration(Some(t0), after(7_380_000)), "2 h 3 min");
        assert_eq!(duration(Some(t0), None), "–");
    }

    #[test]
    fn interpolated_text_is_escaped() {
        let html = status("<script>alert(1)</script>").into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }
}
