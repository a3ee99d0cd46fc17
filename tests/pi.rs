//! Raspberry Pi support (issue 6): the cross-built `dartsync` binaries for
//! armv7 and aarch64, the systemd units, and `deploy/deploy.sh` run end to
//! end against a throwaway `sshd` on 127.0.0.1.
//!
//! Most of these tests need what a developer machine usually lacks: the
//! binaries cross-built by `.ci/pi.sh` (found under `DARTSYNC_PI_BIN_DIR`, as
//! `<dir>/<triple>/release/dartsync`), qemu user emulation
//! (`qemu-arm-static`, `qemu-aarch64-static`), an ARM glibc for qemu
//! (`/usr/aarch64-linux-gnu`, `/usr/arm-linux-gnueabihf`), binutils, and
//! `sshd`. Without them a test prints what is missing and returns early;
//! with `DARTSYNC_PI_REQUIRE=1` (set by `.ci/pi.sh`) a missing prerequisite
//! fails the test instead, so CI cannot skip silently.
//!
//! What they do not check: real Pi hardware, and systemd actually starting
//! the unit (no systemd here). The units are checked with
//! `systemd-analyze verify`, and deploy runs with `--no-systemd` into a
//! staging root.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use dartsync_shared::channel;
use dartsync_shared::key::{ClusterKey, Identity};
use dartsync_shared::proto::ptp::{PeerMessage, Register, TrackerMessage};
use dartsync_shared::test_util::within;
use nix::sys::signal::Signal;

use crate::util::{Proc, bin, run};

/// The glibc of Raspberry Pi OS bullseye: no shipped binary may need more.
const GLIBC_FLOOR: [u32; 2] = [2, 31];

/// One Pi target as built by `.ci/pi.sh`.
#[derive(Debug)]
struct Target {
    triple: &'static str,
    /// The qemu user-mode emulator for it.
    qemu: &'static str,
    /// Where Debian's `libc6-*-cross` puts the target's glibc (qemu `-L`).
    sysroot: &'static str,
    /// ELF `e_ident[EI_CLASS]`: 1 = 32-bit, 2 = 64-bit.
    elf_class: u8,
    /// ELF `e_machine`: 40 = ARM, 183 = AArch64.
    elf_machine: u16,
}

const AARCH64: Target = Target {
    triple: "aarch64-unknown-linux-gnu",
    qemu: "qemu-aarch64-static",
    sysroot: "/usr/aarch64-linux-gnu",
    elf_class: 2,
    elf_machine: 183,
};

const ARMV7: Target = Target {
    triple: "armv7-unknown-linux-gnueabihf",
    qemu: "qemu-arm-static",
    sysroot: "/usr/arm-linux-gnueabihf",
    elf_class: 1,
    elf_machine: 40,
};

const TARGETS: [&Target; 2] = [&ARMV7, &AARCH64];

/// Shared libraries a Pi binary may link: glibc's own, nothing else.
const ALLOWED_NEEDED: [&str; 6] =
    ["libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libgcc_s.so.1"];

/// Returns true (and says why) when the test cannot run here; panics
/// instead under `DARTSYNC_PI_REQUIRE`.
fn skip(test: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return false;
    }
    let mut reasons: Vec<&str> = Vec::new();
    for reason in missing {
        if !reasons.contains(&reason.as_str()) {
            reasons.push(reason);
        }
    }
    let why = reasons.join("; ");
    assert!(std::env::var_os("DARTSYNC_PI_REQUIRE").is_none(), "{test}: DARTSYNC_PI_REQUIRE is set but {why}");
    eprintln!("skipping {test}: {why} (CI runs it through .ci/pi.sh)");
    true
}

/// A program on PATH (or an absolute path), if present.
fn which(program: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|p| p.is_file()))
}

fn need_programs(missing: &mut Vec<String>, programs: &[&str]) {
    for program in programs {
        if which(program).is_none() {
            missing.push(format!("{program} is not installed"));
        }
    }
}

/// The cross-built binary for `target`, or why it is not there.
fn pi_binary(target: &Target, missing: &mut Vec<String>) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("DARTSYNC_PI_BIN_DIR") else {
        missing.push("DARTSYNC_PI_BIN_DIR is not set".into());
        return None;
    };
    let path = Path::new(&dir).join(target.triple).join("release").join("dartsync");
    if path.is_file() {
        Some(path)
    } else {
        missing.push(format!("no {} binary at {}", target.triple, path.display()));
        None
    }
}

