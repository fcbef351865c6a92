//! A throwaway `nats-server -js` (its own port and store), and reading a
//! JetStream stream back whole.
//!
//! ```text
//!  Nats::start()        nats-server -js -sd <tmp> -a 127.0.0.1 -p <free port>
//!  nats.kill9()/spawn() stopped and started again on the same port and store
//!  messages(url, s)     every message of stream s: subject, headers, JSON body
//!  nats_dest(...)       a [[destination]] block of kind nats
//! ```

use async_nats::jetstream::{self, stream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// A user and password the server requires (`--user`, `--pass`).
    auth: Option<(String, String)>,
    /// TLS required: the server's certificate and key, and the CA that
    /// signed them (a directory from [`crate::certs`]).
    tls: Option<PathBuf>,
}

impl Nats {
    pub fn start() -> Nats {
        Nats::start_with(None)
    }

    /// A server that requires `user` and `pass`.
    pub fn start_with_user(user: &str, pass: &str) -> Nats {
        Nats::start_with(Some((user.into(), pass.into())))
    }

    /// A server that requires TLS, with a certificate for `localhost`
    /// signed by `<dir>/ca.crt` (made here).
    pub fn start_tls() -> Nats {
        let dir = tempfile::Builder::new()
            .prefix("tributary-nats-")
            .tempdir()
            .unwrap();
        crate::certs::ca(dir.path(), "ca", "/CN=Tributary test CA");
        crate::certs::server(dir.path(), "ca");
        let mut n = Nats {
            child: None,
            port: crate::free_port(),
            tls: Some(dir.path().to_path_buf()),
            dir,
            auth: None,
        };
        n.spawn();
        n
    }

    /// The CA that signed a TLS server's certificate.
    pub fn ca(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|d| d.join("ca.crt"))
    }

    fn start_with(auth: Option<(String, String)>) -> Nats {
        let dir = tempfile::Builder::new()
            .prefix("tributary-nats-")
            .tempdir()
            .unwrap();
        let mut n = Nats {
            child: None,
            port: crate::free_port(),
            dir,
            auth,
            tls: None,
        };
        n.spawn();
        n
    }

    /// The server's URL, with the user and password when it requires
    /// them (what the harness connects with).
    pub fn url(&self) -> String {
        match &self.auth {
            Some((u, p)) => format!("nats://{u}:{p}@127.0.0.1:{}", self.port),
            None => self.bare_url(),
        }
    }

    /// The URL without credentials (`tls://localhost:…` for a TLS server).
    pub fn bare_url(&self) -> String {
        match &self.tls {
            Some(_) => format!("tls://localhost:{}", self.port),
            None => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// Every message of `stream`, read with this server's login or CA.
    pub fn messages(&self, stream: &str) -> Vec<Msg> {
        read_messages(self.connect(), stream)
    }

    async fn connect_async(url: String, ca: Option<PathBuf>) -> Result<async_nats::Client, String> {
        tributary_worker::tls::install_ring();
        match ca {
            Some(ca) => async_nats::ConnectOptions::new()
                .add_root_certificates(ca)
                .require_tls(true)
                .connect(url)
                .await
                .map_err(|e| e.to_string()),
            None => client(&url).await.map_err(|e| e.to_string()),
        }
    }

    fn connect(&self) -> impl std::future::Future<Output = Result<async_nats::Client, String>> {
        Nats::connect_async(
            match &self.tls {
                Some(_) => self.bare_url(),
                None => self.url(),
            },
            self.ca(),
        )
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// Starts the server (again) on its port and store, and waits until
    /// JetStream answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "nats-server already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let mut cmd = Command::new("nats-server");
        if let Some((u, p)) = &self.auth {
            cmd.args(["--user", u, "--pass", p]);
        }
        if let Some(d) = &self.tls {
            cmd.arg("--tls")
                .arg("--tlscert")
                .arg(d.join("server.crt"))
                .arg("--tlskey")
                .arg(d.join("server.key"));
        }
        let child = cmd
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server runs (apt install nats-server)");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let ready: Result<(), String> = block_on(async {
                let c = self.connect().await?;
                // JetStream answers its account info (read raw: the
                // client's type has fields a 2.9 server does not send).
                let r = c
                    .request("$JS.API.INFO", "".into())
                    .await
                    .map_err(|e| e.to_string())?;
                let v: serde_json::Value =
                    serde_json::from_slice(&r.payload).map_err(|e| e.to_string())?;
                match v.get("error") {
                    None => Ok(()),
                    Some(e) => Err(e.to_string()),
                }
            });
            let Err(why) = ready else {
                return;
            };
            assert!(
                Instant::now() < end,
                "nats-server did not start ({why}):\n{}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A client for `url`; a `user:pass@` in it is passed as the login.
pub async fn client(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("nats", url));
    match rest.rsplit_once('@') {
        Some((auth, host)) => {
            let (u, p) = auth.split_once(':').unwrap_or((auth, ""));
            async_nats::ConnectOptions::with_user_and_password(u.into(), p.into())
                .connect(format!("{scheme}://{host}"))
                .await
        }
        None => async_nats::connect(url).await,
    }
}

/// Runs a future to its end on a runtime of its own.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// One message of a stream.
#[derive(Debug, Clone)]
pub struct Msg {
    pub seq: u64,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Msg {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Every message `stream` holds, in stream order (none while there is no
/// such stream).
pub fn messages(url: &str, stream_name: &str) -> Vec<Msg> {
    read_messages(
        async { client(url).await.map_err(|e| e.to_string()) },
        stream_name,
    )
}

fn read_messages(
    connect: impl std::future::Future<Output = Result<async_nats::Client, String>>,
    stream_name: &str,
) -> Vec<Msg> {
    block_on(async {
        let js = jetstream::new(connect.await.unwrap());
        let Ok(mut s) = js.get_stream(stream_name).await else {
            return vec![];
        };
        let st = s.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        if st.messages == 0 {
            return out;
        }
        for seq in st.first_sequence..=st.last_sequence {
            let Ok(m) = s.get_raw_message(seq).await else {
                continue;
            };
            let headers = m
                .headers
                .iter()
                .flat_map(|(k, vs)| {
                    vs.iter()
                        .map(move |v| (k.to_string(), v.as_str().to_string()))
                })
                .collect();
            out.push(Msg {
                seq,
                subject: m.subject.to_string(),
                headers,
                body: serde_json::from_slice(&m.payload).unwrap(),
            });
        }
        out
    })
}

/// Creates `config`'s stream (a test that wants limits the worker would
/// not set: a short duplicate window, a size cap).
pub fn create_stream(url: &str, config: stream::Config) {
    block_on(async {
        let js = jetstream::new(client(url).await.unwrap());
        js.create_stream(config).await.unwrap();
    });
}

/// Changes a stream's limits.
pub fn update_stream(url: &str, config: stream::Config) {
    block_on(async {
        let js = jetstream::new(client(url).await.unwrap());
        js.update_stream(config).await.unwrap();
    });
}

/// A `[[destination]]` of kind nats.
pub fn nats_dest(name: &str, url: &str, stream: &str, tables: &str) -> String {
    format!(
        "[[destination]]\nname = \"{name}\"\nkind = \"nats\"\nurl = \"{url}\"\nstream = \"{stream}\"\nsubject_prefix = \"tributary\"\ntables = {tables}\n"
    )
}
