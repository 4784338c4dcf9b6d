//! [`Gateway`]: the real `tollgate` binary, run as a child process on a free port with a
//! config written to a temp dir, its stdout and stderr captured to a log file.
//!
//! Placeholders replaced in the YAML text before it is written:
//! `{PORT}` (the listener port, health-checked), `{PID_FILE}`, `{UPGRADE_SOCK}` (unique
//! paths in the temp dir) and `{TMP_DIR}` (the temp dir itself).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_port;
use super::upstream::MOCK_HEADER;

/// The binary under test.
pub const TOLLGATE_BIN: &str = env!("CARGO_BIN_EXE_tollgate");
/// How long the gateway may take to answer `GET /health` with 200.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Tries with a fresh port when another process grabbed ours first.
const START_ATTEMPTS: usize = 3;
/// How long `--validate` may run.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(15);

/// A running gateway. Dropping it kills the process (SIGKILL) and reaps it; if the thread
/// is panicking (a failed test), the gateway's log is printed first.
pub struct Gateway {
    child: Child,
    port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    dir: TempDir,
}

/// Why one start attempt failed.
struct StartFailure {
    reason: String,
    logs: String,
}

impl StartFailure {
    fn port_was_taken(&self) -> bool {
        self.logs.contains("Address already in use") || self.logs.contains("AddrInUse")
    }
}

impl Gateway {
    /// Starts the gateway with `yaml` (placeholders filled) and waits until
    /// `GET /health` answers 200; panics with the log if it exits or times out.
    pub fn start(yaml: &str) -> Gateway {
        Self::start_with_env(yaml, &[])
    }

    /// [`start`](Self::start) with extra environment variables (for `${VAR}` configs).
    pub fn start_with_env(yaml: &str, envs: &[(&str, &str)]) -> Gateway {
        let mut attempt = 1;
        loop {
            match Self::try_start(yaml, envs) {
                Ok(gateway) => return gateway,
                Err(failure) if failure.port_was_taken() && attempt < START_ATTEMPTS => {
                    attempt += 1
                }
                Err(failure) => panic!(
                    "tollgate did not start: {}\n---- config ----\n{yaml}\n---- log ----\n{}",
                    failure.reason, failure.logs
                ),
            }
        }
    }

    fn try_start(yaml: &str, envs: &[(&str, &str)]) -> Result<Gateway, StartFailure> {
        let dir = tempfile::tempdir().expect("temp dir for gateway");
        let port = free_port();
        let config_path = write_config(dir.path(), yaml, port);
        let log_path = dir.path().join("tollgate.log");
        let (stdout, stderr) = log_outputs(&log_path);
        let child = Command::new(TOLLGATE_BIN)
            .arg("-c")
            .arg(&config_path)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn tollgate");
        let mut gateway = Gateway {
            child,
            port,
            config_path,
            log_path,
            dir,
        };
        match gateway.wait_until_healthy() {
            Ok(()) => Ok(gateway),
            Err(reason) => Err(StartFailure {
                reason,
                logs: gateway.logs(),
            }),
        }
    }

