//! invsync processes: `serve` instances and `consume` processes, each on a port of its
//! own that survives a restart, with its own data directory and configuration file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::procs::{self, eventually, free_port, Proc};

/// What an instance runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `invsync serve`: the API, the storefront, the shared endpoint `shop` while it
    /// leads, the relay to NATS while it leads.
    Serve,
    /// `invsync consume NAME [--partitioned]`: one webhook endpoint in its own process.
    Consume { endpoint: String, partitioned: bool },
}

pub struct Instance {
    /// `i0`, `erp-m1`, …: the name deliveries are attributed to (the last segment of
    /// the webhook path it was configured with).
    pub name: String,
    pub role: Role,
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    config: PathBuf,
    proc: Option<Proc>,
    /// Frozen by SIGSTOP now.
    pub paused: bool,
}

impl Instance {
    /// An instance (not started) whose configuration file is `config_text`.
    pub fn new(bin: &Path, dir: &Path, name: &str, role: Role, config_text: &str) -> Result<Self> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("invsync.toml");
        std::fs::write(&config, config_text)?;
        Ok(Self {
            name: name.to_owned(),
            role,
            bin: bin.to_owned(),
            port: free_port()?,
            dir,
            config,
            proc: None,
            paused: false,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it and waits until it answers `/healthz`.
    pub async fn start(&mut self, http: &reqwest::Client) -> Result<()> {
        let mut command = Command::new(&self.bin);
        match &self.role {
            Role::Serve => {
                command.arg("serve");
            }
            Role::Consume {
                endpoint,
                partitioned,
            } => {
                command.args(["consume", endpoint]);
                if *partitioned {
                    command.arg("--partitioned");
                }
            }
        }
        command
            .args([
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--data-dir",
            ])
            .arg(self.dir.join("data"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info");
        self.proc = Some(Proc::spawn(
            &self.name,
            command,
            &self.dir.join("invsync.log"),
        )?);
        self.paused = false;
        let url = format!("{}/healthz", self.url());
        let up = eventually(
            &format!("{} answers /healthz", self.name),
            Duration::from_secs(60),
            || async {
                http.get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            },
        )
        .await;
        up.map_err(|e| {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            e.context(format!("its log ends: {}", tail.join(" | ")))
        })
    }

    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill9();
        }
        self.proc = None;
        self.paused = false;
    }

    /// SIGSTOP: alive, holding its sessions, doing nothing.
    pub fn pause(&mut self) -> Result<()> {
        let Some(pid) = self.proc.as_ref().and_then(Proc::pid) else {
            bail!("{} is not running", self.name);
        };
        procs::signal(pid, "STOP")?;
        self.paused = true;
        Ok(())
    }

    pub fn resume(&mut self) -> Result<()> {
        if let Some(pid) = self.proc.as_ref().and_then(Proc::pid) {
            procs::signal(pid, "CONT")?;
        }
        self.paused = false;
        Ok(())
    }

    pub fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::running)
    }

    /// A gauge or counter of its `/metrics` (summed over labels), if it answers.
    pub async fn metric(&self, http: &reqwest::Client, name: &str) -> Option<f64> {
        let text = http
            .get(format!("{}/metrics", self.url()))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let mut found = None;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let base = series.split('{').next().unwrap_or(series);
            if let (true, Ok(v)) = (base == name, value.parse::<f64>()) {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// Whether it says it leads (holds the relay lease).
    pub async fn leads(&self, http: &reqwest::Client) -> bool {
        !self.paused && self.metric(http, "invsync_relay_leader").await == Some(1.0)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("invsync.log")
    }
}