/// Everything needed to run `target`'s binary under qemu.
fn emulation(target: &Target, missing: &mut Vec<String>) -> Option<PathBuf> {
    need_programs(missing, &[target.qemu]);
    if !Path::new(target.sysroot).join("lib").is_dir() {
        missing.push(format!("no ARM glibc for qemu at {}", target.sysroot));
    }
    pi_binary(target, missing)
}

/// `qemu BINARY args...` for `target`.
fn emulated(target: &Target, binary: &Path) -> Command {
    let mut cmd = Command::new(target.qemu);
    cmd.arg("-L").arg(target.sysroot).arg(binary).env_remove("RUST_LOG");
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses `2.31` / `2.3.4` into comparable numbers.
fn version(text: &str) -> Vec<u32> {
    text.split('.').map(|part| part.parse().expect("numeric version")).collect()
}

/// The highest `GLIBC_x.y` symbol version `binary` needs (None: static).
fn max_glibc(binary: &Path) -> Option<Vec<u32>> {
    let out = output(Command::new("objdump").arg("-T").arg(binary));
    let dump = text(&out.stdout);
    // A static binary has no dynamic symbol table: objdump says so and fails.
    dump.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(version)
        .max()
}

/// The `NEEDED` entries of `binary`'s dynamic section.
fn needed_libraries(binary: &Path) -> Vec<String> {
    let out = output(Command::new("readelf").arg("-d").arg(binary));
    text(&out.stdout)
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| line.split('[').nth(1)?.split(']').next().map(str::to_owned))
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).permissions().mode() & 0o7777
}

#[test]
fn glibc_versions_compare_numerically() {
    // The floor check must not compare strings: 2.4 < 2.31 < 2.100.
    assert!(version("2.4") < version("2.31"));
    assert!(version("2.31") < version("2.100"));
    assert!(version("2.30") <= GLIBC_FLOOR.to_vec());
    assert!(version("2.34") > GLIBC_FLOOR.to_vec());
    assert!(version("2.31.1") > version("2.31"));
}

#[test]
fn pi_binaries_are_arm_elfs_that_run_on_bullseye_glibc() {
    for target in TARGETS {
        let test = format!("pi_binaries ({})", target.triple);
        let mut missing = Vec::new();
        need_programs(&mut missing, &["objdump", "readelf"]);
        let binary = emulation(target, &mut missing);
        if skip(&test, &missing) {
            continue;
        }
        let binary = binary.expect("checked above");

        // The ELF header says which CPU the binary is for.
        let bytes = std::fs::read(&binary).expect("read binary");
        assert_eq!(&bytes[..4], b"\x7fELF", "{} is not an ELF file", binary.display());
        assert_eq!(bytes[4], target.elf_class, "{}: wrong ELF class", target.triple);
        assert_eq!(bytes[5], 1, "{}: not little-endian", target.triple);
        let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
        assert_eq!(machine, target.elf_machine, "{}: wrong ELF machine", target.triple);

        // No glibc newer than bullseye's, and nothing but glibc itself.
        match max_glibc(&binary) {
            Some(v) => assert!(
                v <= GLIBC_FLOOR.to_vec(),
                "{} needs GLIBC_{} but Raspberry Pi OS bullseye has 2.31",
                target.triple,
                v.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
            ),
            None => eprintln!("{}: static binary, no glibc needed", target.triple),
        }
        for lib in needed_libraries(&binary) {
            assert!(ALLOWED_NEEDED.contains(&lib.as_str()), "{} links {lib}, which a Pi may not have", target.triple);
        }

        // And it runs: the same version as the native build.
        let out = output(emulated(target, &binary).arg("--version"));
        assert!(out.status.success(), "{} --version failed: {}", target.triple, text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), format!("dartsync {}", env!("CARGO_PKG_VERSION")));
    }
}

/// Registers as a fresh peer and returns the tracker's answer.
async fn register(addr: SocketAddr, key: &ClusterKey) -> TrackerMessage {
    let identity = Identity::generate();
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the emulated tracker");
    let mut chan = channel::connect(stream, key, &identity).await.expect("handshake with the emulated tracker");
    let register = Register::new(identity.peer_id(), 40000, 0, 0, "test");
    chan.send(&PeerMessage::Register(register)).await.expect("send Register");
    let answer: TrackerMessage = chan.recv().await.expect("read the answer").expect("tracker closed without answering");
    // Leave cleanly; the tracker may already be gone, which is fine here.
    let _ = chan.send(&PeerMessage::Goodbye).await;
    answer
}

