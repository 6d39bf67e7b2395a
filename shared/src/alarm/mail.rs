//! Mail through SMTP, with lettre: plain, STARTTLS (required) or implicit TLS, optional login.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::DeliveryError;
use super::config::{SmtpConfig, SmtpTls};

/// How long one SMTP conversation may take (connect included).
const TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `address` is a mail address (`user@domain`) a mail can be sent to.
pub fn is_address(address: &str) -> bool {
    address.parse::<lettre::Address>().is_ok()
}

/// Whether `mailbox` is a sender (`user@domain` or `Name <user@domain>`).
pub fn is_mailbox(mailbox: &str) -> bool {
    mailbox.parse::<Mailbox>().is_ok()
}

/// Sends alarm mails through one SMTP server.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// A mailer for `config`; fails on an unusable sender address or TLS set-up.
    pub fn new(config: &SmtpConfig) -> Result<Mailer, DeliveryError> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| DeliveryError::Message(format!("mail_from {:?}: {e}", config.from)))?;
        let tls = |host: &str| {
            TlsParameters::new(host.to_owned())
                .map_err(|e| DeliveryError::Message(format!("TLS for {host}: {e}")))
        };
        let tls = match config.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::Required(tls(&config.host)?),
            SmtpTls::Tls => Tls::Wrapper(tls(&config.host)?),
        };
        // builder_dangerous is lettre's name for "configure everything yourself"; the TLS mode
        // set here is what the operator chose in smtp_tls.
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(TIMEOUT));
        if !config.user.is_empty() {
            builder = builder.credentials(Credentials::new(
                config.user.clone(),
                config.password.clone(),
            ));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
        })
    }

    /// Sends one mail to every address of `to` (one message, all of them as `To`). `key`
    /// names the alarm: it becomes the `Message-ID`, so that a mail sent again (a sender died
    /// between delivery and its record) is the same message to the receiving side.
    pub async fn send(
        &self,
        to: &[String],
        subject: &str,
        body: &str,
        key: &str,
    ) -> Result<(), DeliveryError> {
        let domain = self.from.email.domain();
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(format!("<{key}@{domain}>")))
            .header(ContentType::TEXT_PLAIN);
        for address in to {
            let mailbox: Mailbox = address
                .parse()
                .map_err(|e| DeliveryError::Message(format!("address {address:?}: {e}")))?;
            message = message.to(mailbox);
        }
        let message = message
            .body(body.to_owned())
            .map_err(|e| DeliveryError::Message(e.to_string()))?;
        // lettre's own timeout covers each command; this one bounds the whole conversation.
        match tokio::time::timeout(TIMEOUT * 2, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(DeliveryError::Transport(format!("SMTP: {e}"))),
            Err(_) => Err(DeliveryError::Transport("SMTP: timed out".to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        assert!(is_address("ops@example.com"));
        assert!(!is_address("ops"));
        assert!(!is_address("ops@"));
        assert!(is_mailbox("gocron <gocron@example.com>"));
        assert!(!is_mailbox("gocron at example"));
    }
}
