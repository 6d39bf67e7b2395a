//! SMS through an HTTP gateway: a URL, a method and a body template with `{mobile}` and
//! `{text}`, so that any provider's API can be called without code.
//!
//! In the URL the placeholders are URL-encoded. In the body they are JSON-escaped when the
//! template is JSON (starts with `{` or `[`; sent as `application/json`), URL-encoded otherwise
//! (sent as `application/x-www-form-urlencoded`). Any 2xx answer is success.

use std::time::Duration;

use super::DeliveryError;
use super::config::SmsConfig;

/// How long one gateway request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends SMS through the configured gateway.
#[derive(Clone)]
pub struct SmsGateway {
    config: SmsConfig,
    client: reqwest::Client,
}

impl SmsGateway {
    /// A gateway client for `config`.
    pub fn new(config: &SmsConfig) -> Result<SmsGateway, DeliveryError> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| DeliveryError::Message(format!("HTTP client: {e}")))?;
        Ok(SmsGateway {
            config: config.clone(),
            client,
        })
    }

    /// Sends `text` to one `mobile`.
    pub async fn send(&self, mobile: &str, text: &str) -> Result<(), DeliveryError> {
        let url = fill(&self.config.url, mobile, text, url_encode);
        let method = reqwest::Method::from_bytes(self.config.method.as_bytes())
            .map_err(|e| DeliveryError::Message(format!("sms_method: {e}")))?;
        let mut request = self.client.request(method, &url);
        let template = self.config.body.trim();
        if !template.is_empty() {
            let json = template.starts_with('{') || template.starts_with('[');
            let (body, content_type) = if json {
                (
                    fill(template, mobile, text, json_escape),
                    "application/json",
                )
            } else {
                (
                    fill(template, mobile, text, url_encode),
                    "application/x-www-form-urlencoded",
                )
            };
            request = request.header("content-type", content_type).body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| DeliveryError::Transport(format!("SMS gateway: {e}")))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Transport(format!(
                "SMS gateway answered {}",
                response.status()
            )))
        }
    }
}

/// `template` with `{mobile}` and `{text}` replaced by their `escape`d values.
fn fill(template: &str, mobile: &str, text: &str, escape: fn(&str) -> String) -> String {
    template
        .replace("{mobile}", &escape(mobile))
        .replace("{text}", &escape(text))
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn json_escape(s: &str) -> String {
    let quoted = serde_json::Value::String(s.to_owned()).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_escape_for_their_place() {
        assert_eq!(
            fill(
                r#"{"to": "{mobile}", "msg": "{text}"}"#,
                "+49 1",
                "a \"b\"",
                json_escape
            ),
            r#"{"to": "+49 1", "msg": "a \"b\""}"#
        );
        assert_eq!(
            fill("to={mobile}&msg={text}", "+49 1", "a&b c", url_encode),
            "to=%2B49%201&msg=a%26b%20c"
        );
    }
}