/// Each Pi binary, run as a tracker under qemu, speaks PTP with a native
/// peer: Noise handshake with the cluster key, `Register`, `Welcome` with
/// the configured interval; then SIGTERM stops it cleanly.
#[test]
fn emulated_tracker_welcomes_a_native_peer() {
    for target in TARGETS {
        let test = format!("emulated_tracker ({})", target.triple);
        let mut missing = Vec::new();
        let binary = emulation(target, &mut missing);
        if skip(&test, &missing) {
            continue;
        }
        let binary = binary.expect("checked above");

        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("cluster.key");
        let (status, _, err) = run(&["init", "--key-file", key_file.to_str().expect("utf-8 path")], &[]);
        assert!(status.success(), "dartsync init: {err}");
        let key = ClusterKey::load(&key_file).expect("load the key dartsync init wrote");

        let mut cmd = emulated(target, &binary);
        cmd.args(["--tracker", "--no-discovery", "--listen", "127.0.0.1:0", "--interval", "5", "--key-file"])
            .arg(&key_file)
            .arg("--data")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let mut tracker = Proc::spawn_command(&format!("tracker-{}", target.triple), cmd);
        let addr = tracker.listen_addr();
        assert!(addr.ip().is_loopback(), "{addr}");

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let what = format!("{}: an answer to Register", target.triple);
        let answer = rt.block_on(within(Duration::from_secs(30), &what, register(addr, &key)));
        match answer {
            TrackerMessage::Welcome(welcome) => {
                assert_eq!(welcome.interval_ms, 5000, "{}: {welcome:?}", target.triple);
                TrackerMessage::Welcome(welcome).validate().expect("a valid Welcome");
            }
            other => panic!("{}: expected Welcome, got {other:?}", target.triple),
        }

        // SIGTERM stops the emulated tracker cleanly, as on a Pi.
        tracker.signal(Signal::SIGTERM);
        assert_eq!(tracker.wait_exit(Duration::from_secs(30)), Some(0), "{}: {:?}", target.triple, tracker.lines());
    }
}

fn deploy_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join("deploy.sh")
}

fn deploy(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(deploy_script()).args(args).stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    output(&mut cmd)
}

