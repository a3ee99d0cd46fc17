//! The web dashboard in a real browser: headless Chromium renders the
//! tracker's and a peer's page (JavaScript, CSP and all) and the tests
//! assert on the DOM it produced. Screenshots of each state go to
//! `target/dashboard-screens/`. Without Chromium the tests skip, saying
//! so (CI installs it and sets `DARTSYNC_REQUIRE_BROWSER=1`).
//!
//! Off loopback the tracker asks for its login token: that test runs the
//! tracker inside a network namespace of its own (root only; CI is root
//! and sets `DARTSYNC_REQUIRE_ROOT_TESTS=1`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{CONVERGE, Cluster, Options, random_bytes, write};
use crate::util::{Proc, bin, run};

/// The browser, or `None` (the test skips) when it is not installed.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .map(|name| Path::new("/usr/bin").join(name))
        .find(|p| p.exists());
    if found.is_none() {
        let required = std::env::var_os("DARTSYNC_REQUIRE_BROWSER").is_some_and(|v| v == "1");
        assert!(!required, "DARTSYNC_REQUIRE_BROWSER=1 but no chromium in /usr/bin (apt-get install chromium)");
        eprintln!("skipped: no chromium installed (apt-get install chromium runs the browser tests)");
    }
    found
}

fn browser_args(browser: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--metrics-recording-only",
        "--no-default-browser-check",
        "--virtual-time-budget=4000",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// The DOM of `url` after its scripts ran.
fn dom(browser: &Path, profile: &Path, url: &str) -> String {
    let out = browser_args(browser, profile).arg("--dump-dom").arg(url).output().expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Saves a screenshot of `url` as `target/dashboard-screens/NAME.png`.
fn screenshot(browser: &Path, profile: &Path, url: &str, name: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("dashboard-screens");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.png"));
    let status = browser_args(browser, profile)
        .arg(format!("--screenshot={}", file.display()))
        .arg("--window-size=1200,900")
        .arg(url)
        .output()
        .expect("run chromium")
        .status;
    assert!(status.success() && file.exists(), "no screenshot {}", file.display());
}

/// The text of the element marked `data-device="NAME"` (up to the next
/// device), tags removed.
fn device_text(dom: &str, name: &str) -> Option<String> {
    let start = dom.find(&format!("data-device=\"{name}\""))?;
    let rest = &dom[start..];
    let end = rest[1..].find("data-device=\"").map_or(rest.len(), |e| e + 1);
    let mut text = String::new();
    let mut in_tag = false;
    for c in rest[..end].chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Renders `url` until `check` holds for its DOM; returns that DOM.
fn wait_dom(browser: &Path, profile: &Path, url: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let dom = dom(browser, profile, url);
        if check(&dom) {
            return dom;
        }
        assert!(started.elapsed() < CONVERGE, "the page at {url} never showed {what}; last DOM:\n{dom}");
    }
}

/// The tracker's dashboard URL from its start line.
fn tracker_dashboard(cluster: &Cluster) -> String {
    let line = cluster.tracker.as_ref().unwrap().wait_for_line("dashboard on http://", Duration::from_secs(20));
    let addr = line.split("dashboard on http://").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    format!("http://{addr}/")
}

#[test]
fn the_tracker_and_peer_pages_show_devices_transfers_and_offline_peers_in_a_browser() {
    let Some(browser) = chromium() else { return };
    let profile = tempfile::tempdir().unwrap();
    let profile = profile.path();
    let mut cluster = Cluster::start(Options {
        peers: 3,
        piece_len: Some(64 * 1024),
        tracker_args: vec!["--http".into(), "127.0.0.1:0".into()],
        ..Options::default()
    });
    // Peer 3 serves every chunk late: its big file takes a while to move.
    std::fs::create_dir_all(cluster.folder(3)).unwrap();
    cluster.start_peer_with(3, &["--test-serve-delay-ms", "100"]);
    cluster.wait_registered(3, 1);
    let url = tracker_dashboard(&cluster);
    let data = cluster.dir.path().join("tracker-data");
    let (status, out, err) = run(&["dashboard-url", "--data", data.to_str().unwrap()], &[]);
    assert!(status.success(), "{err}");
    assert_eq!(out.trim(), url, "on loopback the link needs no token");

    let all_up = |dom: &str| {
        (0..4).all(|i| {
            device_text(dom, &format!("peer{i}")).is_some_and(|t| t.contains("online") && t.contains("up to date"))
        })
    };
    let dom = wait_dom(&browser, profile, &url, "four devices online and up to date", all_up);
    assert!(dom.contains("data-loaded=\"1\""), "the page did not render");
    screenshot(&browser, profile, &url, "1-tracker-up-to-date");

    // A transfer, as the receiving peer's own page shows it.
    let (_, peer_json, _) = run(&["status", "--json", cluster.folder(1).to_str().unwrap()], &[]);
    let peer_url = serde_json::from_str::<Value>(&peer_json).unwrap()["dashboard"].as_str().unwrap().to_owned();
    assert!(peer_url.starts_with("http://127.0.0.1:"), "{peer_url}");
    // Big enough (512 chunks, 100 ms each from its only holder) to be seen
    // in flight even when rendering a page takes seconds.
    write(&cluster.folder(3), "movie.bin", &random_bytes(32 << 20, 9));
    wait_dom(&browser, profile, &peer_url, "the transfer of movie.bin", |dom| {
        dom.split("id=\"transfers\"").nth(1).is_some_and(|t| t.contains("movie.bin") && t.contains("<progress"))
    });
    screenshot(&browser, profile, &peer_url, "2-peer-transfer");
    wait_dom(&browser, profile, &url, "every device up to date after the transfer", all_up);
    screenshot(&browser, profile, &url, "3-tracker-after-transfer");

    // A peer that disappears shows as offline (expired after 3 intervals).
    cluster.kill_peer(2);
    let dom = wait_dom(&browser, profile, &url, "peer2 offline", |dom| {
        device_text(dom, "peer2").is_some_and(|t| t.contains("offline"))
    });
    assert!(device_text(&dom, "peer0").is_some_and(|t| t.contains("online")));
    screenshot(&browser, profile, &url, "4-tracker-peer-offline");
}

/// A network namespace of this test's own, removed on drop.
struct Netns(String);

impl Netns {
    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip").args(["netns", "exec", &self.0, "ip"]).args(args).status().unwrap();
        assert!(status.success(), "ip {args:?} in {}", self.0);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// One HTTP/1.0 GET from inside the namespace (bash's /dev/tcp), the whole
/// answer.
fn get_in(ns: &Netns, addr: &str, path: &str, extra_header: &str) -> String {
    let (host, port) = addr.split_once(':').unwrap();
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port}; printf 'GET {path} HTTP/1.0\\r\\nHost: {addr}\\r\\n{extra_header}\\r\\n' >&3; cat <&3"
    );
    let out = Command::new("ip").args(["netns", "exec", &ns.0, "bash", "-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn off_loopback_the_tracker_dashboard_refuses_requests_without_its_token() {
    let required = std::env::var_os("DARTSYNC_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1");
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !root || !Path::new("/usr/sbin/ip").exists() && !Path::new("/sbin/ip").exists() {
        assert!(!required, "DARTSYNC_REQUIRE_ROOT_TESTS=1 but not root or no `ip`");
        eprintln!("skipped: needs root and iproute2 to make a network namespace");
        return;
    }
    let ns = Netns(format!("dsdash{}", std::process::id()));
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
    // A LAN-like address of the namespace's own (on its loopback device:
    // no packet can leave the namespace).
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", "10.213.7.1/32", "dev", "lo"]);

    let dir = tempfile::tempdir().unwrap();
    let (key, data) = (dir.path().join("cluster.key"), dir.path().join("data"));
    assert!(run(&["init", "--key-file", key.to_str().unwrap()], &[]).0.success());
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0]).arg(bin()).args([
        "--tracker",
        "--no-discovery",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "10.213.7.1:7380",
        "--key-file",
        key.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
    let tracker = Proc::spawn_command("tracker", cmd);
    tracker.wait_for_line("tracker listening on", Duration::from_secs(20));
    let addr = "10.213.7.1:7380";

    let denied = get_in(&ns, addr, "/api/v1/status", "");
    assert!(denied.starts_with("HTTP/1.0 401") || denied.starts_with("HTTP/1.1 401"), "{denied}");
    assert!(denied.to_lowercase().contains("content-security-policy"), "{denied}");
    let page = get_in(&ns, addr, "/", "");
    assert!(page.contains(" 401 "), "the page itself needs the token too: {page}");

    let token = std::fs::read_to_string(data.join("http.token")).unwrap();
    let (status, url, err) = run(&["dashboard-url", "--data", data.to_str().unwrap()], &[]);
    assert!(status.success(), "{err}");
    assert_eq!(url.trim(), format!("http://{addr}/?token={token}"));
    let allowed = get_in(&ns, addr, "/api/v1/status", &format!("Authorization: Bearer {token}\r\n"));
    assert!(allowed.contains(" 200 ") && allowed.contains("\"kind\":\"tracker\""), "{allowed}");
    // The link sets the cookie and sends the browser on to the page.
    let login = get_in(&ns, addr, &format!("/?token={token}"), "");
    assert!(login.contains(" 303 ") && login.contains("dartsync_token=") && login.contains("HttpOnly"), "{login}");
    let with_cookie = get_in(&ns, addr, "/", &format!("Cookie: dartsync_token={token}\r\n"));
    assert!(with_cookie.contains(" 200 ") && with_cookie.contains("<html"), "{with_cookie}");
    drop(tracker);
}
