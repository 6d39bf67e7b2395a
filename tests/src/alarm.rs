//! Stand-ins for the outside world of alarms: a real SMTP server (Debian's `python3-aiosmtpd`,
//! writing each message to a maildir) on a loopback port, and a small HTTP server that plays
//! the SMS gateway.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::wait_until;

/// The Python that has aiosmtpd: Debian's, not a version manager's shim.
fn python() -> String {
    std::env::var("GOCRON_TEST_SMTP_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".to_owned())
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A mail as the SMTP server received it.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The envelope recipients.
    pub to: Vec<String>,
    /// The `Subject` header.
    pub subject: String,
    /// The decoded text body.
    pub body: String,
    /// The `Message-ID` header.
    pub message_id: String,
}

/// A real SMTP server on `127.0.0.1:port`, killed when dropped.
pub struct SmtpSink {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl SmtpSink {
    /// Starts aiosmtpd on a free port, writing into the maildir `dir`; panics saying how to
    /// install it if it is missing.
    pub async fn start(dir: &Path) -> SmtpSink {
        let python = python();
        let ok = Command::new(&python)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "the alarm tests need a real SMTP server: Debian's python3-aiosmtpd for {python} \
             (install it with `scripts/services install`, or set GOCRON_TEST_SMTP_PYTHON to a \
             python3 that has aiosmtpd)"
        );
        let mut sink = SmtpSink {
            port: free_port(),
            dir: dir.to_owned(),
            child: None,
        };
        sink.up().await;
        sink
    }

    /// (Re)starts the server on its port.
    pub async fn up(&mut self) {
        assert!(self.child.is_none(), "the SMTP server is already up");
        let child = Command::new(python())
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{}", self.port),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        self.child = Some(child);
        let port = self.port;
        wait_until(
            &format!("the SMTP server on port {port}"),
            Duration::from_secs(20),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
    }

    /// Stops the server (the port refuses connections until [`SmtpSink::up`]).
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every mail received so far, in arrival order.
    pub fn mails(&self) -> Vec<Mail> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = ["new", "cur"]
            .iter()
            .flat_map(|d| std::fs::read_dir(self.dir.join(d)).into_iter().flatten())
            .filter_map(|e| {
                let e = e.ok()?;
                Some((e.metadata().ok()?.modified().ok()?, e.path()))
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| parse_mail(&std::fs::read_to_string(p).ok()?))
            .collect()
    }

    /// Waits until `pred` holds for the mails received; returns them.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Mail]) -> bool,
    ) -> Vec<Mail> {
        wait_until(what, timeout, || {
            let mails = self.mails();
            let ok = pred(&mails);
            async move { ok.then_some(mails) }
        })
        .await
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.down();
    }
}

fn parse_mail(raw: &str) -> Option<Mail> {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n")?;
    // Unfold continuation lines.
    let head = head.replace("\n ", " ").replace("\n\t", " ");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let body = if header("Content-Transfer-Encoding").eq_ignore_ascii_case("quoted-printable") {
        decode_qp(body)
    } else {
        body.to_owned()
    };
    Some(Mail {
        to: header("X-RcptTo")
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        subject: header("Subject"),
        body,
        message_id: header("Message-ID"),
    })
}

fn decode_qp(s: &str) -> String {
    let s = s.replace("=\n", "");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request the SMS gateway stand-in received.
#[derive(Debug, Clone)]
pub struct SmsRequest {
    /// `POST`, `GET`, ….
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The body.
    pub body: String,
}

/// An HTTP server that records every request it accepts and answers 200, or, while failing,
/// answers 503 and records nothing.
#[derive(Clone)]
pub struct SmsGateway {
    /// Its address.
    pub addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<SmsRequest>>>,
    failing: Arc<AtomicBool>,
}

impl SmsGateway {
    /// Starts the gateway on a free loopback port.
    pub async fn start() -> SmsGateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let log = requests.clone();
        let fail = failing.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = log.clone();
                let fail = fail.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let request = loop {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let length = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            let mut first = head.lines().next().unwrap_or("").split(' ');
                            break SmsRequest {
                                method: first.next().unwrap_or("").to_owned(),
                                path: first.next().unwrap_or("").to_owned(),
                                body: body.to_owned(),
                            };
                        }
                    };
                    let answer: &[u8] = if fail.load(Ordering::SeqCst) {
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    } else {
                        log.lock().unwrap().push(request);
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    };
                    let _ = stream.write_all(answer).await;
                });
            }
        });
        SmsGateway {
            addr,
            requests,
            failing,
        }
    }

    /// Makes the gateway answer 503 (and record nothing) until called with `false`.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<SmsRequest> {
        self.requests.lock().unwrap().clone()
    }
}