#[test]
fn deploy_script_explains_itself_and_rejects_bad_arguments() {
    let out = deploy(&["--help"], &[]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in ["USER@HOST", "--arch", "--port", "--identity", "--no-systemd", "--root", "--binary", "--ssh-port"] {
        assert!(help.contains(word), "--help does not mention {word}:\n{help}");
    }

    // Every mistake is caught before anything is contacted.
    let cases: [(&[&str], &str); 7] = [
        (&[], "missing USER@HOST"),
        (&["pi"], "USER@HOST"),
        (&["pi@h", "--arch", "mips"], "--arch must be"),
        (&["pi@h", "--port", "70000"], "--port must be"),
        (&["pi@h", "--root", "/stage"], "pass --no-systemd"),
        (&["pi@h", "--no-systemd", "--root", "stage"], "absolute path"),
        (&["pi@h", "--frobnicate"], "unknown option"),
    ];
    for (args, expected) in cases {
        let out = deploy(args, &[]);
        assert!(!out.status.success(), "deploy {args:?} succeeded");
        let err = text(&out.stderr);
        assert!(err.contains(expected), "deploy {args:?}: expected {expected:?} in:\n{err}");
    }
}

#[test]
fn systemd_units_pass_systemd_analyze() {
    let mut missing = Vec::new();
    need_programs(&mut missing, &["systemd-analyze"]);
    if skip("systemd_units_pass_systemd_analyze", &missing) {
        return;
    }
    let deploy_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dir = tempfile::tempdir().expect("tempdir");
    // verify insists that ExecStart's program exists: point it at one that does.
    let true_bin = which("true").expect("true(1)");
    let true_bin = true_bin.to_str().expect("utf-8 path");
    let cases = [
        ("dartsync-tracker.service", "dartsync-tracker.service", "/usr/local/bin/dartsync", false),
        ("dartsync-peer@.service", "dartsync-peer@DartSync.service", "%h/.cargo/bin/dartsync", true),
    ];
    for (file, unit, program, user) in cases {
        let text_in = std::fs::read_to_string(deploy_dir.join(file)).expect("read unit");
        assert!(text_in.contains(program), "{file} no longer runs {program}");
        std::fs::write(dir.path().join(file), text_in.replace(program, true_bin)).expect("write unit");
        let mut cmd = Command::new("systemd-analyze");
        if user {
            cmd.arg("--user").env("XDG_RUNTIME_DIR", dir.path());
        }
        cmd.args(["verify", "--man=no"]).arg(dir.path().join(unit));
        let out = output(&mut cmd);
        let err = text(&out.stderr);
        assert!(out.status.success() && err.trim().is_empty(), "{file} does not verify:\n{err}");
    }

    // The hardening the issue asks for is there.
    let tracker = std::fs::read_to_string(deploy_dir.join("dartsync-tracker.service")).expect("read unit");
    for line in [
        "User=dartsync",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=dartsync",
        "--data /var/lib/dartsync",
    ] {
        assert!(tracker.contains(line), "dartsync-tracker.service lacks {line}");
    }
}

/// A throwaway sshd on 127.0.0.1 with its own host key, accepting one
/// generated client key for the current user. Stopped by PID on drop.
struct Sshd {
    proc: Proc,
    port: u16,
    client_key: PathBuf,
    known_hosts: PathBuf,
}

impl Sshd {
    fn start(dir: &Path) -> Sshd {
        for name in ["host_ed25519", "client_ed25519"] {
            let out = output(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "dartsync-test", "-f"])
                    .arg(dir.join(name)),
            );
            assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
        }
        std::fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys")).expect("authorized_keys");
        // sshd's privilege-separation directory (Debian's service creates it).
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");

        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            probe.local_addr().expect("local addr").port()
        };
        let config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {dir}/host_ed25519\n\
             PidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             X11Forwarding no\n\
             AllowTcpForwarding no\n\
             Subsystem sftp internal-sftp\n",
            dir = dir.display()
        );
        let config_file = dir.join("sshd_config");
        std::fs::write(&config_file, config).expect("write sshd_config");
        let mut cmd = Command::new(which("sshd").or_else(|| which("/usr/sbin/sshd")).expect("sshd"));
        cmd.arg("-D").arg("-e").arg("-f").arg(&config_file);
        let proc = Proc::spawn_command("sshd", cmd);
        proc.wait_for_line(&format!("listening on 127.0.0.1 port {port}"), Duration::from_secs(20));
        Sshd { proc, port, client_key: dir.join("client_ed25519"), known_hosts: dir.join("known_hosts") }
    }

    /// `DARTSYNC_SSH_OPTS` for deploy.sh: only this sshd, no user config.
    fn ssh_opts(&self) -> String {
        format!(
            "-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile={} -o LogLevel=ERROR",
            self.known_hosts.display()
        )
    }

    fn stop(mut self) {
        self.proc.signal(Signal::SIGTERM);
        self.proc.wait_exit(Duration::from_secs(20));
    }
}

/// `id OPTION` of this process: `-un` for the user name, `-u` for the uid.
fn id(option: &str) -> String {
    text(&output(Command::new("id").arg(option)).stdout).trim().to_owned()
}

