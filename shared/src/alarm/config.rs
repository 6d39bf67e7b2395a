//! `[alarm]`: where alarms go and how often they may go there.
//!
//! The values are read and validated with the rest of conf.ini (see [`crate::config`]); this
//! module holds their types.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// `[alarm]`, validated.
#[derive(Debug, Clone)]
pub struct AlarmConfig {
    /// Mail delivery; `None` when `smtp_host` is empty (no mail is sent).
    pub smtp: Option<SmtpConfig>,
    /// `mail_list`: who gets every alarm by mail, besides a job's `alarm_emails`.
    pub mail_list: Vec<String>,
    /// SMS delivery; `None` when `sms_url` is empty (no SMS is sent).
    pub sms: Option<SmsConfig>,
    /// `sms_mobiles`: who gets every alarm by SMS, besides a job's `alarm_mobiles`.
    pub sms_mobiles: Vec<String>,
    /// `quiet_secs`: the same condition of the same job is not sent again within this long.
    pub quiet: Duration,
    /// `daily_cap`: the most alarms one recipient gets per UTC day (0 = no cap).
    pub daily_cap: u32,
    /// `base_url`: where a web view of a job lives (`{base_url}/jobs/{id}`); empty = no link.
    pub base_url: String,
    /// `check_ms`: how often the monitor runs its checks and sends what is due.
    pub check_interval: Duration,
    /// `grace_secs`: how long a condition must last before it is an alarm (a tick late, a
    /// run still `dispatched`, a group without executor, no dispatcher).
    pub grace: Duration,
}

impl Default for AlarmConfig {
    fn default() -> AlarmConfig {
        AlarmConfig {
            smtp: None,
            mail_list: Vec::new(),
            sms: None,
            sms_mobiles: Vec::new(),
            quiet: Duration::from_secs(3600),
            daily_cap: 100,
            base_url: String::new(),
            check_interval: Duration::from_millis(5000),
            grace: Duration::from_secs(60),
        }
    }
}

/// The SMTP server alarms are mailed through.
#[derive(Clone)]
pub struct SmtpConfig {
    /// `smtp_host`.
    pub host: String,
    /// `smtp_port`; default 25 (`none`), 587 (`starttls`) or 465 (`tls`).
    pub port: u16,
    /// `smtp_tls`.
    pub tls: SmtpTls,
    /// `smtp_user`; empty = no login.
    pub user: String,
    /// `smtp_password`; never logged.
    pub password: String,
    /// `mail_from`: the sender address; default `gocron@<hostname>`.
    pub from: String,
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &"***")
            .field("from", &self.from)
            .finish()
    }
}

/// `smtp_tls`: how the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (a trusted local relay only).
    None,
    /// Plain text upgraded with STARTTLS, which is required (no downgrade).
    StartTls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

impl SmtpTls {
    /// The usual port of this mode.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 25,
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
        }
    }
}

impl FromStr for SmtpTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(SmtpTls::None),
            "starttls" => Ok(SmtpTls::StartTls),
            "tls" => Ok(SmtpTls::Tls),
            _ => Err(format!("{s:?} is not one of: none, starttls, tls")),
        }
    }
}

/// The HTTP gateway SMS are sent through.
#[derive(Debug, Clone)]
pub struct SmsConfig {
    /// `sms_url`; may hold the placeholders `{mobile}` and `{text}` (URL-encoded).
    pub url: String,
    /// `sms_method`: `GET`, `POST` (default) or `PUT`.
    pub method: String,
    /// `sms_body`: the request body with `{mobile}` and `{text}` (JSON-escaped when the body
    /// is JSON, URL-encoded otherwise); empty = no body.
    pub body: String,
}

/// The default `sms_body`.
pub const DEFAULT_SMS_BODY: &str = r#"{"mobile": "{mobile}", "text": "{text}"}"#;