    /// Polls `/health` every 20 ms until 200, the process exits, or the timeout.
    fn wait_until_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait tollgate") {
                return Err(format!("it exited ({status}) before answering /health"));
            }
            if health_status(self.port) == Some(200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "GET /health did not answer 200 within {STARTUP_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(HEALTH_POLL_INTERVAL);
        }
    }

    /// Runs `tollgate --validate -c FILE` on `yaml` (placeholders filled):
    /// (exit code, -1 if killed by a signal; stderr).
    pub fn validate(yaml: &str) -> (i32, String) {
        Self::validate_with_env(yaml, &[])
    }

    /// [`validate`](Self::validate) with extra environment variables.
    pub fn validate_with_env(yaml: &str, envs: &[(&str, &str)]) -> (i32, String) {
        let dir = tempfile::tempdir().expect("temp dir for validate");
        let config_path = write_config(dir.path(), yaml, free_port());
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let mut child = Command::new(TOLLGATE_BIN)
            .arg("--validate")
            .arg("-c")
            .arg(&config_path)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("stdout file"))
            .stderr(File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn tollgate --validate");
        let status = wait_with_timeout(&mut child, VALIDATE_TIMEOUT);
        let stderr = read_lossy(&stderr_path);
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tollgate --validate still running after {VALIDATE_TIMEOUT:?}; stderr:\n{stderr}"
            );
        };
        (status.code().unwrap_or(-1), stderr)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT` + `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        self.url("/v1")
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        read_lossy(&self.log_path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file as written (placeholders filled).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The temp dir holding the config, log, and `{PID_FILE}`/`{UPGRADE_SOCK}` paths.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a signal by name (`"TERM"`, `"INT"`, `"QUIT"`, `"HUP"`) via `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit; None if it is still running.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_with_timeout(&mut self.child, timeout)
    }

    /// Spawns the gateway on `yaml` (placeholders filled) and returns at once, without
    /// waiting for it to answer: for tests of what happens during startup. Then
    /// [`wait_until_ready`](Self::wait_until_ready) waits as [`start`](Self::start) does.
    pub fn spawn(yaml: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir for gateway");
        let port = free_port();
        let config_path = write_config(dir.path(), yaml, port);
        let log_path = dir.path().join("tollgate.log");
        let (stdout, stderr) = log_outputs(&log_path);
        let child = Command::new(TOLLGATE_BIN)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn tollgate");
        Gateway {
            child,
            port,
            config_path,
            log_path,
            dir,
        }
    }

    /// Waits until `GET /health` answers 200; panics with the log if the process exits
    /// or the startup timeout passes.
    pub fn wait_until_ready(&mut self) {
        if let Err(reason) = self.wait_until_healthy() {
            // Dropping the gateway on the way out prints its log.
            panic!("tollgate did not start: {reason}");
        }
    }

    /// Starts a second gateway with `-u` (graceful upgrade) on `yaml`, its placeholders
    /// filled as for `self`: the same port, pid file and upgrade socket. Its config and
    /// log go to a temp dir of its own. Returns at once: the new process waits (about
    /// 5 s, then gives up) for the old one to hand its listening sockets over, which the
    /// old one does on SIGQUIT (see [`upgrade_sock`](Self::upgrade_sock)); meanwhile
    /// `/health` still reaches the old process.
    pub fn start_upgrade(&self, yaml: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir for the upgrading gateway");
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, fill_placeholders(yaml, self.port, self.dir()))
            .expect("write upgrading gateway config");
        let log_path = dir.path().join("tollgate.log");
        let (stdout, stderr) = log_outputs(&log_path);
        let child = Command::new(TOLLGATE_BIN)
            .arg("-u")
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn tollgate -u");
        Gateway {
            child,
            port: self.port,
            config_path,
            log_path,
            dir,
        }
    }

    /// `{UPGRADE_SOCK}` of a gateway made by [`start`](Self::start): the Unix socket a
    /// process started with `-u` listens on for the listening sockets. (One made by
    /// `start_upgrade` uses the socket of the gateway it upgrades.)
    pub fn upgrade_sock(&self) -> PathBuf {
        self.dir().join("upgrade.sock")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- tollgate log (port {}) ----\n{}---- end of log ----",
                self.port,
                self.logs()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fills the placeholders (see the module docs) and writes `config.yaml` into `dir`.
fn write_config(dir: &Path, yaml: &str, port: u16) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, fill_placeholders(yaml, port, dir)).expect("write gateway config");
    path
}

/// `{PORT}`, `{PID_FILE}`, `{UPGRADE_SOCK}` and `{TMP_DIR}` replaced.
pub fn fill_placeholders(yaml: &str, port: u16, dir: &Path) -> String {
    yaml.replace("{PORT}", &port.to_string())
        .replace(
            "{PID_FILE}",
            &dir.join("tollgate.pid").display().to_string(),
        )
        .replace(
            "{UPGRADE_SOCK}",
            &dir.join("upgrade.sock").display().to_string(),
        )
        .replace("{TMP_DIR}", &dir.display().to_string())
}

/// One log file, opened twice: for the child's stdout and stderr.
fn log_outputs(path: &Path) -> (Stdio, Stdio) {
    let file = File::create(path).expect("create gateway log");
    let clone = file.try_clone().expect("clone log handle");
    (Stdio::from(file), Stdio::from(clone))
}

/// The status of `GET /health` on 127.0.0.1:`port`, or None if nothing (or something
/// other than the gateway, such as a mock upstream that took the port) answers.
fn health_status(port: u16) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .ok()?;
    let request =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let head = read_response_head(&mut stream)?;
    if head
        .to_ascii_lowercase()
        .contains(&format!("\n{MOCK_HEADER}:"))
    {
        return None;
    }
    super::raw_status(head.as_bytes())
}

/// Reads up to the end of a response head (bounded by the stream's read timeout).
fn read_response_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