#[test]
fn deploy_over_ssh_into_a_staging_root_twice() {
    let mut missing = Vec::new();
    need_programs(&mut missing, &["bash", "ssh", "scp", "ssh-keygen", "objdump"]);
    if which("sshd").is_none() && which("/usr/sbin/sshd").is_none() {
        missing.push("sshd is not installed (Debian: openssh-server)".into());
    }
    if id("-u") != "0" {
        missing.push("sshd needs root for its privilege separation".into());
    }
    let binary = emulation(&AARCH64, &mut missing);
    let armv7_binary = pi_binary(&ARMV7, &mut missing);
    if skip("deploy_over_ssh_into_a_staging_root_twice", &missing) {
        return;
    }
    let (binary, armv7_binary) = (binary.expect("checked above"), armv7_binary.expect("checked above"));

    let dir = tempfile::tempdir().expect("tempdir");
    let sshd_dir = dir.path().join("sshd");
    std::fs::create_dir(&sshd_dir).expect("mkdir sshd");
    let sshd = Sshd::start(&sshd_dir);
    let stage = dir.path().join("stage");
    let key_file = dir.path().join("laptop").join("cluster.key");
    let login = format!("{}@127.0.0.1", id("-un"));
    let port = sshd.port.to_string();
    let ssh_opts = sshd.ssh_opts();
    let native = bin();
    let env = [("DARTSYNC_SSH_OPTS", ssh_opts.as_str()), ("DARTSYNC", native.to_str().expect("utf-8 path"))];
    let run_deploy = |arch: &str, binary: &Path, tracker_port: &str, key: &Path| {
        deploy(
            &[
                login.as_str(),
                "--arch",
                arch,
                "--port",
                tracker_port,
                "--no-systemd",
                "--root",
                stage.to_str().expect("utf-8 path"),
                "--ssh-port",
                &port,
                "--identity",
                sshd.client_key.to_str().expect("utf-8 path"),
                "--key-file",
                key.to_str().expect("utf-8 path"),
                "--binary",
                binary.to_str().expect("utf-8 path"),
            ],
            &env,
        )
    };

    // First run: creates the local key with dartsync init, installs everything.
    let out = run_deploy("aarch64", &binary, "7400", &key_file);
    let log = format!("stdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "first deploy failed\n{log}");
    assert!(log.contains("binary: installed"), "{log}");
    assert!(log.contains("cluster key: installed"), "{log}");
    assert_eq!(mode(&key_file), 0o600, "the local key dartsync init created");

    let staged_bin = stage.join("usr/local/bin/dartsync");
    let staged_key = stage.join("etc/dartsync/cluster.key");
    let staged_unit = stage.join("etc/systemd/system/dartsync-tracker.service");
    let staged_env = stage.join("etc/dartsync/tracker.env");
    let check_files = |listen: &str| {
        assert_eq!(std::fs::read(&staged_bin).expect("staged binary"), std::fs::read(&binary).expect("binary"));
        assert_eq!(mode(&staged_bin), 0o755);
        assert_eq!(std::fs::read(&staged_key).expect("staged key"), std::fs::read(&key_file).expect("key"));
        assert_eq!(mode(&staged_key), 0o600);
        assert_eq!(mode(&stage.join("etc/dartsync")), 0o700);
        assert_eq!(
            std::fs::read(&staged_unit).expect("staged unit"),
            std::fs::read(deploy_script().with_file_name("dartsync-tracker.service")).expect("unit")
        );
        assert_eq!(mode(&staged_unit), 0o644);
        let settings = std::fs::read_to_string(&staged_env).expect("staged settings");
        assert!(settings.lines().any(|l| l == format!("DARTSYNC_LISTEN=0.0.0.0:{listen}")), "{settings}");
        assert_eq!(mode(&stage.join("var/lib/dartsync")), 0o700);
    };
    check_files("7400");
    // Nothing is left in the Pi's /tmp.
    let uploaded = text(&out.stdout)
        .lines()
        .find_map(|l| l.split(" copied to ").nth(1).map(str::to_owned))
        .expect("deploy names its upload directory");
    assert!(uploaded.starts_with("/tmp/dartsync-deploy."), "{uploaded}");
    assert!(!Path::new(&uploaded).exists(), "{uploaded} was not cleaned up");

    // The pushed binary runs (under qemu, this is no Pi).
    let out = output(emulated(&AARCH64, &staged_bin).arg("--version"));
    assert!(out.status.success(), "staged binary: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("dartsync "), "{}", text(&out.stdout));

    // Second run upgrades in place: same files, new port, user settings kept.
    let mut settings = std::fs::read_to_string(&staged_env).expect("settings");
    settings.push_str("DARTSYNC_ARGS=--interval 5\n");
    std::fs::write(&staged_env, settings).expect("edit settings");
    let out = run_deploy("aarch64", &binary, "7401", &key_file);
    let log = format!("stdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "second deploy failed\n{log}");
    assert!(log.contains("binary: unchanged") && log.contains("cluster key: unchanged"), "{log}");
    check_files("7401");
    let settings = std::fs::read_to_string(&staged_env).expect("settings");
    assert!(settings.contains("DARTSYNC_ARGS=--interval 5"), "{settings}");
    assert!(!settings.contains("0.0.0.0:7400"), "{settings}");

    // A different local key never silently replaces the Pi's, and the
    // refusal comes before anything else is touched (here: a new binary).
    let other_key = dir.path().join("other").join("cluster.key");
    let (status, _, err) = run(&["init", "--key-file", other_key.to_str().expect("utf-8 path")], &[]);
    assert!(status.success(), "{err}");
    let out = run_deploy("armv7", &armv7_binary, "7402", &other_key);
    assert!(!out.status.success(), "deploy replaced a different key");
    assert!(text(&out.stderr).contains("different cluster key"), "{}", text(&out.stderr));
    check_files("7401");

    sshd.stop();
}
