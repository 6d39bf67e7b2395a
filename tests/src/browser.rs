//! A real browser for the console's tests: Debian's `chromium`, headless, driven over WebDriver
//! by its `chromedriver` (both installed by `scripts/test`), through the fantoccini client.
//! Screenshots go to `var/screenshots/console/` for people to look at.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use crate::wait_until;

/// Where Debian puts them.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a page element may take to appear (a page load, a redirect, a script's answer).
pub const ELEMENT_WAIT: Duration = Duration::from_secs(20);

/// A chromedriver process and one browser session on it; both end when it is dropped (or,
/// better, at [`Browser::close`]).
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1 (bound and released: chromedriver takes no port 0).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a headless chromium with a new empty profile.
    pub async fn start() -> Browser {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: scripts/test installs Debian's chromium and chromium-driver \
                 (or: apt-get install chromium chromium-driver)"
            );
        }
        let port = free_port();
        // In a process group of its own, so that the browsers it starts end with it.
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("a browser profile folder");
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"binary": CHROMIUM, "args": args}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = wait_until(
            "chromedriver opens a browser session",
            Duration::from_secs(60),
            || {
                let (url, capabilities) = (url.clone(), capabilities.clone());
                async move {
                    ClientBuilder::native()
                        .capabilities(capabilities)
                        .connect(&url)
                        .await
                        .ok()
                }
            },
        )
        .await;
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The element `css` selects, waiting for it to appear.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(ELEMENT_WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!("no element {css:?} on {}: {e}", self.path().await),
        }
    }

    /// The text of the element `css` selects.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("element text")
    }

    /// Types `text` into the field `css` selects, after clearing it.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear a field");
        field.send_keys(text).await.expect("type into a field");
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Clicks the element `css` selects, which submits a form, and waits for the page that
    /// answers it: the page shown before is marked, and the answer is the first page without the
    /// mark (the old page may still be shown, and its elements found, for a while after the
    /// click).
    pub async fn submit(&self, css: &str) {
        self.script("document.documentElement.dataset.gocronOld = '1'; return true")
            .await;
        self.click(css).await;
        wait_until("the form's answer", ELEMENT_WAIT, || async {
            let marked = self
                .client
                .execute(
                    "return document.readyState === 'complete' \
                     && document.documentElement.dataset.gocronOld === undefined",
                    vec![],
                )
                .await;
            // An error: the page is being replaced.
            (marked.ok()? == serde_json::Value::Bool(true)).then_some(())
        })
        .await;
    }

    /// The path (and query) of the page shown.
    pub async fn path(&self) -> String {
        match self.client.current_url().await {
            Ok(url) => match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_owned(),
            },
            Err(e) => format!("(unknown: {e})"),
        }
    }

    /// Waits until the page shown is `path` (a redirect, a form's answer).
    pub async fn wait_for_path(&self, what: &str, path: impl Fn(&str) -> bool) -> String {
        wait_until(what, ELEMENT_WAIT, || async {
            let now = self.path().await;
            path(&now).then_some(now)
        })
        .await
    }

    /// Runs `script` in the page and returns what it returns.
    pub async fn script(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// Saves a screenshot of the page as `var/screenshots/console/{name}.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("create the screenshot folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write a screenshot");
        path
    }

    /// Ends the session, then chromedriver and its browsers.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    /// chromedriver's process group (the browsers with it) is killed, even when a test fails.
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.driver.wait();
    }
}

/// `<repo>/var/screenshots/console`.
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("var")
        .join("screenshots")
        .join("console")
}
